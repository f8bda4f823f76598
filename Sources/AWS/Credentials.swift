import System
import SecureMemory
/// Where credentials came from, as a kind with no role, profile or
/// account name in it (`kmsfs_credentials_info{source}`: a loopback port
/// any local user may read).
public enum CredentialKind: String, Sendable {
    case environment, profile, container, other
    case assumedRole = "assumed-role"
    case webIdentity = "web-identity"
    case instanceRole = "instance-role"
    case credentialProcess = "credential-process"
}

/// A set of AWS credentials. The secret access key and the session token
/// are secrets like plaintext: they live only in `SecureBuffer`s (locked,
/// `memfd_secret` where the kernel has it), are signed with and sent from
/// there, and are wiped when the last copy of the credentials goes.
/// `description` never prints either.
public struct AWSCredentials: Sendable, Equatable, CustomStringConvertible {
    public var accessKeyId: String
    /// The secret access key's bytes.
    public let secret: SecureBuffer
    /// The session token's bytes, for temporary credentials.
    public let token: SecureBuffer?
    /// When temporary credentials stop working; nil for long-term keys.
    public var expiration: Timestamp?
    /// Which provider produced them, for log lines ("environment",
    /// "profile default", "web identity", ...).
    public var source: String
    /// The kind of that source, with no name in it (metrics).
    public var kind: CredentialKind

    /// Takes secure buffers the caller filled (the parse paths that read
    /// the secret straight from a response or a helper's output).
    public init(accessKeyId: String, secret: SecureBuffer, token: SecureBuffer?,
                expiration: Timestamp? = nil, source: String, kind: CredentialKind) {
        self.accessKeyId = accessKeyId
        self.secret = secret
        self.token = token
        self.expiration = expiration
        self.source = source
        self.kind = kind
    }

    /// Copies strings into secure memory (environment variables, INI
    /// files, STS XML, tools, tests): the caller's strings stay where they
    /// are, so paths that can avoid them use the other initialiser.
    public init(accessKeyId: String, secretAccessKey: String, sessionToken: String? = nil,
                expiration: Timestamp? = nil, source: String, kind: CredentialKind) throws(CredentialError) {
        do {
            let s = try AWSCredentials.secure(secretAccessKey)
            let t = try sessionToken.map { (v: String) throws(SecureMemoryError) -> SecureBuffer in try AWSCredentials.secure(v) }
            if let t, !AWSCredentials.isPrintableWord(t) {
                throw CredentialError.failed("the session token from \(source) holds a blank or a control character")
            }
            self.init(accessKeyId: accessKeyId, secret: s, token: t, expiration: expiration, source: source, kind: kind)
        } catch let e as CredentialError {
            throw e
        } catch {
            throw .failed("cannot hold the AWS credentials from \(source) in secure memory: \(error)")
        }
    }

    static func secure(_ s: String) throws(SecureMemoryError) -> SecureBuffer {
        let b = try SecureBuffer(capacity: max(s.utf8.count, 1))
        try b.append(utf8: s)
        return b
    }

    /// True when every byte is printable ASCII other than a blank: what a
    /// secret key or session token is, and what may go into a header
    /// (no CR/LF injection from a hostile credential source).
    public static func isPrintableWord(_ b: SecureBuffer) -> Bool {
        b.withUnsafeBytes { $0.allSatisfy { $0 > 0x20 && $0 < 0x7F } }
    }

    /// True for what may stand as an access key ID: non-empty printable
    /// ASCII without blanks (it goes into the Authorization header, so a
    /// credential source cannot add header lines through it).
    public static func isAccessKeyId(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= 128 && id.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }
    }

    /// True for temporary credentials (a session token).
    public var hasSessionToken: Bool { token != nil }

    /// Copies of the secrets into ordinary memory: for tests and
    /// diagnostics only, never on the daemon's paths.
    public func copyOfSecretAccessKey() -> String { secret.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } }
    public func copyOfSessionToken() -> String? { token?.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } }

    public static func == (a: AWSCredentials, b: AWSCredentials) -> Bool {
        guard a.accessKeyId == b.accessKeyId, a.expiration == b.expiration, a.source == b.source,
              (a.token == nil) == (b.token == nil) else { return false }
        func same(_ x: SecureBuffer, _ y: SecureBuffer) -> Bool {
            x === y || y.withUnsafeBytes { x.constantTimeEquals($0) }
        }
        if let ta = a.token, let tb = b.token, !same(ta, tb) { return false }
        return same(a.secret, b.secret)
    }

    public var description: String {
        "AWSCredentials(\(accessKeyId), secret <redacted>\(token == nil ? "" : ", session token <redacted>"), from \(source))"
    }
}

/// Why credentials could not be had.
public typealias CredentialError = Failure<CredentialErrorKind>

public enum CredentialErrorKind: Sendable, Equatable {
    /// This provider has nothing to offer here; the chain tries the next.
    case notConfigured
    /// This provider is configured but failed; the chain stops and reports.
    case failed
    /// Configured wrongly where nothing the daemon waits for can mend it
    /// (half of a key pair in its environment, which never changes while
    /// it runs): the chain stops, and a mount refuses to start.
    case invalid
}

extension Failure where Kind == CredentialErrorKind {
    public static func notConfigured(_ m: String) -> CredentialError { .init(.notConfigured, m) }
    public static func failed(_ m: String) -> CredentialError { .init(.failed, m) }
    public static func invalid(_ m: String) -> CredentialError { .init(.invalid, m) }
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
