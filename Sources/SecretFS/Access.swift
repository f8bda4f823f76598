/// Who is calling: the credentials of the process behind a FUSE request.
public struct Caller: Sendable {
    public var uid: UInt32
    public var gid: UInt32
    public var pid: Int32
    /// Supplementary groups, fetched only when a decision needs them
    /// (reading them costs a trip through /proc).
    public var supplementaryGroups: @Sendable () -> [UInt32]
    /// The systemd unit the calling process runs in, read (from its
    /// cgroup) only when a decision needs it; nil when unknown.
    public var unit: @Sendable () -> String?

    public init(uid: UInt32, gid: UInt32, pid: Int32, supplementaryGroups: @escaping @Sendable () -> [UInt32] = { [] },
                unit: @escaping @Sendable () -> String? = { nil }) {
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.supplementaryGroups = supplementaryGroups
        self.unit = unit
    }
}

/// A set of users and groups.
public struct Principals: Sendable, Equatable, CustomStringConvertible {
    public var uids: Set<UInt32>
    public var gids: Set<UInt32>
    /// systemd units (`nginx.service`), whatever user their processes run as.
    public var units: Set<String>

    public init(uids: Set<UInt32> = [], gids: Set<UInt32> = [], units: Set<String> = []) {
        self.uids = uids
        self.gids = gids
        self.units = units
    }

    public var isEmpty: Bool { uids.isEmpty && gids.isEmpty && units.isEmpty }

    /// True when the caller's uid is listed, or its primary group, or one of
    /// its supplementary groups, or the systemd unit its process runs in.
    public func admits(_ caller: Caller) -> Bool {
        if uids.contains(caller.uid) { return true }
        if !gids.isEmpty {
            if gids.contains(caller.gid) { return true }
            if caller.supplementaryGroups().contains(where: { gids.contains($0) }) { return true }
        }
        if !units.isEmpty, let unit = caller.unit(), units.contains(unit) { return true }
        return false
    }

    public var description: String {
        let u = uids.sorted().map(String.init).joined(separator: ":")
        let g = gids.sorted().map(String.init).joined(separator: ":")
        let n = units.sorted().joined(separator: ":")
        return "uids=[\(u)] gids=[\(g)]" + (units.isEmpty ? "" : " units=[\(n)]")
    }
}

/// systemd credential IDs (`LoadCredential=ID:...`) as kmsfs serves them.
public enum SystemdCredentialID {
    /// A name systemd accepts as a credential ID that is also one plain
    /// file name: no '/', not '.' or '..'.
    public static func isValid(_ id: String) -> Bool {
        guard !id.isEmpty, id.utf8.count <= 255, id != ".", id != ".." else { return false }
        return id.utf8.allSatisfy { c in
            (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122)
                || c == UInt8(ascii: "-") || c == UInt8(ascii: "_") || c == UInt8(ascii: ".")
                || c == UInt8(ascii: "@") || c == UInt8(ascii: ":")
        }
    }
}

/// systemd unit names as kmsfs takes them from options and policies.
public enum SystemdUnitName {
    /// One unit name that systemctl takes as a unit and never as an option:
    /// `nginx`, `nginx.service`, `app@blue.service`.
    public static func isValid(_ u: String) -> Bool {
        guard let first = u.utf8.first, first != UInt8(ascii: "-"), u.utf8.count <= 255 else { return false }
        return u.utf8.allSatisfy { c in
            (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122)
                || c == UInt8(ascii: ":") || c == UInt8(ascii: "_") || c == UInt8(ascii: ".")
                || c == UInt8(ascii: "@") || c == UInt8(ascii: "-") || c == UInt8(ascii: "\\")
        }
    }

    /// `nginx` as systemd names it: `nginx.service` (a name with a unit
    /// type suffix stays as it is).
    public static func normalized(_ u: String) -> String {
        let types = [".service", ".scope", ".socket", ".mount", ".timer", ".slice", ".target", ".path", ".swap", ".device", ".automount"]
        return types.contains(where: { u.hasSuffix($0) }) ? u : u + ".service"
    }
}

/// Owner, group and permission bits that `stat` shows for a file.
public struct Presentation: Sendable, Equatable {
    public var uid: UInt32
    public var gid: UInt32
    /// Permission bits (never any write bit).
    public var mode: UInt32

    public init(uid: UInt32, gid: UInt32, mode: UInt32) {
        self.uid = uid
        self.gid = gid
        self.mode = mode & 0o555
    }
}

/// One rule of a policy file: paths matching `pattern` may be opened by
/// `principals`, and show `presentation` where given.
public struct AccessRule: Sendable {
    public var pattern: GlobPattern
    public var principals: Principals
    public var presentation: PartialPresentation
    /// Where the rule came from (file:line), for log lines.
    public var origin: String
    /// Whom to tell when a matching secret's ciphertext changes (`reload=`,
    /// `on_change=`); nil: the mount-wide options.
    public var reloadUnits: [String]?
    public var onChange: String?
    /// The ID under which `credential_socket=` serves this rule's one file
    /// (`credential=ID`; the pattern is then a plain path).
    public var credential: String?

    public init(pattern: GlobPattern, principals: Principals, presentation: PartialPresentation = .init(), origin: String,
                reloadUnits: [String]? = nil, onChange: String? = nil, credential: String? = nil) {
        self.credential = credential
        self.pattern = pattern
        self.principals = principals
        self.presentation = presentation
        self.origin = origin
        self.reloadUnits = reloadUnits
        self.onChange = onChange
    }
}

public struct PartialPresentation: Sendable, Equatable {
    public var uid: UInt32?
    public var gid: UInt32?
    public var mode: UInt32?
    public init(uid: UInt32? = nil, gid: UInt32? = nil, mode: UInt32? = nil) {
        self.uid = uid
        self.gid = gid
        self.mode = mode
    }
}

/// The access decision: who may open which path, and what `stat` shows.
///
/// Without rules, `defaultPrincipals` (from `allow_uid=`/`allow_gid=`) may
/// open every file. With rules, the first rule whose pattern matches a path
/// decides it; a path no rule matches falls back to `defaultPrincipals`.
/// Root is not special: it is admitted only when listed. With no lists and
/// no rules, only uid 0 (the mounting administrator) is admitted.
public struct AccessPolicy: Sendable {
    public var defaultPrincipals: Principals
    public var rules: [AccessRule]
    public var defaultPresentation: Presentation

    public init(defaultPrincipals: Principals, rules: [AccessRule] = [], defaultPresentation: Presentation) {
        self.defaultPrincipals = defaultPrincipals.isEmpty ? Principals(uids: [0]) : defaultPrincipals
        self.rules = rules
        self.defaultPresentation = defaultPresentation
    }

    public func rule(for path: String) -> AccessRule? {
        rules.first { $0.pattern.matches(path) }
    }

    public func admits(_ caller: Caller, path: String) -> Bool {
        principals(for: path).admits(caller)
    }

    /// Whether `uid` is root or is named by uid, in the mount's list or a
    /// rule's: someone the operator chose, not merely a member of a named
    /// group or unit (a group member may map thousands of subordinate uids
    /// into a user namespace and keep the group).
    public func namesUid(_ uid: UInt32) -> Bool {
        uid == 0 || defaultPrincipals.uids.contains(uid) || rules.contains { $0.principals.uids.contains(uid) }
    }

    /// Whether any decision may need a caller's supplementary groups.
    public var namesGroups: Bool {
        !defaultPrincipals.gids.isEmpty || rules.contains { !$0.principals.gids.isEmpty }
    }

    /// Who may open `path`: its rule's principals, else the mount's.
    public func principals(for path: String) -> Principals {
        rule(for: path)?.principals ?? defaultPrincipals
    }

    /// The mount path a systemd credential ID names: a rule's
    /// `credential=ID`, else the file `ID` at the top of the mount.
    public func credentialPath(for id: String) -> String {
        rules.first { $0.credential == id }?.pattern.text ?? id
    }

    public func presentation(for path: String) -> Presentation {
        var p = defaultPresentation
        if let r = rule(for: path) {
            if let u = r.presentation.uid { p.uid = u }
            if let g = r.presentation.gid { p.gid = g }
            if let m = r.presentation.mode { p.mode = m & 0o555 }
        }
        return p
    }
}

/// Shell-style patterns over mount paths (`tls/*.pem`, `db/**`): `*` and
/// `?` stay within one path component, `**` crosses components, `[...]`
/// is a character class.
public struct GlobPattern: Sendable, Equatable, CustomStringConvertible {
    public let text: String
    private let tokens: [Token]

    /// One element of a pattern. `*` and `?` and a class match no `/`;
    /// `**` matches anything; `**/` also matches nothing at all.
    private enum Token: Sendable, Equatable {
        case byte(UInt8)
        case one
        case set([UInt8], negated: Bool)   // pairs of lowest and highest byte
        case never                         // an unterminated class
        case star, doubleStar, doubleStarSlash
    }

    public init(_ text: String) {
        // On bytes: "/" and a combining mark after it are one Character.
        let t = String(decoding: text.utf8.drop(while: { $0 == UInt8(ascii: "/") }), as: UTF8.self)
        self.text = t
        self.tokens = GlobPattern.tokens(Array(t.utf8))
    }

    public var description: String { text }

    private static func tokens(_ p: [UInt8]) -> [Token] {
        let star = UInt8(ascii: "*"), slash = UInt8(ascii: "/")
        var out: [Token] = []
        var i = 0
        while i < p.count {
            let c = p[i]
            switch c {
            case star:
                if i + 1 < p.count, p[i + 1] == star {
                    if i + 2 < p.count, p[i + 2] == slash { out.append(.doubleStarSlash); i += 3 } else { out.append(.doubleStar); i += 2 }
                } else {
                    out.append(.star); i += 1
                }
            case UInt8(ascii: "?"):
                out.append(.one); i += 1
            case UInt8(ascii: "["):
                var q = i + 1
                var negated = false
                if q < p.count, p[q] == UInt8(ascii: "!") || p[q] == UInt8(ascii: "^") { negated = true; q += 1 }
                var ranges: [UInt8] = []
                var first = true
                while q < p.count, p[q] != UInt8(ascii: "]") || first {
                    first = false
                    let lo = p[q]
                    q += 1
                    if q + 1 < p.count, p[q] == UInt8(ascii: "-"), p[q + 1] != UInt8(ascii: "]") {
                        ranges += [lo, p[q + 1]]
                        q += 2
                    } else {
                        ranges += [lo, lo]
                    }
                }
                guard q < p.count else { out.append(.never); i = p.count; break }   // unterminated: matches nothing
                out.append(.set(ranges, negated: negated))
                i = q + 1
            case UInt8(ascii: "\\"):
                out.append(.byte(i + 1 < p.count ? p[i + 1] : c)); i += 2
            default:
                out.append(.byte(c)); i += 1
            }
        }
        return out
    }

    /// Whether `path` matches, in time and memory proportional to the
    /// pattern's length times the path's, whatever the pattern: the caller
    /// chooses the path (a few KiB), and a pattern of k stars tried by
    /// backtracking took up to n^k steps (minutes for five stars).
    /// `next[j]`: whether the tokens after the current one match the path
    /// from byte j; filled from the pattern's end to its start.
    public func matches(_ path: String) -> Bool {
        let s = Array(path.utf8)
        let n = s.count
        let slash = UInt8(ascii: "/")
        var next = [Bool](repeating: false, count: n + 1)
        next[n] = true
        var row = [Bool](repeating: false, count: n + 1)
        for token in tokens.reversed() {
            switch token {
            case .star, .doubleStar:
                row[n] = next[n]
                for j in stride(from: n - 1, through: 0, by: -1) {
                    row[j] = next[j] || ((token == .doubleStar || s[j] != slash) && row[j + 1])
                }
            case .doubleStarSlash:
                // Nothing at all, or anything up to and including a `/`.
                var slashThenRest = false
                row[n] = next[n]
                for j in stride(from: n - 1, through: 0, by: -1) {
                    if s[j] == slash && next[j + 1] { slashThenRest = true }
                    row[j] = next[j] || slashThenRest
                }
            case .byte(let c):
                row[n] = false
                for j in 0..<n { row[j] = s[j] == c && next[j + 1] }
            case .one:
                row[n] = false
                for j in 0..<n { row[j] = s[j] != slash && next[j + 1] }
            case .set(let ranges, let negated):
                row[n] = false
                for j in 0..<n {
                    guard s[j] != slash, next[j + 1] else { row[j] = false; continue }
                    var inSet = false
                    var k = 0
                    while k + 1 < ranges.count { if s[j] >= ranges[k] && s[j] <= ranges[k + 1] { inSet = true; break }; k += 2 }
                    row[j] = inSet != negated
                }
            case .never:
                for j in 0...n { row[j] = false }
            }
            swap(&row, &next)
        }
        return next[0]
    }
}
