#if canImport(Glibc)
import Glibc
#endif

/// A policy file: per-path rules. Placeholder reader; see docs/access.md.
public enum PolicyFile {
    public struct ParseError: Error, CustomStringConvertible, Sendable {
        public let file: String
        public let line: Int
        public let reason: String
        public var description: String { line > 0 ? "\(file):\(line): \(reason)" : "\(file): \(reason)" }
    }

    public static func load(path: String) throws(ParseError) -> [AccessRule] {
        throw ParseError(file: path, line: 0, reason: "policy files are not supported yet")
    }
}
