import Testing
import Log
import System
#if canImport(Glibc)
import Glibc
#endif

/// Log's own writes: a line goes whole, a failed write is dropped, and
/// `log=FILE` is appended to, never truncated.
@Suite struct LogWriteTests {
    @Test func writeAllWritesTheWholeLine() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]) }
        let line = String(repeating: "x", count: 10_000) + "\n"
        Log.writeAll(fds[1], line)
        Log.writeAll(-1, "to nowhere\n")   // dropped, never a trap
        close(fds[1])
        #expect(try readMessage(fds[0], limit: 1 << 20).get() == Array(line.utf8))
    }

    @Test func appendFileKeepsWhatWasWritten() throws {
        var template = Array("/tmp/kmsfs-logwrite-XXXXXX".utf8CString)
        let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        defer { unlink(dir + "/log"); rmdir(dir) }
        for line in ["one\n", "two\n"] {
            let fd = try Log.openAppendFile(dir + "/log")
            Log.writeAll(fd, line)
            close(fd)
        }
        #expect(try readSmallFile(dir + "/log").get() == Array("one\ntwo\n".utf8))
    }
}

/// A warning about configuration looked at again on every refresh is given
/// once per key, not at every refresh.
@Suite struct WarningOnceTests {
    @Test func aKeyWarnsOnceAndAnotherKeyWarnsAgain() {
        let key = "warning-once-test \(getpid()) \(UInt64.random(in: 0...UInt64.max))"
        #expect(Log.warningOnce(key: key, "first"))
        #expect(!Log.warningOnce(key: key, "second"))
        #expect(Log.warningOnce(key: key + " other", "another key"))
    }
}
