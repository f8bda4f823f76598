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

