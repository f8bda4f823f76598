import Testing
import Log
#if canImport(Glibc)
import Glibc
#endif

/// The one escaper every log line, audit record, `kmsfs status` and
/// `kmsfs check` line goes through: bytes in, bytes out.
@Suite struct LogEscapeTests {
    static func esc(_ bytes: [UInt8], quoting: [UInt8] = []) -> [UInt8] {
        Array(LogEscape.escape(bytes, quoting: quoting).utf8)
    }

    @Test func crlfIsTwoEscapesNotOneCharacter() {
        // Swift's Character treats "\r\n" as one: the old escaper missed it.
        let forged = Array("x\r\nkmsfs: error: FORGED".utf8)
        #expect(LogEscapeTests.esc(forged) == Array("x\\r\\nkmsfs: error: FORGED".utf8))
        #expect(LogEscape.escape("x\r\nkmsfs: error: FORGED") == "x\\r\\nkmsfs: error: FORGED")
    }

    @Test func loneCRAndLFAndTab() {
        #expect(LogEscapeTests.esc([0x61, 0x0D, 0x62]) == Array("a\\rb".utf8))
        #expect(LogEscapeTests.esc([0x0A]) == Array("\\n".utf8))
        #expect(LogEscapeTests.esc([0x09]) == Array("\\t".utf8))
    }

    @Test func everyOtherControlByteAndDEL() {
        #expect(LogEscapeTests.esc([0x1B, 0x5B, 0x32, 0x4A]) == Array("\\x1b[2J".utf8))   // ESC
        #expect(LogEscapeTests.esc([0x7F]) == Array("\\x7f".utf8))
        #expect(LogEscapeTests.esc([0x00, 0x08]) == Array("\\x00\\x08".utf8))
        for b in UInt8(0)..<0x20 {
            let out = LogEscapeTests.esc([b])
            #expect(out.first == 0x5C && out.allSatisfy { $0 >= 0x20 && $0 < 0x7F }, "\(b)")
        }
    }

    @Test func invalidUTF8IsEscapedByteByByte() {
        #expect(LogEscapeTests.esc([0x61, 0xFF, 0x62]) == Array("a\\xffb".utf8))
        #expect(LogEscapeTests.esc([0x80]) == Array("\\x80".utf8))                 // stray continuation
        #expect(LogEscapeTests.esc([0xC0, 0x8A]) == Array("\\xc0\\x8a".utf8))       // overlong LF
        #expect(LogEscapeTests.esc([0xE0, 0x80, 0x8A]) == Array("\\xe0\\x80\\x8a".utf8))   // overlong, 3 bytes
        #expect(LogEscapeTests.esc([0xED, 0xA0, 0x80]) == Array("\\xed\\xa0\\x80".utf8))   // a surrogate
        #expect(LogEscapeTests.esc([0xF4, 0x90, 0x80, 0x80]) == Array("\\xf4\\x90\\x80\\x80".utf8))   // > U+10FFFF
        #expect(LogEscapeTests.esc([0xE2, 0x82]) == Array("\\xe2\\x82".utf8))       // truncated at the end
        #expect(LogEscapeTests.esc([0xE2, 0x0A]) == Array("\\xe2\\n".utf8))         // truncated by a control
        // Whatever comes in, what comes out is valid UTF-8 with no control byte.
        var seed: UInt64 = 42
        for _ in 0..<2000 {
            var input: [UInt8] = []
            for _ in 0..<16 {
                seed = seed &* 6364136223846793005 &+ 1442695040888963407
                input.append(UInt8(truncatingIfNeeded: seed >> 56))
            }
            let out = LogEscapeTests.esc(input)
            #expect(!out.contains { $0 < 0x20 || $0 == 0x7F })
            #expect(String(validating: out, as: UTF8.self) != nil)
        }
    }

    @Test func validMultibyteIsKept() {
        let s = "café Ωμέγα 日本語 🔑"
        #expect(LogEscapeTests.esc(Array(s.utf8)) == Array(s.utf8))
        #expect(LogEscape.escape(s) == s)
    }

    @Test func c1ControlsAndInvisibleSeparatorsAreEscaped() {
        #expect(LogEscape.escape("a\u{9B}b") == "a\\xc2\\x9bb")           // CSI, 8-bit
        #expect(LogEscape.escape("a\u{85}b") == "a\\xc2\\x85b")           // NEL
        #expect(LogEscape.escape("a\u{2028}b") == "a\\xe2\\x80\\xa8b")    // LINE SEPARATOR
        #expect(LogEscape.escape("a\u{202E}b") == "a\\xe2\\x80\\xaeb")    // RIGHT-TO-LEFT OVERRIDE
        #expect(LogEscape.escape("a\u{A0}b") == "a\u{A0}b")               // NBSP is printable
    }

    @Test func backslashesAreKeptSoEscapingTwiceChangesNothing() {
        let once = LogEscape.escape("a\\b\r\n\u{1B}\u{9B}")
        #expect(once == "a\\b\\r\\n\\x1b\\xc2\\x9b")
        #expect(LogEscape.escape(once) == once)
    }

    @Test func quotingEscapesTheGivenBytes() {
        let q: [UInt8] = [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
        #expect(LogEscape.escape("say \"hi\"\\\n", quoting: q) == "say \\\"hi\\\"\\\\\\n")
    }

    @Test func aCStringIsEscapedFromItsBytes() {
        let bytes: [CChar] = [0x7A, 0x7A, 0x0D, 0x0A, -1, 0]   // "zz\r\n\xff"
        bytes.withUnsafeBufferPointer { p in
            #expect(LogEscape.escape(cString: p.baseAddress!) == "zz\\r\\n\\xff")
        }
    }
}

/// `log=FILE` and `audit=FILE` are opened with O_NOFOLLOW and only when the
/// daemon's own user owns the file.
@Suite struct LogFileTests {
    static func tempDir() -> String {
        var template = Array("/tmp/kmsfs-logtest-XXXXXX".utf8CString)
        let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        return String(cString: p!)
    }

    @Test func createsAnOwnedFileWithMode0600() throws {
        let dir = LogFileTests.tempDir()
        defer { _ = unlink(dir + "/log"); rmdir(dir) }
        let fd = try Log.openAppendFile(dir + "/log")
        close(fd)
        var st = stat()
        #expect(stat(dir + "/log", &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600 && st.st_uid == geteuid())
        // And again, now that it exists.
        close(try Log.openAppendFile(dir + "/log"))
    }

    @Test func refusesASymlink() {
        let dir = LogFileTests.tempDir()
        defer { unlink(dir + "/link"); unlink(dir + "/target"); rmdir(dir) }
        close(open(dir + "/target", O_WRONLY | O_CREAT, 0o600))
        symlink(dir + "/target", dir + "/link")
        do {
            close(try Log.openAppendFile(dir + "/link"))
            Issue.record("a symlink was opened")
        } catch {
            #expect(error.message == "\(dir)/link is a symbolic link; refusing to follow it (give the file itself)")
        }
        // A dangling one is not created through either.
        unlink(dir + "/target")
        #expect(throws: LogFileError.self) { close(try Log.openAppendFile(dir + "/link")) }
        #expect(access(dir + "/target", F_OK) != 0)
    }

    @Test(.enabled(if: geteuid() == 0, "chown needs root"))
    func refusesAFileAnotherUserOwns() {
        let dir = LogFileTests.tempDir()
        defer { unlink(dir + "/log"); rmdir(dir) }
        close(open(dir + "/log", O_WRONLY | O_CREAT, 0o666))
        chown(dir + "/log", 65534, 65534)
        do {
            close(try Log.openAppendFile(dir + "/log"))
            Issue.record("another user's file was opened")
        } catch {
            #expect(error.message.hasPrefix("\(dir)/log belongs to uid 65534, not to the daemon's user (uid 0)"))
            #expect(!error.message.contains("\n"))
        }
    }
}
