import Testing
import System
#if canImport(Glibc)
import Glibc
#endif

/// The component walk that replaces openat2 where it answers ENOSYS (every
/// systemd unit with RestrictSUIDSGID=, the shipped kmsfs.service among
/// them) refuses what RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS refuses, and
/// opens what it opens.
@Suite struct OpenBeneathWalkTests {
    /// A SOURCE-like tree: a file, a file in a directory, a symlink to a
    /// directory outside, a symlink to a file inside, and one in the middle
    /// of a path.
    static func tree() throws -> (dir: String, fd: Int32) {
        var template = Array("/tmp/kmsfs-beneath-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        let dir = String(cString: try #require(made))
        #expect(mkdir(dir + "/d", 0o755) == 0)
        for f in ["/a.encrypted", "/d/b.encrypted"] {
            let fd = open(dir + f, O_CREAT | O_WRONLY | O_CLOEXEC, 0o644)
            #expect(fd >= 0)
            close(fd)
        }
        #expect(symlink("/etc", dir + "/out") == 0)
        #expect(symlink("a.encrypted", dir + "/in.encrypted") == 0)
        #expect(symlink("d", dir + "/dlink") == 0)
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        #expect(fd >= 0)
        return (dir, fd)
    }

    static func remove(_ dir: String) {
        for p in ["/a.encrypted", "/d/b.encrypted", "/out", "/in.encrypted", "/dlink"] { unlink(dir + p) }
        rmdir(dir + "/d")
        rmdir(dir)
    }

    /// nil when the open succeeded, else its errno; for a success, whether
    /// the descriptor is a symlink's own (the descriptor is closed).
    static func outcome(_ body: () throws(Errno) -> Int32) -> (errno: Int32?, link: Bool) {
        do {
            let fd = try body()
            var st = stat()
            #expect(fstat(fd, &st) == 0)
            close(fd)
            return (nil, st.st_mode & S_IFMT == S_IFLNK)
        } catch {
            return (error.code, false)
        }
    }

    static let cases: [(String, Int32)] = [
        (".", O_RDONLY | O_DIRECTORY), ("a.encrypted", O_RDONLY), ("d/b.encrypted", O_PATH),
        ("./d/./b.encrypted", O_RDONLY), ("d", O_RDONLY | O_DIRECTORY),
        ("out/passwd", O_RDONLY), ("out", O_PATH), ("out", O_RDONLY), ("in.encrypted", O_PATH),
        ("in.encrypted", O_RDONLY), ("dlink/b.encrypted", O_RDONLY), ("../etc/passwd", O_RDONLY),
        ("d/../../etc", O_PATH), ("d/../a.encrypted", O_RDONLY), ("/etc/passwd", O_RDONLY), ("missing", O_PATH),
    ]

    /// Every case answers alike: opened, opened as the link itself (O_PATH
    /// on a final symlink), or refused with the same errno.
    @Test(arguments: cases)
    func answersAsOpenat2Does(path: String, flags: Int32) throws {
        let (dir, fd) = try Self.tree()
        defer { close(fd); Self.remove(dir) }
        let walked = Self.outcome { () throws(Errno) in try openBeneathByComponents(fd, path, flags: flags) }
        let resolved = Self.outcome { () throws(Errno) in try openBeneath(fd, path, flags: flags) }
        #expect(walked.errno == resolved.errno)
        #expect(walked.link == resolved.link)
    }

    /// Nothing outside the directory or behind a symlink is ever opened.
    @Test(arguments: ["out/passwd", "out", "in.encrypted", "dlink/b.encrypted", "../etc/passwd", "d/../../etc",
                      "/etc/passwd"])
    func neverLeavesNorFollows(path: String) throws {
        let (dir, fd) = try Self.tree()
        defer { close(fd); Self.remove(dir) }
        for flags in [O_RDONLY, O_RDONLY | O_DIRECTORY] {
            let walked = Self.outcome { () throws(Errno) in try openBeneathByComponents(fd, path, flags: flags) }
            #expect(walked.errno != nil)
        }
        let asPath = Self.outcome { () throws(Errno) in try openBeneathByComponents(fd, path, flags: O_PATH) }
        #expect(asPath.errno != nil || asPath.link)
        if path.hasPrefix("/") || path.contains("..") { #expect(asPath.errno == EXDEV) }
        if path.contains("/") && !path.hasPrefix("/") && !path.contains("..") { #expect(asPath.errno == ELOOP) }
    }
}
