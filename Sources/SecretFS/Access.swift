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
    private let pattern: [UInt8]

    public init(_ text: String) {
        var t = text
        while t.hasPrefix("/") { t.removeFirst() }
        self.text = t
        self.pattern = Array(t.utf8)
    }

    public var description: String { text }

    public func matches(_ path: String) -> Bool {
        GlobPattern.match(pattern[...], Array(path.utf8)[...])
    }

    private static func match(_ p: ArraySlice<UInt8>, _ s: ArraySlice<UInt8>) -> Bool {
        var p = p
        var s = s
        while let c = p.first {
            switch c {
            case UInt8(ascii: "*"):
                let doubleStar = p.dropFirst().first == UInt8(ascii: "*")
                var rest = p.dropFirst(doubleStar ? 2 : 1)
                if doubleStar, rest.first == UInt8(ascii: "/") {
                    // "**/" also matches nothing at all.
                    if match(rest.dropFirst(), s) { return true }
                    rest = rest[...]
                }
                if rest.isEmpty { return doubleStar || !s.contains(UInt8(ascii: "/")) }
                var t = s
                while true {
                    if match(rest, t) { return true }
                    guard let h = t.first else { return false }
                    if !doubleStar && h == UInt8(ascii: "/") { return false }
                    t = t.dropFirst()
                }
            case UInt8(ascii: "?"):
                guard let h = s.first, h != UInt8(ascii: "/") else { return false }
                p = p.dropFirst(); s = s.dropFirst()
            case UInt8(ascii: "["):
                guard let h = s.first, h != UInt8(ascii: "/") else { return false }
                var q = p.dropFirst()
                var negate = false
                if let f = q.first, f == UInt8(ascii: "!") || f == UInt8(ascii: "^") { negate = true; q = q.dropFirst() }
                var matched = false
                var first = true
                while let f = q.first, f != UInt8(ascii: "]") || first {
                    first = false
                    q = q.dropFirst()
                    if q.first == UInt8(ascii: "-"), let hi = q.dropFirst().first, hi != UInt8(ascii: "]") {
                        if h >= f && h <= hi { matched = true }
                        q = q.dropFirst(2)
                    } else if h == f {
                        matched = true
                    }
                }
                guard q.first == UInt8(ascii: "]") else { return false }   // unterminated class
                if matched == negate { return false }
                p = q.dropFirst(); s = s.dropFirst()
            case UInt8(ascii: "\\"):
                let lit = p.dropFirst().first ?? c
                guard s.first == lit else { return false }
                p = p.dropFirst(2); s = s.dropFirst()
            default:
                guard s.first == c else { return false }
                p = p.dropFirst(); s = s.dropFirst()
            }
        }
        return s.isEmpty
    }
}
