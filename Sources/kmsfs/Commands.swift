import System
import ArgumentParser
import KmsfsKit
import AWS
import KMS
import SecretFS
import SecureMemory
import Log
#if canImport(Glibc)
import Glibc
#endif

struct KmsfsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kmsfs",
        abstract: "Serve KMS-encrypted secrets as plain, read-only files.",
        discussion: """
        kmsfs SOURCE MOUNTPOINT [-f] [-d] [-o OPT[,OPT...]] mounts SOURCE (a directory of \
        NAME.encrypted files) at MOUNTPOINT, where each appears as NAME and is decrypted \
        through AWS KMS when first opened. See man 8 kmsfs for every mount option.
        """,
        version: "kmsfs \(kmsfsVersion)",
        subcommands: [MountCommand.self, EncryptCommand.self, DecryptCommand.self, CheckCommand.self, LiveStatusCommand.self],
        defaultSubcommand: MountCommand.self
    )

    /// `-oOPTS` as `-o OPTS`, as mount(8), sshfs and libfuse's own
    /// option parser take it. ArgumentParser's joined short options would
    /// cut `-oallow_uid=0` at its `=` and report `-oallow_uid` unknown.
    /// Nothing after `--` is touched; an option's value never starts with
    /// `-`, so no value is rewritten.
    static func splittingJoinedOptions(_ args: [String]) -> [String] {
        var out: [String] = []
        out.reserveCapacity(args.count)
        var literal = false
        for a in args {
            if !literal, a == "--" { literal = true }
            if !literal, a.utf8.count > 2, a.utf8.starts(with: "-o".utf8) {
                out.append("-o")
                out.append(String(decoding: a.utf8.dropFirst(2), as: UTF8.self))
            } else {
                out.append(a)
            }
        }
        return out
    }

    /// Parses and runs; a usage error is one line on stderr and exit 2.
    static func main() {
        do {
            var command = try parseAsRoot(splittingJoinedOptions(Array(CommandLine.arguments.dropFirst())))
            try command.run()
        } catch let code as ExitCode {
            Glibc.exit(code.rawValue)
        } catch {
            if exitCode(for: error) == .success { exit(withError: error) }
            let first = message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            Log.writeAll(2, "kmsfs: \(LogEscape.escape(first)) (see kmsfs --help)\n")
            Glibc.exit(2)
        }
    }
}

/// Prints one line to stderr (escaped: it may name a hostile path) and
/// exits with `code`, wiping whatever secret the process holds first (the
/// environment's AWS keys, a credential fetched; locked anonymous memory
/// goes back to the kernel unwiped otherwise).
func fail(_ message: String, code: Int32 = 1) -> Never {
    Log.writeAll(2, "kmsfs: \(LogEscape.escape(message))\n")
    SecureMemoryStats.wipeAllLive()
    exit(code)
}

struct MountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount",
        abstract: "Mount SOURCE at MOUNTPOINT (the default command; the form mount.fuse3 uses).",
        shouldDisplay: false
    )

    @Argument(help: "Directory holding the NAME.encrypted files.")
    var source: String

    @Argument(help: "Where the plaintext files appear.")
    var mountpoint: String

    @Flag(name: .customShort("f"), help: "Stay in the foreground (systemd Type=simple or notify, tests).")
    var foreground = false

    @Flag(name: .customShort("d"), help: "Log every FUSE request (implies -f).")
    var debug = false

    @Option(name: .customShort("o"), help: "Mount options, comma-separated (see man 8 kmsfs); -oOPTS works too.")
    var options: [String] = []

    func run() throws {
        if MountOptions.isRemount(options) {
            // mount -o remount: the live daemon takes the options it names
            // (checked there against what it runs with), or refuses them all.
            let changes = MountOptions.remountChanges(options)
            do { _ = try MountOptions.parse([changes]) } catch { fail(error.message, code: 2) }
            do {
                // Shown (mount(8) passes it on): what is in effect now.
                let summary = try ControlClient.remount(mountpoint: absolute(mountpoint), options: [changes])
                if !summary.isEmpty { Log.writeAll(2, "kmsfs: remounted \(LogEscape.escape(mountpoint)): \(LogEscape.escape(summary))\n") }
            } catch {
                fail("remount \(mountpoint): \(error)")
            }
            return
        }
        let parsed: MountOptions
        do { parsed = try MountOptions.parse(options) } catch { fail(error.message, code: 2) }
        let source = absolute(self.source)
        let mountpoint = absolute(self.mountpoint)
        var isDir = stat()
        guard stat(source, &isDir) == 0, (isDir.st_mode & S_IFMT) == S_IFDIR else {
            fail("source \(source) is not a directory; give the directory that holds the *.encrypted files", code: 1)
        }
        let request = MountRequest(source: source, mountpoint: mountpoint, foreground: foreground || debug,
                                   debug: debug, rawOptions: options, options: parsed)
        if let fdText = getenv("KMSFS_READY_FD").map({ String(cString: $0) }), let fd = Int32(fdText) {
            // The background child: report start-up to the waiting parent.
            unsetenv("KMSFS_READY_FD")
            setsid()
            // SOURCE and MOUNTPOINT are absolute by now; the caller's
            // directory must not stay busy for the daemon's whole life.
            // Paths the AWS variables give relative to it keep naming what
            // they named there.
            Background.anchorRelativePaths()
            _ = chdir("/")
            Background.keepName()
            throw ExitCode(Daemon.run(request, readyFD: fd))
        }
        if request.foreground {
            throw ExitCode(Daemon.run(request, readyFD: nil))
        }
        throw ExitCode(Background.spawnAndWait())
    }

    func absolute(_ p: String) -> String {
        if p.hasPrefix("/") { return p }
        guard let c = getcwd(nil, 0) else { return p }
        let cwd = String(cString: c)
        free(c)
        return cwd == "/" ? "/" + p : cwd + "/" + p
    }
}

/// Starting in the background: the same command runs again as a child in
/// its own session, and this process returns only once the child reports
/// the mount live (exit 0) or its one-line failure (exit 1).
enum Background {
    /// The variables that name files, each read again later (at every
    /// credential refresh, some).
    static let pathVariables = ["AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AWS_CA_BUNDLE"]

    /// Makes each of `pathVariables` that holds a relative path (not
    /// `~/...`) absolute against the current directory, before the
    /// background daemon leaves it.
    static func anchorRelativePaths() {
        guard let c = getcwd(nil, 0) else { return }
        let cwd = String(cString: c)
        free(c)
        for name in pathVariables {
            guard let raw = getenv(name) else { continue }
            let value = String(cString: raw)
            guard !value.isEmpty, !value.hasPrefix("/"), !value.hasPrefix("~") else { continue }
            setenv(name, (cwd == "/" ? "" : cwd) + "/" + value, 1)
        }
    }

    static func spawnAndWait() -> Int32 {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { fail("pipe: \(Errno.text(Errno.current))") }
        let (readEnd, writeEnd) = (fds[0], fds[1])
        // Only the dup2'd copy (fd 3) may reach the child, or the pipe
        // would never see its end.
        _ = fcntl(readEnd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(writeEnd, F_SETFD, FD_CLOEXEC)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        if !SystemdNotify.stderrIsJournal {
            // Nobody reads our stderr once we exit (and a pipe left open
            // would hang whoever waits for its end): the daemon logs to
            // syslog or to log=FILE instead.
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        }
        posix_spawn_file_actions_adddup2(&actions, writeEnd, 3)
        // Nothing else of the caller's (a script's flock, a pipe someone
        // waits to see closed) may live on in a daemon that outlives it.
        let closeRC = ChildProcess.closeDescriptors(from: 4, in: &actions)
        guard closeRC == 0 else { fail("cannot start the daemon: posix_spawn_file_actions_addclosefrom_np: \(Errno.text(closeRC))") }

        // This process holds the AWS secrets of its environment until the
        // daemon is up: no core dump or ptrace of it, and they reach the
        // child's environment through locked memory, never as Strings.
        ProcessHardening.forbidCoreDumps()
        var env = Environment.process()
        env.setPlain("KMSFS_READY_FD", "3")
        // What systemd handed this process (a notify socket, passed fds, a
        // watchdog) is this process's, not the daemon's: a daemon that
        // outlives it must not write READY=1 or STOPPING=1 into a unit
        // that is not its own.
        for k in env.plain.keys where SystemdNotify.isHandoffVariable(k) { env.setPlain(k, nil) }
        let args = CommandLine.arguments
        let argv = args.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc: Int32
        do {
            rc = try env.withCEnvironment { envp in posix_spawn(&pid, executablePath(), &actions, nil, argv, envp) }
        } catch {
            fail("cannot hold the environment's AWS secrets in locked memory: \(error)")
        }
        close(writeEnd)
        guard rc == 0 else { fail("cannot start the daemon: \(Errno.text(rc))") }

        // One line says it all; none (the pipe's end) means the child died.
        let reply = (try? readMessage(readEnd, limit: 65536, throughNewline: true).get()) ?? []
        close(readEnd)
        let text = String(decoding: reply, as: UTF8.self)
        if text.hasPrefix("READY") { return 0 }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        if text.hasPrefix("ERROR ") {
            var m = String(text.dropFirst(6))
            while m.hasSuffix("\n") { m.removeLast() }
            fail(m)
        }
        let code = (status & 0x7f) == 0 ? "exit status \((status >> 8) & 0xff)" : "signal \(status & 0x7f)"
        fail("the daemon stopped during start-up (\(code)) without saying why; run the same command with -f to see its log")
    }

    /// The file this process runs, by its real name. The kernel names a
    /// process (its `comm`: what ps, top, pgrep and pidof show) after the
    /// last part of the path given to execve(2): spawning "/proc/self/exe"
    /// would make the daemon `exe`. When that file is no longer the one
    /// running (replaced by an upgrade since we started), /proc/self/exe
    /// still starts the same binary, and the child renames itself.
    static func executablePath() -> String {
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { return "/proc/self/exe" }
        let path = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var running = stat(), named = stat()
        guard stat("/proc/self/exe", &running) == 0, stat(path, &named) == 0,
              running.st_dev == named.st_dev, running.st_ino == named.st_ino else { return "/proc/self/exe" }
        return path
    }

    /// In the child, before any other thread exists: a process started
    /// through /proc/self/exe takes the name `kmsfs` back (writing
    /// /proc/self/comm is prctl(PR_SET_NAME) without a variadic call).
    static func keepName() {
        var comm = [UInt8](repeating: 0, count: 32)
        let fd = open("/proc/self/comm", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        let n = read(fd, &comm, comm.count)
        guard n > 0, comm[0..<n] == Array("exe\n".utf8)[...] else { return }
        Log.writeAll(fd, "kmsfs")
    }
}
