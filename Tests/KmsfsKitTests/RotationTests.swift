import Testing
import KmsfsKit
#if canImport(Glibc)
import Glibc
#endif

/// `on_change=` programs get the changed paths in runs that never hit
/// E2BIG: at most 1,000 paths and 64 KiB of them per run.
@Suite struct RotationLogTests {
    /// A log line names each path so that `a b` is not read as two.
    @Test func pathsInALogLineAreUnambiguous() {
        #expect(RotationNotifier.shown(["tls/key", "db/a b", "x\"y"]) == #"tls/key "db/a b" "x\"y""#)
        #expect(RotationNotifier.shown(["a", "b"]) != RotationNotifier.shown(["a b"]))
    }
}

@Suite struct RotationChunkTests {
    @Test func pathsAreCutIntoBoundedRunsInOrder() {
        let many = (0..<2500).map { "app/s\($0)" }
        let runs = RotationNotifier.chunks(many, maxCount: 1000, maxBytes: 64 * 1024)
        #expect(runs.map(\.count) == [1000, 1000, 500])
        #expect(runs.flatMap { $0 } == many)

        let long = (0..<600).map { String(repeating: "d", count: 3800) + "/\($0)" }
        let byBytes = RotationNotifier.chunks(long, maxCount: 1000, maxBytes: 64 * 1024)
        #expect(byBytes.allSatisfy { run in run.reduce(0) { $0 + $1.utf8.count + 3 } <= 64 * 1024 })
        #expect(byBytes.flatMap { $0 } == long)
        #expect(byBytes.count == 36)                     // 17 paths of ~3,807 bytes a run

        // One path longer than the budget still runs, alone.
        let huge = [String(repeating: "x", count: 70_000), "b"]
        #expect(RotationNotifier.chunks(huge, maxCount: 1000, maxBytes: 64 * 1024) == [[huge[0]], ["b"]])
        #expect(RotationNotifier.chunks([], maxCount: 1000, maxBytes: 64 * 1024).isEmpty)
    }
}

/// `reload=` runs the first systemctl of the daemon's PATH that only root
/// may change: a directory anyone may write early in the PATH of whoever
/// mounted must not choose what root runs at every rotation.
@Suite struct RotationSystemctlTests {
    @Test func systemctlIsFoundOnlyWhereNobodyElseMayChangeIt() throws {
        var template = Array("/tmp/kmsfs-systemctl-test.XXXXXX".utf8CString)
        let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        defer { _ = system("rm -rf '\(dir)'") }
        let bin = dir + "/bin"
        mkdir(bin, 0o755)
        let fake = bin + "/systemctl"
        let fd = open(fake, O_WRONLY | O_CREAT | O_TRUNC, 0o755)
        close(fd)
        chmod(fake, 0o755)

        #expect(try RotationNotifier.systemctl(searching: "relative/bin:\(bin):/usr/bin").get() == fake)
        #expect(try RotationNotifier.systemctl(searching: "\(dir)/none:\(bin)/").get() == fake)   // a trailing slash too
        chmod(bin, 0o777)
        #expect { try RotationNotifier.systemctl(searching: "\(bin):/usr/bin").get() } throws: {
            "\($0)".contains("not running \(fake): its directory \(bin) may be written by anyone")
        }
        chmod(bin, 0o755)
        chmod(fake, 0o775)
        #expect { try RotationNotifier.systemctl(searching: bin).get() } throws: { "\($0)".contains("may be written by its group") }
        chmod(fake, 0o755)
        // A link root owns is followed (merged /usr, NixOS's profiles), and
        // the file it leads to is what runs.
        let links = dir + "/links"
        mkdir(links, 0o755)
        symlink("../bin/systemctl", links + "/systemctl")
        #expect(try RotationNotifier.systemctl(searching: links).get() == fake)
        lchown(links + "/systemctl", 4242, 4242)
        #expect { try RotationNotifier.systemctl(searching: links).get() } throws: { "\($0)".contains("belongs to uid 4242") }
        chmod(fake, 0o644)   // not executable: looked past, as a shell would
        #expect { try RotationNotifier.systemctl(searching: "relative:\(bin)").get() } throws: {
            "\($0)".contains("no systemctl in the absolute directories of PATH (relative:\(bin))")
        }
    }
}
