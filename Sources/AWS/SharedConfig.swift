import SecureMemory
import System
#if canImport(Glibc)
import Glibc
#endif
/// The shared AWS config and credentials files (`~/.aws/config`,
/// `~/.aws/credentials`), read the way botocore's `configloader` reads them:
/// `[default]` and `[profile NAME]` sections in the config file, bare
/// `[NAME]` sections in the credentials file (whose values win), `[services
/// NAME]` sections with indented per-service sub-sections, `#`/`;` comment
/// lines, keys case-insensitive, indented lines continuing a value.
public struct SharedConfigFiles: Sendable {
    public var configPath: String
    public var credentialsPath: String
    public var profiles: [String: ConfigProfile]
    /// `[services NAME]` sections: NAME → service → key → value.
    public var services: [String: [String: [String: String]]]
    /// The values of `aws_secret_access_key` and `aws_session_token` read
    /// by `load`, in secure memory; the profile holds `SharedConfigFiles.secretMarker`
    /// and the index here in their place (see `secret(_:)`).
    public var secrets: [SecureBuffer] = []
    /// Why a file `load` read could be changed by someone other than root
    /// or the daemon's user (the file, a directory or link on its way).
    /// Such a file still counts (the AWS CLI reads it; a read-only bind
    /// of a user's ~/.aws into a container is one), with a warning, but
    /// may not choose a program the daemon runs: `credential_process` is
    /// refused while this is not empty.
    public var untrusted: [String] = []

    public init(configPath: String = "", credentialsPath: String = "",
                profiles: [String: ConfigProfile] = [:], services: [String: [String: [String: String]]] = [:]) {
        self.configPath = configPath
        self.credentialsPath = credentialsPath
        self.profiles = profiles
        self.services = services
    }

    /// The files named by `AWS_CONFIG_FILE` and `AWS_SHARED_CREDENTIALS_FILE`
    /// (default `~/.aws/config`, `~/.aws/credentials`). A missing file is
    /// empty; an unreadable or malformed one is an error. One that someone
    /// other than root or the daemon's user could change is noted in
    /// `untrusted`.
    public static func load(environment env: Environment) throws(SharedConfigError) -> SharedConfigFiles {
        let home = env.home
        func expand(_ p: String) -> String {
            if p == "~" { return home }
            if p.hasPrefix("~/") { return home + String(p.dropFirst(1)) }
            return p
        }
        let configPath = expand(env["AWS_CONFIG_FILE"] ?? "~/.aws/config")
        let credentialsPath = expand(env["AWS_SHARED_CREDENTIALS_FILE"] ?? "~/.aws/credentials")
        // The files are read into secure memory and their secret values
        // taken out before any String is made of the text.
        var secrets: [SecureBuffer] = []
        var untrusted: [String] = []
        func text(_ path: String) throws(SharedConfigError) -> String? {
            switch readSmallFileSecurelyWithStatus(path) {
            case .success(let (file, status)):
                if let problem = SharedConfigFiles.trustProblem(path, read: status) { untrusted.append(problem) }
                // The marker that stands for a secret taken out (below)
                // starts with U+0001: a file that holds one could name a
                // secret of the other file as a value of its own (the
                // secret key sent as a session token to its endpoint).
                if file.withUnsafeBytes({ $0.contains(1) }) {
                    throw SharedConfigError("\(path): holds the control character U+0001, which no setting may contain; remove it")
                }
                do {
                    return String(decoding: try SharedConfigFiles.withSecretsTakenOut(file, into: &secrets), as: UTF8.self)
                } catch {
                    throw SharedConfigError("\(path): cannot hold its secrets in secure memory: \(error)")
                }
            case .failure(let e):
                if e.isMissing { return nil }
                throw SharedConfigError("cannot read \(e)")
            }
        }
        var out = try parse(config: try text(configPath), credentials: try text(credentialsPath),
                            configPath: configPath, credentialsPath: credentialsPath)
        out.secrets = secrets
        out.untrusted = untrusted
        return out
    }

    /// Why `path`, read as the file of status `read`, could be changed by
    /// someone other than root or the daemon's user; nil when it cannot.
    /// Decided on the file read, never on a second look at the path: a
    /// device (another user's pty, which reads as the text they wrote) or
    /// a file renamed away after the read looked trusted, and chose the
    /// credential_process root runs.
    static func trustProblem(_ path: String, read: stat) -> String? {
        if read.st_mode & S_IFMT == S_IFCHR {
            // /dev/null, where people point AWS_CONFIG_FILE, reads as
            // empty and says nothing; no other device is a config file.
            var null = stat()
            if stat("/dev/null", &null) == 0, null.st_mode & S_IFMT == S_IFCHR, null.st_rdev == read.st_rdev { return nil }
            return "\(path) is a device, not a file"
        }
        switch PathTrust.checkFile(path, because: "the file chooses where the daemon sends its signed requests and what it runs") {
        case .success(let resolved):
            var now = stat()
            guard lstat(resolved, &now) == 0, now.st_dev == read.st_dev, now.st_ino == read.st_ino else {
                return "\(path) was replaced while it was read"
            }
            return nil
        case .failure(let problem):
            return problem.text
        }
    }

    /// Keys whose values are secrets.
    static let secretKeys: Set<String> = ["aws_secret_access_key", "aws_session_token", "aws_security_token"]
    /// What stands in a profile for a value kept in `secrets`: the marker
    /// (a control character no file value can hold) and the index.
    public static let secretMarker = "\u{1}kmsfs-secret:"

    /// The file's bytes with the value of every secret key replaced by the
    /// marker and its index in `secrets`, where the value goes (in secure
    /// memory). Lines are split on bytes; CR before LF is kept. A lone CR
    /// ends a line here too, and the lines that continue a secret's value
    /// (indented, as the INI parser reads them, blank and comment lines
    /// between) are left out: no part of a secret stays in the text.
    static func withSecretsTakenOut(_ file: SecureBuffer, into secrets: inout [SecureBuffer]) throws -> [UInt8] {
        var out: [UInt8] = []
        var failure: (any Error)? = nil
        file.withUnsafeBytes { (b: UnsafeRawBufferPointer) in
            out.reserveCapacity(b.count)
            var start = 0
            var inSecret = false   // the last setting was a secret key's
            while start < b.count && failure == nil {
                var end = start
                while end < b.count && b[end] != 10 && !(b[end] == 13 && (end + 1 == b.count || b[end + 1] != 10)) { end += 1 }
                let line = UnsafeRawBufferPointer(rebasing: b[start..<end])
                let content = line.drop { $0 == 32 || $0 == 9 || $0 == 13 }
                let skipped = content.isEmpty || content.first == UInt8(ascii: "#") || content.first == UInt8(ascii: ";")
                let indented = line.first == 32 || line.first == 9
                if inSecret && indented && !skipped {
                    // Part of the secret's value: left out.
                } else if let (prefix, value) = secretValue(line) {
                    inSecret = true
                    do {
                        let s = try SecureBuffer(capacity: max(value.count, 1))
                        try s.append(value)
                        out += prefix
                        out += Array((" " + secretMarker + String(secrets.count)).utf8)
                        if line.last == 13 { out.append(13) }
                        secrets.append(s)
                    } catch {
                        failure = error
                    }
                } else {
                    out += line
                    if !skipped { inSecret = false }
                }
                if end < b.count { out.append(b[end]) }
                start = end + 1
            }
        }
        if let failure { throw failure }
        return out
    }

    /// For `key = value` (or `key: value`, as the INI parser also reads)
    /// lines of a secret key: the bytes through the separator, and the value
    /// without surrounding blanks (and CR). Indented lines too: the parser
    /// reads one right after a section header as a setting, and one that
    /// continues a nested value loses nothing by keeping its secret here.
    static func secretValue(_ line: UnsafeRawBufferPointer) -> (prefix: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer)? {
        func blank(_ c: UInt8) -> Bool { c == 32 || c == 9 || c == 13 }
        guard let eq = line.firstIndex(where: { $0 == UInt8(ascii: "=") || $0 == UInt8(ascii: ":") }) else { return nil }
        var ks = 0, ke = eq
        while ks < ke && blank(line[ks]) { ks += 1 }
        while ke > ks && blank(line[ke - 1]) { ke -= 1 }
        guard ke - ks <= 32 else { return nil }
        let key = String(decoding: UnsafeRawBufferPointer(rebasing: line[ks..<ke]), as: UTF8.self).lowercased()
        guard secretKeys.contains(key) else { return nil }
        var vs = eq + 1, ve = line.count
        while vs < ve && blank(line[vs]) { vs += 1 }
        while ve > vs && blank(line[ve - 1]) { ve -= 1 }
        return (UnsafeRawBufferPointer(rebasing: line[0...eq]), UnsafeRawBufferPointer(rebasing: line[vs..<ve]))
    }

    /// A profile value that may stand for a secret taken out by `load`: the
    /// secret (shared, in secure memory), or the value itself copied there.
    public func secret(_ value: String) throws(SecureMemoryError) -> SecureBuffer {
        if value.hasPrefix(SharedConfigFiles.secretMarker),
           let i = Int(value.dropFirst(SharedConfigFiles.secretMarker.count)), secrets.indices.contains(i) {
            return secrets[i]
        }
        let b = try SecureBuffer(capacity: max(value.utf8.count, 1))
        try b.append(utf8: value)
        return b
    }

    /// Builds the profile map from the two files' text.
    public static func parse(config: String?, credentials: String?,
                             configPath: String = "config", credentialsPath: String = "credentials") throws(SharedConfigError) -> SharedConfigFiles {
        var out = SharedConfigFiles(configPath: configPath, credentialsPath: credentialsPath)
        if let config {
            // Two sections naming one profile ([default] and [profile
            // default], [profile a] and [profile  a]): the later replaces
            // the earlier whole, as botocore's profile map does. Merged key
            // by key, one's key ID went with the other's secret.
            var profiles: [(name: String, values: [String: String])] = []
            func put(_ name: String, _ values: [String: String]) {
                if let i = profiles.firstIndex(where: { $0.name == name }) { profiles[i].values = values }
                else { profiles.append((name, values)) }
            }
            // Sections are told apart as botocore's build_profile_map does:
            // [default] exactly; a name that starts with "profile" (or
            // "services") and splits, as shlex does, into two words names
            // the second ([profile "my app"] is `my app`); [ default ],
            // [sso-session ...] and anything else are not profiles.
            func second(_ name: String) -> String? {
                guard let words = ProcessCredentialProvider.split(name), words.count == 2 else { return nil }
                return words[1]
            }
            for section in try INI.parse(config, path: configPath) {
                let name = section.name
                if name.unicodeScalars.starts(with: "profile".unicodeScalars) {   // as Python's startswith
                    if let profile = second(name) { put(profile, section.values) }
                } else if name.unicodeScalars.starts(with: "services".unicodeScalars) {
                    guard let sname = second(name) else { continue }
                    var byService: [String: [String: String]] = [:]
                    for (service, value) in section.values {
                        if let nested = INI.subsection(value) { byService[service] = nested }
                    }
                    out.services[sname] = byService
                } else if name == "default" {
                    put("default", section.values)
                }
            }
            for p in profiles { out.merge(profile: p.name, values: p.values, fromCredentialsFile: false) }
        }
        if let credentials {
            for section in try INI.parse(credentials, path: credentialsPath) {
                out.merge(profile: section.name, values: section.values, fromCredentialsFile: true)
            }
        }
        return out
    }

    mutating func merge(profile name: String, values: [String: String], fromCredentialsFile: Bool) {
        var p = profiles[name] ?? ConfigProfile(name: name)
        for (k, v) in values { p.values[k] = v }
        if fromCredentialsFile && values["aws_access_key_id"] != nil { p.keysInCredentialsFile = true }
        profiles[name] = p
    }

    public func profile(_ name: String) -> ConfigProfile? { profiles[name] }

    /// `key` for `service` from the profile's `services = NAME` section
    /// (`[services NAME]` / `kms =` / `  endpoint_url = ...`).
    public func serviceValue(profile: String, service: String, key: String) -> String? {
        guard let p = profiles[profile], let sname = p["services"], let v = services[sname]?[service]?[key],
              !v.isEmpty else { return nil }
        return v
    }

    /// Which profile is meant: the explicit one, `AWS_PROFILE`,
    /// `AWS_DEFAULT_PROFILE`, else `default`.
    public static func profileName(explicit: String?, environment env: Environment) -> (name: String, named: Bool) {
        if let p = explicit ?? env["AWS_PROFILE"] ?? env["AWS_DEFAULT_PROFILE"] { return (p, true) }
        return ("default", false)
    }

    /// Where profiles were looked for, for messages.
    public var locations: String { "\(configPath) or \(credentialsPath)" }
}

/// One profile, the config file's and the credentials file's values merged.
public struct ConfigProfile: Sendable {
    public var name: String
    public var values: [String: String] = [:]
    /// The access keys came from the credentials file (which botocore
    /// prefers to `credential_process`; keys in the config file come after it).
    public var keysInCredentialsFile = false

    public init(name: String, values: [String: String] = [:]) {
        self.name = name
        self.values = values
    }

    /// The value, or nil when absent or empty.
    public subscript(_ key: String) -> String? {
        guard let v = values[key.lowercased()], !v.isEmpty else { return nil }
        return v
    }

    /// A boolean setting (`true`/`false`, any case).
    public func flag(_ key: String) -> Bool? {
        guard let v = self[key]?.lowercased() else { return nil }
        if v == "true" { return true }
        if v == "false" { return false }
        return nil
    }
}

public struct SharedConfigError: Error, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The INI dialect of the AWS shared files (Python `RawConfigParser`).
enum INI {
    struct Section {
        var name: String
        var values: [String: String]
    }

    static func parse(_ text: String, path: String) throws(SharedConfigError) -> [Section] {
        var sections: [Section] = []
        var lastKey: String?
        var lineNumber = 0
        // Lines are split on bytes: Swift's `Character` holds "\r\n" as one,
        // so splitting the String on "\n" would make a CRLF file one line.
        for var raw in Array(text.utf8).split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNumber += 1
            if raw.last == UInt8(ascii: "\r") { raw = raw.dropLast() }
            // Everything below on Unicode scalars, as Python reads the
            // file and as `withSecretsTakenOut` cut it: a blank, '#', '[',
            // '=' or ':' and a combining mark after it are one Character,
            // and a Character test saw another line than they did (a
            // secret key's line the extractor had left in the text).
            let line = Substring(String(decoding: raw, as: UTF8.self))
            let trimmed = line.trimmingCharacters(in: " \t")
            if trimmed.isEmpty { continue }
            if trimmed.unicodeScalars.first == "#" || trimmed.unicodeScalars.first == ";" { continue }
            let indented = line.unicodeScalars.first == " " || line.unicodeScalars.first == "\t"
            if indented, let key = lastKey, !sections.isEmpty {
                // A continuation line: part of the previous value.
                let old = sections[sections.count - 1].values[key] ?? ""
                sections[sections.count - 1].values[key] = old + "\n" + trimmed
                continue
            }
            if trimmed.unicodeScalars.first == "[" {
                guard let close = trimmed.unicodeScalars.lastIndex(of: "]") else {
                    throw SharedConfigError("\(path) line \(lineNumber): section header without ']'")
                }
                // As Python's configparser takes it: everything between
                // the '[' and the last ']', blanks included ([ default ] is
                // another section than [default], and no profile).
                let name = String(trimmed.unicodeScalars[trimmed.unicodeScalars.index(after: trimmed.startIndex)..<close])
                guard !name.isEmpty else { throw SharedConfigError("\(path) line \(lineNumber): empty section name") }
                // Python's RawConfigParser (strict), and so the AWS CLI,
                // refuses the file; merged, one profile's key ID went with
                // another's secret.
                guard !sections.contains(where: { $0.name == name }) else {
                    throw SharedConfigError("\(path) line \(lineNumber): section [\(name)] appears twice (the AWS CLI refuses this file too); keep one")
                }
                sections.append(Section(name: name, values: [:]))
                lastKey = nil
                continue
            }
            guard !sections.isEmpty else {
                throw SharedConfigError("\(path) line \(lineNumber): a setting before any [section]")
            }
            guard let sep = trimmed.unicodeScalars.firstIndex(where: { $0 == "=" || $0 == ":" }) else {
                throw SharedConfigError("\(path) line \(lineNumber): expected 'key = value'")
            }
            let key = String(trimmed.unicodeScalars[..<sep]).trimmingCharacters(in: " \t").lowercased()
            let value = String(trimmed.unicodeScalars[trimmed.unicodeScalars.index(after: sep)...]).trimmingCharacters(in: " \t")
            guard !key.isEmpty else { throw SharedConfigError("\(path) line \(lineNumber): a value without a key") }
            guard sections[sections.count - 1].values[key] == nil else {
                throw SharedConfigError("\(path) line \(lineNumber): '\(key)' appears twice in [\(sections[sections.count - 1].name)] (the AWS CLI refuses this file too); keep one")
            }
            sections[sections.count - 1].values[key] = value
            lastKey = key
        }
        return sections
    }

    /// `"\nendpoint_url = x\nfoo = y"` (a value continued on indented
    /// lines) as a dictionary; nil when the value is not such a block.
    static func subsection(_ value: String) -> [String: String]? {
        guard value.hasPrefix("\n") || value.isEmpty else { return nil }
        var out: [String: String] = [:]
        for line in value.split(separator: "\n") {
            let t = line.trimmingCharacters(in: " \t")
            if t.isEmpty { continue }
            guard let eq = t.unicodeScalars.firstIndex(of: "=") else { continue }
            out[String(t.unicodeScalars[..<eq]).trimmingCharacters(in: " \t").lowercased()] =
                String(t.unicodeScalars[t.unicodeScalars.index(after: eq)...]).trimmingCharacters(in: " \t")
        }
        return out
    }
}

extension Substring {
    func trimmingCharacters(in set: String) -> String { String(self).trimmingCharacters(in: set) }
}
