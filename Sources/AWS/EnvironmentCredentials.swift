/// Credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
/// `AWS_SESSION_TOKEN` (also the legacy `AWS_ACCESS_KEY`/`AWS_SECRET_KEY`
/// names botocore accepts).
public struct EnvironmentCredentialProvider: CredentialProvider {
    public let environment: Environment
    public var name: String { "environment" }

    public init(environment: Environment) { self.environment = environment }

    public func credentials() throws(CredentialError) -> AWSCredentials {
        let id = environment["AWS_ACCESS_KEY_ID"] ?? environment["AWS_ACCESS_KEY"]
        let secret = environment["AWS_SECRET_ACCESS_KEY"] ?? environment["AWS_SECRET_KEY"]
        switch (id, secret) {
        case (nil, nil):
            throw .notConfigured("AWS_ACCESS_KEY_ID is not set")
        case (.some, nil):
            throw .failed("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
        case (nil, .some):
            throw .failed("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not")
        case let (.some(i), .some(s)):
            return try AWSCredentials(accessKeyId: i, secretAccessKey: s,
                                  sessionToken: environment["AWS_SESSION_TOKEN"] ?? environment["AWS_SECURITY_TOKEN"],
                                  source: "environment")
        }
    }
}
