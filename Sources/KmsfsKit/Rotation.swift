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
/// A notification that fails is tried again `retryDelays` apart (10 s,
/// 1 min, 5 min, 30 min), for the secrets still at the version it was
/// about, or sooner with the target's next notification, or at once after
/// a remount or reload (the operator may have fixed the cause); after the
/// last it is given up, logged and shown in status until one of those
/// tells it. Every notification and its outcome is an audit record.
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
        /// Notifications that failed, per target, to be tried again (or
        /// given up: `nextTry` nil).
        public var retrying: [RetryState] = []
        /// The versions at start are noted (`seed`): changes are measured
        /// against them from now on.
        public var seeded = false
    }

    /// A target that failed to be told about some secrets.
    public struct RetryState: Sendable {
        public var target: String
        /// Mount paths, in byte order.
        public var paths: [String]
        /// Tries made so far.
        public var attempts: Int
        /// Seconds until the next try; nil once given up.
        public var nextTry: Double?
        public var reason: String
    }

    /// Whom a notification goes to.
    enum Target: Hashable {
        case unit(String)
        case program(String)
        var label: String {
            switch self {
            case .unit(let u): return "unit:" + u
            case .program(let p): return "program:" + p
            }
        }
        /// Whether `targets` (the policy or options now) still name it.
        func isNamed(by targets: ChangeTargets) -> Bool {
            switch self {
            case .unit(let u): return targets.units.contains(u)
            case .program(let p): return targets.program == p
            }
        }
        static func < (a: Target, b: Target) -> Bool { a.label.utf8.lexicographicallyPrecedes(b.label.utf8) }
    }

    /// A secret at the version a target is to be told about.
    struct Told {
        var source: String
        var shown: String
        var version: String
    }

    /// A failed notification waiting for its next try.
    struct Retry {
        var items: [Told]
        var attempts: Int
        /// Monotonic time of the next try; nil once given up.
        var due: Double?
        var reason: String
    }

    private let fs: SecretFileSystem
    private let audit: AuditSink
    private let environment: Environment
    private let targets: @Sendable (String) -> ChangeTargets
    private let settle: Double
    private let timeout: Double
    /// How long after each failed try of a notification the next comes;
    /// past the last, it is given up.
    private let retryDelays: [Double]
    private let lock = ConditionLock()
    /// Changed secrets (by bytes: `café` and `cafe\u{301}` are two), each
    /// with the versions the applications may hold (none known: the secret
    /// is told as new), taken at its first change in the batch and never
    /// revised within it (an open between two events caches the new
    /// version, which is not what they hold). The change is a touch only
    /// if the new version is every one of them.
    private var pending: [PathKey: [String]] = [:]
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
    /// Failed notifications by target.
    private var retries: [Target: Retry] = [:]
    /// Counts remounts and reloads (`targetsChanged`): one during a try
    /// makes the next try come at once.
    private var retryGeneration: UInt64 = 0
    private var stopped = false
    /// Bound on distinct pending paths (a flood of new names waits for the
    /// next batch) and on remembered failures.
    static let maxPending = 10_000
    static let maxFailures = 1_000
    /// Versions remembered per pending secret as possibly held.
    static let maxHeldPerSecret = 16

    /// `targets(mountPath)` says whom to tell for a secret (policy rule or
    /// mount-wide options, read at notification time).
    /// `programs`: the environment the programs get, already without the
    /// daemon's AWS and systemd variables (`Environment.forPrograms`).
    public static let defaultRetryDelays: [Double] = [10, 60, 300, 1800]

    public init(fs: SecretFileSystem, audit: AuditSink, programs: Environment, settle: Double,
                timeout: Double = 60, retryDelays: [Double] = RotationNotifier.defaultRetryDelays,
                targets: @escaping @Sendable (String) -> ChangeTargets) {
        self.fs = fs
        self.audit = audit
        self.environment = programs
        self.settle = settle
        self.timeout = timeout
        self.retryDelays = retryDelays
        self.targets = targets
    }

    /// From the watcher thread: a ciphertext changed in SOURCE;
    /// `previousVersion` is the version that was cached before the change,
    /// if any (`SecretFileSystem` never passes one decrypted from the file
    /// SOURCE holds now).
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
                // Both the baseline and the version cached before the
                // change may be held, and neither can be ruled out here:
                // - a cached version that is not the baseline may be one an
                //   open handed out before this change, the baseline noted
                //   at start after the file had changed (the event came
                //   later): the baseline is then already the new version;
                // - or one an open decrypted between two replacements the
                //   watcher had not applied yet (or before a chmod): the
                //   applications then hold the baseline.
                // Measured against either alone, one of these rotations was
                // taken for a touch and nobody was told. Measured against
                // both, it is told unless the new version is both.
                var held: [String] = []
                if let b = baseline[key] { held.append(b) }
                if let previousVersion, !held.contains(previousVersion) { held.append(previousVersion) }
                pending[key] = held
            } else if let previousVersion, var held = pending[key], !held.contains(previousVersion) {
                // Changed again before the batch, and an open took the
                // version in between (V1, V2, back to V1): the applications
                // may hold that one too. Measured against V1 alone, the
                // way back was taken for a touch and whoever held V2 was
                // never told. A handful is kept: the first (what the
                // applications held before the burst) and the latest.
                if held.count >= RotationNotifier.maxHeldPerSecret { held.remove(at: 1) }
                held.append(previousVersion)
                pending[key] = held
            }
            lock.broadcast()
        }
    }

    /// After a remount or a reload (SIGHUP): whom to tell may have changed,
    /// and the cause of a failed notification may have been fixed. Every
    /// failed one, given up or not, is tried again now, for the secrets
    /// still at its version and still meant for its target.
    public func targetsChanged() {
        lock.withLock {
            retryGeneration &+= 1
            let t = SystemClock.monotonic()
            for k in Array(retries.keys) { retries[k]?.due = t }
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

    /// How many secrets' versions are remembered (tests: it must not grow
    /// with names that come and go).
    var rememberedVersions: Int { lock.withLock { baseline.count } }

    public var snapshot: Stats {
        lock.withLock {
            var s = stats
            s.pending = pending.count
            let now = SystemClock.monotonic()
            s.retrying = retries.sorted { $0.key < $1.key }.map { target, r in
                RetryState(target: target.label,
                           paths: r.items.map(\.shown).sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) },
                           attempts: r.attempts, nextTry: r.due.map { max(0, $0 - now) }, reason: r.reason)
            }
            return s
        }
    }

    public func start() {
        _ = startThread(name: "kmsfs-rotation") { [self] in
            seed()
            while let work = nextWork() {
                switch work {
                case .batch(let batch): handle(batch)
                case .retries(let due): retry(due)
                }
            }
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
        lock.withLock { stats.seeded = true }
    }

    /// What a rescan finds: secrets whose version differs from their
    /// baseline, and secrets new since (no baseline: told as new, as a
    /// file written into SOURCE is).
    /// Also forgets what it kept for secrets that are gone: a directory
    /// moved out of SOURCE (or removed whole) sends no event per secret,
    /// and a name churned in and out would otherwise keep its baseline and
    /// its failure for the daemon's life.
    private func rescan() -> [(source: String, before: [String])] {
        var changed: [(source: String, before: [String])] = []
        var seen = Set<PathKey>()
        forEachVersionTold { source, v in
            let key = PathKey(source)
            seen.insert(key)
            let before: [String]? = lock.withLock {
                guard pending[key] == nil else { return nil }
                guard let b = baseline[key] else { return [] }
                return b == v ? nil : [b]
            }
            if let before { changed.append((source, before)) }
        }
        if !isStopped { forgetGone(except: seen) }
        return changed
    }

    /// Drops the baseline and the failure of every secret not in `seen`
    /// whose file is gone (looked at again: one left out of the walk by a
    /// failed listing, or failing to be read, keeps both).
    private func forgetGone(except seen: Set<PathKey>) {
        // Failures are kept by mount path (a secret that never decrypted
        // has no baseline): its ciphertext is that path plus `.encrypted`.
        let shownSeen = Set(seen.map { PathKey(SourceTree.mountPath(ofSource: $0.path)) })
        let (unseen, unseenFailures): ([PathKey], [PathKey]) = lock.withLock {
            (baseline.keys.filter { !seen.contains($0) && pending[$0] == nil },
             stats.failures.keys.filter { !shownSeen.contains($0) })
        }
        func isGone(_ source: String) -> Bool {
            do { _ = try fs.tree.stat(source); return false } catch { return error.isMissing }
        }
        let gone = unseen.filter { isGone($0.path) }
        let goneFailures = unseenFailures.filter { isGone($0.path + ".encrypted") }
        lock.withLock {
            for key in gone where pending[key] == nil { baseline.removeValue(forKey: key) }
            for shown in goneFailures where pending[PathKey(shown.path + ".encrypted")] == nil {
                stats.failures.removeValue(forKey: shown)
            }
        }
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
        // The file system's hooks hold this notifier, which holds the file
        // system: let go of them, so neither outlives the stop.
        fs.onCiphertextChange(nil)
        fs.onChangesUnnamed(nil)
    }

    private var isStopped: Bool { lock.withLock { stopped } }

    private enum Work {
        /// Changes settled: each with the versions the applications may
        /// hold (none: new), in byte order.
        case batch([(source: String, before: [String])])
        /// Failed notifications whose next try is due.
        case retries([(Target, Retry)])
    }

    /// Waits for changes to settle, or for a failed notification's next
    /// try, and takes what is due (a batch first); nil once stopped.
    private func nextWork() -> Work? {
        lock.lock()
        defer { lock.unlock() }
        while !stopped {
            let t = SystemClock.monotonic()
            var due = Double.infinity
            if !pending.isEmpty || rescanNeeded {
                let batchDue = min(lastChange + settle, firstChange + settle * 10)
                if t >= batchDue { return .batch(takeBatch()) }
                due = batchDue
            }
            let retryDue = retries.values.compactMap(\.due).min() ?? .infinity
            if t >= retryDue {
                // Left in place (status shows them) until tried.
                let ready = retries.filter { ($0.value.due ?? .infinity) <= t }.sorted { $0.key < $1.key }
                return .retries(ready.map { ($0.key, $0.value) })
            }
            due = min(due, retryDue)
            lock.wait(seconds: due.isFinite ? due - t : 3600)
        }
        return nil
    }

    /// The settled changes, in byte order; `lock` held (and let go for a
    /// rescan's reads).
    private func takeBatch() -> [(source: String, before: [String])] {
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

    private func handle(_ batch: [(source: String, before: [String])]) {
        var decrypted: [(told: Told, targets: ChangeTargets)] = []
        for (source, before) in batch {
            if isStopped { return }
            let shown = SourceTree.mountPath(ofSource: source)
            let t = targets(shown)
            guard !t.isEmpty else { continue }   // nobody to tell: stay lazy (and keep no baseline)
            switch fs.decryptNow(sourcePath: source) {
            case .success(let secret):
                _ = lock.withLock { stats.failures.removeValue(forKey: PathKey(shown)) }
                if !before.isEmpty, before.allSatisfy({ $0 == secret.version }) {
                    // Touched, chmod'ed, or rewritten with the same bytes:
                    // nothing for the applications to pick up.
                    Log.notice("rotation: \(shown) changed on disk but is still version \(secret.version); nobody is told")
                    lock.withLock { baseline[PathKey(source)] = secret.version }
                    continue
                }
                Log.notice("rotation: \(shown) is now version \(secret.version); decrypted before telling \(describe(t))")
                decrypted.append((Told(source: source, shown: shown, version: secret.version), t))
            case .failure(let failure):
                if failure.kind == .gone {
                    lock.withLock {
                        baseline.removeValue(forKey: PathKey(source))
                        stats.failures.removeValue(forKey: PathKey(shown))
                    }
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
        forgetRetries(replacedIn: batch)
        var byTarget: [Target: [Told]] = [:]
        for (d, t) in decrypted {
            if fs.currentVersion(sourcePath: d.source) == d.version {
                lock.withLock { baseline[PathKey(d.source)] = d.version }
                for u in t.units { byTarget[.unit(u), default: []].append(d) }
                if let p = t.program { byTarget[.program(p), default: []].append(d) }
            } else {
                Log.notice("rotation: \(d.shown) changed again while it was decrypted; the next batch tells")
            }
        }
        var systemctl: Result<String, ChildProcess.Failure>?
        for (target, items) in byTarget.sorted(by: { $0.key < $1.key }) {
            if isStopped { return }
            // A failed notification to this target rides along, for its
            // secrets still at the version it was about.
            let earlier = lock.withLock { retries[target] }
            let told = Set(items.map { PathKey($0.shown) })
            let carried = current((earlier?.items ?? []).filter { !told.contains(PathKey($0.shown)) }, for: target)
            tell(target, items + carried.ready, attempt: 1, untried: carried.untried, systemctl: &systemctl)
        }
    }

    /// A failed notification is about one version: a secret of the batch
    /// now at another (told by this batch, or broken) leaves it, as does
    /// one no longer meant for the target (a remount moved `reload=`).
    private func forgetRetries(replacedIn batch: [(source: String, before: [String])]) {
        let sources = Set(batch.map { PathKey($0.source) })
        let earlier = lock.withLock { retries }
        for (target, r) in earlier {
            let kept = r.items.filter {
                target.isNamed(by: targets($0.shown))
                    && (!sources.contains(PathKey($0.source)) || fs.currentVersion(sourcePath: $0.source) == $0.version)
            }
            if kept.count == r.items.count { continue }
            lock.withLock {
                if kept.isEmpty { retries[target] = nil } else { retries[target]?.items = kept }
            }
        }
    }

    /// Tries again each failed notification that is due, about those of
    /// its secrets still at the version it was about and still meant for
    /// the target (a secret changed since is the next batch's).
    private func retry(_ due: [(Target, Retry)]) {
        var systemctl: Result<String, ChildProcess.Failure>?
        for (target, r) in due {
            if isStopped { return }
            let items = current(r.items, for: target)
            if items.ready.isEmpty && items.untried.isEmpty {
                Log.notice("rotation: no longer telling \(target.label) about \(RotationNotifier.shown(r.items.map(\.shown))): replaced since, or no longer meant for it")
                lock.withLock { retries[target] = nil }
                continue
            }
            // A try after the last (a remount or reload asked for it) is one
            // more, then given up again.
            tell(target, items.ready, attempt: min(r.attempts, retryDelays.count) + 1, untried: items.untried,
                 systemctl: &systemctl)
        }
    }

    /// `items` that still stand, decrypted again first as a batch does
    /// (a retry may come after the TTL wiped the plaintext, and KMS or the
    /// key may be gone since: nobody is restarted into a failing open).
    /// `ready`: at that version in SOURCE (a touch waiting for its batch
    /// leaves it so), decrypted, and still meant for the target.
    /// `untried`: those that did not decrypt now, with why; they wait for
    /// the next try. The rest (replaced since, gone, no longer meant for
    /// the target) are dropped.
    private func current(_ items: [Told], for target: Target) -> (ready: [Told], untried: [(Told, String)]) {
        var ready: [Told] = []
        var untried: [(Told, String)] = []
        for d in items where target.isNamed(by: targets(d.shown)) && fs.currentVersion(sourcePath: d.source) == d.version {
            switch fs.decryptNow(sourcePath: d.source) {
            case .success(let secret):
                if secret.version == d.version { ready.append(d) }   // else replaced meanwhile: the next batch's
            case .failure(let failure):
                if failure.kind != .gone { untried.append((d, "does not decrypt now: " + failure.message)) }
            }
        }
        return (ready, untried)
    }

    /// Tells `target` about `items` (try number `attempt`); what it fails
    /// to tell, and `untried` (not decrypted now), is tried again later, or
    /// given up after the last delay. Either way it replaces the target's
    /// earlier failure. `systemctl` is looked up at the first unit and kept
    /// for the rest.
    private func tell(_ target: Target, _ items: [Told], attempt: Int, untried: [(Told, String)] = [],
                      systemctl: inout Result<String, ChildProcess.Failure>?) {
        var failed: [Told] = untried.map(\.0)
        var reason = untried.first?.1 ?? ""
        let generation = lock.withLock { retryGeneration }
        func fail(_ part: [Told], _ why: ChildProcess.Failure) {
            record(target: target.label, paths: part.map(\.shown), result: .failure(why))
            failed += part
            reason = why.message
        }
        switch target {
        case _ where items.isEmpty:
            break
        case .unit(let unit):
            if systemctl == nil { systemctl = RotationNotifier.systemctl(searching: environment.plain["PATH"]) }
            switch systemctl! {
            case .success(let path):
                if let why = notify(target: target.label, paths: items.map(\.shown), argv: [path, "reload-or-restart", "--", unit]) {
                    fail(items, why)
                }
            case .failure(let why):
                Log.error("rotation: not reloading \(unit): \(why.message)")
                fail(items, why)
            }
        case .program(let program):
            // Root runs it: it must be root's to change, as the policy is.
            if let problem = PolicyFile.unsafeProgram(program) {
                Log.error("rotation: not running on_change=\(program): \(problem)")
                fail(items, ChildProcess.Failure(message: "not run: \(problem)"))
                break
            }
            // A path that starts with "-" goes as "./-...": the same file,
            // never an option to the program. Runs of at most 1,000 paths
            // and 64 KiB of them: one run for all would fail with E2BIG.
            var from = 0
            for chunk in RotationNotifier.chunks(items.map(\.shown), maxCount: 1000, maxBytes: 64 * 1024) {
                let part = Array(items[from..<(from + chunk.count)])
                from += chunk.count
                if isStopped { return }
                if let why = notify(target: target.label, paths: chunk,
                                    argv: [program] + chunk.map { $0.hasPrefix("-") ? "./" + $0 : $0 }) {
                    fail(part, why)
                }
            }
        }
        guard !failed.isEmpty else {
            lock.withLock { retries[target] = nil }
            return
        }
        let shown = RotationNotifier.shown(failed.map(\.shown))
        let delay = attempt <= retryDelays.count ? retryDelays[attempt - 1] : nil
        if let delay {
            Log.warning("rotation: will tell \(target.label) about \(shown) again in \(RotationNotifier.seconds(delay)) (try \(attempt + 1) of \(retryDelays.count + 1))")
        } else {
            Log.error("rotation: gave up telling \(target.label) about \(shown) after \(attempt) tries; it is told with its next notification, or tried again after a remount or reload")
        }
        lock.withLock {
            // A remount or reload while this try ran asks for one more now.
            let now = SystemClock.monotonic()
            let due = retryGeneration != generation ? now : delay.map { now + $0 }
            retries[target] = Retry(items: failed, attempts: attempt, due: due, reason: reason)
            lock.broadcast()
        }
    }

    static func seconds(_ s: Double) -> String {
        let whole = displaySeconds(s)
        guard Double(whole) == s else { return "\(s) s" }
        return whole >= 60 && whole % 60 == 0 ? "\(whole / 60) min" : "\(whole) s"
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

    /// Runs `argv`; nil once it succeeded (logged and recorded), or why
    /// it failed (logged; the caller records it).
    private func notify(target: String, paths: [String], argv: [String]) -> ChildProcess.Failure? {
        switch ChildProcess.run(argv, environment: environment, timeout: timeout) {
        case .success:
            Log.notice("rotation: told \(target) about \(RotationNotifier.shown(paths))")
            record(target: target, paths: paths, result: .success(()))
            return nil
        case .failure(let why):
            Log.error("rotation: telling \(target) about \(RotationNotifier.shown(paths)) failed: \(why.message)")
            return why
        }
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
