import Testing
@testable import Log
import System
#if canImport(Glibc)
import Glibc
#endif

/// `log=FILE` and `audit=FILE` where openat2 answers ENOSYS (systemd's
/// RestrictSUIDSGID=, set by the shipped kmsfs.service): the directory is
/// reached one component at a time, and a directory its group swapped for
/// a link after the check is refused there as openat2 refuses it. A plain
/// open(2) with O_NOFOLLOW, as before, followed it: root then created and
/// appended to a file wherever the link led.
@Suite struct LogFileWalkTests {
    static func tempDir() -> String {
        var template = Array("/tmp/kmsfs-logwalk-XXXXXX".utf8CString)
        let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        return String(cString: p!)
    }

    static func removeAll(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        if st.st_mode & S_IFMT == S_IFDIR {
            if let d = opendir(path) {
                while let e = readdir(d) {
                    let name = withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
                    if name != "." && name != ".." { removeAll(path + "/" + name) }
                }
                closedir(d)
            }
            rmdir(path)
        } else {
            unlink(path)
        }
    }

    static func entries(_ dir: String) -> Int {
        guard let d = opendir(dir) else { return -1 }
        defer { closedir(d) }
        var n = 0
        while readdir(d) != nil { n += 1 }
        return n - 2
    }

    @Test func walkCreatesAnOwnedFileWithMode0600() throws {
        let dir = Self.tempDir()
        defer { Self.removeAll(dir) }
        #expect(mkdir(dir + "/a", 0o755) == 0 && mkdir(dir + "/a/b", 0o775) == 0)
        let fd = try Log.openAppendFile(dir + "/a/b/log", walking: true)
        Log.writeAll(fd, "one\n")
        close(fd)
        var st = stat()
        #expect(lstat(dir + "/a/b/log", &st) == 0)
        #expect(st.st_mode & S_IFMT == S_IFREG && st.st_mode & 0o777 == 0o600 && st.st_uid == geteuid())
        // And again, now that it exists: appended to.
        let again = try Log.openAppendFile(dir + "/a/b/log", walking: true)
        Log.writeAll(again, "two\n")
        close(again)
        #expect(stat(dir + "/a/b/log", &st) == 0 && st.st_size == 8)
    }

    @Test func walkRefusesALastComponentSymlink() {
        let dir = Self.tempDir()
        defer { Self.removeAll(dir) }
        close(open(dir + "/target", O_WRONLY | O_CREAT, 0o600))
        symlink(dir + "/target", dir + "/link")
        do {
            close(try Log.openAppendFile(dir + "/link", walking: true))
            Issue.record("a symlink was opened")
        } catch {
            #expect(error.message == "\(dir)/link is a symbolic link; refusing to follow it (give the file itself)")
        }
        // A dangling one is not created through either.
        unlink(dir + "/target")
        #expect(throws: LogFileError.self) { close(try Log.openAppendFile(dir + "/link", walking: true)) }
        #expect(access(dir + "/target", F_OK) != 0)
    }

    /// The directory, or one above it, is swapped for a link between the
    /// check and the open: refused, and nothing is created where it leads.
    /// Both ways: the walk and openat2.
    @Test(arguments: [true, false], ["logs", "logs/sub"])
    func aDirectorySwappedForALinkIsNotFollowed(walking: Bool, under: String) {
        let dir = Self.tempDir()
        defer { Self.removeAll(dir) }
        #expect(mkdir(dir + "/logs", 0o775) == 0 && mkdir(dir + "/logs/sub", 0o775) == 0)
        #expect(mkdir(dir + "/victim", 0o755) == 0 && mkdir(dir + "/victim/sub", 0o755) == 0)
        do {
            close(try Log.openAppendFile("\(dir)/\(under)/k.log", walking: walking) {
                rename(dir + "/logs", dir + "/old")
                symlink(dir + "/victim", dir + "/logs")
            })
            Issue.record("a directory swapped for a link was followed")
        } catch {
            #expect(error.message == "a directory on the way to \(dir)/\(under)/k.log became a symbolic link; refusing to follow it")
        }
        #expect(Self.entries(dir + "/victim") == 1 && Self.entries(dir + "/victim/sub") == 0)
    }

    /// The walk itself: a link anywhere on the directory's path, the
    /// directory itself included, fails with ELOOP; a file there with
    /// ENOTDIR; a directory opens as itself.
    @Test func theWalkFollowsNoLink() throws {
        let dir = Self.tempDir()
        defer { Self.removeAll(dir) }
        #expect(mkdir(dir + "/d", 0o755) == 0 && mkdir(dir + "/d/e", 0o755) == 0)
        symlink(dir + "/d", dir + "/link")
        close(open(dir + "/file", O_WRONLY | O_CREAT, 0o600))
        func walked(_ path: String) -> Int32? {
            do {
                let fd = try Log.openDirectoryFollowingNoLink(Array(path.utf8), walking: true)
                var st = stat(), want = stat()
                #expect(fstat(fd, &st) == 0 && stat(path, &want) == 0)
                #expect(st.st_dev == want.st_dev && st.st_ino == want.st_ino)
                close(fd)
                return nil
            } catch {
                return error.code
            }
        }
        #expect(walked(dir + "/d/e") == nil)
        #expect(walked("/") == nil)
        #expect(walked(dir + "/link") == ELOOP)
        #expect(walked(dir + "/link/e") == ELOOP)
        #expect(walked(dir + "/file") == ENOTDIR)
        #expect(walked(dir + "/missing") == ENOENT)
    }

    /// The directory is renamed away and one of another user's made in
    /// its place, after the check: the descriptor held is judged again.
    @Test(.enabled(if: geteuid() == 0, "chown needs root"), arguments: [true, false])
    func aDirectoryReplacedByAnotherUsersIsRefused(walking: Bool) {
        let dir = Self.tempDir()
        defer { Self.removeAll(dir) }
        #expect(mkdir(dir + "/logs", 0o775) == 0)
        do {
            close(try Log.openAppendFile(dir + "/logs/k.log", walking: walking) {
                rename(dir + "/logs", dir + "/old")
                mkdir(dir + "/logs", 0o755)
                chown(dir + "/logs", 65534, 65534)
            })
            Issue.record("another user's directory was written into")
        } catch {
            #expect(error.message.hasPrefix("\(dir)/logs/k.log: its directory \(dir)/logs belongs to uid 65534"))
        }
        #expect(Self.entries(dir + "/logs") == 0)
    }
}
