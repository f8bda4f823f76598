import SecureMemory

/// AWS Signature Version 4, header form, in the stages the specification
/// names: canonical request -> string to sign -> signing key -> signature.
/// The date is an input, never read from a clock here, so the stages are
/// tested against the AWS conformance vectors.
/// https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html
public struct SigV4Signer: Sendable {
    public var region: String
    public var service: String

    public init(region: String, service: String) {
        self.region = region
        self.service = service
    }

    /// A request to sign. `path` and `query` are as they appear on the
    /// request line (path raw or percent-encoded; query without the `?`).
    public struct Request: Sendable {
        public var method: String
        public var path: String
        public var query: String
        public var headers: [(name: String, value: String)]
        public var payloadHash: String

        public init(method: String, path: String, query: String = "",
                    headers: [(name: String, value: String)], payloadHash: String) {
            self.method = method
            self.path = path
            self.query = query
            self.headers = headers
            self.payloadHash = payloadHash
        }
    }

    public struct Options: Sendable {
        /// Remove `.`/`..` segments and duplicate slashes (every service but S3).
        public var normalizePath = true
        /// Add `x-amz-content-sha256` (S3, and the vectors' `sign_body`).
        public var addContentSHA256Header = false
        /// Add the session token after signing, unsigned (a few services).
        public var omitSessionTokenFromSignature = false
        public init() {}
    }

    /// The header that carries the session token.
    public static let securityTokenHeader = "X-Amz-Security-Token"

    /// The headers to add to the request: `X-Amz-Date`, optionally
    /// `x-amz-content-sha256`, and `Authorization`. The session token is
    /// not among them: it stays in secure memory, is hashed into the
    /// canonical request from there, and the caller sends it from there as
    /// `X-Amz-Security-Token` (`HTTPRequest.secureHeaders`, see
    /// `secureHeaders(for:)`). The signing key is derived in secure memory
    /// too: no `"AWS4" + secret` string exists.
    public func sign(_ request: Request, credentials: AWSCredentials, date: Timestamp,
                     options: Options = Options()) -> [(name: String, value: String)] {
        var added: [(name: String, value: String)] = [("X-Amz-Date", date.amzDate)]
        var toSign = request
        toSign.headers.append(("X-Amz-Date", date.amzDate))
        var secure: [(String, SecureBuffer)] = []
        if let token = credentials.token, !options.omitSessionTokenFromSignature,
           !request.headers.contains(where: { $0.name.lowercased() == "x-amz-security-token" }) {
            secure.append(("x-amz-security-token", token))
        }
        if options.addContentSHA256Header {
            toSign.headers.append(("x-amz-content-sha256", request.payloadHash))
            added.append(("x-amz-content-sha256", request.payloadHash))
        }
        let (hash, signed) = canonicalRequestHash(toSign, secureHeaders: secure, normalizePath: options.normalizePath)
        let sts = "AWS4-HMAC-SHA256\n\(date.amzDate)\n\(credentialScope(date: date))\n" + hash
        let signature = credentials.secret.withUnsafeBytes { self.signature(stringToSign: sts, secretAccessKey: $0, date: date) }
        let scope = credentialScope(date: date)
        added.append(("Authorization",
                      "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyId)/\(scope), SignedHeaders=\(signed), Signature=\(signature)"))
        return added
    }

    /// The headers to send from secure memory with a request signed for
    /// `credentials`: the session token, if any.
    public static func secureHeaders(for credentials: AWSCredentials) -> [(name: String, value: SecureBuffer)] {
        guard let token = credentials.token else { return [] }
        return [(securityTokenHeader, token)]
    }

    /// Stage 1 as a hash: the canonical request streamed through SHA-256,
    /// values of `secureHeaders` (lower-case names, distinct from the
    /// request's) read in place from secure memory.
    func canonicalRequestHash(_ r: Request, secureHeaders: [(String, SecureBuffer)],
                              normalizePath: Bool) -> (String, String) {
        var grouped: [String: [String]] = [:]
        for (name, value) in r.headers {
            grouped[name.lowercased(), default: []].append(SigV4Signer.trimHeaderValue(value))
        }
        var secureByName: [String: SecureBuffer] = [:]
        for (n, v) in secureHeaders { secureByName[n] = v }
        let names = (Array(grouped.keys) + secureByName.keys.filter { grouped[$0] == nil }).sorted()
        let signed = names.joined(separator: ";")
        let h = Digest.SHA256Stream()
        h.update(r.method.uppercased() + "\n" + SigV4Signer.canonicalURI(r.path, normalize: normalizePath) + "\n"
                 + SigV4Signer.canonicalQuery(r.query) + "\n")
        for n in names {
            h.update(n + ":")
            if let values = grouped[n] {
                h.update(values.joined(separator: ","))
            } else if let v = secureByName[n] {
                v.withUnsafeBytes { h.update(SigV4Signer.trimmed($0)) }
            }
            h.update("\n")
        }
        h.update("\n" + signed + "\n" + r.payloadHash)
        return (Digest.hex(h.finish()), signed)
    }

    /// Leading and trailing blanks dropped (a secret value is one token:
    /// no inner runs to fold).
    static func trimmed(_ b: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        func blank(_ c: UInt8) -> Bool { c == 32 || c == 9 || c == 10 || c == 13 }
        var lo = 0, hi = b.count
        while lo < hi, blank(b[lo]) { lo += 1 }
        while hi > lo, blank(b[hi - 1]) { hi -= 1 }
        return UnsafeRawBufferPointer(rebasing: b[lo..<hi])
    }

    public func credentialScope(date: Timestamp) -> String {
        "\(date.amzDay)/\(region)/\(service)/aws4_request"
    }

    /// Stage 1: the canonical request, and the signed-headers list.
    public func canonicalRequest(_ r: Request, normalizePath: Bool) -> (String, String) {
        var grouped: [String: [String]] = [:]
        for (name, value) in r.headers {
            grouped[name.lowercased(), default: []].append(SigV4Signer.trimHeaderValue(value))
        }
        let names = grouped.keys.sorted()
        var canonicalHeaders = ""
        for n in names { canonicalHeaders += n + ":" + grouped[n]!.joined(separator: ",") + "\n" }
        let signed = names.joined(separator: ";")
        let creq = [
            r.method.uppercased(),
            SigV4Signer.canonicalURI(r.path, normalize: normalizePath),
            SigV4Signer.canonicalQuery(r.query),
            canonicalHeaders,
            signed,
            r.payloadHash,
        ].joined(separator: "\n")
        return (creq, signed)
    }

    /// Stage 2.
    public func stringToSign(canonicalRequest: String, date: Timestamp) -> String {
        "AWS4-HMAC-SHA256\n\(date.amzDate)\n\(credentialScope(date: date))\n"
            + Digest.hex(Digest.sha256(Array(canonicalRequest.utf8)))
    }

    /// Stages 3 and 4 for a secret given as a string (the conformance
    /// vectors): copied into secure memory first.
    public func signature(stringToSign: String, secretAccessKey: String, date: Timestamp) -> String {
        var s = secretAccessKey
        return s.withUTF8 { signature(stringToSign: stringToSign, secretAccessKey: UnsafeRawBufferPointer($0), date: date) }
    }

    /// Stages 3 and 4: derive the signing key and sign, every key of the
    /// chain (`"AWS4" + secret`, kDate, kRegion, kService, kSigning) in one
    /// locked buffer wiped on return.
    public func signature(stringToSign: String, secretAccessKey: UnsafeRawBufferPointer, date: Timestamp) -> String {
        let n = 4 + secretAccessKey.count
        let scratch: SecureBuffer
        do {
            scratch = try SecureBuffer(capacity: n + 5 * 32, backing: .lockedAnonymous)
        } catch {
            // No secure memory left: an unusable signature (the service
            // refuses it), not a copy of the secret in ordinary memory.
            return String(repeating: "0", count: 64)
        }
        defer { scratch.wipeContents() }
        return scratch.withUnsafeMutableCapacity { m -> String in
            let base = m.baseAddress!
            base.copyMemory(from: Array("AWS4".utf8), byteCount: 4)
            if let src = secretAccessKey.baseAddress, secretAccessKey.count > 0 {
                (base + 4).copyMemory(from: src, byteCount: secretAccessKey.count)
            }
            func key(_ i: Int) -> UnsafeRawBufferPointer {
                i == 0 ? UnsafeRawBufferPointer(start: base, count: n) : UnsafeRawBufferPointer(start: base + n + (i - 1) * 32, count: 32)
            }
            for (i, text) in [date.amzDay, region, service, "aws4_request", stringToSign].enumerated() {
                var t = text
                t.withUTF8 { Digest.hmacSHA256(key: key(i), data: UnsafeRawBufferPointer($0), into: base + n + i * 32) }
            }
            return Digest.hex(Array(UnsafeRawBufferPointer(start: base + n + 4 * 32, count: 32)))
        }
    }

    // MARK: Canonical forms

    /// Trims a header value and folds runs of whitespace to one space.
    static func trimHeaderValue(_ v: String) -> String {
        var out = [UInt8]()
        var pendingSpace = false
        for c in v.utf8 {
            if c == 32 || c == 9 || c == 10 || c == 13 {
                pendingSpace = !out.isEmpty
            } else {
                if pendingSpace { out.append(32); pendingSpace = false }
                out.append(c)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// RFC 3986 unreserved characters pass; every other byte is `%XX`.
    public static func uriEncode(_ s: String, encodeSlash: Bool = true) -> String {
        var out = [UInt8]()
        out.reserveCapacity(s.utf8.count)
        uriEncode(s.utf8, encodeSlash: encodeSlash) { out.append($0) }
        return String(decoding: out, as: UTF8.self)
    }

    /// RFC 3986 percent-encoding, byte by byte (at most three out per byte
    /// in): unreserved characters kept, everything else `%XX` in capitals.
    @inline(__always)
    static func uriEncode<S: Sequence<UInt8>>(_ bytes: S, encodeSlash: Bool = true, _ emit: (UInt8) -> Void) {
        func hex(_ v: UInt8) -> UInt8 { v < 10 ? 48 + v : 55 + v }
        for c in bytes {
            let unreserved = (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || (c >= 48 && c <= 57)
                || c == 45 || c == 46 || c == 95 || c == 126
            if unreserved || (!encodeSlash && c == 47) {
                emit(c)
            } else {
                emit(37); emit(hex(c >> 4)); emit(hex(c & 15))
            }
        }
    }

    static func percentDecode(_ s: String) -> String {
        var out = [UInt8]()
        let b = Array(s.utf8)
        var i = 0
        func val(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 65...70: return c - 55
            case 97...102: return c - 87
            default: return nil
            }
        }
        while i < b.count {
            if b[i] == 37, i + 2 < b.count, let h = val(b[i + 1]), let l = val(b[i + 2]) {
                out.append(h << 4 | l); i += 3
            } else {
                out.append(b[i]); i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func canonicalURI(_ path: String, normalize: Bool) -> String {
        var p = path.isEmpty ? "/" : path
        if normalize {
            var stack: [Substring] = []
            for seg in p.split(separator: "/", omittingEmptySubsequences: true) {
                if seg == "." { continue }
                if seg == ".." { if !stack.isEmpty { stack.removeLast() }; continue }
                stack.append(seg)
            }
            var n = "/" + stack.joined(separator: "/")
            if p.hasSuffix("/") && n != "/" { n += "/" }
            p = n
        }
        return uriEncode(p, encodeSlash: false)
    }

    static func canonicalQuery(_ query: String) -> String {
        guard !query.isEmpty else { return "" }
        var pairs: [(String, String)] = []
        for part in query.split(separator: "&", omittingEmptySubsequences: true) {
            let kv = part.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let k = uriEncode(percentDecode(String(kv[0])))
            let v = kv.count > 1 ? uriEncode(percentDecode(String(kv[1]))) : ""
            pairs.append((k, v))
        }
        pairs.sort { a, b in a.0 == b.0 ? a.1.utf8.lexicographicallyPrecedes(b.1.utf8) : a.0.utf8.lexicographicallyPrecedes(b.0.utf8) }
        return pairs.map { $0.0 + "=" + $0.1 }.joined(separator: "&")
    }
}
