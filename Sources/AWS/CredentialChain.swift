import Synchronization
import Log

/// Tries providers in order, like the SDKs' default chains (botocore
/// `CredentialResolver`, aws-c-auth `credentials_provider_chain.c`):
///
/// - a provider that has nothing configured (`notConfigured`) passes to the
///   next;
/// - a provider that is configured but fails (`failed`) stops the chain:
///   the operator configured it, and silently falling through to another
///   identity would be worse than an error;
/// - the first provider that answers is remembered, and later calls
///   (refreshes) go to it alone, as botocore's credential objects do.
///
/// Wrap the chain in a `CachingCredentialProvider`: the chain itself keeps
/// no credentials.
public final class CredentialProviderChain: CredentialProvider {
    public let providers: [CredentialProvider]
    private let chosen = Mutex<Int?>(nil)

    public var name: String {
        if let i = chosen.withLock({ $0 }) { return providers[i].name }
        return "chain(" + providers.map(\.name).joined(separator: ", ") + ")"
    }

    public init(_ providers: [CredentialProvider]) {
        self.providers = providers
    }

    /// The provider that answered first, once one has.
    public var chosenProvider: CredentialProvider? {
        chosen.withLock { $0 }.map { providers[$0] }
    }

    public func credentials() throws(CredentialError) -> AWSCredentials {
        if let i = chosen.withLock({ $0 }) {
            return try providers[i].credentials()
        }
        var reasons: [String] = []
        for (i, p) in providers.enumerated() {
            do {
                let c = try p.credentials()
                chosen.withLock { $0 = i }
                Log.debug("credential chain: \(p.name) answered")
                return c
            } catch {
                if error.kind != .notConfigured {
                    throw CredentialError(error.kind, "\(p.name): \(error.message)")
                }
                reasons.append("\(p.name): \(error.message)")
                Log.debug("credential chain: \(p.name) not configured (\(error.message))")
            }
        }
        throw .notConfigured(reasons.isEmpty ? "no credential providers" : reasons.joined(separator: "; "))
    }
}
