import System
import CCurl
import CCrypto
import SecureMemory
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// `HTTPTransport` on libcurl. Easy handles are pooled so connections (and
/// TLS sessions) are reused across calls. The response body goes straight
/// from curl's receive buffer into secure memory, and curl's buffer is wiped
/// once copied; on TLS connections OpenSSL cleanses decrypted records
/// (`SSL_OP_CLEANSE_PLAINTEXT`). Certificate verification is always on.
public final class CurlTransport: HTTPTransport, @unchecked Sendable {
    public struct Options: Sendable {
        /// Seconds to establish a connection (TCP and TLS).
        public var connectTimeout: Double = 2.0
        /// Seconds for a whole request, connection included.
        public var timeout: Double = 10.0
        /// PEM file of trusted CAs (`AWS_CA_BUNDLE`); nil for the system store.
        public var caBundle: String?
        /// Largest response body accepted.
        public var maxBodyBytes: Int = 1 << 20
        /// Idle handles kept for reuse.
        public var maxPooledHandles: Int = 16
        public init() {}
    }

    public let options: Options
    private let pool = Mutex<[EasyHandle]>([])

    public init(options: Options = Options()) {
        CurlTransport.globalInit
        self.options = options
    }

    /// Hosts reached without a proxy whatever `http_proxy`, `HTTPS_PROXY` or
    /// `ALL_PROXY` say: loopback and link-local, where the instance and
    /// container credential endpoints live and where plain http is
    /// accepted as local. Through a proxy their requests (a container
    /// authorization token, a signed Decrypt and its plaintext answer)
    /// would cross the network in the clear, and IMDS would answer with
    /// the proxy host's role. What `no_proxy`/`NO_PROXY` list is kept.
    static let noProxy: String = {
        let local = "localhost,127.0.0.0/8,::1,169.254.0.0/16,fd00:ec2::/32"
        let given = (getenv("no_proxy") ?? getenv("NO_PROXY")).map { String(cString: $0) } ?? ""
        let trimmed = given.trimmingCharacters(in: " \t,")
        if trimmed == "*" { return "*" }
        return trimmed.isEmpty ? local : trimmed + "," + local
    }()

    private static let globalInit: Void = {
        // curl's blocks are wiped when freed (its copies of the session
        // token's header); see kmsfs_curl_global_init_wiping.
        _ = kmsfs_curl_global_init_wiping(Int(CURL_GLOBAL_DEFAULT))
    }()

    public func send(_ request: HTTPRequest) throws(TransportError) -> HTTPResponse {
        let handle: EasyHandle
        if let h = pool.withLock({ $0.popLast() }) {
            handle = h
        } else {
            guard let h = EasyHandle() else { throw TransportError(.other, "curl_easy_init failed") }
            handle = h
        }
        var healthy = false
        defer {
            if healthy {
                handle.lastUsed = SystemClock.monotonic()
                pool.withLock { p in if p.count < options.maxPooledHandles { p.append(handle) } }
            }
        }
        let first = handle.performed == false
        handle.performed = true
        defer {
            // curl 7.88 creates its wakeup socketpair on a handle's first
            // transfer, without close-on-exec and with no option to ask for
            // it: mark it (and anything else left so) right after. A spawn
            // in between is covered too: credential_process closes every
            // descriptor from 3 up in the child.
            if first { CurlTransport.markDescriptorsCloseOnExec() }
        }
        let result = try handle.perform(request, options: options)
        healthy = true
        return result
    }

    /// Sets `FD_CLOEXEC` on every descriptor from 3 up that lacks it.
    /// Returns how many it changed.
    @discardableResult
    static func markDescriptorsCloseOnExec() -> Int {
        guard let dir = opendir("/proc/self/fd") else { return 0 }
        defer { closedir(dir) }
        let own = dirfd(dir)
        var changed = 0
        while let e = readdir(dir) {
            let name = String(decoding: DirectoryEntry.name(e), as: UTF8.self)
            guard let fd = Int32(name), fd >= 3, fd != own else { continue }
            let flags = fcntl(fd, F_GETFD)
            if flags >= 0 && flags & FD_CLOEXEC == 0 && fcntl(fd, F_SETFD, flags | FD_CLOEXEC) == 0 { changed += 1 }
        }
        return changed
    }

    /// Closes pooled connections unused for `seconds` (and their handles'
    /// descriptors), so an idle daemon holds none. Returns how many.
    @discardableResult
    public func trimIdle(olderThan seconds: Double) -> Int {
        let now = SystemClock.monotonic()
        let stale: [EasyHandle] = pool.withLock { p in
            let old = p.filter { now - $0.lastUsed >= seconds }
            p.removeAll { now - $0.lastUsed >= seconds }
            return old
        }
        return stale.count   // freed (curl_easy_cleanup) as they go out of scope here
    }
}

/// Per-transfer state reached from curl's callbacks.
private final class TransferContext {
    var accumulator: SecureAccumulator?
    var headers: [(name: String, value: String)] = []
    var status = 0
    var contentLength: Int?
    let limit: Int
    var failure: TransportError?

    init(limit: Int) { self.limit = limit }
}

private let writeCallback: kmsfs_curl_write_fn = { ptr, size, nmemb, userdata in
    let (n, overflow) = size.multipliedReportingOverflow(by: nmemb)
    guard !overflow else { return 0 }
    guard let userdata, let ptr else { return 0 }
    let ctx = Unmanaged<TransferContext>.fromOpaque(userdata).takeUnretainedValue()
    defer { secureWipe(ptr, n) }   // curl's receive buffer held these bytes
    do {
        if ctx.accumulator == nil {
            let hint = min(max(ctx.contentLength ?? 4096, n), ctx.limit)
            // Locked, undumpable and wiped, but not memfd_secret: the body
            // lives only until it is decoded, and secret pages cost a change
            // to the kernel's direct map (a TLB flush on every CPU) each.
            ctx.accumulator = try SecureAccumulator(initialCapacity: hint, limit: ctx.limit, backing: .lockedAnonymous)
        }
        try ctx.accumulator!.append(UnsafeRawBufferPointer(start: ptr, count: n))
        return n
    } catch let error as SecureMemoryError {
        if case .capacityExceeded(_, let limit) = error {
            ctx.failure = TransportError(.tooLarge, "response body larger than \(limit) bytes")
        } else {
            ctx.failure = TransportError(.other, "\(error)")
        }
        return 0   // makes curl abort with CURLE_WRITE_ERROR
    } catch {
        ctx.failure = TransportError(.other, "\(error)")
        return 0
    }
}

private let headerCallback: kmsfs_curl_write_fn = { ptr, size, nmemb, userdata in
    let (n, overflow) = size.multipliedReportingOverflow(by: nmemb)
    guard !overflow else { return 0 }
    guard let userdata, let ptr else { return n }
    let ctx = Unmanaged<TransferContext>.fromOpaque(userdata).takeUnretainedValue()
    switch ResponseHeaderLine(UnsafeRawBufferPointer(start: ptr, count: n)) {
    case .status(let status):
        // A new status line (after 100 Continue, or a redirect) starts over.
        ctx.headers.removeAll()
        ctx.contentLength = nil
        if let status { ctx.status = status }
    case .field(let name, let value):
        ctx.headers.append((name, value))
        if name.lowercased() == "content-length", let v = Int(value) { ctx.contentLength = v }
    case .other:
        break
    }
    return n
}

/// One line of an HTTP response's head as curl hands it over (the server's
/// bytes: hostile input, under the `kmsresponse` fuzz target).
public enum ResponseHeaderLine: Equatable, Sendable {
    /// `HTTP/...`: the status code, if the line has one.
    case status(Int?)
    /// `Name: value`, both trimmed of blanks.
    case field(name: String, value: String)
    /// The blank line that ends the head, or a line with no colon.
    case other

    public init<Bytes: Collection<UInt8>>(_ bytes: Bytes) {
        // Cut on bytes: ":" or " " and a combining mark after it are one
        // Character, which a Character search passes over.
        let line = Self.trimmed(Array(bytes)[...])
        if line.starts(with: "HTTP/".utf8) {
            let parts = line.split(separator: UInt8(ascii: " "), maxSplits: 2)
            self = .status(parts.count >= 2 ? Int(String(decoding: parts[1], as: UTF8.self)) : nil)
        } else if let colon = line.firstIndex(of: UInt8(ascii: ":")) {
            self = .field(name: String(decoding: Self.trimmed(line[..<colon]), as: UTF8.self),
                          value: String(decoding: Self.trimmed(line[(colon + 1)...]), as: UTF8.self))
        } else {
            self = .other
        }
    }

    private static func trimmed(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        func blank(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0D || b == 0x0A }
        var s = bytes
        while let f = s.first, blank(f) { s.removeFirst() }
        while let l = s.last, blank(l) { s.removeLast() }
        return s
    }
}

private let sslContextCallback: kmsfs_curl_ssl_ctx_fn = { _, sslctx, _ in
    if let sslctx { kmsfs_ssl_ctx_cleanse_plaintext(sslctx) }
    return CURLE_OK
}

extension String {
    /// Without the scalars of `set` at either end. On scalars: dropping a
    /// Character whose first scalar is a blank took a combining mark (or a
    /// prepended mark's base) with it.
    func trimmingCharacters(in set: String) -> String {
        let chars = Set(set.unicodeScalars)
        var s = unicodeScalars[...]
        while let f = s.first, chars.contains(f) { s = s.dropFirst() }
        while let l = s.last, chars.contains(l) { s = s.dropLast() }
        return String(String.UnicodeScalarView(s))
    }
}

/// One curl easy handle; freed in deinit. Not shared between threads: the
/// transport hands each to one request at a time.
private final class EasyHandle: @unchecked Sendable {
    let curl: UnsafeMutableRawPointer
    var lastUsed: Double = 0
    var performed = false
    var errorBuffer = [CChar](repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)

    init?() {
        guard let c = curl_easy_init() else { return nil }
        curl = c
    }

    deinit { curl_easy_cleanup(curl) }

    func perform(_ request: HTTPRequest, options: CurlTransport.Options) throws(TransportError) -> HTTPResponse {
        curl_easy_reset(curl)
        let ctx = TransferContext(limit: options.maxBodyBytes)
        let ctxPtr = Unmanaged.passRetained(ctx)
        defer { ctxPtr.release() }

        var headerList: UnsafeMutablePointer<curl_slist>? = nil
        defer {
            kmsfs_curl_slist_wipe(headerList)
            curl_slist_free_all(headerList)
        }
        // curl sends a header line as given: a CR or LF from a hostile
        // credential source (an access key ID, a token file) would add
        // headers, so no control character but a tab is sent.
        func isControl(_ c: UInt8) -> Bool { c < 0x20 && c != 9 || c == 0x7F }
        for (name, value) in request.headers {
            guard !(name + value).utf8.contains(where: isControl) else {
                throw TransportError(.other, "the \(name) header holds a control character; not sent")
            }
            headerList = curl_slist_append(headerList, "\(name): \(value)")
        }
        for (name, value) in request.secureHeaders {
            // "name: value" assembled in locked memory; curl copies it into
            // a block its (wiping) allocator owns.
            guard !name.utf8.contains(where: isControl), !value.withUnsafeBytes({ $0.contains(where: isControl) }) else {
                throw TransportError(.other, "the \(name) header holds a control character; not sent")
            }
            do {
                let line = try SecureBuffer(capacity: name.utf8.count + 2 + value.count + 1, backing: .lockedAnonymous)
                try line.append(utf8: name + ": ")
                try value.withUnsafeBytes { (v: UnsafeRawBufferPointer) throws(SecureMemoryError) in try line.append(v) }
                try line.append(utf8: "\0")
                headerList = line.withUnsafeBytes { curl_slist_append(headerList, $0.baseAddress!.assumingMemoryBound(to: CChar.self)) }
                line.wipeContents()
            } catch {
                throw TransportError(.other, "cannot assemble the \(name) header in secure memory: \(error)")
            }
        }
        // No "Expect: 100-continue" round trip; no Accept-Encoding games.
        headerList = curl_slist_append(headerList, "Expect:")

        let url = request.url.description
        let connectTimeout = request.connectTimeout ?? options.connectTimeout
        let timeout = request.timeout ?? options.timeout

        let rc: CURLcode = errorBuffer.withUnsafeMutableBufferPointer { errbuf in
            errbuf[0] = 0
            _ = kmsfs_curl_set_pointer(curl, CURLOPT_ERRORBUFFER, errbuf.baseAddress)
            _ = kmsfs_curl_set_string(curl, CURLOPT_URL, url)
            _ = kmsfs_curl_set_string(curl, CURLOPT_PROTOCOLS_STR, "http,https")
            _ = kmsfs_curl_set_long(curl, CURLOPT_NOSIGNAL, 1)
            _ = kmsfs_curl_use_cloexec_sockets(curl)
            _ = kmsfs_curl_set_long(curl, CURLOPT_FOLLOWLOCATION, 0)
            _ = kmsfs_curl_set_string(curl, CURLOPT_NOPROXY, CurlTransport.noProxy)
            _ = kmsfs_curl_set_long(curl, CURLOPT_TCP_NODELAY, 1)
            _ = kmsfs_curl_set_long(curl, CURLOPT_TCP_KEEPALIVE, 1)
            _ = kmsfs_curl_set_long(curl, CURLOPT_HTTP_VERSION, Int(CURL_HTTP_VERSION_1_1))
            _ = kmsfs_curl_set_long(curl, CURLOPT_CONNECTTIMEOUT_MS, max(1, clampedMilliseconds(connectTimeout)))
            _ = kmsfs_curl_set_long(curl, CURLOPT_TIMEOUT_MS, max(1, clampedMilliseconds(timeout)))
            _ = kmsfs_curl_set_long(curl, CURLOPT_SSL_VERIFYPEER, 1)
            _ = kmsfs_curl_set_long(curl, CURLOPT_SSL_VERIFYHOST, 2)
            if let ca = options.caBundle {
                // The bundle's CAs only, as botocore: libcurl would also
                // look up its built-in directory (/etc/ssl/certs).
                _ = kmsfs_curl_set_string(curl, CURLOPT_CAINFO, ca)
                _ = kmsfs_curl_set_pointer(curl, CURLOPT_CAPATH, nil)
            }
            // No proxy for a loopback address, however it is written
            // (curl's no-proxy list does not match [::ffff:127.0.0.1]).
            if request.url.isLoopback { _ = kmsfs_curl_set_string(curl, CURLOPT_NOPROXY, "*") }
            _ = kmsfs_curl_set_ssl_ctx_fn(curl, sslContextCallback)
            _ = kmsfs_curl_set_write_fn(curl, writeCallback)
            _ = kmsfs_curl_set_pointer(curl, CURLOPT_WRITEDATA, ctxPtr.toOpaque())
            _ = kmsfs_curl_set_header_fn(curl, headerCallback)
            _ = kmsfs_curl_set_pointer(curl, CURLOPT_HEADERDATA, ctxPtr.toOpaque())
            _ = kmsfs_curl_set_slist(curl, CURLOPT_HTTPHEADER, headerList)

            return request.body.withUnsafeBytes { body -> CURLcode in
                switch request.method {
                case "GET":
                    _ = kmsfs_curl_set_long(curl, CURLOPT_HTTPGET, 1)
                case "POST":
                    _ = kmsfs_curl_set_long(curl, CURLOPT_POST, 1)
                default:
                    _ = kmsfs_curl_set_string(curl, CURLOPT_CUSTOMREQUEST, request.method)
                }
                if request.method != "GET" {
                    // curl reads the body in place (no copy): POSTFIELDS with an
                    // explicit size, valid until perform returns.
                    _ = kmsfs_curl_set_off_t(curl, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(body.count))
                    _ = kmsfs_curl_set_pointer(curl, CURLOPT_POSTFIELDS,
                                               UnsafeMutableRawPointer(mutating: body.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!))
                }
                return curl_easy_perform(curl)
            }
        }
        // Detach our pointers from the handle before it goes back to the pool.
        _ = kmsfs_curl_set_pointer(curl, CURLOPT_POSTFIELDS, nil)
        _ = kmsfs_curl_set_pointer(curl, CURLOPT_ERRORBUFFER, nil)

        if rc != CURLE_OK {
            if let f = ctx.failure { throw f }
            let detail = errorBuffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            let text = detail.isEmpty ? String(cString: curl_easy_strerror(rc)) : detail
            throw TransportError(EasyHandle.kind(of: rc), "\(request.url.hostHeader): \(text)")
        }
        let body: SecureBuffer
        if let acc = ctx.accumulator {
            body = acc.buffer
        } else {
            do { body = try SecureBuffer(capacity: 1) } catch { throw TransportError(.other, "\(error)") }
        }
        var status = 0
        var code: Int = 0
        if kmsfs_curl_get_long(curl, CURLINFO_RESPONSE_CODE, &code) == CURLE_OK { status = code }
        return HTTPResponse(status: status != 0 ? status : ctx.status, headers: ctx.headers, body: body)
    }

    static func kind(of rc: CURLcode) -> TransportErrorKind {
        switch rc {
        case CURLE_COULDNT_CONNECT, CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY:
            return .connect
        case CURLE_OPERATION_TIMEDOUT:
            return .timeout
        case CURLE_SSL_CONNECT_ERROR, CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CERTPROBLEM,
             CURLE_SSL_CIPHER, CURLE_SSL_CACERT_BADFILE, CURLE_SSL_ISSUER_ERROR, CURLE_SSL_PINNEDPUBKEYNOTMATCH:
            return .tls
        case CURLE_RECV_ERROR, CURLE_SEND_ERROR, CURLE_GOT_NOTHING, CURLE_PARTIAL_FILE, CURLE_HTTP2, CURLE_HTTP2_STREAM:
            return .io
        default:
            return .other
        }
    }
}
