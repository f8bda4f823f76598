import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// A failed system call: its errno and what was being done (an operation
/// and a path, never a buffer's contents). The one error type of the
/// system layer, as swift-system's `Errno`, with the operation kept for
/// the operator's message.
public struct Errno: Error, Equatable, Hashable, Sendable, CustomStringConvertible {
    /// The errno value (`ENOENT`, ...).
    public let code: Int32
    /// What failed (`"openat2 tls/key.pem"`); empty when the code says all.
    public let operation: String

    public init(_ operation: String, code: Int32) {
        self.operation = operation
        self.code = code
    }

    /// The calling thread's errno, now, for `operation`.
    public init(_ operation: String) {
        self.init(operation, code: Errno.current)
    }

    /// The calling thread's errno (a macro over a thread-local in C: this is
    /// the one way kmsfs reads or sets it).
    public static var current: Int32 {
        get { kmsfs_errno() }
        set { kmsfs_set_errno(newValue) }
    }

    /// strerror(3) of `code`.
    public static func text(_ code: Int32) -> String { String(cString: strerror(code)) }

    /// strerror(3) of this error's code.
    public var text: String { Errno.text(code) }

    public var description: String { operation.isEmpty ? text : "\(operation): \(text)" }

    /// No such file (or a component of its path is not a directory).
    public var isMissing: Bool { code == ENOENT || code == ENOTDIR }
}

/// The one door for system calls that return -1 and set errno: EINTR is
/// retried, anything else becomes an `Errno`. Never use it for `close`
/// (Linux closes the descriptor even when close is interrupted).
@inline(__always)
public func syscallRetrying<T: BinaryInteger>(_ operation: @autoclosure () -> String,
                                              _ body: () -> T) throws(Errno) -> T {
    while true {
        let rc = body()
        if rc != -1 { return rc }
        let e = Errno.current
        if e == EINTR { continue }
        throw Errno(operation(), code: e)
    }
}
