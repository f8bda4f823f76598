import System
import SecureMemory
#if canImport(Glibc)
import Glibc
#endif

/// A policy file: per-path rules, one per line, first match wins.
///
///     # PATTERN       WHO MAY OPEN                     WHAT stat SHOWS (optional)
///     tls/*           allow_uid=www-data allow_gid=ssl-cert  uid=www-data gid=ssl-cert mode=0440
///     db/*.password   allow_uid=postgres                     mode=0400
///     legacy/**       allow_gid=1500
///
/// A pattern is a path in the mount (`*` and `?` within a component, `**`
/// across components, `[...]` classes). `allow_uid=`/`allow_gid=` take
/// names or numbers separated by `:`; a rule with neither admits nobody.
/// `uid=`, `gid=`, `mode=` set what `stat` shows for matching files; by
/// default a rule naming exactly one user (group) shows it as the owner
/// (group), and the mode is 0440 when a group is shown, else 0400. Paths no
/// rule matches fall back to the mount's `allow_uid=`/`allow_gid=`.
public enum PolicyFile {
    public struct ParseError: Error, CustomStringConvertible, Sendable {
        public let file: String
        public let line: Int
        public let reason: String
        public var description: String { line > 0 ? "policy \(file):\(line): \(reason)" : "policy \(file): \(reason)" }
    }

    /// Largest policy file read (a policy is a handful of lines).
    static let maxBytes = 1 << 20

    /// Reads and parses the policy file. Its rules grant access and name
    /// programs run as root (`on_change=`), so, as sshd's StrictModes, it
    /// must be a regular file owned by root (or the daemon's user) that
    /// nobody else may write, in a directory nobody else may write (or a
    /// sticky one), nor any directory above it; opened non-blocking, so a
    /// FIFO planted there is refused instead of hanging the mount or a
    /// SIGHUP.
    public static func load(path: String) throws(ParseError) -> [AccessRule] {
        func fail(_ reason: String) -> ParseError { ParseError(file: path, line: 0, reason: reason) }
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(path, O_RDONLY | O_NONBLOCK) } catch {
            throw fail("cannot read: \(Errno.text(error.code))" + (error.code == ENOENT ? "; write it (policy= in docs/guide.md) or drop policy=" : ""))
        }
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { throw fail("fstat: \(Errno.text(Errno.current))") }
        if let problem = PathTrust.unsafeOwnership(st, kind: S_IFREG, what: "it", because: "a policy grants access and runs programs") { throw fail(problem) }
        switch PathTrust.resolve(path, because: "a policy grants access and runs programs") {
        case .failure(let problem):
            throw fail(problem.text)
        case .success(let resolved):
            // The file read is the one whose path was checked.
            var rst = stat()
            guard stat(resolved, &rst) == 0, rst.st_dev == st.st_dev, rst.st_ino == st.st_ino else {
                throw fail("it changed while it was checked; try again")
            }
        }
        switch readMessage(fd, limit: maxBytes) {
        case .success(let bytes):
            return try parse(bytes: bytes, file: path)
        case .failure(let e):
            throw fail(e.code == EFBIG ? "larger than \(maxBytes) bytes" : "cannot read: \(Errno.text(e.code))")
        }
    }

    /// Why an `on_change=` program could be changed by someone other than
    /// root or the daemon's user (the file, or any directory on its path:
    /// the daemon runs it as root; `PathTrust`); nil when it cannot. The
    /// program itself may not be a symbolic link.
    public static func unsafeProgram(_ path: String) -> String? {
        unsafeProgramFile(path) ?? PathTrust.unsafeDirectories(above: path, because: "the daemon runs a program in it as root")
    }

    /// The program file alone (its directories checked elsewhere): a
    /// regular file, not a link, only root or the daemon's user may change.
    public static func unsafeProgramFile(_ path: String) -> String? {
        var st = stat()
        guard lstat(path, &st) == 0 else { return "\(path): \(Errno.text(Errno.current))" }
        return PathTrust.unsafeOwnership(st, kind: S_IFREG, what: path, because: "the daemon runs it as root")
    }

    public static func parse(_ text: String, file: String,
                             uid: (String) throws(PrincipalResolver.Failure) -> UInt32 = { (s: String) throws(PrincipalResolver.Failure) in try PrincipalResolver.uid(s) },
                             gid: (String) throws(PrincipalResolver.Failure) -> UInt32 = { (s: String) throws(PrincipalResolver.Failure) in try PrincipalResolver.gid(s) })
        throws(ParseError) -> [AccessRule] {
        try parse(bytes: Array(text.utf8), file: file, uid: uid, gid: gid)
    }

    /// Parses the file's bytes. Lines end in LF or CRLF (split on bytes:
    /// Swift's `Character` holds "\r\n" as one, so splitting a `String` on
    /// "\n" would leave a CRLF file as one long comment line). A file that
    /// yields no rule, a line that is not UTF-8, a carriage return inside a
    /// line and any line that cannot be parsed are refused: a policy that
    /// silently lost rules would widen access to the mount-wide lists.
    public static func parse(bytes: [UInt8], file: String,
                             uid: (String) throws(PrincipalResolver.Failure) -> UInt32 = { (s: String) throws(PrincipalResolver.Failure) in try PrincipalResolver.uid(s) },
                             gid: (String) throws(PrincipalResolver.Failure) -> UInt32 = { (s: String) throws(PrincipalResolver.Failure) in try PrincipalResolver.gid(s) })
        throws(ParseError) -> [AccessRule] {
        var rules: [AccessRule] = []
        var number = 0
        for var rawBytes in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            number += 1
            func fail(_ reason: String) -> ParseError { ParseError(file: file, line: number, reason: reason) }
            if rawBytes.last == UInt8(ascii: "\r") { rawBytes = rawBytes.dropLast() }
            if rawBytes.contains(UInt8(ascii: "\r")) {
                throw fail("a carriage return inside the line (old Mac line endings?); end lines with LF or CRLF")
            }
            guard String(validating: rawBytes, as: UTF8.self) != nil else {
                throw fail("the line is not UTF-8")
            }
            // Cut on bytes, never on Characters: a separator ('#', a blank,
            // '=', ':', '+') and a combining mark after it are one
            // Character, which a Character search passes over.
            if let hash = rawBytes.firstIndex(of: UInt8(ascii: "#")) { rawBytes = rawBytes[..<hash] }
            let fields = rawBytes.split(whereSeparator: { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") })
                .map { String(decoding: $0, as: UTF8.self) }
            func cut(_ s: String, on separator: Unicode.Scalar) -> [String] {
                s.utf8.split(separator: UInt8(ascii: separator), omittingEmptySubsequences: false)
                    .map { String(decoding: $0, as: UTF8.self) }
            }
            guard let first = fields.first else { continue }

            let pattern = String(first)
            if let problem = GlobPattern.problem(pattern) { throw fail("pattern '\(pattern)': \(problem)") }
            var uids = Set<UInt32>()
            var gids = Set<UInt32>()
            var units = Set<String>()
            var reloadUnits: [String]? = nil
            var onChange: String? = nil
            var credential: String? = nil
            var shown = PartialPresentation()
            var seen = Set<String>()
            for field in fields.dropFirst() {
                guard let eq = field.utf8.firstIndex(of: UInt8(ascii: "=")) else {
                    throw fail("'\(field)' is not KEY=VALUE (keys: allow_uid, allow_gid, allow_unit, uid, gid, mode, reload, on_change, credential)")
                }
                let key = String(field[..<eq])
                let value = String(field[field.utf8.index(after: eq)...])
                guard !value.isEmpty else { throw fail("'\(key)=' needs a value") }
                guard seen.insert(key).inserted else { throw fail("'\(key)' given twice") }
                do {
                    switch key {
                    case "allow_uid", "allow_user":
                        for t in cut(value, on: ":") {
                            guard !t.isEmpty else { throw fail("'\(field)' has an empty entry") }
                            uids.insert(try uid(t))
                        }
                    case "allow_gid", "allow_group":
                        for t in cut(value, on: ":") {
                            guard !t.isEmpty else { throw fail("'\(field)' has an empty entry") }
                            gids.insert(try gid(t))
                        }
                    case "allow_unit", "allow_units":
                        for t in cut(value, on: ":") {
                            guard SystemdUnitName.isValid(t) else { throw fail("'\(t)' is not a systemd unit name (such as nginx.service)") }
                            units.insert(SystemdUnitName.normalized(t))
                        }
                    case "reload":
                        let list = cut(value, on: "+")
                        for u in list where !SystemdUnitName.isValid(u) {
                            throw fail("'\(u)' is not a systemd unit name (such as nginx.service); separate units with '+'")
                        }
                        reloadUnits = list
                    case "on_change":
                        guard value.hasPrefix("/") else { throw fail("on_change=\(value): give the program's absolute path (it is run without a shell)") }
                        onChange = value
                    case "credential":
                        guard SystemdCredentialID.isValid(value) else {
                            throw fail("credential=\(value): not a systemd credential ID (letters, digits, '-', '_', '.', '@', ':'; at most 255 bytes)")
                        }
                        guard !pattern.utf8.contains(where: { "*?[\\".utf8.contains($0) }) else {
                            throw fail("credential=\(value) needs a plain path as its pattern, not '\(pattern)'")
                        }
                        credential = value
                    case "uid", "owner": shown.uid = try uid(value)
                    case "gid", "group": shown.gid = try gid(value)
                    case "mode":
                        guard let m = UInt32(value, radix: 8), m <= 0o777 else { throw fail("mode '\(value)' is not an octal mode such as 0440") }
                        guard m & 0o222 == 0 else { throw fail("mode \(value) has write bits; the tree is read-only") }
                        shown.mode = m
                    default:
                        throw fail("unknown key '\(key)' (keys: allow_uid, allow_gid, allow_unit, uid, gid, mode, reload, on_change, credential)")
                    }
                } catch let e as ParseError {
                    throw e
                } catch let e as PrincipalResolver.Failure {
                    throw fail(e.message)
                } catch {
                    throw fail("\(error)")
                }
            }
            if shown.uid == nil, uids.count == 1 { shown.uid = uids.first }
            var groupShown = shown.gid != nil
            if shown.gid == nil, gids.count == 1 { shown.gid = gids.first; groupShown = true }
            if shown.mode == nil { shown.mode = groupShown && !gids.isEmpty ? 0o440 : 0o400 }
            rules.append(AccessRule(pattern: GlobPattern(pattern), principals: Principals(uids: uids, gids: gids, units: units),
                                    presentation: shown, origin: "\(file):\(number)", reloadUnits: reloadUnits, onChange: onChange,
                                    credential: credential))
        }
        guard !rules.isEmpty else {
            throw ParseError(file: file, line: 0, reason: "no rules (every line is blank or a comment); a policy file must name at least one PATTERN")
        }
        return rules
    }
}

extension GlobPattern {
    /// Why a pattern is not valid, or nil.
    public static func problem(_ pattern: String) -> String? {
        let b = Array(pattern.utf8)
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\") { i += 2; continue }
            if b[i] == UInt8(ascii: "[") {
                var j = i + 1
                if j < b.count, b[j] == UInt8(ascii: "!") || b[j] == UInt8(ascii: "^") { j += 1 }
                if j < b.count, b[j] == UInt8(ascii: "]") { j += 1 }
                while j < b.count, b[j] != UInt8(ascii: "]") { j += 1 }
                if j >= b.count { return "unterminated [ character class" }
                i = j
            }
            i += 1
        }
        if pattern.utf8.split(separator: UInt8(ascii: "/")).contains(where: { $0.elementsEqual("..".utf8) || $0.elementsEqual(".".utf8) }) {
            return "'.' and '..' never appear in mount paths"
        }
        // What the rule matches against is the pattern without its leading
        // '/'s (GlobPattern.init): an empty piece in it matches no file, and
        // a rule that matches nothing silently leaves its files to the
        // mount-wide allow_ lists.
        let body = b.drop(while: { $0 == UInt8(ascii: "/") })
        if body.isEmpty { return "an empty pattern matches no file; write ** for every file" }
        if body.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).contains(where: { $0.isEmpty }) {
            return "an empty component ('//', or a '/' at the end) never appears in mount paths, so the rule would match no file; for everything under a directory write DIR/**"
        }
        return nil
    }
}
