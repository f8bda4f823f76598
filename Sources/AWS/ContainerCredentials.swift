import System
import SecureMemory
/// Credentials from the container credential endpoint: ECS task roles
/// (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, served at 169.254.170.2) and
/// EKS Pod Identity or other agents (`AWS_CONTAINER_CREDENTIALS_FULL_URI`
/// with `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` or
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN`).
///
/// As botocore's `ContainerMetadataFetcher`: a plain-http full URI must name
/// a loopback address or one of the documented hosts (169.254.170.2,
/// 169.254.170.23, fd00:ec2::23, localhost), since the request carries a
/// bearer token and the answer carries credentials; https URIs may name any
/// host (the certificate is verified). The token file is re-read on every
/// fetch (EKS rotates it). Each fetch makes at most 3 attempts of at most
/// 2 s each, 1 s apart: 8 s in all.
public struct ContainerCredentialProvider: CredentialProvider {
    public static let ecsHost = "169.254.170.2"
    /// The documented link-local agents, as addresses (compared after
    /// `inet_pton`, so `[fd00:ec2:0::23]` is the same host).
    public static let allowedAddresses: [[UInt8]] = [
        [169, 254, 170, 2], [169, 254, 170, 23],
        [0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x23],
    ]

    public let environment: Environment
    public let transport: HTTPTransport
    public let clock: Clock
    public var attempts = 3
    public var attemptTimeout = 2.0
    public var pause = 1.0

    public var name: String { "container credentials" }

    public init(environment: Environment, transport: HTTPTransport, clock: Clock = .system) {
        self.environment = environment
        self.transport = transport
        self.clock = clock
    }

    /// True when the environment asks for this provider.
    public var isConfigured: Bool {
        environment["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"] != nil || environment["AWS_CONTAINER_CREDENTIALS_FULL_URI"] != nil
    }

    /// The URL to ask, validated.
    public func endpoint() throws(CredentialError) -> URLParts {
        if let rel = environment["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"] {
            let path = rel.hasPrefix("/") ? rel : "/" + rel
            guard let url = URLParts("http://\(ContainerCredentialProvider.ecsHost)\(path)") else {
                throw .failed("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI '\(rel)' is not a path")
            }
            return url
        }
        guard let full = environment["AWS_CONTAINER_CREDENTIALS_FULL_URI"] else {
            throw .notConfigured("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI and AWS_CONTAINER_CREDENTIALS_FULL_URI are not set")
        }
        guard let url = URLParts(full) else {
            throw .failed("AWS_CONTAINER_CREDENTIALS_FULL_URI '\(full)' is not an http(s) URL")
        }
        if url.scheme == "https" { return url }
        // By address, never by spelling: `127.evil.example` is a DNS name
        // that could point anywhere, and the request carries a bearer token.
        let allowed = url.isLoopback || url.ipAddress.map { ContainerCredentialProvider.allowedAddresses.contains($0) } == true
        guard allowed else {
            throw .failed("AWS_CONTAINER_CREDENTIALS_FULL_URI host '\(url.host)' is not allowed over http: use a loopback address (127.0.0.0/8, [::1], localhost), 169.254.170.2, 169.254.170.23, [fd00:ec2::23], or https")
        }
        return url
    }

    /// The authorization token, from `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`
    /// (re-read every time, trimmed) or `AWS_CONTAINER_AUTHORIZATION_TOKEN`,
    /// in secure memory: it is a bearer token.
    func authorization() throws(CredentialError) -> SecureBuffer? {
        let token: SecureBuffer
        if let file = environment["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] {
            let raw: SecureBuffer
            switch readSmallFileSecurely(file, limit: 16 * 1024) {
            case .success(let b): raw = b
            case .failure(let e): throw .failed("cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE \(e)")
            }
            do { token = try BearerToken.trimmed(raw) ?? SecureBuffer(capacity: 0) } catch {
                throw .failed("cannot hold the container authorization token in secure memory: \(error)")
            }
        } else if let t = environment.secret("AWS_CONTAINER_AUTHORIZATION_TOKEN") {
            token = t   // captured from the process environment into secure memory
        } else if let t = environment["AWS_CONTAINER_AUTHORIZATION_TOKEN"] {
            // Left in the environment when no secure memory could be had
            // for it then: still the token, not a request without one.
            do {
                token = try SecureBuffer(capacity: t.utf8.count)
                try token.append(utf8: t)
            } catch {
                throw .failed("cannot hold the container authorization token in secure memory: \(error)")
            }
        } else {
            return nil
        }
        if BearerToken.hasLineBreak(token) {
            throw .failed("the container authorization token holds a line break; it is not a legal header value")
        }
        return token
    }

    public func credentials() throws(CredentialError) -> AWSCredentials {
        let url = try endpoint()
        var lastError = ""
        for attempt in 1...max(1, attempts) {
            if attempt > 1 { clock.sleep(pause) }
            let headers: [(name: String, value: String)] = [("Accept", "application/json"),
                                                            ("User-Agent", "kmsfs/\(kmsfsVersion)")]
            var request = HTTPRequest(method: "GET", url: url, headers: headers,
                                      timeout: attemptTimeout, connectTimeout: attemptTimeout)
            if let token = try authorization() { request.secureHeaders = [("Authorization", token)] }
            let response: HTTPResponse
            do {
                response = try transport.send(request)
            } catch {
                lastError = "\(error)"
                continue
            }
            guard response.status == 200 else {
                lastError = "HTTP \(response.status): \(response.nonSecretBodyText(limit: 200))"
                if response.status == 401 || response.status == 403 || response.status == 404 { break }
                continue
            }
            let parsed: (JSONValue, AWSCredentials?)? = response.body.withUnsafeBytes { b in
                parseCredentialsDocument(b).map { ($0, credentialsFromJSON($0, bytes: b, source: "container credentials \(url.hostHeader)", kind: .container)) }
            }
            guard let (doc, c) = parsed, let c else {
                lastError = "the answer is not a credentials document"
                continue
            }
            if let problem = temporaryCredentialsProblem(doc, c) {
                lastError = problem
                continue
            }
            return c
        }
        throw .failed("container credentials from \(url) failed: \(lastError)")
    }
}

/// Why credentials from a document cannot be used: an `Expiration` that
/// is not an ISO 8601 time, or (`requireExpiry`: IMDS, container) a
/// session token without one. Kept without an expiry, they would be
/// served, and never fetched again, long after the token died.
func temporaryCredentialsProblem(_ doc: JSONValue, _ c: AWSCredentials, requireExpiry: Bool = true) -> String? {
    if let e = doc["Expiration"], c.expiration == nil {
        let shown = e.stringValue.map { "'\(boundedText($0, 64))'" } ?? "(not a string)"
        return "Expiration \(shown) is not an ISO 8601 time"
    }
    if requireExpiry && c.hasSessionToken && c.expiration == nil { return "the answer has a session token but no Expiration" }
    return nil
}

/// The members of a credentials document that are secrets.
let secretCredentialMembers: Set<String> = ["SecretAccessKey", "Token", "SessionToken"]
/// Those and a Decrypt answer's plaintext: what an error body that carries
/// them anyway (a broken front end) never has turned into a String.
let secretResponseMembers: Set<String> = secretCredentialMembers.union(["Plaintext"])

/// Parses a credentials document (container endpoint, IMDS,
/// `credential_process`) with its secret members left undecoded.
func parseCredentialsDocument(_ bytes: UnsafeRawBufferPointer) -> JSONValue? {
    JSONValue.parse(bytes, redacting: secretCredentialMembers)
}

/// Reads `AccessKeyId`, `SecretAccessKey`, `Token` (or `SessionToken`) and
/// `Expiration` from a credentials document: `doc` (parsed with
/// `parseCredentialsDocument`) for the plain members, the secret ones
/// decoded from `bytes` straight into secure memory. Nil when the keys are
/// missing or empty, or the key ID or the token (both sent in headers) is
/// not a single printable word.
func credentialsFromJSON(_ doc: JSONValue, bytes: UnsafeRawBufferPointer, source: String, kind: CredentialKind) -> AWSCredentials? {
    guard let id = doc["AccessKeyId"]?.stringValue, AWSCredentials.isAccessKeyId(id) else { return nil }
    func secure(_ key: String) -> SecureBuffer? {
        do { return try JSONScanner.secureStringMember(key, in: bytes) } catch { return nil }
    }
    guard let secret = secure("SecretAccessKey"), secret.count > 0 else { return nil }
    var token = secure("Token") ?? secure("SessionToken")
    if token?.count == 0 { token = nil }
    if let t = token, !AWSCredentials.isPrintableWord(t) { return nil }
    let exp = doc["Expiration"]?.stringValue.flatMap { Timestamp.parseISO8601($0) }
    return AWSCredentials(accessKeyId: id, secret: secret, token: token, expiration: exp, source: source, kind: kind)
}
