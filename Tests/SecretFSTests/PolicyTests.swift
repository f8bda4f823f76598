import Testing
import SecretFS

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
        ("*", "x/y", false),
        ("**", "x/y", true),
    ])
    func matches(_ pattern: String, _ path: String, _ expected: Bool) {
        #expect(GlobPattern(pattern).matches(path) == expected)
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
