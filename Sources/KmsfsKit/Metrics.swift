import AWS
import Log
import SecureMemory
import System
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where `-o metrics=` serves Prometheus' `/metrics`: a loopback TCP
/// address or a Unix socket. Never a routable address: the figures say
/// which secrets exist and how often they are read.
public enum MetricsAddress: Sendable, Equatable, CustomStringConvertible {
    case tcp(host: String, port: UInt16)
    case unix(String)

    /// `127.0.0.1:9464`, `[::1]:9464`, `localhost:9464` or `unix:/run/kmsfs-metrics.sock`.
    public static func parse(_ text: String) -> Result<MetricsAddress, OptionError> {
        func bad(_ why: String) -> Result<MetricsAddress, OptionError> {
            .failure(OptionError("option 'metrics=\(text)': \(why)"))
        }
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard path.hasPrefix("/") else { return bad("give the socket's absolute path (unix:/run/kmsfs-metrics.sock)") }
            guard path.utf8.count < 100 else { return bad("the socket path is longer than 99 bytes") }
            return .success(.unix(path))
        }
        let host: Substring, port: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return bad("expected [::1]:PORT") }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return bad("expected [::1]:PORT") }
            port = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { return bad("expected HOST:PORT on loopback (127.0.0.1:9464) or unix:PATH") }
            host = text[..<colon]
            port = text[text.index(after: colon)...]
        }
        guard let p = UInt16(port), p > 0 else { return bad("the port must be a number from 1 to 65535") }
        let h = String(host)
        guard isLoopback(h) else {
            return bad("metrics are served on loopback only (127.0.0.0/8, ::1 or localhost); scrape through an agent or a proxy for other hosts")
        }
        return .success(.tcp(host: h, port: p))
    }

    /// An IP literal in 127.0.0.0/8, `::1`, or the name `localhost`.
    static func isLoopback(_ host: String) -> Bool {
        if host == "localhost" { return true }
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 { return UInt32(bigEndian: v4.s_addr) >> 24 == 127 }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { b in b.prefix(15).allSatisfy { $0 == 0 } && b[15] == 1 }
        }
        return false
    }

    public var description: String {
        switch self {
        case .tcp(let h, let p): return h.contains(":") ? "[\(h)]:\(p)" : "\(h):\(p)"
        case .unix(let p): return "unix:" + p
        }
    }
}

/// The Prometheus text exposition (format 0.0.4) of a mount's status
/// document: the same figures `kmsfs status --json` shows, so the endpoint
/// and `kmsfs status --prometheus` (node_exporter's textfile collector) can
/// never disagree. Names, counts and times only: never a plaintext byte,
/// never a credential (the key ID is not exported either).
public enum PrometheusText {
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    public static func render(_ d: JSONValue, perSecret: Bool = false) -> String {
        var out = ""
        func num(_ v: Double) -> String {
            if v.isNaN { return "NaN" }
            if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
            if v == v.rounded(), abs(v) < 1e15, let i = Int(exactly: v) { return String(i) }
            return String(v)
        }
        func family(_ name: String, _ type: String, _ help: String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        func sample(_ name: String, _ labels: [(String, String)] = [], _ value: Double?) {
            guard let value else { return }
            out += name
            if !labels.isEmpty {
                out += "{" + labels.map { "\($0.0)=\"\(escapeLabel($0.1))\"" }.joined(separator: ",") + "}"
            }
            out += " " + num(value) + "\n"
        }
        let c = d["counters"], k = d["kms"], cache = d["cache"], cr = d["credentials"]

        family("kmsfs_build_info", "gauge", "Always 1; the version of the kmsfs daemon.")
        sample("kmsfs_build_info", [("version", d["version"]?.stringValue ?? kmsfsVersion)], 1)
        family("kmsfs_uptime_seconds", "gauge", "Seconds since the mount was made.")
        sample("kmsfs_uptime_seconds", [], d["uptime_s"]?.numberValue)

        family("kmsfs_opens_total", "counter", "Opens of secrets, by result: cache (served from memory), kms (decrypted for this open), shared (waited on another open's decryption), denied (caller not allowed), failed (decryption failed).")
        for (result, key) in [("cache", "cache_hits"), ("kms", "decrypts"), ("shared", "shared"), ("denied", "denials"), ("failed", "failures")] {
            sample("kmsfs_opens_total", [("result", result)], c?[key]?.numberValue)
        }
        family("kmsfs_refreshes_total", "counter", "Cached secrets decrypted again (changed ciphertext or refresh ahead of the ttl).")
        sample("kmsfs_refreshes_total", [], c?["refreshes"]?.numberValue)

        let calls = k?["calls"]?.numberValue ?? 0, failures = k?["failures"]?.numberValue ?? 0
        family("kmsfs_kms_requests_total", "counter", "KMS calls (each with its retries), by operation and outcome.")
        sample("kmsfs_kms_requests_total", [("operation", "Decrypt"), ("outcome", "success")], max(0, calls - failures))
        sample("kmsfs_kms_requests_total", [("operation", "Decrypt"), ("outcome", "error")], failures)
        family("kmsfs_kms_retries_total", "counter", "KMS attempts repeated after a retryable failure, by reason.")
        let throttled = k?["throttled"]?.numberValue ?? 0, retries = k?["retries"]?.numberValue ?? 0
        sample("kmsfs_kms_retries_total", [("operation", "Decrypt"), ("reason", "throttled")], throttled)
        sample("kmsfs_kms_retries_total", [("operation", "Decrypt"), ("reason", "other")], max(0, retries - throttled))

        family("kmsfs_kms_request_duration_seconds", "histogram", "Latency of successful KMS calls, retries included.")
        if let buckets = k?["latency_buckets"]?.arrayValue {
            for b in buckets {
                guard let pair = b.arrayValue, pair.count == 2, let le = pair[0].numberValue, let n = pair[1].numberValue else { continue }
                sample("kmsfs_kms_request_duration_seconds_bucket", [("operation", "Decrypt"), ("le", num(le))], n)
            }
            let count = k?["latency_count"]?.numberValue ?? 0
            sample("kmsfs_kms_request_duration_seconds_bucket", [("operation", "Decrypt"), ("le", "+Inf")], count)
            sample("kmsfs_kms_request_duration_seconds_sum", [("operation", "Decrypt")], k?["latency_sum_s"]?.numberValue ?? 0)
            sample("kmsfs_kms_request_duration_seconds_count", [("operation", "Decrypt")], count)
        }
        family("kmsfs_kms_last_success_timestamp_seconds", "gauge", "When a KMS call last succeeded (Unix time); absent before the first.")
        sample("kmsfs_kms_last_success_timestamp_seconds", [], k?["last_success"]?.numberValue)

        let entries = cache?["entries"]?.arrayValue ?? []
        family("kmsfs_cached_secrets", "gauge", "Plaintexts held in locked memory.")
        sample("kmsfs_cached_secrets", [], Double(entries.count))
        family("kmsfs_cached_bytes", "gauge", "Bytes of locked memory holding cached plaintexts (whole pages).")
        sample("kmsfs_cached_bytes", [], cache?["bytes"]?.numberValue)
        family("kmsfs_locked_memory_bytes", "gauge", "Bytes of locked (secure) buffers the daemon holds, plaintext and scratch.")
        sample("kmsfs_locked_memory_bytes", [], d["secure_bytes"]?.numberValue)
        family("kmsfs_watched_directories", "gauge", "Directories of SOURCE watched for changes.")
        sample("kmsfs_watched_directories", [], d["watched_directories"]?.numberValue)

        family("kmsfs_credentials_info", "gauge", "Always 1; where the AWS credentials in use came from.")
        // The kind only (`kmsfs status` names the source whole): a loopback
        // port is open to every local user, and the whole name carries role
        // names, profile names and account IDs that a host which firewalls
        // IMDS keeps from them.
        sample("kmsfs_credentials_info", [("source", cr?["kind"]?.stringValue ?? "unknown")], 1)
        family("kmsfs_credentials_expiry_timestamp_seconds", "gauge", "When the temporary AWS credentials in use expire (Unix time); absent for long-term keys.")
        sample("kmsfs_credentials_expiry_timestamp_seconds", [], cr?["expires_epoch"]?.numberValue)

        let rot = d["rotation"]
        family("kmsfs_rotations_total", "counter", "Ciphertexts written into SOURCE (rotations and new secrets) the watcher saw.")
        sample("kmsfs_rotations_total", [], rot?["changes"]?.numberValue ?? 0)
        family("kmsfs_rotation_decrypt_failures_total", "counter", "Changed ciphertexts that did not decrypt before telling anyone (nobody was told).")
        sample("kmsfs_rotation_decrypt_failures_total", [], rot?["decrypt_failures"]?.numberValue ?? 0)
        family("kmsfs_notifications_total", "counter", "Rotation notifications (reload=, on_change=) by outcome.")
        sample("kmsfs_notifications_total", [("outcome", "success")], rot?["notifications_ok"]?.numberValue ?? 0)
        sample("kmsfs_notifications_total", [("outcome", "error")], rot?["notifications_failed"]?.numberValue ?? 0)
        family("kmsfs_open_handles", "gauge", "Open handles of secrets.")
        sample("kmsfs_open_handles", [], d["handles"]?["open"]?.numberValue ?? 0)
        family("kmsfs_stale_handles", "gauge", "Open handles holding an older version of their secret than SOURCE holds (a rotation not yet complete).")
        sample("kmsfs_stale_handles", [], Double(d["handles"]?["stale"]?.arrayValue?.count ?? 0))

        if perSecret {
            family("kmsfs_secret_hits_total", "counter", "Opens served from memory, per cached secret.")
            for e in entries {
                guard let path = e["path"]?.stringValue else { continue }
                sample("kmsfs_secret_hits_total", [("path", path)], e["hits"]?.numberValue)
            }
            family("kmsfs_secret_age_seconds", "gauge", "Seconds since the cached plaintext was decrypted, per secret.")
            for e in entries {
                guard let path = e["path"]?.stringValue else { continue }
                sample("kmsfs_secret_age_seconds", [("path", path)], e["age_s"]?.numberValue)
            }
        }
        return out
    }

    /// A label value: `\`, `"` and newline escaped as the format says; other
    /// control bytes (a SOURCE name may hold any) become U+FFFD so no scrape
    /// line can be forged.
    static func escapeLabel(_ s: String) -> String {
        var out = ""
        for u in s.unicodeScalars {
            switch u {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default:
                if u.value < 0x20 || u.value == 0x7f { out.unicodeScalars.append("\u{FFFD}") } else { out.unicodeScalars.append(u) }
            }
        }
        return out
    }
}

/// Serves `GET /metrics` over HTTP/1.x on a loopback address or a Unix
/// socket, from one thread: request heads are gathered from every pending
/// connection at once, each must arrive whole within 2 s and 8 KiB, and
/// the answer is written with the connection closed after it (no
/// keep-alive to hold a slot).
public final class MetricsServer: @unchecked Sendable {
    public let address: MetricsAddress
    private let fd: Int32
    private let stopped = Atomic<Bool>(false)
    private var socketFile: BoundSocketFile? = nil

    /// Binds and listens (before the mount, so a taken port fails it).
    public init(address: MetricsAddress) throws(Errno) {
        self.address = address
        switch address {
        case .unix(let path):
            fd = try listenUnix(path, mode: 0o660, what: "metrics=unix:",   // root and the daemon's group
                                because: "a socket put in its place would serve false metrics")
            socketFile = BoundSocketFile(at: path)
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            hints.ai_flags = AI_NUMERICSERV
            var res: UnsafeMutablePointer<addrinfo>? = nil
            let name = host == "localhost" ? "127.0.0.1" : host
            guard getaddrinfo(name, String(port), &hints, &res) == 0, let ai = res else {
                throw Errno("metrics=\(address): cannot resolve \(host)", code: EINVAL)
            }
            defer { freeaddrinfo(res) }
            fd = try syscallRetrying("socket") { socket(ai.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            guard bind(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 else {
                let e = Errno.current; close(fd); throw Errno("metrics=\(address): bind", code: e)
            }
            guard listen(fd, 16) == 0 else { let e = Errno.current; close(fd); throw Errno("metrics=\(address): listen", code: e) }
        }
    }

    /// Connections whose request head is still arriving, at most: past it,
    /// the oldest is dropped.
    static let maxPending = 64
    /// Seconds a response may take to write in all.
    static let responseSeconds = 5.0

    /// Serves from its own thread; `render` makes each answer's body. Request
    /// heads are read from every pending connection at once, each within
    /// its own 2 s: idle connections (any local user may open them) cost a
    /// slot, never the others' time, so a scrape is answered as soon as its
    /// head is in.
    public func start(render: @escaping @Sendable () -> String) {
        let listener = fd
        _ = startThread(name: "kmsfs-metrics") { [self] in
            var pending: [(fd: Int32, head: [UInt8], deadline: Double)] = []
            defer { for p in pending { close(p.fd) } }
            var chunk = [UInt8](repeating: 0, count: 1024)
            while !stopped.load(ordering: .relaxed) {
                var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
                fds += pending.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
                let now = SystemClock.monotonic()
                let wait = pending.map { $0.deadline - now }.min().map { max(0, min($0, 0.5)) } ?? 0.5
                guard poll(&fds, nfds_t(fds.count), Int32(clampedMilliseconds(wait)) + 1) >= 0 else { continue }
                let t = SystemClock.monotonic()
                var still: [(fd: Int32, head: [UInt8], deadline: Double)] = []
                for (i, var p) in pending.enumerated() {
                    if fds[i + 1].revents != 0 {
                        let n = (try? FileDescriptor.read(p.fd, into: &chunk)) ?? -1
                        if n <= 0 { close(p.fd); continue }
                        p.head += chunk[0..<n]
                        if MetricsServer.containsBlankLine(p.head) {
                            answer(p.fd, head: p.head, render)
                            close(p.fd)
                            continue
                        }
                    }
                    if p.head.count >= 8192 || t >= p.deadline {
                        MetricsServer.respond(p.fd, status: "400 Bad Request", body: "bad request\n")
                        close(p.fd)
                        continue
                    }
                    still.append(p)
                }
                pending = still
                if fds[0].revents & Int16(POLLIN) != 0 {
                    let c = acceptCloseOnExec(listener)
                    if c < 0 { backOffAfterAcceptFailure() }
                    if c >= 0 {
                        var tv = timeval(tv_sec: 2, tv_usec: 0)
                        setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                        if pending.count >= MetricsServer.maxPending { close(pending.removeFirst().fd) }
                        pending.append((c, [], SystemClock.monotonic() + 2))
                    }
                }
            }
        }
    }

    private func answer(_ c: Int32, head: [UInt8], _ render: () -> String) {
        if case .tcp = address, !MetricsServer.hostAllowed(head) {
            // A page in a local browser reaching 127.0.0.1 through DNS
            // rebinding names another host: not ours to answer.
            MetricsServer.respond(c, status: "403 Forbidden", body: "kmsfs answers Host: localhost or a loopback address only\n")
            return
        }
        switch MetricsServer.route(head) {
        case .metrics(let headOnly):
            let body = render()
            MetricsServer.respond(c, status: "200 OK", contentType: PrometheusText.contentType, body: body, headOnly: headOnly)
        case .notFound:
            MetricsServer.respond(c, status: "404 Not Found", body: "kmsfs serves /metrics only\n")
        case .badMethod:
            MetricsServer.respond(c, status: "405 Method Not Allowed", body: "GET /metrics\n", extra: "Allow: GET, HEAD\r\n")
        case .bad:
            MetricsServer.respond(c, status: "400 Bad Request", body: "bad request\n")
        }
    }

    public enum Route: Equatable, Sendable { case metrics(headOnly: Bool), notFound, badMethod, bad }

    /// No Host header, or one naming localhost or a loopback address (with
    /// or without a port).
    public static func hostAllowed(_ head: [UInt8]) -> Bool {
        // Split on bytes: "\r\n" is one Character to Swift.
        for raw in head.split(separator: UInt8(ascii: "\n")).dropFirst() {
            let line = raw.last == UInt8(ascii: "\r") ? raw.dropLast() : raw
            // The colon on bytes too: ":" and a combining mark after it are
            // one Character, and a Host line whose colon a Character search
            // missed would read as no Host line at all.
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")),
                  String(decoding: line[..<colon], as: UTF8.self).lowercased() == "host" else { continue }
            let l = String(decoding: line[(colon + 1)...], as: UTF8.self)
            var value = String(l.drop { $0 == " " || $0 == "\t" }).lowercased()
            while value.last == " " || value.last == "\t" { value.removeLast() }
            if value.hasPrefix("[") {                         // [::1]:9100
                guard let end = value.firstIndex(of: "]") else { return false }
                value = String(value[value.index(after: value.startIndex)..<end])
            } else if let c = value.lastIndex(of: ":"), value.firstIndex(of: ":") == c {
                value = String(value[..<c])                   // 127.0.0.1:9100, localhost:9100
            }
            return MetricsAddress.isLoopback(value)
        }
        return true
    }

    /// The request line decides: `GET /metrics` (a query string is
    /// ignored), `HEAD /metrics`, anything else refused.
    public static func route(_ head: [UInt8]) -> Route {
        let lineEnd = head.firstIndex(of: UInt8(ascii: "\r")) ?? head.firstIndex(of: UInt8(ascii: "\n")) ?? head.endIndex
        let parts = head[..<lineEnd].split(separator: UInt8(ascii: " "), omittingEmptySubsequences: true)
        guard parts.count == 3, parts[2].starts(with: Array("HTTP/1.".utf8)) else { return .bad }
        let method = String(decoding: parts[0], as: UTF8.self)
        var target = Array(parts[1])
        if let q = target.firstIndex(of: UInt8(ascii: "?")) { target.removeSubrange(q...) }
        guard method == "GET" || method == "HEAD" else { return .badMethod }
        guard target == Array("/metrics".utf8) || target == Array("/metrics/".utf8) else { return .notFound }
        return .metrics(headOnly: method == "HEAD")
    }

    static func containsBlankLine(_ b: [UInt8]) -> Bool {
        guard b.count >= 2 else { return false }
        for i in 1..<b.count where b[i] == 10 {
            if b[i - 1] == 10 { return true }
            if i >= 3 && b[i - 1] == 13 && b[i - 2] == 10 && b[i - 3] == 13 { return true }
        }
        return false
    }

    static func respond(_ c: Int32, status: String, contentType: String = "text/plain; charset=utf-8",
                        body: String, headOnly: Bool = false, extra: String = "") {
        let header = "HTTP/1.1 \(status)\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.utf8.count)\r\n\(extra)Connection: close\r\n\r\n"
        // One thread answers every scrape: a peer that reads a few bytes at
        // a time gets `responseSeconds` in all, not 2 s per write forever.
        _ = FileDescriptor.writeAll(c, Array((headOnly ? header : header + body).utf8), within: responseSeconds)
    }

    public func stop() {
        stopped.store(true, ordering: .relaxed)
        socketFile?.unlinkIfStillOurs()
    }

    deinit { close(fd) }
}

/// The daemon's metrics server, present from the start or once its
/// address came free (`retry`).
final class MetricsSlot: @unchecked Sendable {
    static let retryInterval = 5.0
    private let lock = ConditionLock()
    private var current: MetricsServer?
    private var stopped = false

    var server: MetricsServer? {
        get { lock.withLock { current } }
        set { lock.withLock { current = newValue } }
    }

    /// Tries `address` every `retryInterval` seconds from a thread of its
    /// own, and serves from it once bound.
    func retry(_ address: MetricsAddress, render: @escaping @Sendable () -> String) {
        _ = startThread(name: "kmsfs-metrics-bind") { [self] in
            while true {
                let done: Bool = lock.withLock {
                    if !stopped { lock.wait(seconds: MetricsSlot.retryInterval) }
                    return stopped
                }
                if done { return }
                guard let s = try? MetricsServer(address: address) else { continue }
                let keep = lock.withLock { () -> Bool in
                    guard !stopped else { return false }
                    current = s
                    return true
                }
                guard keep else { s.stop(); return }
                s.start(render: render)
                Log.notice("metrics: \(address) is free now; serving /metrics on it")
                return
            }
        }
    }

    func stop() {
        let s: MetricsServer? = lock.withLock { stopped = true; lock.broadcast(); return current }
        s?.stop()
    }
}
