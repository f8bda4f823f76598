import Testing
import Foundation
import AWS
import SecureMemory
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A transport answering from a closure, recording every request.
final class ScriptedTransport: HTTPTransport, @unchecked Sendable {
    struct Answer {
        var status: Int
        var body: String
        var headers: [(name: String, value: String)] = []
    }
    let log = Mutex<[HTTPRequest]>([])
    let handler: @Sendable (HTTPRequest, Int) throws(TransportError) -> Answer

    init(_ handler: @escaping @Sendable (HTTPRequest, Int) throws(TransportError) -> Answer) {
        self.handler = handler
    }

    var requests: [HTTPRequest] { log.withLock { $0 } }
    var count: Int { log.withLock { $0.count } }

    func send(_ request: HTTPRequest) throws(TransportError) -> HTTPResponse {
        let n = log.withLock { $0.append(request); return $0.count }
        let a = try handler(request, n)
        let buf = try! SecureBuffer(capacity: max(a.body.utf8.count, 1))
        try! buf.append(utf8: a.body)
        return HTTPResponse(status: a.status, headers: a.headers, body: buf)
    }
}

extension HTTPRequest {
    func header(_ name: String) -> String? {
        if let v = headers.first(where: { $0.name.lowercased() == name.lowercased() })?.value { return v }
        // Secret headers (the session token): copied out for the test only.
        return secureHeaders.first { $0.name.lowercased() == name.lowercased() }?.value
            .withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
    }
    var bodyText: String {
        body.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
    }
    /// Form fields of a query-protocol body.
    var form: [String: String] {
        var out: [String: String] = [:]
        for pair in bodyText.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1).map(String.init)
            out[kv[0]] = kv.count > 1 ? kv[1].removingPercentEncoding : ""
        }
        return out
    }
}

extension String {
    var removingPercentEncoding: String {
        var bytes: [UInt8] = []
        var it = Array(utf8).makeIterator()
        while let c = it.next() {
            if c == UInt8(ascii: "%"), let h = it.next(), let l = it.next(),
               let v = UInt8(String(decoding: [h, l], as: UTF8.self), radix: 16) {
                bytes.append(v)
            } else {
                bytes.append(c)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// `text` in a secure buffer (a test's token or key).
func secureText(_ text: String) -> SecureBuffer {
    let b = try! SecureBuffer(capacity: max(text.utf8.count, 1))
    try! b.append(utf8: text)
    return b
}

/// A clock tests move by hand. `sleep` advances it and records the delay.
final class ManualClock: @unchecked Sendable {
    private let state = Mutex<(wall: Double, mono: Double, sleeps: [Double])>((1_700_000_000, 1000, []))

    var clock: Clock {
        Clock(now: { [self] in Timestamp(seconds: state.withLock { $0.wall }) },
              monotonic: { [self] in state.withLock { $0.mono } },
              sleep: { [self] d in advance(d); state.withLock { $0.sleeps.append(d) } })
    }

    func advance(_ d: Double) {
        state.withLock { $0.wall += d; $0.mono += d }
    }

    var now: Timestamp { Timestamp(seconds: state.withLock { $0.wall }) }
    var sleeps: [Double] { state.withLock { $0.sleeps } }
}

/// A background runner that queues jobs until the test runs them.
final class ManualRunner: @unchecked Sendable {
    private let jobs = Mutex<[@Sendable () -> Void]>([])
    var runner: BackgroundRunner {
        BackgroundRunner { [self] _, body in jobs.withLock { $0.append(body) } }
    }
    var pending: Int { jobs.withLock { $0.count } }
    func runAll() {
        let js = jobs.withLock { j -> [@Sendable () -> Void] in let x = j; j = []; return x }
        for j in js { j() }
    }
}

/// A provider answering from a closure, counting calls.
final class CountingProvider: CredentialProvider, @unchecked Sendable {
    let calls = Mutex(0)
    let answer: @Sendable (Int) throws(CredentialError) -> AWSCredentials
    let name: String
    init(_ name: String = "test", _ answer: @escaping @Sendable (Int) throws(CredentialError) -> AWSCredentials) {
        self.name = name
        self.answer = answer
    }
    var count: Int { calls.withLock { $0 } }
    func credentials() throws(CredentialError) -> AWSCredentials {
        let n = calls.withLock { $0 += 1; return $0 }
        return try answer(n)
    }
}

func creds(_ id: String, expires: Timestamp? = nil, source: String = "test") -> AWSCredentials {
    try! AWSCredentials(accessKeyId: id, secretAccessKey: "secret-\(id)", sessionToken: expires == nil ? nil : "token-\(id)",
                   expiration: expires, source: source, kind: .other)
}

/// A scratch directory removed when the value is released.
final class TempDir: @unchecked Sendable {
    let path: String
    init() {
        var template = Array("/tmp/kmsfs-awstests-XXXXXX".utf8CString)
        let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        path = String(cString: p!)
    }
    /// Removes the whole tree (tests make subdirectories in it).
    deinit { try? FileManager.default.removeItem(atPath: path) }
    @discardableResult
    func write(_ name: String, _ text: String, mode: mode_t = 0o600) -> String {
        let p = path + "/" + name
        let fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, mode)
        _ = text.withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
        return p
    }
    @discardableResult
    func write(_ name: String, bytes: [UInt8], mode: mode_t = 0o600) -> String {
        let p = path + "/" + name
        let fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, mode)
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        close(fd)
        return p
    }
}

/// The error a credential fetch throws, or nil (recorded as an issue) when
/// it succeeds.
func credentialError(_ body: () throws -> AWSCredentials,
                     sourceLocation: SourceLocation = #_sourceLocation) -> CredentialError {
    do {
        let c = try body()
        Issue.record("expected a credential error, got \(c)", sourceLocation: sourceLocation)
        return CredentialError(.notConfigured, "<none>")
    } catch let e as CredentialError {
        return e
    } catch {
        Issue.record("unexpected error type: \(error)", sourceLocation: sourceLocation)
        return CredentialError(.notConfigured, "<other>")
    }
}

final class Counter: Sendable {
    private let n = Mutex(0)
    init() {}
    func bump() { n.withLock { $0 += 1 } }
    var value: Int { n.withLock { $0 } }
}

/// A small file's text (/proc files, a pid file), or nil.
func readSmallFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var buf = [UInt8](repeating: 0, count: 4096)
    let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    return n >= 0 ? String(decoding: buf[0..<n], as: UTF8.self) : nil
}
