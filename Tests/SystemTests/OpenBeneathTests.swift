import Testing
import System
#if canImport(Glibc)
import Glibc
#endif

/// The component walk that replaces openat2 where it answers ENOSYS (every
/// systemd unit with RestrictSUIDSGID=, the shipped kmsfs.service among
/// them) refuses what RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS refuses, and
/// opens what it opens.
@Suite struct OpenBeneathTests {
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

    /// nil when the open succeeded, else its errno (the descriptor closed).
    static func outcome(_ body: () throws(Errno) -> Int32) -> Int32? {
        do {
            let fd = try body()
            close(fd)
            return nil
        } catch {
            return error.code
        }
    }

    @Test(arguments: [
        (".", O_RDONLY | O_DIRECTORY), ("a.encrypted", O_RDONLY), ("d/b.encrypted", O_PATH),
        ("./d/./b.encrypted", O_RDONLY), ("d", O_RDONLY | O_DIRECTORY),
    ])
    func opensWhatOpenat2Opens(path: String, flags: Int32) throws {
        let (dir, fd) = try Self.tree()
        defer { close(fd); Self.remove(dir) }
        #expect(Self.outcome { () throws(Errno) in try openBeneathByComponents(fd, path, flags: flags) } == nil)
        #expect(Self.outcome { () throws(Errno) in try openBeneath(fd, path, flags: flags) } == nil)
    }

    @Test(arguments: [
        ("out/passwd", O_RDONLY), ("out", O_PATH), ("in.encrypted", O_PATH), ("in.encrypted", O_RDONLY),
        ("dlink/b.encrypted", O_RDONLY), ("../etc/passwd", O_RDONLY), ("d/../../etc", O_PATH),
        ("/etc/passwd", O_RDONLY), ("missing", O_PATH),
    ])
    func refusesWhatOpenat2Refuses(path: String, flags: Int32) throws {
        let (dir, fd) = try Self.tree()
        defer { close(fd); Self.remove(dir) }
        let walked = Self.outcome { () throws(Errno) in try openBeneathByComponents(fd, path, flags: flags) }
        let resolved = Self.outcome { () throws(Errno) in try openBeneath(fd, path, flags: flags) }
        #expect(walked != nil)
        #expect(resolved != nil)
        if path == "missing" { #expect(walked == ENOENT) }
        if path.hasPrefix("/") || path.hasPrefix("..") { #expect(walked == EXDEV) }
    }
}
