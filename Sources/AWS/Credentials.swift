/// A set of AWS credentials. `description` never prints the secret key or
/// the session token.
public struct AWSCredentials: Sendable, Equatable, CustomStringConvertible {
    public var accessKeyId: String
    public var secretAccessKey: String
    public var sessionToken: String?
    /// When temporary credentials stop working; nil for long-term keys.
    public var expiration: Timestamp?
    /// Which provider produced them, for log lines ("environment",
    /// "profile default", "web identity", ...).
    public var source: String

    public init(accessKeyId: String, secretAccessKey: String, sessionToken: String? = nil,
                expiration: Timestamp? = nil, source: String) {
        self.accessKeyId = accessKeyId
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
        self.expiration = expiration
        self.source = source
    }

    public var description: String {
        "AWSCredentials(\(accessKeyId), secret <redacted>\(sessionToken == nil ? "" : ", session token <redacted>"), from \(source))"
    }
}

/// Why credentials could not be had.
public struct CredentialError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// This provider has nothing to offer here; the chain tries the next.
        case notConfigured
        /// This provider is configured but failed; the chain stops and reports.
        case failed
    }
    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public static func notConfigured(_ m: String) -> CredentialError { .init(.notConfigured, m) }
    public static func failed(_ m: String) -> CredentialError { .init(.failed, m) }

    public var description: String { message }
}

/// A source of credentials. Providers that fetch temporary credentials are
/// wrapped in a caching layer; a provider itself just fetches.
public protocol CredentialProvider: Sendable {
    /// Short name for logs.
    var name: String { get }
    func credentials() throws(CredentialError) -> AWSCredentials
    /// A service rejected `rejected` as expired: forget them if cached, so
    /// the next `credentials()` fetches anew.
    func invalidate(_ rejected: AWSCredentials)
}

extension CredentialProvider {
    public func invalidate(_ rejected: AWSCredentials) {}
}

/// Fixed credentials (tests, and `kmsfs` tools given keys explicitly).
public struct StaticCredentialProvider: CredentialProvider {
    public let value: AWSCredentials
    public var name: String { value.source }
    public init(_ value: AWSCredentials) { self.value = value }
    public func credentials() throws(CredentialError) -> AWSCredentials { value }
}
