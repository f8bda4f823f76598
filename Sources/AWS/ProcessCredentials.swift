import System
import CCurl
import SecureMemory
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Credentials from a profile's `credential_process`: the command is split
/// like a shell would (quotes, backslashes) but run without a shell, with
/// stdin from /dev/null, the daemon's environment, and default signal
/// handling; its stdout must be the documented JSON (`Version: 1`,
/// `AccessKeyId`, `SecretAccessKey`, optional `SessionToken` and
/// `Expiration`). It gets `timeout` seconds (10 by default) before it is
/// killed; its stdout is read into secure memory and limited to 64 KiB.
public struct ProcessCredentialProvider: CredentialProvider {
    public let command: String
    public let profile: String
    public let environment: Environment
    public var timeout: Double = 10

    public var name: String { "credential_process (profile \(profile))" }

    public init(command: String, profile: String, environment: Environment) {
        self.command = command
        self.profile = profile
        self.environment = environment
    }

    /// The program to run for `name`: an absolute path as given, or the first executable
    /// `name` in the absolute directories of `path` (`/usr/bin:/bin`
    /// without one; a relative or empty entry, which means the working
    /// directory, is skipped). Its links are resolved, and it and every
    /// directory and link on its way must be root's or the daemon's
    /// user's to change, as an `on_change=` program: whoever could change
    /// it would run code as the daemon's user (root, as a rule). The
    /// mounter's PATH (`su` without `-` keeps a user's) would otherwise
    /// choose what runs.
    static func program(_ name: String, searching path: String?) -> Result<String, ChildProcess.Failure> {
        func fail(_ text: String) -> Result<String, ChildProcess.Failure> { .failure(ChildProcess.Failure(message: text)) }
        let candidate: String
        if name.hasPrefix("/") {
            candidate = name
        } else if name.contains("/") {
            // Relative to which directory? The daemon's is / once it runs in
            // the background, where `bin/helper` is another program.
            return fail("give the program's absolute path, or a bare name found in PATH")
        } else if let found = PathTrust.findProgram(name, searching: path) {
            candidate = found
        } else {
            return fail("no \(name) in the absolute directories of PATH (\(path ?? "unset"))")
        }
        return PathTrust.checkFile(candidate, because: "the daemon runs it to get credentials")
            .mapError { ChildProcess.Failure(message: $0.text) }
    }

    public func credentials() throws(CredentialError) -> AWSCredentials {
        guard let argv = ProcessCredentialProvider.split(command), !argv.isEmpty else {
            throw .failed("credential_process in profile '\(profile)' is empty or has an unbalanced quote")
        }
        var run = argv
        switch ProcessCredentialProvider.program(argv[0], searching: environment["PATH"]) {
        case .success(let path): run[0] = path
        case .failure(let why): throw .failed("credential_process '\(argv[0])' (profile \(profile)): not running it: \(why.message)")
        }
        let out: SecureBuffer
        do {
            out = try ProcessRunner.run(run, environment: environment, timeout: timeout, limit: 64 * 1024)
        } catch {
            throw .failed("credential_process '\(argv[0])' (profile \(profile)): \(error.message)")
        }
        let source = "credential_process (profile \(profile))"
        let parsed: (JSONValue, AWSCredentials?)? = out.withUnsafeBytes { b in
            parseCredentialsDocument(b).map { ($0, credentialsFromJSON($0, bytes: b, source: source, kind: .credentialProcess)) }
        }
        out.wipeContents()
        guard let (doc, creds) = parsed else {
            throw .failed("credential_process '\(argv[0])' (profile \(profile)) did not print a JSON document")
        }
        guard let v = doc["Version"]?.numberValue, v == 1 else {
            throw .failed("credential_process '\(argv[0])' (profile \(profile)): unsupported Version (expected 1)")
        }
        guard let c = creds else {
            throw .failed("credential_process '\(argv[0])' (profile \(profile)): AccessKeyId or SecretAccessKey missing")
        }
        // Long-term keys, or a session token whose expiry is not given,
        // are allowed here (as the AWS CLI allows them).
        if let problem = temporaryCredentialsProblem(doc, c, requireExpiry: false) {
            throw .failed("credential_process '\(argv[0])' (profile \(profile)): \(problem)")
        }
        return c
    }

    /// Splits a command line as POSIX shells do for words: blanks separate,
    /// single quotes are literal, double quotes allow `\"` `\\` `\$` `` \` ``,
    /// a backslash outside quotes escapes the next character. Nil when a
    /// quote is left open. On Unicode scalars, as shells and Python's shlex
    /// (botocore) read it: a quote or a blank and a combining mark after it
    /// are one Character, which a walk over Characters would not see.
    public static func split(_ s: String) -> [String]? {
        var words: [String] = []
        var cur = String.UnicodeScalarView()
        var inWord = false
        var it = Array(s.unicodeScalars).makeIterator()
        while let c = it.next() {
            switch c {
            case " ", "\t", "\n":
                if inWord { words.append(String(cur)); cur = String.UnicodeScalarView(); inWord = false }
            case "'":
                inWord = true
                var closed = false
                while let d = it.next() { if d == "'" { closed = true; break }; cur.append(d) }
                if !closed { return nil }
            case "\"":
                inWord = true
                var closed = false
                while let d = it.next() {
                    if d == "\"" { closed = true; break }
                    if d == "\\" {
                        guard let e = it.next() else { return nil }
                        if e == "\"" || e == "\\" || e == "$" || e == "`" { cur.append(e) } else { cur.append("\\"); cur.append(e) }
                        continue
                    }
                    cur.append(d)
                }
                if !closed { return nil }
            case "\\":
                inWord = true
                if let e = it.next() { cur.append(e) }
            default:
                inWord = true
                cur.append(c)
            }
        }
        if inWord { words.append(String(cur)) }
        return words
    }
}

/// Runs a program and collects its stdout, with a deadline.
enum ProcessRunner {
    struct Failure: Error { let message: String }

    /// Starts `argv` (no shell; found through PATH) with stdin from
    /// /dev/null, stdout onto `stdout` (or /dev/null), stderr the
    /// daemon's (`credential_process`, whose complaints the operator
    /// needs, as botocore does) or /dev/null (`quietStderr`: the programs
    /// the daemon runs for the operator, whose output the guide says is
    /// dropped; an `on_change=` program that echoes its arguments, the
    /// secrets' names, would otherwise write raw lines into the daemon's
    /// log and audit trail), no other descriptor of the daemon's, signals
    /// unblocked and at their defaults, in a process group of its own.
    /// The pid.
    private static func spawn(_ argv: [String], environment: Environment, stdout: Int32?,
                              quietStderr: Bool = false) throws(Failure) -> pid_t {
        reapAbandoned()
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        if let stdout {
            posix_spawn_file_actions_adddup2(&actions, stdout, 1)
        } else {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        }
        if quietStderr { posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0) }
        // Then every descriptor from 3 up is closed in the child: whatever
        // a library opened without close-on-exec (curl 7.88's wakeup
        // socketpair) never reaches the helper.
        let closeRC = ChildProcess.closeDescriptors(from: 3, in: &actions)
        guard closeRC == 0 else {
            throw Failure(message: "posix_spawn_file_actions_addclosefrom_np: \(Errno.text(closeRC))")
        }

        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        // The daemon blocks its signals for sigwait; the child must not
        // inherit that, or a kill on timeout... still works (SIGKILL), but a
        // well-behaved helper could not be stopped with TERM.
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGCHLD] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attr, &defaults)
        // Its own process group, so that a timeout kills what it started
        // too (`sh -c "vault read ... | jq ..."`), not only the shell.
        posix_spawnattr_setpgroup(&attr, 0)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

        let cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for p in cArgs { free(p) } }
        // The helper gets the daemon's environment; its secret variables
        // are assembled in locked memory (never as Strings), wiped after
        // the spawn.
        var pid: pid_t = 0
        let rc: Int32
        do {
            rc = try environment.withCEnvironment { envp in
                cArgs.withUnsafeBufferPointer { a in posix_spawnp(&pid, argv[0], &actions, &attr, a.baseAddress!, envp) }
            }
        } catch {
            throw Failure(message: "\(error)")
        }
        guard rc == 0 else { throw Failure(message: "cannot run it: \(Errno.text(rc))") }
        return pid
    }

    /// Runs a program without reading its output (stdout and stderr
    /// /dev/null) and without taking any locked memory when `environment`
    /// holds no secret: waits for its exit until `timeout`, then kills its
    /// process group (ChildProcess).
    static func runDiscardingOutput(_ argv: [String], environment: Environment, timeout: Double) throws(Failure) {
        let pid = try spawn(argv, environment: environment, stdout: nil, quietStderr: true)
        guard let status = reap(pid, until: SystemClock.monotonic() + timeout) else {
            throw killed(pid, "no answer within \(displaySeconds(timeout)) s; killed")
        }
        if status != 0 { throw Failure(message: "exited with status \(status)") }
    }

    /// Kills `pid`'s process group, reaps it (for a second at most) and
    /// says why. A child that outlives that second (in uninterruptible
    /// sleep: a hung NFS mount, a dead disk) takes SIGKILL when it wakes;
    /// it is reaped then, by a later spawn, rather than left a zombie for
    /// the daemon's life.
    private static func killed(_ pid: pid_t, _ why: String) -> Failure {
        kill(-pid, SIGKILL)
        if reap(pid, until: SystemClock.monotonic() + 1) == nil { abandon(pid) }
        return Failure(message: why)
    }

    /// Children killed but not yet reaped (at most `maxAbandoned`; past
    /// that a hung child is left to init at the daemon's exit).
    private static let abandoned = Mutex<[pid_t]>([])
    static let maxAbandoned = 1024

    static func abandon(_ pid: pid_t) {
        abandoned.withLock { if $0.count < maxAbandoned { $0.append(pid) } }
    }

    /// Reaps the abandoned children that have exited since; returns how
    /// many are still waited for.
    @discardableResult
    static func reapAbandoned() -> Int {
        abandoned.withLock { pids in
            var st: Int32 = 0
            pids.removeAll { pid in
                let r = waitpid(pid, &st, WNOHANG)
                return r == pid || (r < 0 && Errno.current == ECHILD)
            }
            return pids.count
        }
    }

    static func run(_ argv: [String], environment: Environment, timeout: Double, limit: Int) throws(Failure) -> SecureBuffer {
        var fds: [Int32] = [-1, -1]
        // Close-on-exec from the start (pipe2), so no other spawn can
        // inherit either end.
        guard kmsfs_pipe_cloexec(&fds) == 0 else { throw Failure(message: "pipe: \(Errno.text(Errno.current))") }
        let readEnd = fds[0], writeEnd = fds[1]
        var closeWrite = true
        defer {
            close(readEnd)
            if closeWrite { close(writeEnd) }
        }
        let pid = try spawn(argv, environment: environment, stdout: writeEnd)
        close(writeEnd)
        closeWrite = false

        let deadline = SystemClock.monotonic() + timeout
        let out: SecureAccumulator
        do { out = try SecureAccumulator(initialCapacity: 4096, limit: limit) } catch {
            throw killed(pid, "\(error)")
        }
        var timedOut = false
        var tooLarge = false
        while true {
            let left = deadline - SystemClock.monotonic()
            if left <= 0 { timedOut = true; break }
            var p = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
            let n = poll(&p, 1, Int32(clampedMilliseconds(min(left, 1))) + 1)
            if n < 0 { if Errno.current == EINTR { continue }; break }
            if n == 0 { continue }
            // Straight into locked memory, never through an ordinary array.
            switch out.read(from: readEnd) {
            case .read: continue
            case .end, .failed: break       // the end, or a failed read
            case .overLimit, .noMemory: tooLarge = true
            }
            break
        }
        if timedOut || tooLarge { kill(-pid, SIGKILL) }
        let status = reap(pid, until: max(deadline, SystemClock.monotonic()) + 1)
        if status == nil && (timedOut || tooLarge) { abandon(pid) }
        if timedOut { throw Failure(message: "no answer within \(displaySeconds(timeout)) s; killed") }
        if tooLarge { throw Failure(message: "printed more than \(limit) bytes") }
        guard let status else { throw killed(pid, "did not exit within \(displaySeconds(timeout)) s; killed") }
        if status != 0 { throw Failure(message: "exited with status \(status)") }
        return out.buffer
    }

    /// waitpid until `until` (monotonic); the exit status (128+signal for a
    /// signal), or nil if it is still running.
    static func reap(_ pid: pid_t, until: Double) -> Int32? {
        var st: Int32 = 0
        while true {
            let r = waitpid(pid, &st, WNOHANG)
            if r == pid {
                if st & 0x7f == 0 { return (st >> 8) & 0xff }
                return 128 + (st & 0x7f)
            }
            if r < 0 && Errno.current != EINTR { return -1 }
            if SystemClock.monotonic() >= until { return nil }
            SystemClock.sleep(0.01)
        }
    }
}
