import Testing
import KmsfsKit
import FUSEBridge
@testable import SecretFS
import System
import Log
import SecureMemory
#if canImport(Glibc)
import Glibc
#endif

/// What a local user or a SOURCE name controls must not reach libfuse's
/// option parser, the audit file or the control directory as anything but
/// data.
@Suite struct HostileInputTests {
    // MARK: libfuse's -o list (issue 13, A8)

    /// A model of libfuse's fuse_opt.c: split on unescaped commas, `\X` is
    /// X and `\NNN` the octal byte.
    static func libfuseSplit(_ s: String) -> [[UInt8]] {
        let b = Array(s.utf8)
        var out: [[UInt8]] = [], cur: [UInt8] = []
        var i = 0
        func octal(_ x: UInt8) -> Bool { x >= 0x30 && x <= 0x37 }
        while i < b.count {
            if b[i] == UInt8(ascii: "\\"), i + 1 < b.count {
                if i + 3 < b.count, b[i + 1] >= 0x30, b[i + 1] <= 0x33, octal(b[i + 2]), octal(b[i + 3]) {
                    cur.append((b[i + 1] - 0x30) * 64 + (b[i + 2] - 0x30) * 8 + (b[i + 3] - 0x30))
                    i += 4
                } else {
                    cur.append(b[i + 1])
                    i += 2
                }
                continue
            }
            if b[i] == UInt8(ascii: ",") { out.append(cur); cur = []; i += 1; continue }
            cur.append(b[i])
            i += 1
        }
        out.append(cur)
        return out
    }

    @Test(arguments: ["/tmp/srcx\\,default_permissions", "/tmp/a,b", "/tmp/a\\\\,allow_root", "/tmp/x\\054dev",
                      "/tmp/trail\\", "/srv/plain", "/tmp/é,\\"])
    func theSourcePathStaysOneOptionValue(_ source: String) {
        let opts = ["allow_other", "ro", "fsname=" + FUSESession.escapeOptionValue(source), "subtype=kmsfs"].joined(separator: ",")
        let parsed = HostileInputTests.libfuseSplit(opts)
        #expect(parsed.count == 4, "\(parsed.map { String(decoding: $0, as: UTF8.self) })")
        #expect(parsed.count > 2 && parsed[2] == Array(("fsname=" + source).utf8))
    }

    // MARK: the audit record (A7)

    @Test func anAuditRecordIsOneLineWhateverTheNames() {
        let r = AuditRecord(time: 0, uid: 1000, gid: 1000, pid: 42, processName: "cat\r\naudit x",
                            path: "x\r\nkmsfs: error: FORGED", outcome: .denied, latency: nil, detail: "a \"b\" \\ \u{1B}[2J")
        let line = r.line
        #expect(!line.utf8.contains { $0 < 0x20 || $0 == 0x7F })
        #expect(line.contains("comm=\"cat\\r\\naudit x\""))
        #expect(line.contains("path=\"x\\r\\nkmsfs: error: FORGED\""))
        #expect(line.contains("reason=\"a \\\"b\\\" \\\\ \\x1b[2J\""))
    }

    // MARK: the control directory (A13)

    static func tempDir() -> String {
        var template = Array("/tmp/kmsfs-ctltest-XXXXXX".utf8CString)
        let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        return String(cString: p!)
    }

    @Test func theControlDirectoryIsMadeOrTightened() throws {
        let base = HostileInputTests.tempDir()
        defer { rmdir(base + "/new"); rmdir(base + "/open"); rmdir(base) }
        try ControlSocket.prepareDirectory(base + "/new")
        var st = stat()
        #expect(lstat(base + "/new", &st) == 0 && st.st_mode & 0o7777 == 0o700 && st.st_uid == geteuid())
        // Ours but left open: closed to 0700.
        mkdir(base + "/open", 0o777)
        chmod(base + "/open", 0o777)
        try ControlSocket.prepareDirectory(base + "/open")
        #expect(lstat(base + "/open", &st) == 0 && st.st_mode & 0o7777 == 0o700)
    }

    @Test(.enabled(if: geteuid() == 0, "chown needs root"))
    func aControlDirectoryAnotherUserMadeIsRefused() {
        let base = HostileInputTests.tempDir()
        defer { rmdir(base + "/theirs"); rmdir(base) }
        mkdir(base + "/theirs", 0o777)
        chmod(base + "/theirs", 0o777)
        chown(base + "/theirs", 65534, 65534)
        do {
            try ControlSocket.prepareDirectory(base + "/theirs")
            Issue.record("another user's directory was accepted")
        } catch {
            #expect(error.description.contains("belongs to uid 65534"), "\(error)")
        }
        var st = stat()
        #expect(lstat(base + "/theirs", &st) == 0 && st.st_mode & 0o777 == 0o777)   // untouched
    }

    @Test func aSymlinkOrAFileInPlaceOfTheControlDirectoryIsRefused() {
        let base = HostileInputTests.tempDir()
        defer { unlink(base + "/link"); unlink(base + "/file"); rmdir(base + "/real"); rmdir(base) }
        mkdir(base + "/real", 0o700)
        symlink(base + "/real", base + "/link")
        #expect(throws: Errno.self) { try ControlSocket.prepareDirectory(base + "/link") }
        close(open(base + "/file", O_WRONLY | O_CREAT, 0o600))
        #expect(throws: Errno.self) { try ControlSocket.prepareDirectory(base + "/file") }
    }

    // MARK: waits (A6)

    /// A wait of any length must not trap (`Int(Double)` of 1e30 did).
    @Test func aWaitOfAnyLengthIsSafe() {
        let lock = ConditionLock()
        lock.withLock {
            #expect(!lock.wait(seconds: .nan))
            #expect(!lock.wait(seconds: -1e300))
            #expect(!lock.wait(seconds: -.infinity))
        }
        // The longest waits end when signalled.
        final class Flag: @unchecked Sendable { var set = false }
        for seconds in [1e30, Double.infinity, Double.greatestFiniteMagnitude] {
            let flag = Flag()
            startThread(name: "test-signal") {
                usleep(20_000)
                lock.withLock { flag.set = true; lock.signal() }
            }
            lock.withLock { while !flag.set { lock.wait(seconds: seconds) } }
        }
    }
}

/// A directory group of thousands of members does not fit getgrnam_r's
/// first buffer (ERANGE): it is asked again with a larger one, not taken
/// for "no such group".
@Suite struct PrincipalLookupTests {
    @Test func aBufferTooSmallIsDoubledNotTakenForNoSuchName() throws {
        var sizes: [Int] = []
        let (rc, value) = PrincipalResolver.lookUp(1024) { _, size -> (Int32, Int?) in
            sizes.append(size)
            return size < 8192 ? (ERANGE, nil) : (0, size)
        }
        #expect(rc == 0 && value == 8192 && sizes == [1024, 2048, 4096, 8192])
        // It stops at 16 MiB.
        let (rc2, v2) = PrincipalResolver.lookUp(1 << 23) { _, _ -> (Int32, Int?) in (ERANGE, nil) }
        #expect(rc2 == ERANGE && v2 == nil)
        #expect(throws: PrincipalResolver.Failure.self) { try PrincipalResolver.gid("kmsfs-no-such-group-\(getpid())") }
        #expect(try PrincipalResolver.gid("root") == 0)
        #expect(try PrincipalResolver.uid("root") == 0)
    }
}
