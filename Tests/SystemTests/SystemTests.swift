import Testing
@testable import System
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A fresh directory under /tmp, removed with everything in it.
func withTemporaryDirectory<R>(_ body: (String) throws -> R) rethrows -> R {
    var template = Array("/tmp/kmsfs-system-test.XXXXXX".utf8CString)
    let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    defer { _ = dir.withCString { system("rm -rf '\(String(cString: $0))'") } }
    return try body(dir)
}

func writeFile(_ path: String, _ text: String) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    precondition(fd >= 0)
    try! FileDescriptor.writeAll(fd, Array(text.utf8))
    close(fd)
}

/// Whether `fd` is an open descriptor.
func isOpen(_ fd: Int32) -> Bool { fcntl(fd, F_GETFD) != -1 }

@Suite struct ErrnoTests {
    @Test func describesTheOperationAndTheErrorNeverMore() {
        #expect(Errno("openat2 tls/key.pem", code: ENOENT).description == "openat2 tls/key.pem: No such file or directory")
        #expect(Errno("", code: EACCES).description == "Permission denied")
        #expect(Errno("x", code: ENOENT).isMissing && Errno("x", code: ENOTDIR).isMissing)
        #expect(!Errno("x", code: EACCES).isMissing)
    }

    @Test func currentIsTheThreadsErrno() {
        Errno.current = EPERM
        #expect(Errno.current == EPERM)
        #expect(Errno("op").code == EPERM)
        #expect(close(-1) == -1 && Errno.current == EBADF)
    }

    @Test func syscallRetryingRetriesEINTRAndThrowsTheRest() throws {
        var calls = 0
        let r = try syscallRetrying("fake") { () -> Int32 in
            calls += 1
            if calls < 3 { Errno.current = EINTR; return -1 }
            return 7
        }
        #expect(r == 7 && calls == 3)
        #expect(throws: Errno("fake", code: EIO)) {
            try syscallRetrying("fake") { () -> Int32 in Errno.current = EIO; return -1 }
        }
    }
}

@Suite struct FileDescriptorTests {
    @Test func closesOnceWhenItEndsAndNotWhenReleased() throws {
        var raw: Int32 = -1
        do {
            let fd = try FileDescriptor.open("/dev/null", O_RDONLY)
            raw = fd.rawValue
            #expect(isOpen(raw))
            #expect(fcntl(raw, F_GETFD) & FD_CLOEXEC != 0)   // close-on-exec always
        }
        #expect(!isOpen(raw))
        let kept = try FileDescriptor.open("/dev/null", O_RDONLY).release()
        #expect(isOpen(kept))
        close(kept)
    }

    @Test func openFailureNamesThePath() {
        #expect(throws: Errno("open /nonexistent/x", code: ENOENT)) { _ = try FileDescriptor.open("/nonexistent/x", O_RDONLY) }
    }

    @Test func readFillingGathersShortReadsAndStopsAtTheEnd() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        let reader = FileDescriptor(owning: fds[0])
        // Three writes, then the end: one read(filling:) gathers them all.
        for part in ["ab", "cd", "e"] { try FileDescriptor.writeAll(fds[1], Array(part.utf8)) }
        close(fds[1])
        var buf = [UInt8](repeating: 0, count: 16)
        #expect(try reader.read(filling: &buf) == 5)
        #expect(Array(buf[0..<5]) == Array("abcde".utf8))
        #expect(try reader.read(filling: &buf) == 0)
    }

    @Test func writeAllWritesMoreThanAPipeHoldsAtOnce() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        let big = [UInt8](repeating: 0x5A, count: 256 * 1024)   // > the 64 KiB pipe buffer
        let reader = fds[0]
        let done = ConditionLock()
        let got = Mutex(0)
        startThread(name: "test-reader") {
            var chunk = [UInt8](repeating: 0, count: 8192)
            while let n = try? FileDescriptor.read(reader, into: &chunk), n > 0 { got.withLock { $0 += n } }
            done.withLock { done.signal() }
        }
        try FileDescriptor.writeAll(fds[1], big)
        done.withLock {
            close(fds[1])
            #expect(done.wait(seconds: 10))
        }
        close(reader)
        #expect(got.withLock { $0 } == big.count)
    }

    @Test func badDescriptorsFailWithEBADF() {
        var b = [UInt8](repeating: 0, count: 4)
        #expect(throws: Errno("read", code: EBADF)) { _ = try FileDescriptor.read(-1, into: &b) }
        #expect(throws: Errno("write", code: EBADF)) { try FileDescriptor.writeAll(-1, b) }
    }
}

@Suite struct OpenBeneathTests {
    @Test func opensBeneathButNeverOutOrThroughALink() throws {
        try withTemporaryDirectory { (dir: String) throws in
            #expect(mkdir(dir + "/src", 0o700) == 0)
            writeFile(dir + "/src/inside", "in")
            writeFile(dir + "/outside", "out")
            #expect(symlink("../outside", dir + "/src/link") == 0)
            #expect(symlink("inside", dir + "/src/near") == 0)
            let root = open(dir + "/src", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            defer { close(root) }
            let fd = try FileDescriptor.openBeneath(root, "inside", flags: O_RDONLY)
            var b = [UInt8](repeating: 0, count: 8)
            #expect(try fd.read(filling: &b) == 2)
            for escape in ["../outside", "/etc/passwd", "link", "near"] {
                #expect(throws: Errno.self) { _ = try FileDescriptor.openBeneath(root, escape, flags: O_RDONLY) }
            }
            let pathOnly = try openBeneath(root, "inside", flags: O_PATH)
            #expect(pathOnly >= 0)
            close(pathOnly)
        }
    }
}

@Suite struct SmallFileTests {
    @Test func readsAWholeFileAndRefusesPastTheLimit() throws {
        try withTemporaryDirectory { (dir: String) throws in
            writeFile(dir + "/f", "hello\n")
            #expect(try readSmallFile(dir + "/f").get() == Array("hello\n".utf8))
            guard case .failure(let big) = readSmallFile(dir + "/f", limit: 3) else { Issue.record("read past the limit"); return }
            #expect(big.code == EFBIG && big.description.hasPrefix(dir + "/f: "))
            guard case .failure(let missing) = readSmallFile(dir + "/none") else { Issue.record("read a missing file"); return }
            #expect(missing.isMissing && missing.operation == dir + "/none")
        }
    }

    @Test func readRegularFileChecksKindAndSizeBeforeReading() throws {
        try withTemporaryDirectory { (dir: String) throws in
            writeFile(dir + "/f", "0123456789")
            let fd = try FileDescriptor.open(dir + "/f", O_RDONLY)
            let (bytes, st) = try readRegularFile(fd, limit: 10)
            #expect(bytes == Array("0123456789".utf8) && st.st_size == 10)
            #expect(throws: CappedReadError.tooLarge(size: 10, limit: 9)) { _ = try readRegularFile(fd, limit: 9) }
            let d = try FileDescriptor.open(dir, O_RDONLY | O_DIRECTORY)
            #expect(throws: CappedReadError.notRegular) { _ = try regularFileStatus(d, limit: 1 << 20) }
        }
    }

    @Test func readMessageStopsAtTheFirstNewlineWhenAsked() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]) }
        try FileDescriptor.writeAll(fds[1], Array("status\n".utf8))
        // The writer stays open: only the newline can end this read.
        #expect(try readMessage(fds[0], limit: 100, throughNewline: true).get() == Array("status\n".utf8))
        try FileDescriptor.writeAll(fds[1], Array("0123456789".utf8))
        close(fds[1])
        guard case .failure(let e) = readMessage(fds[0], limit: 4) else { Issue.record("read past the limit"); return }
        #expect(e.code == EFBIG)
    }
}

@Suite struct UnixSocketTests {
    @Test func addressesArePathsWithTheirNulOrAbstractNames() throws {
        let family = MemoryLayout<sa_family_t>.size
        #expect(try UnixSocketAddress("/run/x.sock").length == socklen_t(family + 11 + 1))
        let abstract = try UnixSocketAddress("@kmsfs/x")
        #expect(abstract.length == socklen_t(family + 8))
        abstract.withSockaddr { p, _ in
            p.withMemoryRebound(to: sockaddr_un.self, capacity: 1) { u in
                withUnsafeBytes(of: u.pointee.sun_path) { #expect($0[0] == 0 && $0[1] == UInt8(ascii: "k")) }
            }
        }
        let tooLong = "/" + String(repeating: "a", count: 108)
        #expect(throws: Errno.self) { _ = try UnixSocketAddress(tooLong) }
        #expect(throws: Errno.self) { _ = try UnixSocketAddress("") }
        #expect(try UnixSocketAddress("/" + String(repeating: "a", count: 106)).length > 0)   // 107 bytes and the NUL fit
    }

    @Test func listenAcceptCloseOnExecAndPeerCredentials() throws {
        try withTemporaryDirectory { (dir: String) throws in
            let path = dir + "/s.sock"
            let server = try listenUnix(path, mode: 0o600, what: "test socket", because: "a test")
            defer { close(server) }
            var st = stat()
            #expect(lstat(path, &st) == 0 && st.st_mode & 0o777 == 0o600 && st.st_mode & S_IFMT == S_IFSOCK)
            let client = try unixSocket(SOCK_STREAM)
            defer { close(client) }
            #expect(try UnixSocketAddress(path).withSockaddr { connect(client, $0, $1) } == 0)
            let c = acceptCloseOnExec(server)
            defer { close(c) }
            #expect(c >= 0 && fcntl(c, F_GETFD) & FD_CLOEXEC != 0)   // close-on-exec from accept on
            let cred = peerCredentials(c)
            #expect(cred?.uid == geteuid() && cred?.gid == getegid() && cred?.pid == getpid())
            #expect(peerCredentials(-1) == nil)
        }
    }

    /// The socket's umask is set on a thread of its own (unshare(CLONE_FS)):
    /// the process's, which every other thread creates files under, never
    /// changes. Before, a file another thread created meanwhile got the
    /// socket's umask (0o177 for a 0o600 socket, 0o117 for metrics' 0o660).
    /// Where unshare is refused (a container's seccomp profile), the bind
    /// falls back to the process's umask by design: nothing to test there.
    @Test(.enabled(if: UnixSocketTests.threadsCanUnshareTheirUmask()))
    func bindingASocketNeverChangesTheProcessUmask() throws {
        final class Watch: @unchecked Sendable {
            let state = Mutex<(stop: Bool, done: Bool, seen: Set<String>)>((false, false, []))
        }
        let watch = Watch()
        let started = startThread(name: "umask-watch") {
            var buf = [UInt8](repeating: 0, count: 4096)
            while !watch.state.withLock({ $0.stop }) {
                let fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { break }
                let n = read(fd, &buf, buf.count)
                close(fd)
                guard n > 0 else { continue }
                let text = String(decoding: buf[0..<n], as: UTF8.self)
                if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Umask:") }) {
                    watch.state.withLock { _ = $0.seen.insert(String(line)) }
                }
            }
            watch.state.withLock { $0.done = true }
        }
        #expect(started)
        defer {
            watch.state.withLock { $0.stop = true }
            while started && !watch.state.withLock({ $0.done }) { usleep(1000) }
        }
        try withTemporaryDirectory { (dir: String) throws in
            for i in 0..<300 {
                close(try listenUnix(dir + "/s\(i % 4).sock", mode: i % 2 == 0 ? 0o600 : 0o660, what: "test socket", because: "a test"))
            }
            var st = stat()
            #expect(lstat(dir + "/s1.sock", &st) == 0 && st.st_mode & 0o777 == 0o660)
        }
        let seen = watch.state.withLock { $0.seen }
        #expect(seen.count == 1, "the process umask changed: \(seen.sorted())")
    }

    /// Whether a thread may unshare CLONE_FS here (tried on a thread of its
    /// own, which then ends).
    static func threadsCanUnshareTheirUmask() -> Bool {
        final class Answer: @unchecked Sendable { let value = Mutex<Bool?>(nil) }
        let answer = Answer()
        guard startThread(name: "unshare-probe", { answer.value.withLock { $0 = unshareFileSystemAttributes() } }) else { return false }
        while true {
            if let v = answer.value.withLock({ $0 }) { return v }
            usleep(1000)
        }
    }

    /// Whoever may rename a socket may put one of their own in its place
    /// and answer its clients (a service reading its credential, say): a
    /// directory on the path that someone else may change is refused, as
    /// one whose symbolic link leads under such a directory is.
    @Test func listenRefusesADirectoryOthersMayChange() throws {
        try withTemporaryDirectory { (dir: String) throws in
            let open = dir + "/open"
            mkdir(open, 0o755)
            chmod(open, 0o777)
            #expect { _ = try listenUnix(open + "/s.sock", mode: 0o600, what: "test socket", because: "a test") } throws: {
                let e = $0 as! Errno
                return e.code == EPERM && e.operation.hasPrefix("its directory \(open) may be written by anyone (mode 777)")
            }
            #expect(access(open + "/s.sock", F_OK) != 0)   // nothing bound there
            chmod(open, 0o1777)   // sticky, as /tmp: nobody else may rename root's socket
            close(try listenUnix(open + "/s.sock", mode: 0o600, what: "test socket", because: "a test"))
            // A link whose target is root's, under a directory anyone may
            // write: the target can be renamed away and replaced.
            chmod(open, 0o777)
            mkdir(open + "/inner", 0o755)
            symlink(open + "/inner", dir + "/link")
            #expect { _ = try listenUnix(dir + "/link/s.sock", mode: 0o600, what: "test socket", because: "a test") } throws: {
                ($0 as! Errno).operation.contains("\(open), a directory above it, may be written by anyone")
            }
            chmod(open, 0o755)
            close(try listenUnix(dir + "/link/s.sock", mode: 0o600, what: "test socket", because: "a test"))
            chown(open, 4242, 4242)
            #expect { _ = try listenUnix(dir + "/link/s.sock", mode: 0o600, what: "test socket", because: "a test") } throws: {
                ($0 as! Errno).operation.contains("belongs to uid 4242; a test")
            }
            #expect(throws: Errno("bind \(dir)/none/s.sock", code: ENOENT)) {   // missing: as the bind says it
                _ = try listenUnix(dir + "/none/s.sock", mode: 0o600, what: "test socket", because: "a test")
            }
        }
    }

    /// Links are checked where the kernel's walk meets them: a link
    /// someone else owns (in a sticky directory, where they may make one)
    /// could be pointed elsewhere, and a directory only a link's target
    /// passes through counts as much as one written out.
    @Test func pathTrustWalksEveryLinkOnTheWay() throws {
        try withTemporaryDirectory { (dir: String) throws in
            let because = "a test"
            let safe = dir + "/safe"
            mkdir(safe, 0o755)
            let sticky = dir + "/sticky"
            mkdir(sticky, 0o755)
            chmod(sticky, 0o1777)
            symlink(safe, sticky + "/theirs")
            lchown(sticky + "/theirs", 4242, 4242)
            #expect(PathTrust.unsafeDirectories(above: sticky + "/theirs/s.sock", because: because)?
                .contains("\(sticky)/theirs, a symbolic link on the way, belongs to uid 4242") == true)
            symlink(safe, sticky + "/ours")   // root's link in a root's sticky directory
            #expect(PathTrust.unsafeDirectories(above: sticky + "/ours/s.sock", because: because) == nil)

            // A chain: etc/one -> open/two -> safe, with open writable by anyone.
            let open = dir + "/open"
            mkdir(open, 0o755)
            chmod(open, 0o777)
            symlink(safe, open + "/two")
            mkdir(dir + "/etc", 0o755)
            symlink(open + "/two", dir + "/etc/one")
            #expect(PathTrust.unsafeDirectories(above: dir + "/etc/one/s.sock", because: because)?
                .contains("\(open), a directory above it, may be written by anyone") == true)
            chmod(open, 0o755)
            writeFile(safe + "/x", "x")
            #expect(try PathTrust.resolve(dir + "/etc/one/x", because: because).get() == safe + "/x")
            #expect(try PathTrust.resolve(dir + "/etc/../etc/./one", because: because).get() == safe)
            #expect(PathTrust.unsafeDirectories(above: dir + "/etc/one/s.sock", because: because) == nil)   // not there yet: fine

            // A sticky directory someone else owns: they may rename in it.
            chown(sticky, 4242, 4242)
            #expect(PathTrust.unsafeDirectories(above: sticky + "/ours/s.sock", because: because)?
                .contains("\(sticky), a directory above it, belongs to uid 4242") == true)

            // A loop ends, as the kernel's walk does.
            symlink(dir + "/loop", dir + "/loop")
            #expect { try PathTrust.resolve(dir + "/loop/x", because: because).get() } throws: {
                "\($0)".contains("Too many levels of symbolic links")
            }
            // Relative: walked from the root through the current directory.
            let here = getcwd(nil, 0)!
            defer { chdir(here); free(here) }
            chdir(dir + "/etc")
            #expect(try PathTrust.resolve("one/x", because: because).get() == safe + "/x")
            chmod(dir, 0o777)
            #expect(PathTrust.unsafeDirectories(above: "one/x", because: because)?.contains("\(dir), a directory above it, may be written by anyone") == true)
            chmod(dir, 0o700)
        }
    }

    /// What two reviews of the walk found: `..` looked up in a directory
    /// someone else owns, names split or compared as Unicode rather than
    /// bytes, a link target that is not UTF-8, a relative target with
    /// `..`, and a directory its group may write.
    @Test func pathTrustWalksBytesAndChecksEveryLookup() throws {
        try withTemporaryDirectory { (dir: String) throws in
            let because = "a test"
            let sticky = dir + "/sticky"
            mkdir(sticky, 0o755)
            chmod(sticky, 0o1777)
            mkdir(sticky + "/theirs", 0o755)
            chown(sticky + "/theirs", 4242, 4242)   // they may rename it and put a link there
            #expect(PathTrust.unsafeDirectories(above: sticky + "/theirs/../s.sock", because: because)?
                .contains("\(sticky)/theirs, a directory above it, belongs to uid 4242") == true)
            // "/" and a combining mark are one Character, two bytes to the kernel.
            #expect(PathTrust.unsafeDirectories(above: sticky + "/theirs/\u{301}s.sock", because: because)?
                .contains("belongs to uid 4242") == true)
            // café (NFC) is trusted; cafe + U+0301 (NFD) is another directory.
            let nfc = dir + "/caf\u{e9}", nfd = dir + "/cafe\u{301}"
            mkdir(nfc, 0o755)
            mkdir(nfd, 0o755)
            chmod(nfd, 0o777)
            mkdir(nfc + "/x", 0o755)
            #expect(PathTrust.unsafeDirectories(above: nfc + "/x/../../cafe\u{301}/s.sock", because: because)?
                .contains("may be written by anyone") == true)
            // A directory its group may write.
            chmod(nfd, 0o775)
            #expect(PathTrust.unsafeDirectories(above: nfd + "/s.sock", because: because)?
                .contains("may be written by its group (mode 775)") == true)
            // A relative target with "..", resolved from the link's own directory.
            mkdir(dir + "/r", 0o755)
            mkdir(dir + "/r/in", 0o755)
            writeFile(dir + "/r/f", "f")
            symlink("../f", dir + "/r/in/up")
            #expect(try PathTrust.resolve(dir + "/r/in/up", because: because).get() == dir + "/r/f")
            // A target that is not UTF-8 is refused, never repaired into another name.
            let bad = Array((dir + "/r/").utf8) + [0xff]
            let link = dir + "/r/badlink"
            _ = bad.withUnsafeBufferPointer { b in
                (Array(b) + [0]).withUnsafeBufferPointer { p in
                    p.withMemoryRebound(to: CChar.self) { symlink($0.baseAddress!, link) }
                }
            }
            writeFile(dir + "/r/\u{fffd}", "decoy")
            #expect(throws: PathTrust.Problem.self) { try PathTrust.resolve(link, because: because).get() }
        }
    }

    /// A /proc link's text is not where it leads (/proc/PID/root, /cwd and
    /// /fd/N lead into another process's view): never followed, though
    /// root owns it.
    @Test func aProcLinkIsNotFollowed() {
        let because = "a test"
        for path in ["/proc/self/root/etc/hostname", "/proc/1/cwd/x", "/proc/thread-self/fd/0"] {
            let r = PathTrust.resolve(path, because: because)
            guard case .failure(let problem) = r else { Issue.record("\(path) resolved: \(r)"); continue }
            #expect(problem.text.contains("is a /proc link, which is not followed"), "\(problem.text)")
        }
        // /proc itself, and its files that are not links, are walked as any other.
        #expect((try? PathTrust.resolve("/proc/version", because: because).get()) == "/proc/version")
    }

    /// A FUSE file system's owner is its mount's `user_id=`: its server
    /// answers stat with whatever owner it likes.
    @Test func aFUSEMountsOwnerIsReadFromTheMountTable() {
        let table = Array("""
            36 35 98:0 /mnt1 /mnt1 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
            40 36 0:52 / /tmp/x rw,nosuid,nodev,relatime shared:9 - fuse.sshfs host:/ rw,user_id=4242,group_id=4242
            41 36 0:53 / /etc/secrets ro,nosuid,nodev shared:10 - fuse.kmsfs /var/lib/kmsfs ro,user_id=0,group_id=0,allow_other
            42 36 0:54 / /odd rw - fuse odd rw,group_id=0
            """.utf8)
        let dev = { (major: UInt64, minor: UInt64) in (major << 8) | minor }
        #expect(PathTrust.fuseMountOwner(device: dev(0, 52), mountinfo: table) == 4242)
        #expect(PathTrust.fuseMountOwner(device: dev(0, 53), mountinfo: table) == 0)
        #expect(PathTrust.fuseMountOwner(device: dev(0, 54), mountinfo: table) == nil)   // no user_id: not known
        #expect(PathTrust.fuseMountOwner(device: dev(98, 0), mountinfo: table) == nil)   // not FUSE
        #expect(PathTrust.fuseMountOwner(device: dev(0, 99), mountinfo: table) == nil)   // not listed
        // A line of the device that cannot be read makes its owner unknown,
        // though another line of it reads well.
        let cut = table + Array("\n43 36 0:52 / /tmp/y rw".utf8)
        #expect(PathTrust.fuseMountOwner(device: dev(0, 52), mountinfo: cut) == nil)
    }

    @Test func listenReplacesAnOldSocketButNoOtherFile() throws {
        try withTemporaryDirectory { (dir: String) throws in
            let path = dir + "/s.sock"
            close(try listenUnix(path, mode: 0o600, what: "test socket", because: "a test"))   // a socket left behind
            close(try listenUnix(path, mode: 0o600, what: "test socket", because: "a test"))
            writeFile(dir + "/file", "keep")
            #expect(throws: Errno("test socket \(dir)/file exists and is not a socket", code: EEXIST)) {
                _ = try listenUnix(dir + "/file", mode: 0o600, what: "test socket", because: "a test")
            }
            #expect(try readSmallFile(dir + "/file").get() == Array("keep".utf8))
        }
    }
}

@Suite struct SystemClockTests {
    @Test func monotonicNeverGoesBackAndSleepSleeps() {
        let a = SystemClock.monotonic()
        SystemClock.sleep(0.05)
        let b = SystemClock.monotonic()
        #expect(b - a >= 0.05 && b - a < 5)
        for odd in [-1.0, 0, .nan, -.infinity] {
            let t = SystemClock.monotonic()
            SystemClock.sleep(odd)   // returns at once, never traps
            #expect(SystemClock.monotonic() - t < 2)
        }
    }

    @Test func wallIsTheEpochClock() {
        #expect(abs(SystemClock.wall() - Double(time(nil))) < 2)
        let ts = SystemClock.monotonicTimespec()
        #expect((0..<1_000_000_000).contains(ts.tv_nsec))
    }
}

@Suite struct ProcessTests {
    @Test func answersOnlyWhileTheProcessLives() {
        #expect(whileProcessLives(getpid()) { 42 } == 42)
        #expect(whileProcessLives(0) { 42 } == nil)
        #expect(whileProcessLives(-5) { 42 } == nil)
        // A child that has exited and been reaped: its PID names no process.
        var pid: pid_t = 0
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("true"), nil]
        defer { free(argv[0]) }
        #expect(posix_spawnp(&pid, "true", nil, nil, argv, environ) == 0)
        var status: Int32 = 0
        #expect(waitpid(pid, &status, 0) == pid)
        #expect(whileProcessLives(pid) { 42 } == nil)
    }

    /// FUSE names the caller's thread. A thread that is not its process's
    /// leader has a pidfd of its own only from Linux 6.9 (PIDFD_THREAD);
    /// before, its process is pinned instead (Debian 12 runs 6.1).
    @Test func answersForAThreadThatIsNotTheLeader() {
        final class Shared: Sendable {
            let tid = Atomic<Int32>(0)
            let release = Atomic<Bool>(false)
        }
        let shared = Shared()
        #expect(startThread(name: "kmsfs-tid-test") {
            shared.tid.store(callingThreadID(), ordering: .sequentiallyConsistent)
            while !shared.release.load(ordering: .sequentiallyConsistent) { usleep(1000) }
        })
        var t: Int32 = 0
        for _ in 0..<5000 where t == 0 { usleep(1000); t = shared.tid.load(ordering: .sequentiallyConsistent) }
        #expect(t > 0 && t != getpid())
        #expect(threadGroup(of: t) == getpid())
        #expect(whileProcessLives(t) { 42 } == 42)
        #expect(whileProcessLives(t, threadPidfds: false) { 42 } == 42)
        shared.release.store(true, ordering: .sequentiallyConsistent)
        for _ in 0..<5000 where access("/proc/self/task/\(t)", F_OK) == 0 { usleep(1000) }
        // Gone: no process or thread answers to its number any more.
        #expect(whileProcessLives(t, threadPidfds: false) { 42 } == nil)
        #expect(whileProcessLives(t) { 42 } == nil)
    }
}

/// Entries live as long as their value does, and dead ones are pruned as
/// the table grows, so churned keys never pile up.
@Suite struct WeakValuesTests {
    final class Thing { let n: Int; init(_ n: Int) { self.n = n } }

    @Test func entriesLiveAsLongAsTheirValueAndDeadOnesArePruned() {
        var table = WeakValues<Int, Thing>()
        let kept = Thing(0)
        table[0] = kept
        for i in 1...10_000 { table[i] = Thing(i) }   // each dies at once
        #expect(table[0] === kept && table[1] == nil)
        #expect(table.storedCount <= 128)
        table.removeAll { $0 == 0 }
        #expect(table[0] == nil)
        table[1] = kept
        #expect(table.removeValue(forKey: 1) === kept && table[1] == nil)
    }
}

@Suite struct MountInfoTests {
    @Test func everyEscapeTheKernelWritesIsDecoded() {
        #expect(MountInfo.unescape("/etc/my\\040secrets") == "/etc/my secrets")
        #expect(MountInfo.unescape("/a\\011b\\012c\\134d") == "/a\tb\nc\\d")
        #expect(MountInfo.unescape("/plain") == "/plain")
        // Not escapes: short, not octal, over 255; kept as they are.
        #expect(MountInfo.unescape("/x\\04") == "/x\\04")
        #expect(MountInfo.unescape("/x\\09a") == "/x\\09a")
        #expect(MountInfo.unescape("/x\\777") == "/x\\777")
        #expect(MountInfo.unescape("\\") == "\\")
        // A name that is not UTF-8 keeps its bytes.
        #expect(MountInfo.unescape(bytes: Array("/a\\377b".utf8)) == [0x2f, 0x61, 0xff, 0x62])
    }

    @Test func linesAreReadAsTheKernelWritesThem() {
        let table = Array("""
            36 35 98:0 /mnt1 /mnt\\0401 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
            40 36 0:52 / /tmp/x rw,nosuid - fuse.sshfs host:/ rw,user_id=4242
            garbage
            41 36 0:53 / /short rw - fuse
            """.utf8)
        let e = MountInfo.entries(table)
        #expect(e.count == 3)   // "garbage" names no device; the short line is kept, with no type
        #expect(e.last?.device == Array("0:53".utf8) && e.last?.fstype == [] && e.last?.mountpoint == [])
        #expect(e.first?.mountpointPath == "/mnt 1")
        #expect(e.first?.fstypeName == "ext3")
        #expect(e[1].device == Array("0:52".utf8))
        #expect(e[1].superOptions == Array("rw,user_id=4242".utf8))
        #expect(MountInfo.deviceField((259 << 8) | 3) == Array("259:3".utf8))
        // glibc's makedev(4097, 300): major and minor split across the bits.
        let large: UInt64 = ((4097 & 0xfff) << 8) | ((4097 & ~0xfff) << 32) | (300 & 0xff) | ((300 & ~0xff) << 12)
        #expect(MountInfo.deviceField(large) == Array("4097:300".utf8))
        #expect(e.map { $0.mountID } == [36, 40, 41])
        #expect(MountInfo.entries(Array("x1 35 0:9 / /a rw - tmpfs t rw".utf8)).first?.mountID == nil)
        #expect(MountInfo.entries(Array("99999999999999999999999 35 0:9 / /a rw - tmpfs t rw".utf8)).first?.mountID == nil)
    }

    /// The table is read a chunk at a time: a line too long to be a mount
    /// kmsfs looks for is skipped, however long, and the lines after it
    /// (across chunk boundaries) are still found; nothing caps the whole.
    @Test func aTableOfAnySizeIsReadLineByLine() throws {
        var template = Array("/tmp/kmsfs-mountinfo-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        try #require(fd >= 0)
        let path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        defer { close(fd); unlink(path) }
        var table: [UInt8] = []
        table += Array("36 35 98:0 / /first rw - ext4 /dev/a rw\n".utf8)
        // A user's FUSE mount at a path thousands of names deep.
        table += Array("40 36 0:52 / /".utf8) + [UInt8](repeating: UInt8(ascii: "d"), count: 150_000)
            + Array(" rw - fuse.evil x rw,user_id=4242\n".utf8)
        // Padding so that the next line crosses a 64 KiB chunk boundary.
        while table.count % (64 << 10) < (64 << 10) - 20 {
            table += Array("50 36 8:1 / /pad rw - ext4 /dev/p rw\n".utf8)
        }
        table += Array("60 36 0:77 / /etc/secrets rw,nosuid - fuse.kmsfs /var/lib/kmsfs rw,user_id=0".utf8)   // no final newline
        try table.withUnsafeBytes { try FileDescriptor.writeAll(fd, $0) }
        lseek(fd, 0, SEEK_SET)
        let found = try #require(MountInfo.entries(readingFrom: fd, maxLine: 1000, where: { $0.fstype.starts(with: Array("fuse".utf8)) || $0.mountpointPath == "/first" }))
        #expect(found.map(\.mountpointPath) == ["/first", "/etc/secrets"])
        #expect(found.last?.superOptions == Array("rw,user_id=0".utf8))
        lseek(fd, 0, SEEK_SET)
        // With room for it, the long line is an entry like any other.
        let all = try #require(MountInfo.entries(readingFrom: fd, maxLine: 1 << 20, where: { $0.fstype.starts(with: Array("fuse".utf8)) }))
        #expect(all.map(\.device) == [Array("0:52".utf8), Array("0:77".utf8)])
        #expect(MountInfo.entries(readingFrom: -1, where: { _ in true }) == nil)
    }

    /// A descriptor's mount ID (fdinfo) is the one mountinfo gives its mount.
    @Test func aDescriptorsMountIDIsItsMountsID() {
        let fd = open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC)
        defer { close(fd) }
        let id = MountInfo.mountID(of: fd)
        #expect(id != nil)
        #expect(id == MountInfo.current().last { $0.mountpointPath == "/proc" }?.mountID)
        #expect(MountInfo.mountID(of: -1) == nil)
    }
}

@Suite struct BeingKilledTests {
    /// A live thread with no SIGKILL pending is not being killed; nor is a
    /// thread that cannot be read. (Parked opens of killed callers are
    /// tested in test_async_open.py.)
    @Test func aLiveThreadIsNotBeingKilled() {
        #expect(!isBeingKilled(getpid()))
        #expect(!isBeingKilled(-1))
        #expect(!isBeingKilled(0))
    }
}

@Suite struct OpenRegularFileTests {
    /// A device node where a ciphertext was is refused before its driver's
    /// open runs: a character device of a major no driver holds fails
    /// ENXIO when opened, and is refused as not regular without that.
    @Test func aDeviceNodeIsRefusedWithoutBeingOpened() throws {
        guard geteuid() == 0 else { return }   // mknod needs root (make test runs as root)
        let devices = (try? readSmallFile("/proc/devices").get()).map { String(decoding: $0, as: UTF8.self) } ?? ""
        let registered = Set(devices.split(separator: "\n").prefix { !$0.hasPrefix("Block") }
            .compactMap { Int($0.split(separator: " ").first ?? "") })
        guard let major = [240, 241, 242, 243, 60, 61, 62, 63].first(where: { !registered.contains($0) }) else { return }
        try withTemporaryDirectory { (dir: String) throws in
            #expect(mknod(dir + "/dev.encrypted", S_IFCHR | 0o600, dev_t((major << 8) | 0)) == 0)
            writeFile(dir + "/plain.encrypted", "ciphertext")
            let root = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            defer { close(root) }
            // Opened directly, its driver's open runs (and fails).
            let direct = open(dir + "/dev.encrypted", O_RDONLY | O_NONBLOCK | O_NOCTTY)
            #expect(direct < 0 && errno == ENXIO)
            #expect(throws: CappedReadError.notRegular) { _ = try openRegularFile(beneath: root, "dev.encrypted") }
            let fd = try openRegularFile(beneath: root, "plain.encrypted")
            var buf = [UInt8](repeating: 0, count: 32)
            #expect(try fd.read(filling: &buf) == 10)
            // Read-only, and the same file.
            #expect(fcntl(fd.rawValue, F_GETFL) & O_ACCMODE == O_RDONLY)
        }
    }
}

@Suite struct BoundedWriteTests {
    /// A peer that reads a byte now and then (each write inside any
    /// per-write timeout) cannot hold the writer past its time.
    @Test func aSlowReaderCannotHoldTheWriterPastItsTime() {
        var sv: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &sv) == 0)
        defer { close(sv[0]); close(sv[1]) }
        var small: Int32 = 4096
        setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        let reader = sv[1]
        let stop = Atomic<Bool>(false)
        let t = startThread(name: "slow-reader") {
            var b = [UInt8](repeating: 0, count: 16)
            while !stop.load(ordering: .relaxed) {
                _ = b.withUnsafeMutableBytes { recv(reader, $0.baseAddress, 16, Int32(MSG_DONTWAIT)) }
                SystemClock.sleep(0.05)
            }
        }
        #expect(t)
        let start = SystemClock.monotonic()
        #expect(!FileDescriptor.writeAll(sv[0], [UInt8](repeating: 7, count: 4 << 20), within: 0.5))
        let took = SystemClock.monotonic() - start
        stop.store(true, ordering: .relaxed)
        #expect(took >= 0.45 && took < 3, "took \(took) s")
        // A reader that keeps up gets everything.
        var pair: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        defer { close(pair[0]); close(pair[1]) }
        #expect(FileDescriptor.writeAll(pair[0], [UInt8](repeating: 1, count: 1000), within: 1))
        var got = [UInt8](repeating: 0, count: 2000)
        #expect(got.withUnsafeMutableBytes { recv(pair[1], $0.baseAddress, 2000, 0) } == 1000)
        SystemClock.sleep(0.1)   // the reader thread sees the stop
    }
}

@Suite struct PeerPidfdTests {
    /// SO_PEERPIDFD pins the process that connected: its PID is read from
    /// the pidfd while it lives, and once it has exited nothing is
    /// answered about it, whatever process has its PID by then. A peer
    /// already reaped when it is pinned is gone (Linux 6.5 to 6.17 refuse
    /// its pidfd; later ones give one that names no process).
    @Test(arguments: [false, true])
    func aPeerIsJudgedAsItConnectedNeverByItsPID(exitFirst: Bool) throws {
        try withTemporaryDirectory { (dir: String) throws in
            let path = dir + "/s.sock"
            let listener = try listenUnix(path, mode: 0o600, what: "test socket", because: "a test")
            defer { close(listener) }
            // A child connects, then waits for a byte before it exits.
            var gate: [Int32] = [-1, -1]
            #expect(pipe(&gate) == 0)
            // Everything the child needs is made before fork: it only makes
            // system calls (no allocation after fork in a threaded process).
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &addr.sun_path) { b in path.utf8CString.withUnsafeBytes { b.copyMemory(from: $0) } }
            let child = fork()
            if child == 0 {
                let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
                _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
                var b: UInt8 = 0
                _ = read(gate[0], &b, 1)
                _exit(0)
            }
            close(gate[0])
            let c = accept(listener, nil, nil)
            #expect(c >= 0)
            defer { close(c) }
            func letItExit() {
                var one: UInt8 = 1
                _ = write(gate[1], &one, 1)
                close(gate[1])
                var status: Int32 = 0
                _ = waitpid(child, &status, 0)
            }
            if exitFirst { letItExit() }
            var u = utsname()
            uname(&u)
            let release = withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            let v = release.split(separator: ".").prefix(2).compactMap { Int($0.prefix { $0.isNumber }) }
            let hasIt = v.count == 2 && (v[0], v[1]) >= (6, 5)
            let peer = pinPeer(c)
            defer { peer.close() }
            switch peer {
            case .notSupported:
                #expect(!hasIt, "Linux \(release) has SO_PEERPIDFD, and it was not taken")
            case .gone:
                #expect(exitFirst, "a live peer was taken as gone")
            case .pinned(let pidfd):
                if !exitFirst {
                    #expect(whileProcessLives(pidfd: pidfd, pid: child) { "alive" } == "alive")
                    #expect(whileProcessLives(pidfd: pidfd, pid: getpid()) { "alive" } == nil)   // another PID: no
                    letItExit()
                }
                #expect(whileProcessLives(pidfd: pidfd, pid: child) { "alive" } == nil)
            }
            if !exitFirst, case .notSupported = peer { letItExit() }
            if !exitFirst, case .gone = peer { letItExit() }
        }
    }
}

/// The calling thread's ID (-1 if unknown): /proc/thread-self is
/// "PID/task/TID".
func callingThreadID() -> Int32 {
    var link = [CChar](repeating: 0, count: 64)
    let n = readlink("/proc/thread-self", &link, link.count - 1)
    let text = n > 0 ? String(decoding: link[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
    return Int32(text.split(separator: "/").last ?? "") ?? -1
}
