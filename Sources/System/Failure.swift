/// An error that is a kind, for code to decide on, and one line for the
/// operator (never a secret): a transport failure, a credential failure,
/// a decryption failure. Each layer names its kinds; the shape is this one.
public struct Failure<Kind: Sendable>: Error, CustomStringConvertible, Sendable {
    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }
}

extension Failure: Equatable where Kind: Equatable {}
