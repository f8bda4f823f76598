import Testing
import SecretFS
import System
#if canImport(Glibc)
import Glibc
#endif

@Suite struct GlobTests {
    @Test(arguments: [
        ("tls/*", "tls/ssl.pem", true),
        ("tls/*", "tls/sub/ssl.pem", false),
        ("tls/**", "tls/sub/ssl.pem", true),
        ("**/*.pem", "a/b/c.pem", true),
        ("**/*.pem", "c.pem", true),
        ("db/*.pass", "db/main.pass", true),
        ("db/*.pass", "db/main.passwd", false),
        ("?.key", "a.key", true),
        ("?.key", "ab.key", false),
        ("[ab].key", "b.key", true),
        ("[!ab].key", "b.key", false),
        ("/tls/*", "tls/x", true),
        ("//tls/*", "tls/x", true),
        ("/\u{301}x", "\u{301}x", true),   // "/" and the mark are one Character: stripped on bytes
        ("*", "x/y", false),
        ("**", "x/y", true),
    ])
    func matches(_ pattern: String, _ path: String, _ expected: Bool) {
        #expect(GlobPattern(pattern).matches(path) == expected)
    }

    /// The caller chooses the path: a pattern of several stars against a
    /// long path that almost matches tried n^k ways (this one ran for
    /// minutes); each pair of places is now tried once.
    @Test func manyStarsOnALongPathFinishAtOnce() {
        let path = String(repeating: "a/", count: 400) + "b"
        let t = SystemClock.monotonic()
        #expect(!GlobPattern("**a**a**a**a**a**c").matches(path))
        #expect(!GlobPattern("*a*a*a*a*c").matches(String(repeating: "a", count: 4000)))
        #expect(GlobPattern("**a**a**a**a**a**b").matches(path))
        #expect(SystemClock.monotonic() - t < 10)
    }

    /// The matcher agrees with the backtracking one it replaced (kept here
    /// as the reference) on random small patterns and paths over an
    /// alphabet of the bytes that mean something.
    @Test func agreesWithTheBacktrackingMatcher() {
        let alphabet = Array("ab/*?[]!-\\".utf8)
        var rng = SplitMix(seed: 16)
        for _ in 0..<50_000 {
            let p = (0..<rng.below(9)).map { _ in alphabet[rng.below(alphabet.count)] }
            let s = (0..<rng.below(9)).map { _ in alphabet[rng.below(6)] }
            let ps = String(decoding: p, as: UTF8.self), ss = String(decoding: s, as: UTF8.self)
            var trimmed = p[...]
            while trimmed.first == UInt8(ascii: "/") { trimmed = trimmed.dropFirst() }
            let want = Reference.match(trimmed, s[...])
            #expect(GlobPattern(ps).matches(ss) == want, "pattern \(ps) path \(ss)")
            if GlobPattern(ps).matches(ss) != want { return }
        }
    }
}

/// A small deterministic generator for the tests.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

/// The backtracking matcher GlobPattern used until its cost was bounded.
enum Reference {
    static func match(_ p: ArraySlice<UInt8>, _ s: ArraySlice<UInt8>) -> Bool {
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

@Suite struct AccessPolicyTests {
    let alice = Caller(uid: 1001, gid: 1001, pid: 1) { [2000] }
    let bob = Caller(uid: 1002, gid: 1002, pid: 2) { [] }
    let root = Caller(uid: 0, gid: 0, pid: 3)

    @Test func defaultsToRootOnly() {
        let p = AccessPolicy(defaultPrincipals: Principals(), defaultPresentation: Presentation(uid: 0, gid: 0, mode: 0o400))
        #expect(p.admits(root, path: "x"))
        #expect(!p.admits(alice, path: "x"))
    }

    @Test func listsAdmitUsersPrimaryAndSupplementaryGroups() {
        let p = AccessPolicy(defaultPrincipals: Principals(uids: [1002], gids: [2000]),
                             defaultPresentation: Presentation(uid: 0, gid: 0, mode: 0o440))
        #expect(p.admits(alice, path: "x"))     // supplementary group 2000
        #expect(p.admits(bob, path: "x"))       // uid
        #expect(!p.admits(root, path: "x"))     // root follows the lists
        let primary = Caller(uid: 5, gid: 2000, pid: 4)
        #expect(p.admits(primary, path: "x"))
    }

    @Test func firstMatchingRuleDecides() {
        let rules = [
            AccessRule(pattern: GlobPattern("tls/*"), principals: Principals(uids: [1001]),
                       presentation: PartialPresentation(uid: 1001, mode: 0o400), origin: "p:1"),
            AccessRule(pattern: GlobPattern("db/*"), principals: Principals(uids: [1002]), origin: "p:2"),
        ]
        let p = AccessPolicy(defaultPrincipals: Principals(uids: [0]), rules: rules,
                             defaultPresentation: Presentation(uid: 0, gid: 0, mode: 0o400))
        #expect(p.admits(alice, path: "tls/a.pem"))
        #expect(!p.admits(bob, path: "tls/a.pem"))
        #expect(p.admits(bob, path: "db/pass"))
        #expect(!p.admits(alice, path: "db/pass"))
        #expect(p.admits(root, path: "other"))
        #expect(p.presentation(for: "tls/a.pem") == Presentation(uid: 1001, gid: 0, mode: 0o400))
    }

    @Test func presentationNeverHasWriteBits() {
        #expect(Presentation(uid: 0, gid: 0, mode: 0o666).mode == 0o444)
    }
}

@Suite struct PolicyFileTests {
    let users: [String: UInt32] = ["www-data": 33, "postgres": 105]
    let groups: [String: UInt32] = ["ssl-cert": 110]

    func parse(_ text: String) throws(PolicyFile.ParseError) -> [AccessRule] {
        try PolicyFile.parse(text, file: "/etc/kmsfs/policy",
            uid: { (s: String) throws(PrincipalResolver.Failure) -> UInt32 in
                if let n = UInt32(s) { return n }
                guard let v = users[s] else { throw PrincipalResolver.Failure(message: "no such user '\(s)'") }
                return v
            },
            gid: { (s: String) throws(PrincipalResolver.Failure) -> UInt32 in
                if let n = UInt32(s) { return n }
                guard let v = groups[s] else { throw PrincipalResolver.Failure(message: "no such group '\(s)'") }
                return v
            })
    }

    @Test func parsesRulesWithDefaultsAndComments() throws {
        let rules = try parse("""
            # comment
            tls/*   allow_uid=www-data allow_gid=ssl-cert   # trailing comment

            db/**   allow_uid=postgres:0 uid=postgres mode=0400
            nobody/*
            """)
        #expect(rules.count == 3)
        #expect(rules[0].principals == Principals(uids: [33], gids: [110]))
        #expect(rules[0].presentation == PartialPresentation(uid: 33, gid: 110, mode: 0o440))
        #expect(rules[0].origin == "/etc/kmsfs/policy:2")
        #expect(rules[1].presentation == PartialPresentation(uid: 105, gid: nil, mode: 0o400))
        #expect(rules[2].principals.isEmpty)
    }

    @Test(arguments: [
        ("a allow_uid=ghost", "policy /etc/kmsfs/policy:1: no such user 'ghost'"),
        ("a mode=0666", "policy /etc/kmsfs/policy:1: mode 0666 has write bits; the tree is read-only"),
        ("\n\nb[ allow_uid=0", "policy /etc/kmsfs/policy:3: pattern 'b[': unterminated [ character class"),
        ("a allow_uid=0 allow_uid=1", "policy /etc/kmsfs/policy:1: 'allow_uid' given twice"),
        ("a allow_uid", "policy /etc/kmsfs/policy:1: 'allow_uid' is not KEY=VALUE (keys: allow_uid, allow_gid, allow_unit, uid, gid, mode, reload, on_change, credential)"),
        ("a color=red", "policy /etc/kmsfs/policy:1: unknown key 'color' (keys: allow_uid, allow_gid, allow_unit, uid, gid, mode, reload, on_change, credential)"),
        ("../x allow_uid=0", "policy /etc/kmsfs/policy:1: pattern '../x': '.' and '..' never appear in mount paths"),
        // "/" and a combining mark after it are one Character: a split on
        // Characters saw "../\u{301}b" as one component.
        ("a/../\u{301}b allow_uid=0", "policy /etc/kmsfs/policy:1: pattern 'a/../\u{301}b': '.' and '..' never appear in mount paths"),
        // A rule that can match no file would leave its files to the
        // mount-wide lists without a word.
        ("secrets/ allow_uid=0", "policy /etc/kmsfs/policy:1: pattern 'secrets/': an empty component ('//', or a '/' at the end) never appears in mount paths, so the rule would match no file; for everything under a directory write DIR/**"),
        ("a//b allow_uid=0", "policy /etc/kmsfs/policy:1: pattern 'a//b': an empty component ('//', or a '/' at the end) never appears in mount paths, so the rule would match no file; for everything under a directory write DIR/**"),
        ("// allow_uid=0", "policy /etc/kmsfs/policy:1: pattern '//': an empty pattern matches no file; write ** for every file"),
        ("", "policy /etc/kmsfs/policy: no rules (every line is blank or a comment); a policy file must name at least one PATTERN"),
        ("# only\r\n\r\n  # comments\r\n", "policy /etc/kmsfs/policy: no rules (every line is blank or a comment); a policy file must name at least one PATTERN"),
        ("a allow_uid=0\rb allow_uid=1\n", "policy /etc/kmsfs/policy:1: a carriage return inside the line (old Mac line endings?); end lines with LF or CRLF"),
        ("# x\ra allow_uid=0\n", "policy /etc/kmsfs/policy:1: a carriage return inside the line (old Mac line endings?); end lines with LF or CRLF"),
    ])
    func refusesWithFileLineAndReason(_ text: String, _ expected: String) {
        do {
            _ = try parse(text)
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.description == expected)
        }
    }

    /// Regression (issue 13 A1): a CRLF file was one comment line, and every
    /// path fell back to the mount-wide lists.
    @Test func crlfLinesKeepEveryRule() throws {
        let text = "# first match wins\r\ntls/*   allow_uid=www-data   mode=0400\r\n\r\ndb/**   allow_uid=postgres\r\n"
        let rules = try parse(text)
        #expect(rules.count == 2)
        #expect(rules[0].principals == Principals(uids: [33]))
        #expect(rules[0].origin == "/etc/kmsfs/policy:2")
        #expect(rules[1].principals == Principals(uids: [105]))
        #expect(rules[1].origin == "/etc/kmsfs/policy:4")
        let policy = AccessPolicy(defaultPrincipals: Principals(uids: [105]), rules: rules,
                                  defaultPresentation: Presentation(uid: 0, gid: 0, mode: 0o400))
        #expect(!policy.admits(Caller(uid: 105, gid: 105, pid: 1), path: "tls/a.pem"))
        #expect(policy.admits(Caller(uid: 33, gid: 33, pid: 1), path: "tls/a.pem"))
    }

    /// A separator followed by a combining mark is one Character with it;
    /// the file is cut on bytes, so the mark stays with what follows.
    @Test func separatorsAreFoundOnBytesNotCharacters() throws {
        let rules = try parse("tls/*\tallow_uid=www-data:0 mode=0400 #\u{301} gid=ssl-cert, a comment\n")
        #expect(rules.count == 1)
        #expect(rules[0].principals == Principals(uids: [33, 0]))
        #expect(rules[0].presentation == PartialPresentation(uid: nil, gid: nil, mode: 0o400))
        do {
            _ = try parse("tls/* allow_uid=www-data:\u{301}0\n")
            Issue.record("accepted a user named by a combining mark")
        } catch {
            #expect(error.description == "policy /etc/kmsfs/policy:1: no such user '\u{301}0'")
        }
    }

    @Test func aLineThatIsNotUTF8IsRefused() {
        let bytes: [UInt8] = Array("a allow_uid=0\n".utf8) + [0x62, 0xFF, 0x20] + Array("allow_uid=0\n".utf8)
        do {
            _ = try PolicyFile.parse(bytes: bytes, file: "/p", uid: { _ in 0 }, gid: { _ in 0 })
            Issue.record("accepted invalid UTF-8")
        } catch {
            #expect(error.description == "policy /p:2: the line is not UTF-8")
        }
    }

    @Test func unitsAndNotificationTargetsAreRuleFields() throws {
        let rules = try parse("app/*  allow_unit=nginx:php-fpm.service  reload=nginx+php-fpm.service  on_change=/usr/local/bin/tell\n")
        #expect(rules[0].principals.units == ["nginx.service", "php-fpm.service"])
        #expect(rules[0].reloadUnits == ["nginx", "php-fpm.service"])
        #expect(rules[0].onChange == "/usr/local/bin/tell")
        for bad in ["x allow_unit=-H\n", "x reload=a;b\n", "x reload=a+\n", "x on_change=tell\n", "x allow_unit=a::b\n"] {
            #expect(throws: PolicyFile.ParseError.self) { try parse(bad) }
        }
    }
}

@Suite struct UnitPrincipalTests {
    @Test func aUnitListAdmitsOnlyThatUnitsProcessesWhateverTheirUser() {
        let p = Principals(units: ["web.service"])
        #expect(p.admits(Caller(uid: 33, gid: 33, pid: 1, unit: { "web.service" })))
        #expect(!p.admits(Caller(uid: 33, gid: 33, pid: 2, unit: { "batch.service" })))
        #expect(!p.admits(Caller(uid: 0, gid: 0, pid: 3, unit: { nil })))
        #expect(!p.isEmpty)
    }

    @Test func theUnitIsReadOnlyWhenUsersAndGroupsDoNotDecide() {
        let p = Principals(uids: [33], units: ["web.service"])
        #expect(p.admits(Caller(uid: 33, gid: 33, pid: 1, unit: { Issue.record("unit read needlessly"); return nil })))
    }

    @Test func cgroupDocumentsNameTheFirstUnitPastTheSlices() {
        func unit(_ s: String) -> String? { unitFromCgroup(Array(s.utf8)) }
        #expect(unit("0::/system.slice/nginx.service\n") == "nginx.service")
        #expect(unit("0::/system.slice/app.service/worker\n") == "app.service")
        #expect(unit("0::/init.scope\n") == "init.scope")
        // Below a unit the tree may be delegated (a user's manager, a
        // container): a sub-cgroup named after another unit is not that unit.
        #expect(unit("0::/user.slice/user-1000.slice/user@1000.service/app.slice/nginx.service\n") == "user@1000.service")
        #expect(unit("0::/system.slice/docker-1f2e.scope/system.slice/nginx.service\n") == "docker-1f2e.scope")
        #expect(unit("0::/system.slice/batch.service/nginx.service\n") == "batch.service")
        #expect(unit("0::/system.slice/batch.service/x.slice/nginx.service\n") == "batch.service")
        #expect(unit("0::/system.slice/user.slice\n") == nil)
        #expect(unit("0::/system.slice/payload/nginx.service\n") == nil)
        #expect(unit("0::/system.slice/ev\u{1b}il/nginx.service\n") == nil)
        #expect(unit("0::/user.slice/user-1000.slice/session-3.scope\n") == "session-3.scope")
        #expect(unit("12:name=systemd:/system.slice/cron.service\n0::/\n") == "cron.service")
        #expect(unit("0::/\n") == nil)
        #expect(unit("garbage") == nil)
        #expect(unit("0::/system.slice/ev\u{1b}il.service\n") == nil)
    }

    @Test func unitNamesAreCheckedAndNormalized() {
        #expect(SystemdUnitName.isValid("app@blue.service"))
        #expect(!SystemdUnitName.isValid("-H"))
        #expect(!SystemdUnitName.isValid("a b"))
        #expect(!SystemdUnitName.isValid(""))
        #expect(SystemdUnitName.normalized("nginx") == "nginx.service")
        #expect(SystemdUnitName.normalized("x.scope") == "x.scope")
    }
}

/// A policy grants access and names programs run as root: it is read only
/// from a regular file that only root (or the daemon's user) can change,
/// and a FIFO there is refused at once rather than waited on.
@Suite struct PolicyFileOwnershipTests {
    @Test func onlyAFileNobodyElseMayChangeIsRead() throws {
        var template = Array("/tmp/kmsfs-policy-test.XXXXXX".utf8CString)
        let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        defer { _ = system("rm -rf '\(dir)'") }
        let path = dir + "/policy"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = "db/*  allow_uid=0\n".withCString { write(fd, $0, strlen($0)) }
        close(fd)
        #expect(try PolicyFile.load(path: path).count == 1)
        for (mode, needle) in [(0o666 as mode_t, "may be written by anyone"), (0o664, "may be written by its group")] {
            chmod(path, mode)
            #expect { try PolicyFile.load(path: path) } throws: { "\($0)".contains(needle) }
        }
        chmod(path, 0o644)
        chmod(dir, 0o777)   // anyone may replace it
        #expect { try PolicyFile.load(path: path) } throws: { "\($0)".contains("its directory \(dir) may be written by anyone") }
        chmod(dir, 0o1777)  // sticky, as /tmp: nobody else may replace root's file
        #expect(try PolicyFile.load(path: path).count == 1)
        // A directory further up that anyone may write: the one below can
        // be renamed away and replaced (sshd's StrictModes checks them all).
        chmod(dir, 0o755)
        let inner = dir + "/etc"
        mkdir(inner, 0o755)
        let deeper = inner + "/policy"
        _ = system("cp '\(path)' '\(deeper)'")
        chmod(dir, 0o777)
        #expect { try PolicyFile.load(path: deeper) } throws: { "\($0)".contains("\(dir), a directory above it, may be written by anyone") }
        chmod(dir, 0o755)
        #expect(try PolicyFile.load(path: deeper).count == 1)
        chmod(dir, 0o700)
        chown(path, 4242, 4242)
        #expect { try PolicyFile.load(path: path) } throws: { "\($0)".contains("belongs to uid 4242") }
        let fifo = dir + "/fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        #expect { try PolicyFile.load(path: fifo) } throws: { "\($0)".contains("not a regular file") }
    }
}

/// SOURCE on a file system that ignores case: another spelling of a name
/// opens the same file but misses a case-sensitive policy rule, so the
/// daemon says so at mount.
@Suite struct CaseInsensitiveSourceTests {
    @Test func knownCaseFoldingFileSystemsAreNamed() throws {
        #expect(SourceTree.caseInsensitiveFileSystem(type: 0x4d44) == "vfat")
        #expect(SourceTree.caseInsensitiveFileSystem(type: 0x2011BAB0) == "exfat")
        #expect(SourceTree.caseInsensitiveFileSystem(type: 0xFFFF_FFFF_FF53_4D42) == "cifs/smb")   // sign-extended f_type
        #expect(SourceTree.caseInsensitiveFileSystem(type: 0xEF53) == nil)   // ext4
        #expect(SourceTree.caseInsensitiveFileSystem(type: 0x01021994) == nil)   // tmpfs
        #expect(try SourceTree(path: "/tmp").caseInsensitiveFileSystem == nil)
    }
}
