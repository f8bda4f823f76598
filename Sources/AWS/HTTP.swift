import System
import SecureMemory
#if canImport(Glibc)
import Glibc
#endif

/// The body of a request: plain bytes (a ciphertext, a form) or secure
/// memory (anything that carries plaintext or key material).
public enum HTTPBody: Sendable {
    case bytes([UInt8])
    case secure(SecureBuffer)

    public static let empty = HTTPBody.bytes([])

    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        switch self {
        case .bytes(let b): return try b.withUnsafeBytes(body)
        case .secure(let s): return try s.withUnsafeBytes { try body($0) }
        }
    }
}

public struct HTTPRequest: Sendable {
    public var method: String
    public var url: URLParts
    public var headers: [(name: String, value: String)]
    /// Headers whose values are secrets (the session token, bearer
    /// tokens): sent from secure memory, never made into a `String`. The
    /// transport refuses a control character other than a tab, as in
    /// `headers`.
    public var secureHeaders: [(name: String, value: SecureBuffer)] = []
    public var body: HTTPBody
    /// Per-request overall timeout, seconds (nil: the transport's default).
    public var timeout: Double?
    /// Per-request connect timeout, seconds (nil: the transport's default).
    public var connectTimeout: Double?

    public init(method: String, url: URLParts, headers: [(name: String, value: String)] = [],
                body: HTTPBody = .empty, timeout: Double? = nil, connectTimeout: Double? = nil) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.timeout = timeout
        self.connectTimeout = connectTimeout
    }
}

/// A response. The body is always in secure memory: the transport cannot
/// know which responses carry plaintext, so none is left in ordinary memory.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [(name: String, value: String)]
    public var body: SecureBuffer

    public init(status: Int, headers: [(name: String, value: String)], body: SecureBuffer) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    public func header(_ name: String) -> String? {
        let n = name.lowercased()
        return headers.first { $0.name.lowercased() == n }?.value
    }

    /// The body as text, for responses known to carry no secret (errors,
    /// credential-less metadata). Callers decide; the transport never does.
    /// Still, a body that names a credential or plaintext member (a broken
    /// proxy or credential agent answering a credentials document with an
    /// error status) is not turned into a String, which would outlive its
    /// locked buffer in logs and the heap: a placeholder stands in for it.
    public func nonSecretBodyText(limit: Int = 64 * 1024) -> String {
        body.withUnsafeBytes { b in
            if Self.secretMarkers.contains(where: { Self.contains(b, $0) }) {
                return "(\(b.count) bytes naming a credential or plaintext member, not shown)"
            }
            return String(decoding: b.prefix(limit), as: UTF8.self)
        }
    }

    /// Whether `needle` occurs in `haystack`, by memchr and memcmp. The
    /// standard library's generic `firstRange(of:)` took 1.1 s for the
    /// markers over a 1 MiB body (the transport's limit), per answer,
    /// on an endpoint's choosing; this takes milliseconds.
    static func contains(_ haystack: UnsafeRawBufferPointer, _ needle: [UInt8]) -> Bool {
        guard let first = needle.first else { return true }
        guard let base = haystack.baseAddress, haystack.count >= needle.count else { return false }
        let lastStart = haystack.count - needle.count
        var i = 0
        return needle.withUnsafeBytes { n in
            while i <= lastStart {
                guard let p = memchr(base + i, Int32(first), lastStart - i + 1) else { return false }
                let at = base.distance(to: UnsafeRawPointer(p))
                if memcmp(base + at, n.baseAddress!, needle.count) == 0 { return true }
                i = at + 1
            }
            return false
        }
    }

    /// `secretResponseMembers` as JSON members and XML elements.
    static let secretMarkers: [[UInt8]] = secretResponseMembers.sorted()
        .flatMap { ["\"\($0)\"", "<\($0)>"] }.map { Array($0.utf8) }
}

/// A transport failure (no HTTP response at all).
public typealias TransportError = Failure<TransportErrorKind>

public enum TransportErrorKind: String, Sendable {
    case connect       // refused, unreachable, DNS
    case timeout
    case tls
    case io            // reset, truncated, nothing received
    case tooLarge      // response over the body limit
    case other
}

/// Sends one request and returns the response; thread-safe, blocking.
public protocol HTTPTransport: Sendable {
    func send(_ request: HTTPRequest) throws(TransportError) -> HTTPResponse
    /// Closes connections idle for `seconds`; returns how many.
    @discardableResult
    func trimIdle(olderThan seconds: Double) -> Int
}

extension HTTPTransport {
    @discardableResult
    public func trimIdle(olderThan seconds: Double) -> Int { 0 }
}

/// A parsed URL, as much as AWS endpoints need.
public struct URLParts: Sendable, Equatable, CustomStringConvertible {
    public var scheme: String
    public var host: String
    public var port: Int?
    public var path: String
    public var query: String

    public init(scheme: String, host: String, port: Int? = nil, path: String = "/", query: String = "") {
        self.scheme = scheme
        self.host = host
        self.port = port
        self.path = path.isEmpty ? "/" : path
        self.query = query
    }

    /// Parses `scheme://host[:port][/path][?query]`; IPv6 hosts in brackets.
    public init?(_ text: String) {
        // No blank or control byte anywhere (curl refuses such a URL at the
        // first call, long after a mount took it).
        guard !text.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7f }) else { return nil }
        guard let sep = text.utf8.indices.first(where: { text.utf8[$0...].starts(with: "://".utf8) }) else { return nil }
        let scheme = text[..<sep].lowercased()
        guard scheme == "http" || scheme == "https" else { return nil }
        var rest = Substring(text[text.utf8.index(sep, offsetBy: 3)...])
        var query = ""
        if let q = rest.firstIndex(of: "?") {
            query = String(rest[rest.index(after: q)...])
            rest = rest[..<q]
        }
        var path = "/"
        if let slash = rest.firstIndex(of: "/") {
            path = String(rest[slash...])
            rest = rest[..<slash]
        }
        var host = String(rest)
        var port: Int? = nil
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return nil }
            let after = host[host.index(after: close)...]
            if after.hasPrefix(":") {
                guard let p = Int(after.dropFirst()), p > 0, p < 65536 else { return nil }
                port = p
            } else if !after.isEmpty { return nil }
            host = String(host[...close])
        } else if let colon = host.lastIndex(of: ":") {
            guard let p = Int(host[host.index(after: colon)...]), p > 0, p < 65536 else { return nil }
            port = p
            host = String(host[..<colon])
        }
        guard !host.isEmpty, !host.contains("@") else { return nil }
        // A name or an IPv4 address: letters, digits, '-', '_', '.'; an
        // IPv6 address in brackets: hex digits, ':', '.' and a zone after '%'.
        func ok(_ b: UInt8) -> Bool {
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b == 0x2d || b == 0x2e || b == 0x5f
        }
        if host.hasPrefix("[") {
            guard host.utf8.dropFirst().dropLast().allSatisfy({ ok($0) || $0 == 0x3a || $0 == 0x25 }) else { return nil }
        } else {
            guard host.utf8.allSatisfy(ok) else { return nil }
        }
        self.init(scheme: scheme, host: host, port: port, path: path, query: query)
    }

    /// The `Host` header value: the port only where it is not the default.
    public var hostHeader: String {
        if let port, !((scheme == "http" && port == 80) || (scheme == "https" && port == 443)) {
            return "\(host):\(port)"
        }
        return host
    }

    public var description: String {
        "\(scheme)://\(hostHeader)\(path)\(query.isEmpty ? "" : "?" + query)"
    }

    /// The host as an IP address literal (4 bytes for IPv4, 16 for IPv6 in
    /// brackets), parsed by `inet_pton`; nil for a name. `127.evil.example`
    /// or `127.1` is a name, not an address.
    public var ipAddress: [UInt8]? {
        let h: String
        let family: Int32
        if host.hasPrefix("[") && host.hasSuffix("]") && host.utf8.count > 2 {
            h = String(host.dropFirst().dropLast())
            family = AF_INET6
        } else {
            h = host
            family = AF_INET
        }
        // Zone IDs, whitespace and the like are refused by inet_pton itself.
        var storage = [UInt8](repeating: 0, count: 16)
        let ok = storage.withUnsafeMutableBytes { inet_pton(family, h, $0.baseAddress) }
        guard ok == 1 else { return nil }
        return family == AF_INET ? Array(storage[0..<4]) : storage
    }

    /// True for an IP literal in 127.0.0.0/8 or ::1 (also as
    /// ::ffff:127.x.y.z), and for `localhost`, which curl resolves to the
    /// loopback interface itself without asking DNS. Any other name is not
    /// loopback, whatever it starts with.
    public var isLoopback: Bool {
        if host.lowercased() == "localhost" { return true }
        guard let a = ipAddress else { return false }
        if a.count == 4 { return a[0] == 127 }
        if a[0..<15].allSatisfy({ $0 == 0 }) && a[15] == 1 { return true }
        if a[0..<10].allSatisfy({ $0 == 0 }) && a[10] == 0xFF && a[11] == 0xFF { return a[12] == 127 }
        return false
    }
}

