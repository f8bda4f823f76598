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
            return STSClient(endpoint: url, region: signingRegion, transport: transport, clock: clock)
        }
        let text: String
        if let region {
            let v = AWSEndpoints.variants(environment: env, profile: config.profile(profile))
            text = AWSEndpoints.regional(service: "sts", region: region, fips: v.fips, dualStack: v.dualStack)
        } else {
            text = "https://sts.amazonaws.com"
        }
        return STSClient(endpoint: URLParts(text)!, region: signingRegion, transport: transport, clock: clock)
    }

    public func assumeRoleWithWebIdentity(roleArn: String, sessionName: String, token: String,
                                          durationSeconds: Int? = nil, source: String) throws(CredentialError) -> AWSCredentials {
        var params = [("Action", "AssumeRoleWithWebIdentity"), ("Version", "2011-06-15"),
                      ("RoleArn", roleArn), ("RoleSessionName", sessionName), ("WebIdentityToken", token)]
        if let d = durationSeconds { params.append(("DurationSeconds", String(d))) }
        return try call("AssumeRoleWithWebIdentity", params: params, signWith: nil, roleArn: roleArn, source: source)
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

    private func call(_ action: String, params: [(String, String)], signWith creds: AWSCredentials?,
                      roleArn: String, source: String) throws(CredentialError) -> AWSCredentials {
        let body = Array(STSClient.formEncode(params).utf8)
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
                    var request = HTTPRequest(method: "POST", url: endpoint, headers: headers, body: .bytes(body),
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
        let text = response.body.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
        guard let id = xmlElement("AccessKeyId", in: text), let secret = xmlElement("SecretAccessKey", in: text),
              let token = xmlElement("SessionToken", in: text) else {
            throw .failed("STS \(action) for \(roleArn): the answer has no Credentials")
        }
        let exp = xmlElement("Expiration", in: text).flatMap { Timestamp.parseISO8601($0) }
        return try AWSCredentials(accessKeyId: id, secretAccessKey: secret, sessionToken: token, expiration: exp, source: source)
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
