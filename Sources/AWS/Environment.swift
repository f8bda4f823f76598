import SecureMemory
#if canImport(Glibc)
import Glibc
#endif

/// A snapshot of environment variables, injected so configuration code is
/// testable and reads the environment exactly once.
///
/// The variables that carry AWS secrets (`AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN` and their legacy names, and the container
/// authorization token, a bearer token) are held apart, in secure
/// memory: `Environment.process()` copies them out of the process
/// environment and wipes them there (the strings at the top of the initial
/// stack), once per process; they never become `String`s on the daemon's
/// paths.
public struct Environment: Sendable {
    /// The variables whose values are secrets.
    public static let secretNames: Set<String> = ["AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY",
                                                  "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                                                  "AWS_CONTAINER_AUTHORIZATION_TOKEN"]

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

    /// Sets or removes a variable that is not a secret (a child's
    /// environment built from this one).
    public mutating func setPlain(_ name: String, _ value: String?) {
        precondition(!Environment.secretNames.contains(name), "\(name) is a secret variable")
        plain[name] = value
    }

    /// Calls `body` with this environment as a NULL-terminated `NAME=value`
    /// array for a child (posix_spawn's `envp`): the plain variables as C
    /// strings freed after, the secret ones assembled in locked memory
    /// (never as Strings) and wiped after. No locked page is taken when
    /// there is no secret (fusermount3 runs when the daemon's locked memory
    /// may be all in use).
    public func withCEnvironment<R>(_ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) throws(SecureMemoryError) -> R {
        var cEnv: [UnsafeMutablePointer<CChar>?] = plain.map { strdup("\($0.key)=\($0.value)") }
        let plainCount = cEnv.count
        defer { for p in cEnv[..<plainCount] { free(p) } }
        let secretLength = secrets.reduce(0) { $0 + $1.key.utf8.count + 2 + $1.value.count }
        let block = secretLength > 0 ? try SecureBuffer(capacity: secretLength, backing: .lockedAnonymous) : nil
        defer { block?.wipeContents() }
        if let block {
            for (name, value) in secrets {
                let start = block.count
                do {
                    try block.append(utf8: name + "=")
                    try value.withUnsafeBytes { (v: UnsafeRawBufferPointer) throws(SecureMemoryError) in try block.append(v) }
                    try block.append(utf8: "\0")
                } catch { continue }
                block.withUnsafeMutableCapacity { cEnv.append(($0.baseAddress! + start).assumingMemoryBound(to: CChar.self)) }
            }
        }
        cEnv.append(nil)
        return cEnv.withUnsafeBufferPointer { body($0.baseAddress!) }
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
