import Testing
import Log

/// journald's native format, as `Journal.encode` writes it and journald
/// reads it (systemd's "Native Journal Protocol"). An audit record's fields are
/// checked end to end in Tests/integration/test_package.py.
@Suite struct JournalTests {
    @Test func aPlainValueIsOneNameEqualsValueLine() {
        #expect(Journal.encode([("MESSAGE", "mounted /a on /b"), ("PRIORITY", "5")])
                == Array("MESSAGE=mounted /a on /b\nPRIORITY=5\n".utf8))
    }

    @Test func aValueWithANewlineIsSentSizedSoItCannotForgeAField() {
        let value = "evil\nPRIORITY=0"
        let got = Journal.encode([("KMSFS_PATH", value)])
        let want = Array("KMSFS_PATH\n".utf8) + [15, 0, 0, 0, 0, 0, 0, 0] + Array(value.utf8) + [0x0A]
        #expect(got == want)
    }

    @Test func namesJournaldWouldRejectAreLeftOut() {
        // Lower case, a leading underscore (journald's own fields), other
        // bytes, empty, too long.
        let bad = ["message", "_PID", "KMSFS-PATH", "A=B", "", String(repeating: "A", count: 65)]
        #expect(Journal.encode(bad.map { ($0, "x") }) == [])
        #expect(Journal.encode([("KMSFS_KMS_MS", "3"), ("_UID", "0")]) == Array("KMSFS_KMS_MS=3\n".utf8))
    }
}
