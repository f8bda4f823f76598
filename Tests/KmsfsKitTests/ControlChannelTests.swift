import Testing
import KmsfsKit
import AWS
import System
#if canImport(Glibc)
import Glibc
#endif

/// The control channel end to end, without a mount: a ControlServer for a
/// made-up mountpoint, asked by ControlClient and by hand.
@Suite struct ControlChannelTests {
    static func temporaryMountpoint() -> String {
        var template = Array("/tmp/kmsfs-control-test.XXXXXX".utf8CString)
        return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    static func server(_ mountpoint: String) throws -> ControlServer {
        let s = try ControlServer(mountpoint: mountpoint, status: { .object([("answer", .string("status"))]) }) { options in
            options == "ttl=5" ? .success("ttl=5 now") : .failure(OptionError("option '\(options)' cannot change on a live mount"))
        }
        s.start()
        return s
    }

    /// One raw request line; the answer as text.
    static func ask(_ mountpoint: String, _ request: [UInt8]) throws -> String {
        let fd = try unixSocket(SOCK_STREAM)
        defer { close(fd) }
        #expect(try UnixSocketAddress(ControlSocket.path(for: mountpoint)).withSockaddr { connect(fd, $0, $1) } == 0)
        try FileDescriptor.writeAll(fd, request)
        return String(decoding: try readMessage(fd, limit: 1 << 20).get(), as: UTF8.self)
    }

    @Test func statusAndRemountAreAnswered() throws {
        let mnt = ControlChannelTests.temporaryMountpoint()
        defer { rmdir(mnt) }
        let server = try ControlChannelTests.server(mnt)
        defer { server.stop() }
        var st = stat()
        #expect(lstat(server.path, &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(try ControlClient.status(mountpoint: mnt)["answer"]?.stringValue == "status")
        #expect(try ControlClient.remount(mountpoint: mnt, options: ["ttl=5"]) == "ttl=5 now")
        #expect { _ = try ControlClient.remount(mountpoint: mnt, options: ["exec"]) } throws: {
            "\($0)" == "option 'exec' cannot change on a live mount"
        }
        #expect { _ = try ControlClient.remount(mountpoint: mnt, options: ["a\nstatus"]) } throws: {
            "\($0)" == "options cannot contain a newline"
        }
    }

    @Test func unknownAndOversizedRequestsAreRefused() throws {
        let mnt = ControlChannelTests.temporaryMountpoint()
        defer { rmdir(mnt) }
        let server = try ControlChannelTests.server(mnt)
        defer { server.stop() }
        #expect(try ControlChannelTests.ask(mnt, Array("bogus\n".utf8)) == "{\"error\":\"unknown request\"}\n")
        #expect(try ControlChannelTests.ask(mnt, Array(" status \r\n".utf8)).contains("\"answer\":\"status\""))
        let long = [UInt8](repeating: UInt8(ascii: "a"), count: 70_000) + [10]
        #expect(try ControlChannelTests.ask(mnt, long) == "{\"error\":\"the request was not one line of at most 64 KiB\"}\n")
    }

    @Test func noDaemonMeansNotRunning() {
        let mnt = ControlChannelTests.temporaryMountpoint()
        defer { rmdir(mnt) }
        #expect { _ = try ControlClient.status(mountpoint: mnt) } throws: { error in
            guard let f = error as? ControlClient.Failure, case .notRunning(let m) = f else { return false }
            return m.hasPrefix("no kmsfs daemon answers for \(mnt) (")
        }
    }

    /// The parent is resolved up to the last "/" byte: "/" and a combining
    /// mark after it are one Character, and a Character search stopped at
    /// the "/" before, leaving the link in the parent unresolved.
    @Test func theCanonicalPathCutsTheLastComponentOnBytes() throws {
        let base = "/tmp/kmsfs-canonical-\(getpid())"
        defer { unlink(base + "/link"); rmdir(base + "/real"); rmdir(base) }
        #expect(mkdir(base, 0o700) == 0 && mkdir(base + "/real", 0o700) == 0)
        #expect(symlink(base + "/real", base + "/link") == 0)
        let name = "\u{301}mnt"
        #expect(ControlSocket.canonical(base + "/link/" + name).utf8.elementsEqual((base + "/real/" + name).utf8))
        #expect(ControlSocket.canonical(base + "/link/plain").utf8.elementsEqual((base + "/real/plain").utf8))
    }

    @Test func socketPathsAreStablePerMountpoint() {
        #expect(ControlSocket.path(for: "/mnt/a") == ControlSocket.path(for: "/mnt/a/"))
        #expect(ControlSocket.path(for: "/mnt/a") != ControlSocket.path(for: "/mnt/b"))
        #expect(ControlSocket.path(for: "/mnt/a").hasPrefix(ControlSocket.directory + "/"))
    }
}
