import SecureMemory
#if canImport(Glibc)
import Glibc
#endif

/// A snapshot of environment variables, injected so configuration code is
/// testable and reads the environment exactly once.
///
/// The variables that carry AWS secrets (`AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN` and their legacy names) are held apart, in secure
/// memory: `Environment.process()` copies them out of the process
/// environment and wipes them there (the strings at the top of the initial
/// stack), once per process; they never become `String`s on the daemon's
/// paths.
public struct Environment: Sendable {
    /// The variables whose values are secrets.
    public static let secretNames: Set<String> = ["AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY",
                                                  "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"]

    /// Every variable but the secret ones.
    public private(set) var plain: [String: String]
    /// The secret ones, in secure memory.
    public private(set) var secrets: [String: SecureBuffer]

    /// Secret names are moved into secure memory (the caller's strings stay
    /// where they are: tests, tools).
    public init(_ values: [String: String]) {
        var plain = values
        var secrets: [String: SecureBuffer] = [:]
        for name in Environment.secretNames {
            guard let v = plain[name] else { continue }
            let b = try? SecureBuffer(capacity: max(v.utf8.count, 1))
            if let b, (try? b.append(utf8: v)) != nil {
                secrets[name] = b
                plain[name] = nil
            }
        }
        self.plain = plain
        self.secrets = secrets
    }

    /// Every variable, secrets included as ordinary strings: for a child's
    /// environment built by a short-lived process (`kmsfs` going to the
    /// background), and tests. The daemon's own paths use `plain` and
    /// `secret(_:)`.
    public var values: [String: String] {
        var all = plain
        for (k, v) in secrets { all[k] = v.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } }
        return all
    }

    /// The process environment now (secrets as captured on the first call).
    public static func process() -> Environment {
        // Capture (and wipe) the secret variables before anything else
        // reads the environment: no String is ever made of their values.
        let captured = capturedSecrets
        var values: [String: String] = [:]
        forEachEntry { name, value, count in
            // A secret one comes from the capture, unless secure memory
            // could not be had for it (then it is still here).
            if secretNames.contains(name) && captured[name] != nil { return }
            values[name] = String(decoding: UnsafeRawBufferPointer(start: value, count: count), as: UTF8.self)
        }
        var env = Environment(values)
        for (k, v) in captured { env.secrets[k] = v }
        return env
    }

    /// The secret variables of the process environment, copied into secure
    /// memory and wiped in `environ` on first use. Where secure memory
    /// cannot be had, the variable is left in place (and used from there).
    private static let capturedSecrets: [String: SecureBuffer] = {
        var out: [String: SecureBuffer] = [:]
        forEachEntry { name, value, count in
            guard secretNames.contains(name),
                  let b = try? SecureBuffer(capacity: max(count, 1)),
                  (try? b.append(UnsafeRawBufferPointer(start: value, count: count))) != nil else { return }
            out[name] = b
            secureWipe(value, count)
        }
        return out
    }()

    /// Each `NAME=value` of `environ`: the name as a String, the value in
    /// place (never copied here: the caller decides what it may become).
    private static func forEachEntry(_ body: (String, UnsafeMutableRawPointer, Int) -> Void) {
        var p = environ
        while let entry = p.pointee {
            defer { p += 1 }
            let len = strlen(entry)
            guard let eqp = memchr(entry, 61, len) else { continue }
            let nameLen = UnsafeRawPointer(eqp) - UnsafeRawPointer(entry)
            let name = String(decoding: UnsafeRawBufferPointer(start: entry, count: nameLen), as: UTF8.self)
            body(name, UnsafeMutableRawPointer(entry) + nameLen + 1, len - nameLen - 1)
        }
    }

    /// The value, or nil when unset or empty (as the AWS CLI treats them).
    /// Secret variables are not readable here: see `secret(_:)`.
    public subscript(_ name: String) -> String? {
        guard let v = plain[name], !v.isEmpty else { return nil }
        return v
    }

    /// A secret variable's value in secure memory, or nil when unset or empty.
    public func secret(_ name: String) -> SecureBuffer? {
        guard let b = secrets[name], b.count > 0 else { return nil }
        return b
    }

    /// True when `name` is set to something (secret or not).
    public func isSet(_ name: String) -> Bool {
        self[name] != nil || secret(name) != nil
    }

    /// The user's home directory.
    public var home: String {
        if let h = self["HOME"] { return h }
        if let pw = getpwuid(getuid()), let dir = pw.pointee.pw_dir { return String(cString: dir) }
        return "/"
    }
}
