import SecureMemory
import Synchronization
import Log

/// The EC2 instance metadata service, IMDSv2 first (botocore `IMDSFetcher`,
/// aws-c-auth `aws_imds_client.c`):
///
/// - a session token is obtained with `PUT /latest/api/token` and
///   `X-aws-ec2-metadata-token-ttl-seconds: 21600`, cached until shortly
///   before its TTL ends, and sent with every `GET`;
/// - every request has a short timeout (1 s by default,
///   `AWS_METADATA_SERVICE_TIMEOUT` / `metadata_service_timeout`) and
///   `AWS_METADATA_SERVICE_NUM_ATTEMPTS` attempts (default 1), so a machine
///   that is not on EC2 learns it in about a second;
/// - in a container behind a hop limit of 1 the `PUT` answer never arrives:
///   its timeout, or a 403/404/405, falls back to IMDSv1 `GET`s without a
///   token, unless `AWS_EC2_METADATA_V1_DISABLED` / `ec2_metadata_v1_disabled`
///   forbids it;
/// - `AWS_EC2_METADATA_SERVICE_ENDPOINT` / `ec2_metadata_service_endpoint`
///   move it, `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6` picks
///   `http://[fd00:ec2::254]`, and `AWS_EC2_METADATA_DISABLED=true` turns it off.
public final class IMDSClient: Sendable {
    public static let tokenTTL = 21600
    /// A longer token is refused (IMDS's are 56 bytes).
    static let maxTokenBytes = 4096

    public let endpoint: URLParts
    public let transport: HTTPTransport
    public let clock: Clock
    public let timeout: Double
    public let attempts: Int
    public let v1Disabled: Bool
    /// The session token (a bearer token: in secure memory), or nil for
    /// IMDSv1, and until when it is used.
    private let token = Mutex<(value: SecureBuffer?, until: Double)?>(nil)

    public init(endpoint: URLParts, transport: HTTPTransport, clock: Clock = .system,
                timeout: Double = 1, attempts: Int = 1, v1Disabled: Bool = false) {
        self.endpoint = endpoint
        self.transport = transport
        self.clock = clock
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.v1Disabled = v1Disabled
    }

    /// Whether IMDS is turned off (`AWS_EC2_METADATA_DISABLED=true`).
    public static func isDisabled(_ env: Environment) -> Bool {
        env["AWS_EC2_METADATA_DISABLED"]?.lowercased() == "true"
    }

    /// The client the environment and profile describe; nil when disabled.
    public static func configured(environment env: Environment, profile: ConfigProfile?, transport: HTTPTransport,
                                  clock: Clock = .system) throws(CredentialError) -> IMDSClient? {
        if isDisabled(env) { return nil }
        let text: String
        if let e = env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] ?? profile?["ec2_metadata_service_endpoint"] {
            text = e
        } else if (env["AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE"] ?? profile?["ec2_metadata_service_endpoint_mode"])?.lowercased() == "ipv6" {
            text = "http://[fd00:ec2::254]"
        } else {
            text = "http://169.254.169.254"
        }
        guard let url = URLParts(text) else {
            throw .failed("the instance metadata endpoint '\(text)' is not an http(s) URL (AWS_EC2_METADATA_SERVICE_ENDPOINT)")
        }
        let timeout = (env["AWS_METADATA_SERVICE_TIMEOUT"] ?? profile?["metadata_service_timeout"]).flatMap { Double($0) } ?? 1
        let attempts = (env["AWS_METADATA_SERVICE_NUM_ATTEMPTS"] ?? profile?["metadata_service_num_attempts"]).flatMap { Int($0) } ?? 1
        let v1Off = (env["AWS_EC2_METADATA_V1_DISABLED"] ?? profile?["ec2_metadata_v1_disabled"])?.lowercased() == "true"
        return IMDSClient(endpoint: url, transport: transport, clock: clock,
                          timeout: max(0.1, min(timeout, 30)), attempts: min(max(1, attempts), 10), v1Disabled: v1Off)
    }

    /// Why a metadata request failed.
    public enum Failure: Error, Sendable {
        /// Nothing answered (not on EC2, or IMDS switched off).
        case unreachable(String)
        /// IMDS answered with this status.
        case status(Int, String)
        case other(String)

        public var message: String {
            switch self {
            case .unreachable(let m): return m
            case .status(let s, let m): return "HTTP \(s)\(m.isEmpty ? "" : ": " + m)"
            case .other(let m): return m
            }
        }
    }

    func url(_ path: String) -> URLParts {
        var u = endpoint
        let base = u.path.hasSuffix("/") ? String(u.path.dropLast()) : u.path
        u.path = base + path
        u.query = ""
        return u
    }

    /// A session token, cached; nil when IMDSv1 is to be used.
    func sessionToken() throws(Failure) -> SecureBuffer? {
        let now = clock.monotonic()
        if let t = token.withLock({ $0 }), now < t.until { return t.value }
        var last: Failure = .unreachable("no answer")
        for _ in 0..<attempts {
            let r: HTTPResponse
            do {
                r = try transport.send(HTTPRequest(method: "PUT", url: url("/latest/api/token"),
                                                   headers: [("X-aws-ec2-metadata-token-ttl-seconds", String(IMDSClient.tokenTTL)),
                                                             ("User-Agent", "kmsfs/\(kmsfsVersion)")],
                                                   timeout: timeout, connectTimeout: timeout))
            } catch {
                if error.kind == .timeout {
                    // Typically the hop limit: the answer was dropped on the way.
                    return try v1Allowed("the IMDSv2 token request timed out (with a hop limit of 1, containers cannot reach IMDSv2)")
                }
                last = .unreachable("no instance metadata service at \(endpoint) (\(error))")
                continue
            }
            switch r.status {
            case 200:
                let trimmed: SecureBuffer?
                do { trimmed = try BearerToken.trimmed(r.body) } catch {
                    throw .other("cannot hold the IMDS session token in secure memory: \(error)")
                }
                guard let value = trimmed else { last = .other("IMDS answered an empty token"); continue }
                guard value.count <= IMDSClient.maxTokenBytes else {
                    last = .other("IMDS answered a token of \(value.count) bytes (at most \(IMDSClient.maxTokenBytes) are taken)")
                    continue
                }
                token.withLock { $0 = (value, clock.monotonic() + Double(IMDSClient.tokenTTL) - 60) }
                return value
            case 403, 404, 405:
                return try v1Allowed("the IMDSv2 token request was refused (HTTP \(r.status))")
            case 400:
                throw .status(400, "IMDS rejected the token request")
            default:
                last = .status(r.status, r.nonSecretBodyText(limit: 200))
            }
        }
        throw last
    }

    /// After a refused or timed-out token request, IMDSv1 is used for this
    /// long before IMDSv2 is tried again (so one fetch does not wait out the
    /// token timeout once per request). A 401 on a v1 request ends it early.
    static let v1FallbackSeconds = 300.0

    private func v1Allowed(_ why: String) throws(Failure) -> SecureBuffer? {
        if v1Disabled { throw .other("\(why), and IMDSv1 is disabled (AWS_EC2_METADATA_V1_DISABLED)") }
        Log.info("IMDS: \(why); using IMDSv1 for \(Int(IMDSClient.v1FallbackSeconds)) s")
        token.withLock { $0 = (nil, clock.monotonic() + IMDSClient.v1FallbackSeconds) }
        return nil
    }

    /// GETs `path` (such as `/latest/meta-data/placement/region`). The body
    /// lands in secure memory; `read` sees it and returns what it needs.
    public func get<R>(_ path: String, _ read: (HTTPResponse) -> R) throws(Failure) -> R {
        var retriedToken = false
        var last: Failure = .unreachable("no answer")
        var attempt = 0
        while attempt < attempts {
            attempt += 1
            let t = try sessionToken()
            var request = HTTPRequest(method: "GET", url: url(path), headers: [("User-Agent", "kmsfs/\(kmsfsVersion)")],
                                      timeout: timeout, connectTimeout: timeout)
            if let t { request.secureHeaders = [("X-aws-ec2-metadata-token", t)] }
            let r: HTTPResponse
            do {
                r = try transport.send(request)
            } catch {
                last = .unreachable("no instance metadata service at \(endpoint) (\(error))")
                continue
            }
            if r.status == 401, !retriedToken {
                // The token expired or IMDS restarted: get a new one, once.
                token.withLock { $0 = nil }
                retriedToken = true
                attempt -= 1
                continue
            }
            guard r.status == 200 else {
                last = .status(r.status, r.status == 404 ? "" : r.nonSecretBodyText(limit: 200))
                if r.status == 404 || r.status == 401 || r.status == 403 { throw last }
                continue
            }
            return read(r)
        }
        throw last
    }

    /// The instance's region (`/latest/meta-data/placement/region`), or nil.
    public func region() -> String? {
        do {
            let r = try get("/latest/meta-data/placement/region") { $0.nonSecretBodyText(limit: 256) }
            let v = r.trimmingCharacters(in: " \r\n\t")
            return AWSEndpoints.isValidRegion(v) ? v : nil
        } catch {
            Log.debug("IMDS region lookup failed: \(error.message)")
            return nil
        }
    }
}

/// Credentials of the instance's IAM role from IMDS
/// (`/latest/meta-data/iam/security-credentials/` then `.../ROLE`).
/// Nothing reachable, or no role attached, is "not configured" (the chain
/// ends with "no credentials"); anything else IMDS answers is a failure.
public struct IMDSCredentialProvider: CredentialProvider {
    public let client: IMDSClient
    public var name: String { "instance metadata (IMDS)" }

    public init(client: IMDSClient) { self.client = client }

    static let base = "/latest/meta-data/iam/security-credentials/"

    public func credentials() throws(CredentialError) -> AWSCredentials {
        let role: String
        do {
            role = try client.get(IMDSCredentialProvider.base) { r in
                // On scalars: "\r\n" is one Character, equal to neither.
                r.nonSecretBodyText(limit: 4096).unicodeScalars.split(whereSeparator: { $0 == "\n" || $0 == "\r" })
                    .first.map { String(String.UnicodeScalarView($0)) } ?? ""
            }.trimmingCharacters(in: " \t")
        } catch {
            switch error {
            case .unreachable(let m): throw .notConfigured(m)
            case .status(404, _): throw .notConfigured("no IAM role is attached to this instance (IMDS \(client.endpoint) has no security credentials)")
            default: throw .failed("instance metadata at \(client.endpoint): \(error.message)")
            }
        }
        guard !role.isEmpty, !role.contains("/") else {
            throw .notConfigured("no IAM role is attached to this instance")
        }
        let parsed: (JSONValue, AWSCredentials?)?
        do {
            parsed = try client.get(IMDSCredentialProvider.base + role) { r in
                r.body.withUnsafeBytes { b in
                    parseCredentialsDocument(b).map { ($0, credentialsFromJSON($0, bytes: b, source: "instance role \(role)", kind: .instanceRole)) }
                }
            }
        } catch {
            throw .failed("instance metadata credentials for role \(role): \(error.message)")
        }
        guard let (doc, creds) = parsed else { throw .failed("instance metadata credentials for role \(role): not a JSON document") }
        if let code = doc["Code"]?.stringValue, code != "Success" {
            throw .failed("instance metadata credentials for role \(role): \(boundedText(code, 128)): \(boundedText(doc["Message"]?.stringValue ?? "", 512))")
        }
        guard let c = creds, c.hasSessionToken else {
            throw .failed("instance metadata credentials for role \(role): the answer lacks AccessKeyId, SecretAccessKey or Token")
        }
        if let problem = temporaryCredentialsProblem(doc, c) {
            throw .failed("instance metadata credentials for role \(role): \(problem)")
        }
        return c
    }
}
