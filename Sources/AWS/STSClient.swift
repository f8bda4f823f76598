import SecureMemory
import Log
/// The two STS calls credential providers need, over the query protocol
/// (form-encoded POST, XML answer): `AssumeRole`, signed with source
/// credentials (profiles with `role_arn`), and `AssumeRoleWithWebIdentity`,
/// unsigned (the web identity token is the proof). Retried in the standard
/// mode inside a bounded deadline, like every other call.
public struct STSClient: Sendable {
    public let endpoint: URLParts
    /// The signing region (`us-east-1` for the global endpoint).
    public let region: String
    public let transport: HTTPTransport
    public let clock: Clock
    public let retry: RetryStrategy
    /// Longest one STS call may take, retries included (documented in
    /// docs/credentials.md).
    public var callDeadline: Double = 10
    public var attemptTimeout: Double = 5
    public var connectTimeout: Double = 2

    public init(endpoint: URLParts, region: String, transport: HTTPTransport, clock: Clock = .system,
                retry: RetryStrategy = RetryStrategy()) {
        self.endpoint = endpoint
        self.region = region
        self.transport = transport
        self.clock = clock
        self.retry = retry
    }

    /// STS for `region`: a configured endpoint (`AWS_ENDPOINT_URL_STS`,
    /// `AWS_ENDPOINT_URL`, profile), else the regional endpoint (the SDKs'
    /// default now), else the global one when no region is known.
    public static func resolve(region: String?, environment env: Environment, config: SharedConfigFiles,
                               profile: String, transport: HTTPTransport, clock: Clock = .system) throws(CredentialError) -> STSClient {
        let signingRegion = region ?? "us-east-1"
        if let c = AWSEndpoints.configured(envName: "STS", key: "sts", environment: env, config: config, profile: profile) {
            guard let url = URLParts(c.url) else {
                throw .failed("STS endpoint '\(c.url)' from \(c.source) is not a URL")
            }
            if url.scheme == "http" && !url.isLoopback {
                // Resolved again at every credential refresh: said once.
                Log.warningOnce(key: "plain-http STS \(url)", "STS endpoint \(url) (from \(c.source)) is plain http: the credentials it is asked for, and the token or keys that ask, would cross the network unencrypted; use https")
            }
            return STSClient(endpoint: url, region: signingRegion, transport: transport, clock: clock)
        }
        if let region, !AWSEndpoints.isValidRegion(region) {
            throw .failed("region '\(boundedText(region, 64))' for STS is not a region name such as eu-west-1")
        }
        let text: String
        if let region {
            let v = AWSEndpoints.variants(environment: env, profile: config.profile(profile))
            text = AWSEndpoints.regional(service: "sts", region: region, fips: v.fips, dualStack: v.dualStack)
        } else {
            text = "https://sts.amazonaws.com"
        }
        // The region comes from a profile or the environment: one that makes
        // no host name (a blank, a control byte) is an error, never a trap.
        guard let url = URLParts(text) else {
            throw .failed("region '\(boundedText(region ?? "", 64))' makes no STS host name (\(boundedText(text, 160))); give a region name such as eu-west-1")
        }
        return STSClient(endpoint: url, region: signingRegion, transport: transport, clock: clock)
    }

    /// `token` (the identity provider's JWT, a bearer token) goes into the
    /// request body from secure memory.
    public func assumeRoleWithWebIdentity(roleArn: String, sessionName: String, token: SecureBuffer,
                                          durationSeconds: Int? = nil, source: String) throws(CredentialError) -> AWSCredentials {
        var params = [("Action", "AssumeRoleWithWebIdentity"), ("Version", "2011-06-15"),
                      ("RoleArn", roleArn), ("RoleSessionName", sessionName)]
        if let d = durationSeconds { params.append(("DurationSeconds", String(d))) }
        return try call("AssumeRoleWithWebIdentity", params: params, secret: ("WebIdentityToken", token),
                        signWith: nil, roleArn: roleArn, source: source)
    }

    public func assumeRole(roleArn: String, sessionName: String, externalId: String? = nil, durationSeconds: Int? = nil,
                           sourceCredentials: AWSCredentials, source: String) throws(CredentialError) -> AWSCredentials {
        var params = [("Action", "AssumeRole"), ("Version", "2011-06-15"),
                      ("RoleArn", roleArn), ("RoleSessionName", sessionName)]
        if let e = externalId { params.append(("ExternalId", e)) }
        if let d = durationSeconds { params.append(("DurationSeconds", String(d))) }
        return try call("AssumeRole", params: params, signWith: sourceCredentials, roleArn: roleArn, source: source)
    }

    /// `a=b&c=d`, RFC 3986 unreserved characters kept.
    static func formEncode(_ params: [(String, String)]) -> String {
        params.map { SigV4Signer.uriEncode($0.0) + "=" + SigV4Signer.uriEncode($0.1) }.joined(separator: "&")
    }

    /// The form body: `params`, then `secret` (name, value) encoded in
    /// secure memory, so the whole body is secure when there is one.
    static func formBody(_ params: [(String, String)],
                         secret: (name: String, value: SecureBuffer)?) throws(SecureMemoryError) -> HTTPBody {
        let plain = formEncode(params)
        guard let secret else { return .bytes(Array(plain.utf8)) }
        let head = (plain.isEmpty ? "" : plain + "&") + SigV4Signer.uriEncode(secret.name) + "="
        let most = (Int.max - head.utf8.count) / 3   // each byte becomes at most three
        guard secret.value.count <= most else { throw .capacityExceeded(requested: secret.value.count, limit: most) }
        let out = try SecureBuffer(capacity: head.utf8.count + 3 * secret.value.count)
        try out.append(utf8: head)
        let start = out.count
        let written = secret.value.withUnsafeBytes { value in
            out.withUnsafeMutableCapacity { room -> Int in
                var n = start
                SigV4Signer.uriEncode(value) { room[n] = $0; n += 1 }
                return n
            }
        }
        out.setCount(written)
        return .secure(out)
    }

    private func call(_ action: String, params: [(String, String)], secret: (name: String, value: SecureBuffer)? = nil,
                      signWith creds: AWSCredentials?, roleArn: String, source: String) throws(CredentialError) -> AWSCredentials {
        let body: HTTPBody
        do { body = try STSClient.formBody(params, secret: secret) } catch {
            throw .failed("STS \(action) for \(roleArn): cannot assemble the request in secure memory: \(error)")
        }
        let caller = RetryingCaller(label: "STS.\(action)", retry: retry, clock: clock,
                                    deadline: callDeadline, attemptTimeout: attemptTimeout)
        let response: HTTPResponse
        do throws(AWSError) {
            response = try caller.call { timeout in
                var headers: [(name: String, value: String)] = [
                    ("Host", endpoint.hostHeader),
                    ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"),
                ]
                if let creds {
                    let hash = body.withUnsafeBytes { Digest.hex(Digest.sha256($0)) }
                    let req = SigV4Signer.Request(method: "POST", path: endpoint.path, query: endpoint.query,
                                                  headers: headers, payloadHash: hash)
                    headers += SigV4Signer(region: region, service: "sts").sign(req, credentials: creds, date: clock.now())
                }
                headers.append(("User-Agent", "kmsfs/\(kmsfsVersion)"))
                let r: HTTPResponse
                do throws(TransportError) {
                    var request = HTTPRequest(method: "POST", url: endpoint, headers: headers, body: body,
                                              timeout: timeout, connectTimeout: min(connectTimeout, timeout))
                    if let creds { request.secureHeaders = SigV4Signer.secureHeaders(for: creds) }
                    r = try transport.send(request)
                } catch {
                    return .failure(.transport(error))
                }
                guard (200..<300).contains(r.status) else {
                    var e = AWSJSONClient.parseError(r)
                    // botocore retries these for web identity: the identity
                    // provider was briefly unreachable or not yet consistent.
                    if case .service(let code, let m, let s, let id) = e, action == "AssumeRoleWithWebIdentity",
                       code == "InvalidIdentityToken" {
                        e = .service(code: "IDPCommunicationError", message: "InvalidIdentityToken: \(m)", status: s, requestId: id)
                    }
                    return .failure(e)
                }
                return .success(r)
            }
        } catch {
            throw .failed("STS \(action) for \(roleArn) at \(endpoint) failed: \(error)\(STSClient.hint(error))")
        }
        // The answer is read in place: the secret key and the token go
        // from the response buffer straight into secure memory.
        let parsed: AWSCredentials? = response.body.withUnsafeBytes { b in
            guard let id = XMLBytes.text("AccessKeyId", in: b), AWSCredentials.isAccessKeyId(id),
                  let secret = XMLBytes.secure("SecretAccessKey", in: b), secret.count > 0,
                  let token = XMLBytes.secure("SessionToken", in: b), token.count > 0,
                  AWSCredentials.isPrintableWord(token) else { return nil }
            // Without an expiry they would be kept, and never fetched
            // again, long after the session ended.
            guard let exp = XMLBytes.text("Expiration", in: b).flatMap({ Timestamp.parseISO8601($0) }) else { return nil }
            return AWSCredentials(accessKeyId: id, secret: secret, token: token, expiration: exp, source: source,
                                  kind: action == "AssumeRoleWithWebIdentity" ? .webIdentity : .assumedRole)
        }
        guard let parsed else {
            throw .failed("STS \(action) for \(roleArn): the answer has no Credentials (AccessKeyId, SecretAccessKey, SessionToken and an ISO 8601 Expiration)")
        }
        return parsed
    }

    static func hint(_ e: AWSError) -> String {
        switch e.code {
        case "AccessDenied":
            return "; check the role's trust policy allows this caller (and sts:AssumeRole on the source identity)"
        case "InvalidIdentityToken", "IDPCommunicationError", "IDPRejectedClaim", "ExpiredTokenException":
            return "; check the web identity token file and the role's OIDC provider and trust policy"
        case "RegionDisabledException":
            return "; activate STS in this region (IAM account settings) or use another region"
        default:
            return ""
        }
    }
}

/// The first `<name>...</name>` element of an XML answer, found in the
/// bytes (no nesting; the five predefined entities decoded).
enum XMLBytes {
    static func range(_ name: String, in b: UnsafeRawBufferPointer) -> Range<Int>? {
        let open = Array("<\(name)>".utf8), close = Array("</\(name)>".utf8)
        func find(_ needle: [UInt8], from: Int) -> Int? {
            guard needle.count <= b.count else { return nil }
            var i = from
            while i + needle.count <= b.count {
                if b[i] == needle[0] && needle.indices.allSatisfy({ b[i + $0] == needle[$0] }) { return i }
                i += 1
            }
            return nil
        }
        guard let a = find(open, from: 0), let z = find(close, from: a + open.count) else { return nil }
        return (a + open.count)..<z
    }

    /// Decodes the element's text, handing each byte to `emit`; false on
    /// an unknown entity, unless `lenient` (which passes it through as is).
    static func decode(_ b: UnsafeRawBufferPointer, _ r: Range<Int>, lenient: Bool = false, _ emit: (UInt8) -> Void) -> Bool {
        let entities: [([UInt8], UInt8)] = [(Array("&amp;".utf8), 38), (Array("&lt;".utf8), 60), (Array("&gt;".utf8), 62),
                                            (Array("&quot;".utf8), 34), (Array("&apos;".utf8), 39)]
        var i = r.lowerBound
        outer: while i < r.upperBound {
            if b[i] == 38 {
                for (e, c) in entities where r.upperBound - i >= e.count && e.indices.allSatisfy({ b[i + $0] == e[$0] }) {
                    emit(c)
                    i += e.count
                    continue outer
                }
                guard lenient else { return false }
            }
            emit(b[i])
            i += 1
        }
        return true
    }

    static func text(_ name: String, in b: UnsafeRawBufferPointer) -> String? {
        guard let r = range(name, in: b) else { return nil }
        var out = [UInt8]()
        guard decode(b, r, { out.append($0) }) else { return nil }
        return String(decoding: out, as: UTF8.self)
    }

    /// The element's text straight into a new secure buffer.
    static func secure(_ name: String, in b: UnsafeRawBufferPointer) -> SecureBuffer? {
        guard let r = range(name, in: b) else { return nil }
        return try? SecureBuffer(unsafeUninitializedCapacity: max(r.count, 1)) { cap in
            var o = 0
            let ok = decode(b, r) { c in
                if o < cap.count { cap[o] = c }
                o += 1
            }
            return ok && o <= cap.count ? o : nil
        }
    }
}
