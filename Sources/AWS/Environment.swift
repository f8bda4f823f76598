#if canImport(Glibc)
import Glibc
#endif

/// A snapshot of environment variables, injected so configuration code is
/// testable and reads the environment exactly once.
public struct Environment: Sendable {
    public var values: [String: String]

    public init(_ values: [String: String]) { self.values = values }

    /// The process environment now.
    public static func process() -> Environment {
        var values: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") {
                values[String(s[..<eq])] = String(s[s.index(after: eq)...])
            }
            p += 1
        }
        return Environment(values)
    }

    /// The value, or nil when unset or empty (as the AWS CLI treats them).
    public subscript(_ name: String) -> String? {
        guard let v = values[name], !v.isEmpty else { return nil }
        return v
    }

    /// The user's home directory.
    public var home: String {
        if let h = self["HOME"] { return h }
        if let pw = getpwuid(getuid()), let dir = pw.pointee.pw_dir { return String(cString: dir) }
        return "/"
    }
}
