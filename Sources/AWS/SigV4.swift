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

    /// The headers to add to the request: `X-Amz-Date`, optionally
    /// `X-Amz-Security-Token` and `x-amz-content-sha256`, and `Authorization`.
    public func sign(_ request: Request, credentials: AWSCredentials, date: Timestamp,
                     options: Options = Options()) -> [(name: String, value: String)] {
        var added: [(name: String, value: String)] = [("X-Amz-Date", date.amzDate)]
        var toSign = request
        toSign.headers.append(("X-Amz-Date", date.amzDate))
        if let token = credentials.sessionToken, !options.omitSessionTokenFromSignature,
           !request.headers.contains(where: { $0.name.lowercased() == "x-amz-security-token" }) {
            toSign.headers.append(("X-Amz-Security-Token", token))
            added.append(("X-Amz-Security-Token", token))
        }
        if options.addContentSHA256Header {
            toSign.headers.append(("x-amz-content-sha256", request.payloadHash))
            added.append(("x-amz-content-sha256", request.payloadHash))
        }
        let (creq, signed) = canonicalRequest(toSign, normalizePath: options.normalizePath)
        let sts = stringToSign(canonicalRequest: creq, date: date)
        let signature = self.signature(stringToSign: sts, secretAccessKey: credentials.secretAccessKey, date: date)
        let scope = credentialScope(date: date)
        added.append(("Authorization",
                      "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyId)/\(scope), SignedHeaders=\(signed), Signature=\(signature)"))
        if let token = credentials.sessionToken, options.omitSessionTokenFromSignature {
            added.append(("X-Amz-Security-Token", token))
        }
        return added
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

    /// Stages 3 and 4: derive the signing key and sign.
    public func signature(stringToSign: String, secretAccessKey: String, date: Timestamp) -> String {
        var kSecret = Array(("AWS4" + secretAccessKey).utf8)
        var kDate = Digest.hmacSHA256(key: kSecret, date.amzDay)
        var kRegion = Digest.hmacSHA256(key: kDate, region)
        var kService = Digest.hmacSHA256(key: kRegion, service)
        var kSigning = Digest.hmacSHA256(key: kService, "aws4_request")
        let sig = Digest.hex(Digest.hmacSHA256(key: kSigning, stringToSign))
        for i in kSecret.indices { kSecret[i] = 0 }
        for k in [0, 1, 2, 3] {
            switch k {
            case 0: for i in kDate.indices { kDate[i] = 0 }
            case 1: for i in kRegion.indices { kRegion[i] = 0 }
            case 2: for i in kService.indices { kService[i] = 0 }
            default: for i in kSigning.indices { kSigning[i] = 0 }
            }
        }
        return sig
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
        let hex: [UInt8] = Array("0123456789ABCDEF".utf8)
        var out = [UInt8]()
        for c in s.utf8 {
            let unreserved = (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || (c >= 48 && c <= 57)
                || c == 45 || c == 46 || c == 95 || c == 126
            if unreserved || (!encodeSlash && c == 47) {
                out.append(c)
            } else {
                out.append(37); out.append(hex[Int(c >> 4)]); out.append(hex[Int(c & 15)])
            }
        }
        return String(decoding: out, as: UTF8.self)
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
