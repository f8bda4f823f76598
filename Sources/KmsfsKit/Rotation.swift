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
        /// The last decryption failure per secret (mount path, by its
        /// bytes: `café` in NFC and in NFD are two secrets), until it next
        /// decrypts.
        public var failures: [PathKey: String] = [:]
    }

    private let fs: SecretFileSystem
    private let audit: AuditSink
    private let environment: Environment
    private let targets: @Sendable (String) -> ChangeTargets
    private let settle: Double
    private let timeout: Double
    private let lock = ConditionLock()
    /// Changed secrets (by bytes: `café` and `cafe\u{301}` are two), each
    /// with the version the applications may hold, taken at its first
    /// change in the batch and never revised within it (an open between
    /// two events caches the new version, which is not what they hold).
    private var pending: [PathKey: String?] = [:]
    /// Per secret, the version the applications may hold: as found when
    /// the notifier started, then as settled by each batch (announced, or
    /// found unchanged). What a change is measured against, so a touch is
    /// told from a rotation whether or not the secret is cached.
    private var baseline: [PathKey: String] = [:]
    /// Changes happened that no event named (overflow, a directory moved
    /// in, more pending paths than `maxPending`): compare every secret
    /// with its baseline at the next batch.
    private var rescanNeeded = false
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
    /// `programs`: the environment the programs get, already without the
    /// daemon's AWS and systemd variables (`Environment.forPrograms`).
    public init(fs: SecretFileSystem, audit: AuditSink, programs: Environment, settle: Double,
                timeout: Double = 60, targets: @escaping @Sendable (String) -> ChangeTargets) {
        self.fs = fs
        self.audit = audit
        self.environment = programs
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
            let t = SystemClock.monotonic()
            guard pending.count < RotationNotifier.maxPending || pending[key] != nil else {
                // Not dropped: the next batch compares every secret.
                if !rescanNeeded { Log.warning("rotation: more than \(RotationNotifier.maxPending) secrets changed at once; the next batch compares them all with what was last announced") }
                markRescan(at: t)
                return
            }
            if pending.isEmpty { firstChange = t }
            lastChange = t
            if pending[key] == nil {
                pending[key] = .some(baseline[key] ?? previousVersion)
            }
            lock.broadcast()
        }
    }

    /// From the watcher thread: changes may have happened that no event
    /// named (overflow, a directory moved or made in SOURCE).
    public func changesUnnamed() {
        lock.withLock {
            markRescan(at: SystemClock.monotonic())
            lock.broadcast()
        }
    }

    /// `lock` held.
    private func markRescan(at t: Double) {
        if !rescanNeeded && pending.isEmpty { firstChange = t }
        rescanNeeded = true
        lastChange = t
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
            seed()
            while let batch = nextBatch() { handle(batch) }
        }
    }

    /// The baseline: the version of every secret someone is told about
    /// (reload=, on_change=) as SOURCE holds it now (read and digested,
    /// never decrypted; a mount that tells nobody reads nothing). One that
    /// changes meanwhile is already pending with what it had before, and
    /// keeps that.
    private func seed() {
        let t0 = SystemClock.monotonic()
        var n = 0
        forEachVersionTold { source, v in
            n += 1
            lock.withLock {
                let key = PathKey(source)
                if pending[key] == nil && baseline[key] == nil { baseline[key] = v }
            }
        }
        // A mount that tells nobody (no reload=, no on_change=) noted none:
        // nothing to say.
        if n > 0 { Log.info("rotation: versions of \(n) secrets noted in \(Int((SystemClock.monotonic() - t0) * 1000)) ms; changes are measured against them") }
    }

    /// What a rescan finds: secrets whose version differs from their
    /// baseline, and secrets new since (no baseline: told as new, as a
    /// file written into SOURCE is).
    private func rescan() -> [(source: String, before: String?)] {
        var changed: [(source: String, before: String?)] = []
        forEachVersionTold { source, v in
            let key = PathKey(source)
            let before: String?? = lock.withLock {
                guard pending[key] == nil else { return .none }
                guard let b = baseline[key] else { return .some(nil) }
                return b == v ? .none : .some(b)
            }
            if let before { changed.append((source, before)) }
        }
        return changed
    }

    /// Each secret in SOURCE someone is told about, with its version now,
    /// until the notifier stops.
    private func forEachVersionTold(_ body: (_ source: String, _ version: String) -> Void) {
        for f in fs.secretFiles() where !targets(f.mount).isEmpty {
            if isStopped { return }
            guard let v = fs.currentVersion(sourcePath: f.source) else { continue }
            body(f.source, v)
        }
    }

    public func stop() {
        lock.withLock { stopped = true; lock.broadcast() }
    }

    private var isStopped: Bool { lock.withLock { stopped } }

    /// Waits for changes to settle and takes them (in byte order, each
    /// with its version before); nil once stopped.
    private func nextBatch() -> [(source: String, before: String?)]? {
        lock.lock()
        defer { lock.unlock() }
        while !stopped {
            if pending.isEmpty && !rescanNeeded { lock.wait(seconds: 3600); continue }
            let t = SystemClock.monotonic()
            let due = min(lastChange + settle, firstChange + settle * 10)
            if t >= due {
                var batch = pending.map { (source: $0.key.path, before: $0.value) }
                pending.removeAll()
                if rescanNeeded {
                    rescanNeeded = false
                    lock.unlock()
                    let found = rescan()
                    lock.lock()
                    let named = Set(batch.map { PathKey($0.source) })
                    batch += found.filter { !named.contains(PathKey($0.source)) }
                    if !found.isEmpty { Log.notice("rotation: compared every secret with what was last announced: \(found.count) changed") }
                }
                return batch.sorted { $0.source.utf8.lexicographicallyPrecedes($1.source.utf8) }
            }
            lock.wait(seconds: due - t)
        }
        return nil
    }

    private func handle(_ batch: [(source: String, before: String?)]) {
        var byUnit: [String: [String]] = [:]
        var byProgram: [String: [String]] = [:]
        var decrypted: [(source: String, shown: String, version: String)] = []
        for (source, before) in batch {
            if isStopped { return }
            let shown = SourceTree.mountPath(ofSource: source)
            let t = targets(shown)
            guard !t.isEmpty else { continue }   // nobody to tell: stay lazy (and keep no baseline)
            switch fs.decryptNow(sourcePath: source) {
            case .success(let secret):
                _ = lock.withLock { stats.failures.removeValue(forKey: PathKey(shown)) }
                if let before, before == secret.version {
                    // Touched, chmod'ed, or rewritten with the same bytes:
                    // nothing for the applications to pick up.
                    Log.notice("rotation: \(shown) changed on disk but is still version \(secret.version); nobody is told")
                    lock.withLock { baseline[PathKey(source)] = secret.version }
                    continue
                }
                Log.notice("rotation: \(shown) is now version \(secret.version); decrypted before telling \(describe(t))")
                decrypted.append((source, shown, secret.version))
                for u in t.units { byUnit[u, default: []].append(shown) }
                if let p = t.program { byProgram[p, default: []].append(shown) }
            case .failure(let failure):
                if failure.kind == .gone {
                    _ = lock.withLock { baseline.removeValue(forKey: PathKey(source)) }
                    continue
                }
                lock.withLock {
                    stats.decryptFailures += 1
                    if stats.failures.count < RotationNotifier.maxFailures || stats.failures[PathKey(shown)] != nil {
                        stats.failures[PathKey(shown)] = failure.message
                    }
                }
                Log.error("rotation: \(shown): the new ciphertext does not decrypt (\(failure.message)); nobody is told, the applications keep the version they have")
            }
        }
        // Told only about what is still servable: a secret replaced again
        // while the batch decrypted is left to the next batch (its change
        // is pending), so nobody restarts into a version not yet decrypted.
        var stale = Set<PathKey>()           // by bytes: café in NFC and in NFD are two secrets
        for d in decrypted {
            if fs.currentVersion(sourcePath: d.source) == d.version {
                lock.withLock { baseline[PathKey(d.source)] = d.version }
            } else {
                stale.insert(PathKey(d.shown))
                Log.notice("rotation: \(d.shown) changed again while it was decrypted; the next batch tells")
            }
        }
        // Found once a batch, only when some unit is to be told.
        let systemctl = byUnit.isEmpty ? nil : RotationNotifier.systemctl(searching: environment.plain["PATH"])
        for (unit, paths) in byUnit.sorted(by: { $0.key < $1.key }) {
            let paths = paths.filter { !stale.contains(PathKey($0)) }
            if paths.isEmpty || isStopped { continue }
            switch systemctl! {
            case .success(let systemctl):
                notify(target: "unit:" + unit, paths: paths, argv: [systemctl, "reload-or-restart", "--", unit])
            case .failure(let why):
                Log.error("rotation: not reloading \(unit): \(why.message)")
                record(target: "unit:" + unit, paths: paths, result: .failure(why))
            }
        }
        for (program, paths) in byProgram.sorted(by: { $0.key < $1.key }) {
            let paths = paths.filter { !stale.contains(PathKey($0)) }
            if paths.isEmpty || isStopped { continue }
            // Root runs it: it must be root's to change, as the policy is.
            if let problem = PolicyFile.unsafeProgram(program) {
                Log.error("rotation: not running on_change=\(program): \(problem)")
                record(target: "program:" + program, paths: paths, result: .failure(ChildProcess.Failure(message: "not run: \(problem)")))
                continue
            }
            // A path that starts with "-" goes as "./-...": the same file,
            // never an option to the program. Runs of at most 1,000 paths
            // and 64 KiB of them: one run for all would fail with E2BIG.
            for chunk in RotationNotifier.chunks(paths, maxCount: 1000, maxBytes: 64 * 1024) {
                if isStopped { return }
                notify(target: "program:" + program, paths: chunk,
                       argv: [program] + chunk.map { $0.hasPrefix("-") ? "./" + $0 : $0 })
            }
        }
    }

    /// `paths` in order, cut into runs of at most `maxCount` paths and
    /// `maxBytes` bytes of them (a longer single path runs alone).
    public static func chunks(_ paths: [String], maxCount: Int, maxBytes: Int) -> [[String]] {
        var out: [[String]] = []
        var cur: [String] = []
        var bytes = 0
        for p in paths {
            let n = p.utf8.count + 3
            if !cur.isEmpty && (cur.count >= maxCount || bytes + n > maxBytes) {
                out.append(cur)
                cur = []
                bytes = 0
            }
            cur.append(p)
            bytes += n
        }
        if !cur.isEmpty { out.append(cur) }
        return out
    }

    private func describe(_ t: ChangeTargets) -> String {
        (t.units.map { "unit " + $0 } + (t.program.map { ["program " + $0] } ?? [])).joined(separator: ", ")
    }

    /// systemctl as the daemon runs it: the first `systemctl` in `PATH`'s
    /// absolute directories (`/usr/bin:/bin` without one) that root may
    /// run, held to the checks of an `on_change=` program. A directory
    /// anyone may write, or a relative one, early in the PATH of whoever
    /// mounted would otherwise choose what root runs at every rotation.
    public static func systemctl(searching path: String?) -> Result<String, ChildProcess.Failure> {
        // Links are followed where root owns them (/bin on merged-/usr
        // systems, NixOS's profiles); the file they lead to (its
        // directories walked by the resolve) is held to an on_change=
        // program's checks, and is what runs.
        guard let candidate = PathTrust.findProgram("systemctl", searching: path) else {
            return .failure(ChildProcess.Failure(message: "no systemctl in the absolute directories of PATH (\(path ?? "unset"))"))
        }
        return PathTrust.checkFile(candidate, because: "the daemon runs it as root")
            .mapError { ChildProcess.Failure(message: "not running \(candidate): \($0)") }
    }

    /// Paths for a log line, each quoted as the audit quotes a field when it
    /// holds a blank or a quote: `a b` is never read as `a` and `b`.
    public static func shown(_ paths: [String]) -> String {
        paths.map(AuditRecord.quote).joined(separator: " ")
    }

    private func notify(target: String, paths: [String], argv: [String]) {
        let result = ChildProcess.run(argv, environment: environment, timeout: timeout)
        switch result {
        case .success:
            Log.notice("rotation: told \(target) about \(RotationNotifier.shown(paths))")
        case .failure(let why):
            Log.error("rotation: telling \(target) about \(RotationNotifier.shown(paths)) failed: \(why.message)")
        }
        record(target: target, paths: paths, result: result)
    }

    /// One audit record per secret told about (a path may hold a comma).
    private func record(target: String, paths: [String], result: Result<Void, ChildProcess.Failure>) {
        let ok: Bool
        if case .success = result { ok = true } else { ok = false }
        lock.withLock { if ok { stats.notificationsOK += 1 } else { stats.notificationsFailed += 1 } }
        guard audit.wantsRecords else { return }
        var detail = target
        if case .failure(let why) = result { detail += ": " + why.message }
        for path in paths {
            audit.record(AuditRecord(time: SystemClock.wall(), uid: geteuid(), gid: getegid(), pid: getpid(),
                                     processName: "kmsfs", path: path,
                                     outcome: ok ? .notified : .notifyFailed, latency: nil, detail: detail))
        }
    }
}
