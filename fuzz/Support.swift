// Shared by every fuzz target (compiled into each one; see fuzz/build.sh).
// No network, no clock, no sleeps: a fuzz input must decide everything.
@testable import AWS
import SecureMemory
import Log
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Splits a fuzz input into parts at 0xFF bytes (never valid UTF-8, so the
/// separator costs the fuzzer nothing it could not reach otherwise).
func fuzzParts(_ data: [UInt8], max: Int = 8) -> [[UInt8]] {
    data.split(separator: 0xFF, maxSplits: max - 1, omittingEmptySubsequences: false).map(Array.init)
}

/// A transport that answers request n with part n of the input (the last
/// part again once they run out). A part's first byte picks the status.
final class FuzzTransport: HTTPTransport, @unchecked Sendable {
    static let statuses = [200, 200, 200, 200, 400, 401, 403, 404, 429, 500, 503]
    let parts: [[UInt8]]
    let calls = Mutex(0)

    init(_ parts: [[UInt8]]) { self.parts = parts.isEmpty ? [[]] : parts }

    func send(_ request: HTTPRequest) throws(TransportError) -> HTTPResponse {
        let n = calls.withLock { c in defer { c += 1 }; return c }
        if n > 16 { throw TransportError(.connect, "fuzz: too many requests") }
        var part = parts[min(n, parts.count - 1)]
        var status = 200
        if let first = part.first {
            status = FuzzTransport.statuses[Int(first) % FuzzTransport.statuses.count]
            part.removeFirst()
        }
        let buf = try! SecureBuffer(capacity: max(part.count, 1))
        part.withUnsafeBytes { try! buf.append($0) }
        return HTTPResponse(status: status, headers: [("x-amzn-RequestId", "fuzz-\(n)")], body: buf)
    }

    func trimIdle(olderThan seconds: Double) -> Int { 0 }
}

/// A clock that never sleeps and whose time only moves when asked.
let fuzzClock = Clock(now: { Timestamp(seconds: 1_700_000_000) }, monotonic: { 1000 }, sleep: { _ in })

func fuzzRetry() -> RetryStrategy {
    var r = RetryStrategy.Configuration()
    r.maxAttempts = 2
    r.baseDelay = 0
    r.maxBackoff = 0
    return RetryStrategy(r, random: { 0 })
}

let fuzzSetup: Void = {
    Log.configure(destination: LogDestination.none, level: .debug)
    // Locked anonymous memory rather than a memfd_secret per buffer: the
    // same code paths, a third of the system calls.
    SecureMemoryPolicy.preferSecretMemory = false
}()

func fuzzInput(_ p: UnsafePointer<UInt8>?, _ n: Int) -> [UInt8] {
    _ = fuzzSetup
    guard let p, n > 0 else { return [] }
    return Array(UnsafeBufferPointer(start: p, count: n))
}

/// Known trap, fixed on its own branch (issue 13 A2): a `\uD800`-`\uDBFF`
/// escape followed by a `\u` escape below `\uDC00` underflows in
/// JSONParser.string(). Inputs holding one are skipped unless
/// FUZZ_KNOWN_TRAPS=1 (set it once A2 is merged: the filter then goes).
let skipKnownTraps = getenv("FUZZ_KNOWN_TRAPS").map { String(cString: $0) } != "1"

func hasKnownTrap(_ d: [UInt8]) -> Bool {
    guard skipKnownTraps, d.count >= 12 else { return false }
    func hex4(_ at: Int) -> UInt32? {
        guard at + 4 <= d.count else { return nil }
        var v: UInt32 = 0
        for c in d[at..<(at + 4)] {
            switch c {
            case 48...57: v = v << 4 | UInt32(c - 48)
            case 65...70: v = v << 4 | UInt32(c - 55)
            case 97...102: v = v << 4 | UInt32(c - 87)
            default: return nil
            }
        }
        return v
    }
    var i = 0
    while i + 12 <= d.count {
        if d[i] == 92, d[i + 1] == 117, let hi = hex4(i + 2), (0xD800..<0xDC00).contains(hi),
           d[i + 6] == 92, d[i + 7] == 117, let lo = hex4(i + 8), lo < 0xDC00 {
            return true
        }
        i += 1
    }
    return false
}
