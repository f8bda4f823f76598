import AWS
import System
import KMS
import SecretFS
import FUSEBridge
import SecureMemory
import Log
#if canImport(Glibc)
import Glibc
#endif

/// What `kmsfs SOURCE MOUNTPOINT` was asked to do.
public struct MountRequest: Sendable {
    public var source: String
    public var mountpoint: String
    public var foreground: Bool
    public var debug: Bool
    public var rawOptions: [String]
    public var options: MountOptions

    public init(source: String, mountpoint: String, foreground: Bool, debug: Bool, rawOptions: [String], options: MountOptions) {
        self.source = source
        self.mountpoint = mountpoint
        self.foreground = foreground
        self.debug = debug
        self.rawOptions = rawOptions
        self.options = options
    }
}

/// Where start-up is reported: stderr in the foreground, or the pipe the
/// waiting parent reads when started in the background.
struct StartupReporter {
    let readyFD: Int32?

    func fail(_ message: String) -> Never {
        if let fd = readyFD {
            Log.writeAll(fd, "ERROR \(LogEscape.escape(message))\n")
        }
        Log.error(message)
        SecureMemoryStats.wipeAllLive()   // the credentials fetched by then
        exit(1)
    }

    func ready() {
        if let fd = readyFD {
            Log.writeAll(fd, "READY\n")
            close(fd)
        }
        SystemdNotify.send("READY=1\nSTATUS=serving")
    }
}

/// The mount daemon: hardens the process, builds the filesystem over KMS,
/// mounts it and serves until unmounted or signalled.
public enum Daemon {
    /// Runs the daemon in this process (foreground, or the child the
    /// background form spawned, which passes `readyFD`). Returns the exit status.
    public static func run(_ request: MountRequest, readyFD: Int32?) -> Int32 {
        let report = StartupReporter(readyFD: readyFD)
        let options = request.options
        let background = readyFD != nil

        // Logging first, so every later failure has a place to go.
        configureLogging(options.log, background: background, debug: request.debug, report: report)

        // Memory: locked, undumpable, before any secret exists.
        ProcessHardening.forbidCoreDumps()
        SecureMemoryPolicy.allowUnlocked = options.insecureAllowUnlocked
        SecureMemoryPolicy.preferSecretMemory = !options.noMemfdSecret
        SecureMemoryPolicy.fallbackReporter = { failure, n in
            Log.warning("\(failure): a secret buffer was allocated as locked memory in the kernel's direct map instead (\(n) since start, memory_fallbacks in kmsfs status); root can read those buffers, so give the daemon more descriptors or memory")
        }
        switch ProcessHardening.lockAllMemory() {
        case .locked:
            break
        case .failed(let e):
            if options.insecureAllowUnlocked {
                Log.warning("memory is NOT locked (\(e)): plaintext may reach swap; running anyway because of insecure_allow_unlocked")
            } else {
                let limit = ProcessHardening.memlockLimit.map { "\($0) bytes" } ?? "unlimited"
                report.fail("cannot lock memory (\(e); RLIMIT_MEMLOCK is \(limit)): run as root or with CAP_IPC_LOCK, or raise the limit (LimitMEMLOCK=infinity under systemd, ulimit -l unlimited); -o insecure_allow_unlocked runs without locking")
            }
        }
        DaemonSignals.block()
        // One malloc arena: memory freed by one thread is reused by every
        // other. With two, each burst's work landed in either arena as
        // threads came and went, and each arena grew to hold its own peak
        // (locked memory freed inside an arena stays resident): resident
        // memory crept up burst after burst (bench soak section).
        ProcessHardening.limitMallocArenas(1)

        let env = Environment.process()
        // What the programs the daemon runs get of it (on_change=,
        // systemctl, fusermount3): taken once, here.
        let programs = env.forPrograms
        let settings: AWSSettings
        let fsConfig: FSConfiguration
        do {
            settings = try AWSSettings.resolve(region: options.region, endpoint: options.endpoint, profile: options.profile,
                                               caBundle: options.caBundle, maxAttempts: options.maxAttempts,
                                               timeout: options.kmsTimeout, environment: env)
            fsConfig = try Configuration.filesystem(options)
        } catch {
            report.fail(error.message)
        }
        // A program the daemon will run as root at each rotation (see
        // checkOnChange).
        if let program = options.onChange {
            do throws(OptionError) { try Daemon.checkOnChange(program) } catch { report.fail(error.message) }
        }
        Log.info("AWS: region \(settings.region) (from \(settings.regionSource)), KMS endpoint \(settings.endpoint) (from \(settings.endpointSource)), profile \(settings.profile), \(settings.maxAttempts) attempts per call, an open waits at most \(Int(settings.openBound)) s")
        do {
            _ = try settings.credentials.credentials()
        } catch {
            if error.kind == .notConfigured {
                report.fail("no AWS credentials: \(error.message); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use a profile, an instance role or a container role (docs/credentials.md)")
            }
            if error.kind == .invalid {
                // The AWS CLI refuses these too ("Partial credentials found
                // in env"); the daemon's environment never changes.
                report.fail("AWS credentials: \(error.message); set both, or unset both to use a profile or a role")
            }
            Log.warning("credentials are not available yet (\(error.message)); opens will fail until they are")
        }

        // SOURCE is opened once, here: a user who may change a directory
        // or link on its way could have put another directory (another
        // mount's ciphertexts, which that user cannot read) in its place.
        if case .failure(let problem) = PathTrust.resolve(request.source, because: "whoever may change it may put another directory in SOURCE's place"),
           problem.code == nil {
            Log.warning("source \(request.source): \(problem)")
        }
        let tree: SourceTree
        do { tree = try SourceTree(path: request.source) } catch {
            report.fail("source \(request.source): \(Errno.text(error.code)); give the directory that holds the *.encrypted files")
        }
        if !tree.holdsPrivateCopy {
            Log.debug("source \(request.source): opened without a private copy of its mount (not root): its file system cannot be unmounted while this daemon holds it")
        }
        let caseInsensitive = tree.caseInsensitiveFileSystem
        if let fs = caseInsensitive {
            // A name spelled in another case opens the same file but misses
            // the rules written for it: with policy=, a way around them.
            if options.policyFile != nil {
                report.fail(Daemon.caseInsensitivePolicy(source: request.source, fs: fs))
            }
            Log.warning("source \(request.source) is on \(fs), which ignores case in names: a name spelled in another case opens the same file; keep SOURCE on a case-sensitive file system (policy= is refused on it)")
        }

        let auditTarget: AuditSink
        switch options.audit {
        case .stderr: auditTarget = LogAuditSink()
        case .syslog: auditTarget = SyslogAuditSink()
        case .off: auditTarget = NoAuditSink()
        case .file(let path):
            do { auditTarget = try FileAuditSink(path: path) } catch {
                report.fail("audit=: \(error)" + Daemon.missingDirectoryHint(path, "audit"))
            }
        }
        let audit = QueuedAuditSink(auditTarget)

        let kms = settings.makeKMSClient(rate: options.kmsRate, adaptive: options.kmsPacing)
        let decoder = CiphertextDecoder(kms: kms, requiredContext: options.requiredContext,
                                        requirePathBinding: options.requireBinding, requireCommitment: options.requireCommitment,
                                        allowedKeys: options.kmsKeys,
                                        maxEncryptedDataKeys: options.maxEncryptedDataKeys)
        Log.info(options.kmsKeys.isEmpty
                 ? "kms_key= not set: files may be under any KMS key these credentials may use (the guide recommends kms_key=)"
                 : "kms_key=\(options.kmsKeys.description): files under any other KMS key are refused")
        if let notice = Daemon.rootOnlyNotice(options) { Log.notice(notice) }
        let fs = SecretFileSystem(tree: tree, configuration: fsConfig, decryptor: KMSDecryptor(decoder: decoder), audit: audit,
                                  versionOf: Daemon.version(ofCiphertext:))

        // Metrics never stand between the services and their secrets: an
        // address taken (any local user can bind a loopback port first) is
        // a warning, tried again until it is free.
        let metrics = MetricsSlot()
        var metricsPending: MetricsAddress? = nil
        if let address = options.metrics {
            if let warning = Daemon.perSecretMetricsWarning(options) { Log.warning(warning) }
            do { metrics.server = try MetricsServer(address: address) } catch {
                Log.warning("metrics=\(address): \(error); the secrets are served without metrics, and the address is tried again every \(Int(MetricsSlot.retryInterval)) s (give a free loopback port, such as 127.0.0.1:9464, or unix:PATH)")
                metricsPending = address
            }
        }
        let credentials: CredentialServer?
        if let path = options.credentialSocket {
            do {
                // The guide's /run/kmsfs/credentials.sock: at boot nothing
                // has made /run/kmsfs yet (the control socket comes later),
                // so the daemon makes it as it does for the control socket.
                let parent = String(path[..<(path.utf8.lastIndex(of: UInt8(ascii: "/")) ?? path.startIndex)])
                if parent == ControlSocket.directory { try ControlSocket.prepareDirectory(parent) }
                credentials = try CredentialServer(path: path, fs: fs)
            } catch {
                report.fail("credential_socket=\(path): \(error); give a path in a directory root owns, such as /run/kmsfs/credentials.sock")
            }
        } else {
            credentials = nil
        }

        var sessionOptions = FUSESession.Options(mountpoint: MountTable.resolvedMountpoint(request.mountpoint),
                                                 fsname: request.source)
        // From here on the mountpoint is the path the kernel mounts on, as
        // /proc/mounts, findmnt and `mount -o remount` name it: a control
        // socket named after a symbolic link to it (`kmsfs src /etc/secrets`
        // with /etc/secrets a link) answered for neither.
        let request = { var r = request; r.mountpoint = sessionOptions.mountpoint; return r }()
        sessionOptions.debug = request.debug
        sessionOptions.maxThreads = options.threads
        sessionOptions.maxInflightOpens = options.maxInflight
        if options.ioUring {
            // An entry stays with its request until it is answered, and a
            // cold open parked for KMS (in the open pool, or queued for
            // it) holds one: a CPU's queue out of entries holds up its
            // callers. Room for max_inflight= running opens, 32 and more
            // waiting (FUSESession caps them 32 under the depth), and 32
            // for everything else. Unused entries cost address space only.
            sessionOptions.uringDepth = max(options.maxInflight, 256) + 64
        }
        sessionOptions.mountFlags = ["nosuid", "nodev"] + (options.exec ? [] : ["noexec"])
        let session: FUSESession
        do {
            session = try FUSESession(fs: fs, options: sessionOptions)
            try MountTable.recoverStaleMount(at: sessionOptions.mountpoint)
            try session.mount()
        } catch {
            report.fail(error.message)
        }
        let connection = MountTable.connection(of: sessionOptions.mountpoint)
        fs.cache.startSweeper()
        fs.notifier = session
        var liveWatcher: SourceWatcher? = nil
        do {
            let w = try SourceWatcher(fs: fs)
            w.start()
            liveWatcher = w
            fs.sourceIsWatched = w.watchesEverything
            fs.reconfigure(try Configuration.filesystem(options, watched: true))
        } catch {
            Log.warning("cannot watch \(request.source) (\(error)); changes show within the entry timeout only")
        }
        let watcher = liveWatcher
        let started = SystemClock.monotonic()
        let live = LiveOptions(raw: request.rawOptions, options: options)
        var rotationNotifier: RotationNotifier? = nil
        if watcher != nil {
            let notifier = RotationNotifier(fs: fs, audit: audit, programs: programs, settle: options.settle) { path in
                // A policy rule's reload=/on_change= win over the mount's.
                let o = live.current
                let rule = fs.configuration.policy.rule(for: path)
                return ChangeTargets(units: rule?.reloadUnits ?? o.reloadUnits, program: rule?.onChange ?? o.onChange)
            }
            fs.onCiphertextChange { notifier.changed(sourcePath: $0, previousVersion: $1) }
            fs.onChangesUnnamed { notifier.changesUnnamed() }
            notifier.start()
            rotationNotifier = notifier
        }
        let rotation = rotationNotifier
        let control: ControlServer?
        do {
            control = try ControlServer(mountpoint: request.mountpoint, status: {
                Daemon.status(request: request, fs: fs, kms: kms, watcher: watcher, rotation: rotation, started: started)
            }, remount: { changes in
                live.remount(changes) { new throws(OptionError) in
                    if let ci = caseInsensitive, new.policyFile != nil {
                        throw OptionError(Daemon.caseInsensitivePolicy(source: request.source, fs: ci))
                    }
                    if let program = new.onChange, program != options.onChange { try Daemon.checkOnChange(program) }
                    fs.reconfigure(try Configuration.filesystem(new, watched: watcher != nil))
                    rotation?.targetsChanged()
                }
            })
            control?.start()
        } catch {
            control = nil
            Log.warning("no control channel at \(ControlSocket.path(for: request.mountpoint)) (\(error)); kmsfs status will not answer for this mount")
        }
        if let credentials {
            credentials.start()
            Log.notice("credentials: serving LoadCredential= on \(credentials.path)")
        }
        // Any local user may scrape a TCP port, as often as they like: the
        // metrics leave out the status's per-process details (/proc reads).
        let renderMetrics: @Sendable () -> String = {
            PrometheusText.render(Daemon.status(request: request, fs: fs, kms: kms, watcher: watcher, rotation: rotation,
                                                started: started, processDetails: false),
                                  perSecret: live.current.metricsPerSecret)
        }
        if let server = metrics.server {
            server.start(render: renderMetrics)
            Log.notice("metrics: serving /metrics on \(server.address)")
        } else if let address = metricsPending {
            metrics.retry(address, render: renderMetrics)
        }
        Daemon.startIdleHousekeeping(fs: fs, session: session, transport: kms.api.transport)
        Log.notice("mounted \(request.source) on \(request.mountpoint) (region \(settings.region), endpoint \(settings.endpoint), memory \(SecureMemoryPolicy.defaultBacking.rawValue))")

        let mountpoint = request.mountpoint
        let prefetch = options.prefetch
        let readyGate = ReadyGate()
        let status = DaemonSignals.serve(session, connection: connection, programs: programs, onServing: {
            // The mount answers once the loop runs: prove it before saying so.
            var st = stat()
            _ = stat(mountpoint, &st)
            guard prefetch else { return _ = readyGate.ready(report) }
            // Off the signal thread: a SIGTERM (systemd's stop, a start
            // timeout) while KMS is slow or unreachable must be handled at
            // once, not after every secret's calls have run out of time.
            let run: @Sendable () -> Void = { Daemon.prefetchThenReady(fs: fs, kms: kms, report: report, gate: readyGate) }
            if !startThread(name: "kmsfs-prefetch", run) { run() }
        }, onLoopEnd: {
            // Unmounted (or stopping): SOURCE's file system may be next to
            // go, right away (at shutdown, for SOURCE on its own mount).
            fs.tree.release()
        }, onStopRequested: {
            readyGate.stop()
        }, onReload: {
            // Records before the reload go to the file being rotated away;
            // a stuck sink (a full disk) is not waited for: the reopen may
            // be what frees it.
            if audit.flush(within: 5) > 0 {
                Log.warning("SIGHUP: audit records are still waiting for their sink; reopening without them")
            }
            (auditTarget as? FileAuditSink)?.reopen()
            if case .file(let path) = options.log { reopenLog(path) }
            live.withCurrent { current in
                do {
                    fs.reconfigure(try Configuration.filesystem(current, watched: watcher != nil))
                    rotation?.targetsChanged()
                    Log.notice("reloaded: users, groups and policy re-read")
                } catch {
                    Log.error("reload failed, keeping the previous configuration: \(error)")
                }
            }
        }, onStop: {
            SystemdNotify.send("STOPPING=1")
            // No credential is sent from memory about to be wiped.
            credentials?.beginStop()
            fs.sourceIsWatched = false
            // Plaintext first: the audit flush below may wait on a stuck
            // sink (a full journald stream, a hung file system), and
            // systemd's SIGKILL must find nothing left to wipe.
            fs.shutdown()
            SecureMemoryStats.wipeAllLive()
            credentials?.answerTaken()
            // No notification starts from here on, so none is run during
            // the stop and none of its records comes after the flush.
            watcher?.stop()
            rotation?.stop()
            // Bounded, well inside systemd's stop timeout: a stuck sink
            // would otherwise have the daemon killed with its records lost
            // and nothing said.
            let unwritten = audit.flush(within: 10)
            if unwritten > 0 {
                Log.error("audit: at least \(unwritten) audit records could not be written before the daemon exits: their sink is stuck (a full disk, a FIFO nobody reads)")
            }
            control?.stop()
            metrics.stop()
            credentials?.stop()
            fs.notifier = nil
            fs.shutdown()
            SecureMemoryStats.wipeAllLive()
        })
        return status
    }

    /// The options in effect: those of the mount, as changed since by
    /// `mount -o remount` (SIGHUP re-reads the names and policy they name).
    final class LiveOptions: @unchecked Sendable {
        private let lock = ConditionLock()
        private var raw: [String]
        private var options: MountOptions

        init(raw: [String], options: MountOptions) {
            self.raw = raw
            self.options = options
        }

        var current: MountOptions { lock.withLock { options } }

        /// Runs `body` with the options in effect, no remount in between:
        /// a SIGHUP re-reading users and policy from the options must not
        /// put back what a concurrent remount just took away.
        func withCurrent<R>(_ body: (MountOptions) -> R) -> R {
            lock.lock()
            defer { lock.unlock() }
            return body(options)
        }

        /// Applies `changes` (one remount's options) with `apply`; on any
        /// refusal the previous options stay in effect, whole.
        func remount(_ changes: String, apply: (MountOptions) throws(OptionError) -> Void) -> Result<String, OptionError> {
            lock.lock()
            defer { lock.unlock() }
            do {
                let (newRaw, new) = try MountOptions.remounted(raw, with: [changes])
                try apply(new)
                raw = newRaw
                let before = options
                options = new
                Log.notice("remounted: options now \(newRaw.joined(separator: ","))")
                if !before.metricsPerSecret, let warning = Daemon.perSecretMetricsWarning(new) { Log.warning(warning) }
                if Daemon.rootOnlyNotice(before) == nil, let notice = Daemon.rootOnlyNotice(new) { Log.notice(notice) }
                return .success("options now \(newRaw.joined(separator: ","))")
            } catch {
                Log.error("remount refused, keeping the previous options: \(error.message)")
                return .failure(error)
            }
        }
    }

    /// A mount with no allow_uid=, allow_gid=, allow_unit= or policy=
    /// admits root alone: almost always an fstab line that lost its access
    /// list, which services see only as EACCES. It still mounts (root may
    /// be the only reader meant), but says so once. With policy= and none
    /// of the lists, the paths no rule matches admit root alone: said too,
    /// since "root is admitted only when named" holds for the rest.
    public static func rootOnlyNotice(_ o: MountOptions) -> String? {
        guard o.allowUsers.isEmpty, o.allowGroups.isEmpty, o.allowUnits.isEmpty else { return nil }
        if o.policyFile != nil {
            return "policy= and no allow_uid=, allow_gid= or allow_unit=: a path no policy rule matches may be opened by root only; end the policy with a rule for ** to decide those paths"
        }
        return "no allow_uid=, allow_gid=, allow_unit= or policy=: only root may open these files; name who else may with allow_uid=USER (mount -o remount,allow_uid=USER applies it live)"
    }

    /// Per-secret series on a loopback port are every local user's to read.
    static func perSecretMetricsWarning(_ o: MountOptions) -> String? {
        guard o.metricsPerSecret, let address = o.metrics, case .tcp = address else { return nil }
        return "metrics_per_secret on \(address): any local user can read the names of cached secrets and when each was last decrypted and opened from this port; give metrics=unix:PATH to choose who may"
    }

    static func caseInsensitivePolicy(source: String, fs: String) -> String {
        "source \(source) is on \(fs), which ignores case in names: policy= rules are matched on names as spelled, so another spelling (DB/PASSWORD for db/password) would get past them; keep SOURCE on a case-sensitive file system, or mount without policy="
    }

    /// `-o prefetch`: decrypts every secret, then reports the mount ready
    /// (READY=1, or the waiting parent's pipe). Runs on its own thread; a
    /// stop meanwhile ends it early, and then nothing is reported ready.
    static func prefetchThenReady(fs: SecretFileSystem, kms: KMSClient, report: StartupReporter, gate: ReadyGate) {
        let t0 = SystemClock.monotonic()
        // A KMS that answers nothing, not even a throttle, to the first 8
        // calls (the lone first and the round started a second later) is
        // not waited on for every secret: the rest go to the background
        // rounds and to the opens themselves. A throttled quota answers:
        // its calls are worth their wait.
        let metrics = kms.api.metrics
        /// True while KMS has answered nothing (not even a throttle or an
        /// error) since this was made: one for each pass and round.
        let answersNothingFromNow: @Sendable () -> (@Sendable () -> Bool) = {
            let base = metrics.answers
            return { metrics.answers == base }
        }
        // Bad files and refusals (logged above) are final; `unavailable`
        // holds what KMS did not answer in time and what was not tried.
        var r = fs.prefetch(parallel: 8, giveUpAfter: 8, answersNothing: answersNothingFromNow())
        // Under a saturated quota some calls outlast their deadline
        // waiting for a turn: passes over those (KMS unavailable, not
        // bad files or refusals), while each still makes progress,
        // before saying ready. None after a pass that decrypted nothing.
        for _ in 0..<4 where !r.unavailable.isEmpty && r.ok > 0 {
            let pass = fs.prefetch(parallel: 4, only: r.unavailable, giveUpAfter: 4, answersNothing: answersNothingFromNow())
            if pass.ok == 0 { break }
            r = r.then(pass)
        }
        let (ok, failed, final, untried, retry) = (r.ok, r.failed, r.final, r.untried, r.unavailable)
        let ms = Int((SystemClock.monotonic() - t0) * 1000)
        if gate.isStopping {
            Log.notice("prefetch: stopped after \(ok) secrets (\(ms) ms): the daemon is stopping")
            return
        }
        if untried > 0 && ok == 0 {
            Log.warning("prefetch: KMS answered none of the first \(failed - final) calls in time (see above)\(final > 0 ? " and \(final) secrets failed otherwise" : ""), so the other \(untried) secrets were not tried (\(ms) ms); ready now: opens decrypt what they need, and the \(retry.count) are tried again in the background")
            Daemon.finishPrefetch(fs: fs, retry: retry, answersNothingFromNow: answersNothingFromNow)
        } else if !retry.isEmpty {
            Log.warning("prefetch: \(ok) secrets decrypted, \(failed) failed (see above)\(untried > 0 ? " and \(untried) not tried" : "") in \(ms) ms; trying the \(retry.count) KMS did not answer again in the background")
            Daemon.finishPrefetch(fs: fs, retry: retry, answersNothingFromNow: answersNothingFromNow)
        } else if failed > 0 {
            Log.warning("prefetch: \(ok) secrets decrypted, \(failed) failed (see above) in \(ms) ms")
        } else {
            Log.notice("prefetch: \(ok) secrets decrypted in \(ms) ms")
        }
        if !gate.ready(report) { Log.notice("prefetch: done, but the daemon is stopping: not reporting ready") }
    }

    /// READY=1 (or the waiting parent's READY) either before the stop began
    /// or never: a prefetch ending while the daemon stops must not tell
    /// systemd, or `mount`, that a mount being torn down is ready.
    final class ReadyGate: @unchecked Sendable {
        private let lock = ConditionLock()
        private var stopping = false

        var isStopping: Bool { lock.withLock { stopping } }

        func stop() { lock.withLock { stopping = true } }

        /// Reports ready unless the stop began; false if it had.
        func ready(_ report: StartupReporter) -> Bool {
            lock.withLock {
                guard !stopping else { return false }
                report.ready()
                return true
            }
        }
    }

    /// Secrets the prefetch could not decrypt (KMS throttled past a call's
    /// deadline, or did not answer) are tried again in the background,
    /// in rounds 2, 4, 8 ... then 60 s apart until all are decrypted or the
    /// daemon stops, while the mount already serves: an open of one of them
    /// meanwhile decrypts it itself (or fails within `timeout=`), and the
    /// rounds only find the rest in the cache. A round against a KMS that
    /// answers nothing gives up after 2 calls, so the rounds cost next to
    /// nothing while it is down.
    static func finishPrefetch(fs: SecretFileSystem, retry first: [String], firstPause: Double = 2,
                               answersNothingFromNow: @escaping @Sendable () -> (@Sendable () -> Bool)) {
        startThread(name: "kmsfs-prefetch") {
            var pause = firstPause
            var retry = first
            var round = 0
            var unchanged = 0
            while true {
                SystemClock.sleep(pause)
                if fs.cache.isStopped { return }
                round += 1
                let t0 = SystemClock.monotonic()
                let r = fs.prefetch(parallel: 2, only: retry, giveUpAfter: 2, answersNothing: answersNothingFromNow())
                if fs.cache.isStopped { return }   // the stop came during the round: nothing was tried
                let ms = Int((SystemClock.monotonic() - t0) * 1000)
                let before = retry.count
                retry = r.unavailable
                if retry.isEmpty {
                    let gone = before - r.ok - r.failed
                    Log.notice("prefetch: the rest decrypted after \(round) more round\(round == 1 ? "" : "s") (\(r.ok) secrets\(gone > 0 ? ", \(gone) gone from SOURCE" : "")\(r.failed > 0 ? ", \(r.failed) failed (see above)" : ""), \(ms) ms)")
                    return
                }
                // After an hour with nothing decrypted, every ten minutes:
                // a KMS that stays away, or a secret KMS never answers for.
                unchanged = retry.count == before ? unchanged + 1 : 0
                pause = unchanged >= 60 ? 600 : min(pause * 2, 60)
                // A line when something changed, for the first rounds, and
                // every tenth round.
                if retry.count != before || round % 10 == 0 || round <= 6 {
                    Log.warning("prefetch round \(round + 1): \(retry.count) secrets not decrypted yet; trying again in \(Int(pause)) s")
                }
            }
        }
    }

    /// Back at rest after a burst, the daemon gives back what the burst
    /// took: KMS connections idle for 15 s are closed, and once no open has
    /// come for a while the reply scratch buffers a burst pooled are
    /// released and freed heap pages return to the kernel.
    static func startIdleHousekeeping(fs: SecretFileSystem, session: FUSESession, transport: HTTPTransport) {
        startThread(name: "kmsfs-idle") {
            var lastOpens = -1
            var trimmed = false
            while true {
                Clock.system.sleep(5)
                let closed = transport.trimIdle(olderThan: 15)
                if closed > 0 { Log.debug("closed \(closed) idle KMS connections") }
                let opens = fs.counterSnapshot.opens
                if opens == lastOpens {
                    if !trimmed {
                        session.releaseIdleScratch()
                        ProcessHardening.returnFreeMemory()
                        trimmed = true
                    }
                } else {
                    trimmed = false
                }
                lastOpens = opens
            }
        }
    }

    /// A secret's version: the first 12 hex digits of its ciphertext's
    /// SHA-256 (`sha256sum NAME.encrypted | cut -c1-12` shows the same).
    static func version(ofCiphertext bytes: [UInt8]) -> String {
        String(Digest.hex(Digest.sha256(bytes)).prefix(12))
    }

    /// The mount's `on_change=` program, at the start and at a remount: one
    /// the daemon would refuse to run as root at each rotation (not root's,
    /// writable by others, not executable) is refused now, not days later.
    /// A missing one is only warned about: it may be installed, or its file
    /// system mounted, after kmsfs (each rotation looks again).
    static func checkOnChange(_ program: String) throws(OptionError) {
        var st = stat()
        if lstat(program, &st) != 0 && errno == ENOENT {
            Log.warning("on_change=\(program) does not exist (yet); rotations are told once it does (a program on a later file system: x-systemd.requires-mounts-for=)")
            return
        }
        if let problem = PolicyFile.unsafeProgram(program) {
            throw OptionError("on_change=\(program): \(problem); install it as root's (chmod 755), or drop on_change=")
        }
        if access(program, X_OK) != 0 {
            throw OptionError("on_change=\(program) is not executable; chmod 755 it (it is run without a shell)")
        }
    }

    /// "; create DIR, or give OPTION=syslog" when `path`'s directory is
    /// missing (the one mend for `audit=`/`log=` failing so), else "".
    static func missingDirectoryHint(_ path: String, _ option: String) -> String {
        guard let slash = path.utf8.lastIndex(of: UInt8(ascii: "/")) else { return "" }
        let dir = slash == path.startIndex ? "/" : String(path[..<slash])
        return access(dir, F_OK) == 0 ? "" : "; create \(dir) (mkdir -p), or give \(option)=syslog"
    }

    /// The status document `kmsfs status` shows. Names, sizes, ages and
    /// counters only: never plaintext.
    /// `processDetails: false` leaves out what each stale handle's process
    /// is (two /proc reads each), which the metrics do not show.
    static func status(request: MountRequest, fs: SecretFileSystem, kms: KMSClient, watcher: SourceWatcher?,
                       rotation: RotationNotifier?, started: Double, processDetails: Bool = true) -> JSONValue {
        let (entries, bytes) = fs.cache.snapshot
        let c = fs.counterSnapshot
        let k = kms.api.metrics.snapshot
        let pace = (rate: kms.api.pacer.currentRate, stats: kms.api.pacer.statistics)
        func n(_ v: Int) -> JSONValue { .number(Double(v)) }
        func ms(_ v: Double?) -> JSONValue { v.map { .number(($0 * 1000 * 10).rounded() / 10) } ?? .null }
        let buckets: JSONValue = .array(zip(CallMetrics.bucketBounds, k.buckets).map { .array([.number($0), n($1)]) })
        let kmsFields: [(String, JSONValue)] = [
            ("calls", n(k.calls)), ("failures", n(k.failures)), ("retries", n(k.retries)),
            ("throttled", n(k.throttled)), ("p50_ms", ms(k.p50)), ("p99_ms", ms(k.p99)),
            ("latency_buckets", buckets), ("latency_sum_s", .number(k.latencySum)), ("latency_count", n(k.latencyCount)),
            ("last_success", k.lastSuccess.map { .number($0.rounded()) } ?? .null),
        ]
        // Requests a second while KMS throttles (null: not paced), rate cuts, sends that waited.
        let pacedRate: JSONValue = pace.rate.map { .number(($0 * 100).rounded() / 100) } ?? .null
        let pacing: [(String, JSONValue)] = [("paced_rate", pacedRate), ("rate_cuts", n(pace.stats.cuts)),
                                             ("paced_sends", n(pace.stats.paced))]
        let cache: [JSONValue] = entries.map { e in
            .object([("path", .string(SourceTree.mountPath(ofSource: e.path))), ("size", n(e.size)),
                     ("age_s", .number(e.age.rounded())), ("hits", n(e.hits)), ("format", .string(e.format)),
                     ("key_id", e.keyId.map { .string($0) } ?? .null), ("version", .string(e.version)),
                     ("appeared", .string(Timestamp(seconds: e.appeared).iso8601))])
        }
        let now = SystemClock.wall()
        let stale: [JSONValue] = fs.staleHandles().map { h, current in
            .object([("path", .string(h.mountPath)), ("version", .string(h.version)),
                     ("current", current.map { .string($0) } ?? .null), ("pid", n(Int(h.pid))),
                     ("uid", n(Int(h.uid))), ("comm", processDetails ? .string(processName(pid: h.pid)) : .null),
                     ("unit", processDetails ? systemdUnit(pid: h.pid).map { .string($0) } ?? .null : .null),
                     ("held_s", .number(max(0, now - h.openedAt).rounded()))])
        }
        let r = rotation?.snapshot ?? RotationNotifier.Stats()
        return .object([
            ("version", .string(kmsfsVersion)),
            ("mountpoint", .string(request.mountpoint)),
            ("source", .string(request.source)),
            ("pid", n(Int(getpid()))),
            ("uptime_s", .number((SystemClock.monotonic() - started).rounded())),
            ("memory", .string(SecureMemoryPolicy.defaultBacking.rawValue)),
            ("memory_fallbacks", n(SecureMemoryStats.secretMemoryFallbacks)),
            ("secure_buffers", n(SecureMemoryStats.liveBuffers)),
            ("secure_bytes", n(SecureMemoryStats.liveBytes)),
            ("ttl_s", fs.configuration.cache.ttl.map { .number($0) } ?? .null),
            ("cache", .object([("entries", .array(cache)), ("bytes", n(bytes))])),
            ("counters", .object([("opens", n(c.opens)), ("cache_hits", n(c.cacheHits)), ("decrypts", n(c.decrypts)),
                                  ("shared", n(c.shared)), ("refreshes", n(c.refreshes)), ("denials", n(c.denials)),
                                  ("failures", n(c.failures))])),
            ("kms", .object(kmsFields + pacing)),
            ("watched_directories", n(watcher?.watchCount ?? 0)),
            ("handles", .object([("open", n(fs.handles.count)), ("stale", .array(stale))])),
            ("rotation", .object([("changes", n(r.changes)), ("decrypt_failures", n(r.decryptFailures)),
                                  ("notifications_ok", n(r.notificationsOK)), ("notifications_failed", n(r.notificationsFailed)),
                                  ("pending", n(r.pending)),
                                  ("retrying", .array(r.retrying.map { t in
                                      .object([("target", .string(t.target)), ("paths", .array(t.paths.map { .string($0) })),
                                               ("attempts", n(t.attempts)),
                                               ("next_try_s", t.nextTry.map { .number($0.rounded()) } ?? .null),
                                               ("reason", .string(t.reason))]) })),
                                  ("failures", .array(r.failures.sorted { $0.key.path.utf8.lexicographicallyPrecedes($1.key.path.utf8) }.map {
                                      .object([("path", .string($0.key.path)), ("reason", .string($0.value))]) }))])),
            ("credentials", credentialStatus(kms.api.credentials)),
        ])
    }

    /// Where the credentials in use came from and when they expire (never
    /// the secret key or token; the key ID redacted).
    static func credentialStatus(_ provider: CredentialProvider) -> JSONValue {
        guard let cached = provider as? CachingCredentialProvider, let c = cached.current else {
            // None fetched yet (or the last fetch failed): the provider's
            // name, which says where kmsfs will look, not where they came from.
            return .object([("source", .string(provider.name)), ("kind", .string("pending"))])
        }
        return .object([
            ("source", .string(c.source)),
            ("kind", .string(c.kind.rawValue)),
            ("access_key_id", .string(CachingCredentialProvider.redact(c.accessKeyId))),
            ("expires", c.expiration.map { .string($0.iso8601) } ?? .null),
            ("expires_epoch", c.expiration.map { .number($0.seconds.rounded()) } ?? .null),
        ])
    }

    /// Reopens log=FILE onto stderr (after logrotate moved it).
    static func reopenLog(_ path: String) {
        do { try Log.reopenAppendFile(path, onto: 2) } catch {
            Log.error("log=: cannot reopen (\(error)); still writing to the previous file")
        }
    }

    static let stderrLogInTheBackground = "option 'log=stderr': in the background the daemon has no standard error (it is /dev/null once the mount command returns), so its log and audit records would be lost; add -f to stay in the foreground, or use log=syslog or log=FILE"

    static func configureLogging(_ target: LogTarget?, background: Bool, debug: Bool, report: StartupReporter) {
        let level: LogLevel = debug ? .debug : .info
        let journal = SystemdNotify.stderrIsJournal
        switch target {
        case .syslog:
            Log.configure(destination: .syslog, level: level)
        case .file(let path):
            let fd: Int32
            do { fd = try Log.openAppendFile(path) } catch {
                report.fail("log=: \(error)" + Daemon.missingDirectoryHint(path, "log"))
            }
            dup2(fd, 2)
            close(fd)
            Log.configure(destination: .stderr(journal: false), level: level)
        case .stderr:
            // In the background standard error is /dev/null once the mount
            // command returns (unless it is the journal): every line, and
            // with audit=stderr every audit record, would be lost unseen.
            if background && !journal {
                report.fail(Daemon.stderrLogInTheBackground)
            }
            Log.configure(destination: .stderr(journal: journal), level: level)
        case nil:
            if (background || journal) && Journal.isAvailable && Journal.open() {
                // Started in the background under systemd, perhaps by
                // mount(8) for an fstab line, whose journal stream would tag
                // every line `mount`; or in the foreground on the journal
                // (kmsfs.service). A native entry says `kmsfs` and carries
                // an audit record's fields.
                Log.configure(destination: .journal, level: level)
            } else if background && !journal {
                Log.configure(destination: .syslog, level: level)
            } else {
                Log.configure(destination: .stderr(journal: journal), level: level)
            }
        }
    }
}
