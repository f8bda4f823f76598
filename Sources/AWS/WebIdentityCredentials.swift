import System
import SecureMemory
/// Credentials from STS `AssumeRoleWithWebIdentity` (EKS IRSA, GitHub OIDC,
/// ...): `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN` (+ optional
/// `AWS_ROLE_SESSION_NAME`), or the same settings in a profile
/// (`web_identity_token_file`, `role_arn`, `role_session_name`). The token
/// file is re-read on every fetch: the platform rotates it.
public struct WebIdentityCredentialProvider: CredentialProvider {
    public let tokenFile: String
    public let roleArn: String
    public let sessionName: String
    public let durationSeconds: Int?
    /// Built lazily: the STS endpoint depends on the region.
    public let sts: @Sendable () throws(CredentialError) -> STSClient
    public let origin: String

    public var name: String { "web identity (\(origin))" }

    public init(tokenFile: String, roleArn: String, sessionName: String?, durationSeconds: Int? = nil,
                origin: String, clock: Clock = .system,
                sts: @escaping @Sendable () throws(CredentialError) -> STSClient) {
        self.tokenFile = tokenFile
        self.roleArn = roleArn
        self.sessionName = sessionName ?? WebIdentityCredentialProvider.defaultSessionName(clock)
        self.durationSeconds = durationSeconds
        self.origin = origin
        self.sts = sts
    }

    /// From the environment; nil when `AWS_WEB_IDENTITY_TOKEN_FILE` is not set.
    public static func fromEnvironment(_ env: Environment, clock: Clock = .system,
                                       sts: @escaping @Sendable () throws(CredentialError) -> STSClient) -> CredentialProvider? {
        guard let file = env["AWS_WEB_IDENTITY_TOKEN_FILE"] else { return nil }
        guard let role = env["AWS_ROLE_ARN"] else {
            return FailingCredentialProvider(name: "web identity (environment)",
                                             error: .failed("AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not"))
        }
        return WebIdentityCredentialProvider(tokenFile: file, roleArn: role, sessionName: env["AWS_ROLE_SESSION_NAME"],
                                             origin: "environment", clock: clock, sts: sts)
    }

    /// `kmsfs-<epoch seconds>`, as botocore names its `botocore-session-<t>`.
    public static func defaultSessionName(_ clock: Clock) -> String {
        "kmsfs-\(displaySeconds(clock.now().seconds))"
    }

    public func credentials() throws(CredentialError) -> AWSCredentials {
        // Read into secure memory and trimmed there: the token is a bearer
        // token, as good as credentials until it expires.
        let raw: SecureBuffer
        switch readSmallFileSecurely(tokenFile, limit: 64 * 1024) {
        case .success(let b): raw = b
        case .failure(let e): throw .failed("cannot read the web identity token file \(e)")
        }
        let trimmed: SecureBuffer?
        do { trimmed = try BearerToken.trimmed(raw) } catch {
            throw .failed("cannot hold the web identity token in secure memory: \(error)")
        }
        guard let token = trimmed else { throw .failed("the web identity token file \(tokenFile) is empty") }
        return try sts().assumeRoleWithWebIdentity(roleArn: roleArn, sessionName: sessionName, token: token,
                                                   durationSeconds: durationSeconds, source: "web identity \(roleArn)")
    }
}

/// A provider that is configured wrongly: it always fails with one message
/// (so the chain stops and reports it instead of trying other identities).
public struct FailingCredentialProvider: CredentialProvider {
    public let name: String
    public let error: CredentialError
    public init(name: String, error: CredentialError) {
        self.name = name
        self.error = error
    }
    public func credentials() throws(CredentialError) -> AWSCredentials { throw error }
}
