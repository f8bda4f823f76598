import SecureMemory

/// Credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
/// `AWS_SESSION_TOKEN` (also the legacy `AWS_ACCESS_KEY`/`AWS_SECRET_KEY`
/// names botocore accepts).
public struct EnvironmentCredentialProvider: CredentialProvider {
    public let environment: Environment
    public var name: String { "environment" }

    public init(environment: Environment) { self.environment = environment }

    public func credentials() throws(CredentialError) -> AWSCredentials {
        let id = environment["AWS_ACCESS_KEY_ID"] ?? environment["AWS_ACCESS_KEY"]
        let hasSecret = environment.isSet("AWS_SECRET_ACCESS_KEY") || environment.isSet("AWS_SECRET_KEY")
        switch (id, hasSecret) {
        case (nil, false):
            throw .notConfigured("AWS_ACCESS_KEY_ID is not set")
        case (.some, false):
            throw .invalid("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
        case (nil, true):
            throw .invalid("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not")
        case let (.some(i), true):
            // From secure memory (Environment keeps these apart); a plain
            // string only where secure memory could not be had.
            let secret = environment.secret("AWS_SECRET_ACCESS_KEY") ?? environment.secret("AWS_SECRET_KEY")
            let token = environment.secret("AWS_SESSION_TOKEN") ?? environment.secret("AWS_SECURITY_TOKEN")
            let plainSecret = environment["AWS_SECRET_ACCESS_KEY"] ?? environment["AWS_SECRET_KEY"]
            let plainToken = environment["AWS_SESSION_TOKEN"] ?? environment["AWS_SECURITY_TOKEN"]
            if let t = token, !AWSCredentials.isPrintableWord(t) {
                throw .failed("AWS_SESSION_TOKEN holds a blank or a control character")
            }
            if let secret, token != nil || plainToken == nil {
                return AWSCredentials(accessKeyId: i, secret: secret, token: token, source: "environment", kind: .environment)
            }
            // One of the two stayed a plain string (secure memory could not
            // be had for it when the environment was read): it goes into a
            // buffer now, and the other stays in the one it has (never a
            // String made of it).
            do {
                let s = try secret ?? AWSCredentials.secure(plainSecret ?? "")
                let t = try token ?? plainToken.map { (v: String) throws(SecureMemoryError) -> SecureBuffer in try AWSCredentials.secure(v) }
                if let t, !AWSCredentials.isPrintableWord(t) {
                    throw CredentialError.failed("AWS_SESSION_TOKEN holds a blank or a control character")
                }
                return AWSCredentials(accessKeyId: i, secret: s, token: t, source: "environment", kind: .environment)
            } catch let e as CredentialError {
                throw e
            } catch {
                throw .failed("cannot hold the AWS credentials from environment in secure memory: \(error)")
            }
        }
    }
}
