import AWS
import SecretFS
import Log
import System
#if canImport(Glibc)
import Glibc
#endif

/// Whom to tell when a secret's ciphertext changes: systemd units to
/// reload (`reload=`) and a program to run (`on_change=`).
public struct ChangeTargets: Sendable, Equatable {
    public var units: [String] = []
    public var program: String?
    public init(units: [String] = [], program: String? = nil) {
        self.units = units
        self.program = program
    }
    public var isEmpty: Bool { units.isEmpty && program == nil }

    /// A unit name systemctl takes as one unit and never as an option.
    public static func validUnit(_ u: String) -> Bool { SystemdUnitName.isValid(u) }
}

/// Rotation that reaches the applications. The watcher reports every
/// ciphertext written into SOURCE; once changes have settled (no new one
/// for `settle` seconds, at most ten settle periods after the first), each
/// changed secret is decrypted (so the application's next open is a cache
/// hit, and a broken ciphertext or a KMS outage is found before anyone is
/// told), and each target is told once about all of its secrets that
/// decrypted: `systemctl reload-or-restart UNIT` per unit, `PROGRAM PATH...`
/// for a program (paths relative to the mount). A secret that fails to
/// decrypt notifies nobody; the failure is logged and shown in status.
/// Every notification and its outcome is an audit record.
public final class RotationNotifier: @unchecked Sendable {
    public struct Stats: Sendable {
        public var changes = 0
        public var decryptFailures = 0
        public var notificationsOK = 0
        public var notificationsFailed = 0
        public var pending = 0
        /// The last decryption failure per secret (mount path), until it
        /// next decrypts.
        public var failures: [String: String] = [:]
    }

    private let fs: SecretFileSystem
    private let audit: AuditSink
    private let environment: Environment
    private let targets: @Sendable (String) -> ChangeTargets
    private let settle: Double
    private let timeout: Double
    private let lock = ConditionLock()
    /// Changed secrets (by bytes: `café` and `cafe\u{301}` are two), each
    /// with the version cached before its first change in the batch, if
    /// one was.
    private var pending: [PathKey: String?] = [:]
    private var firstChange = 0.0
    private var lastChange = 0.0
    private var stats = Stats()
    private var stopped = false
    /// Bound on distinct pending paths (a flood of new names waits for the
    /// next batch) and on remembered failures.
    static let maxPending = 10_000
    static let maxFailures = 1_000

    /// `targets(mountPath)` says whom to tell for a secret (policy rule or
    /// mount-wide options, read at notification time).
    public init(fs: SecretFileSystem, audit: AuditSink, environment: Environment, settle: Double,
                timeout: Double = 60, targets: @escaping @Sendable (String) -> ChangeTargets) {
        self.fs = fs
        self.audit = audit
        // The daemon's AWS credentials and systemd sockets are not the
        // program's business.
        // `plain` holds no secret variable (those live in secure memory and
        // are never made Strings here).
        self.environment = Environment(environment.plain.filter { k, _ in
            !k.hasPrefix("AWS_") && k != "NOTIFY_SOCKET" && !k.hasPrefix("LISTEN_") && k != "WATCHDOG_USEC" && k != "WATCHDOG_PID"
        })
        self.settle = settle
        self.timeout = timeout
        self.targets = targets
    }

    /// From the watcher thread: a ciphertext changed in SOURCE;
    /// `previousVersion` is the version that was cached then, if any.
    public func changed(sourcePath: String, previousVersion: String? = nil) {
        lock.withLock {
            stats.changes += 1
            let key = PathKey(sourcePath)
            guard pending.count < RotationNotifier.maxPending || pending[key] != nil else { return }
            let t = SystemClock.monotonic()
            if pending.isEmpty { firstChange = t }
            lastChange = t
            // The first event of a batch knows what was there before; later
            // ones find the cache already emptied by it.
            if let was = pending[key] {
                if was == nil { pending[key] = .some(previousVersion) }
            } else {
                pending[key] = .some(previousVersion)
            }
            lock.broadcast()
        }
    }

    public var snapshot: Stats {
        lock.withLock {
            var s = stats
            s.pending = pending.count
            return s
        }
    }

    public func start() {
        _ = startThread(name: "kmsfs-rotation") { [self] in
            while let batch = nextBatch() { handle(batch) }
        }
    }

    public func stop() {
        lock.withLock { stopped = true; lock.broadcast() }
    }

    /// Waits for changes to settle and takes them (in byte order, each
    /// with its version before); nil once stopped.
    private func nextBatch() -> [(source: String, before: String?)]? {
        lock.lock()
        defer { lock.unlock() }
        while !stopped {
            if pending.isEmpty { lock.wait(seconds: 3600); continue }
            let t = SystemClock.monotonic()
            let due = min(lastChange + settle, firstChange + settle * 10)
            if t >= due {
                let batch = pending.map { (source: $0.key.path, before: $0.value) }
                    .sorted { $0.source.utf8.lexicographicallyPrecedes($1.source.utf8) }
                pending.removeAll()
                return batch
            }
            lock.wait(seconds: due - t)
        }
        return nil
    }

    private func handle(_ batch: [(source: String, before: String?)]) {
        var byUnit: [String: [String]] = [:]
        var byProgram: [String: [String]] = [:]
        for (source, before) in batch {
            let shown = SourceTree.mountPath(ofSource: source)
            let t = targets(shown)
            guard !t.isEmpty else { continue }   // nobody to tell: stay lazy
            switch fs.decryptNow(sourcePath: source) {
            case .success(let secret):
                _ = lock.withLock { stats.failures.removeValue(forKey: shown) }
                if let before, before == secret.version {
                    // Touched, chmod'ed, or rewritten with the same bytes:
                    // nothing for the applications to pick up.
                    Log.notice("rotation: \(shown) changed on disk but is still version \(secret.version); nobody is told")
                    continue
                }
                Log.notice("rotation: \(shown) is now version \(secret.version); decrypted before telling \(describe(t))")
                for u in t.units { byUnit[u, default: []].append(shown) }
                if let p = t.program { byProgram[p, default: []].append(shown) }
            case .failure(let failure):
                if failure.message == "gone from SOURCE" { continue }
                lock.withLock {
                    stats.decryptFailures += 1
                    if stats.failures.count < RotationNotifier.maxFailures || stats.failures[shown] != nil {
                        stats.failures[shown] = failure.message
                    }
                }
                Log.error("rotation: \(shown): the new ciphertext does not decrypt (\(failure.message)); nobody is told, the applications keep the version they have")
            }
        }
        for (unit, paths) in byUnit.sorted(by: { $0.key < $1.key }) {
            notify(target: "unit:" + unit, paths: paths,
                   argv: ["systemctl", "reload-or-restart", "--", unit])
        }
        for (program, paths) in byProgram.sorted(by: { $0.key < $1.key }) {
            // A path that starts with "-" goes as "./-...": the same file,
            // never an option to the program.
            notify(target: "program:" + program, paths: paths,
                   argv: [program] + paths.map { $0.hasPrefix("-") ? "./" + $0 : $0 })
        }
    }

    private func describe(_ t: ChangeTargets) -> String {
        (t.units.map { "unit " + $0 } + (t.program.map { ["program " + $0] } ?? [])).joined(separator: ", ")
    }

    private func notify(target: String, paths: [String], argv: [String]) {
        let result = ChildProcess.run(argv, environment: environment, timeout: timeout)
        let ok: Bool
        switch result {
        case .success:
            ok = true
            Log.notice("rotation: told \(target) about \(paths.joined(separator: " "))")
        case .failure(let why):
            ok = false
            Log.error("rotation: telling \(target) about \(paths.joined(separator: " ")) failed: \(why.message)")
        }
        lock.withLock { if ok { stats.notificationsOK += 1 } else { stats.notificationsFailed += 1 } }
        if audit.wantsRecords {
            var detail = target
            if case .failure(let why) = result { detail += ": " + why.message }
            audit.record(AuditRecord(time: SystemClock.wall(), uid: geteuid(), gid: getegid(), pid: getpid(),
                                     processName: "kmsfs", path: paths.joined(separator: ","),
                                     outcome: ok ? .notified : .notifyFailed, latency: nil, detail: detail))
        }
    }
}
