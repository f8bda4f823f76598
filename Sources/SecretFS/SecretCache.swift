import System
import SecureMemory
import Log

/// What a decryption produced.
public struct DecryptedSecret: Sendable {
    public var plaintext: SecureBuffer
    /// `kms-blob`, `kms-blob-base64`, `aws-encryption-sdk-v2`, ...
    public var format: String
    public var keyId: String?

    public init(plaintext: SecureBuffer, format: String, keyId: String?) {
        self.plaintext = plaintext
        self.format = format
        self.keyId = keyId
    }
}

/// Why a decryption failed, as one operator-facing line (never plaintext).
public typealias DecryptFailure = Failure<DecryptFailureKind>

public enum DecryptFailureKind: Sendable {
    /// The file itself is bad (damaged, unknown format, too large, wrong
    /// context): retrying the same bytes cannot help.
    case badInput
    /// KMS refused (access denied, key disabled): may change with policy.
    case refused
    /// KMS or the network failed (throttling, timeouts, 5xx).
    case unavailable
    /// The file is no longer in SOURCE (removed or renamed meanwhile).
    case gone
}

/// Decrypts ciphertext files; implemented over KMS by KmsfsKit's
/// `KMSDecryptor`, by fakes in tests.
public protocol SecretDecrypting: Sendable {
    /// `path` is the file's path in the mount (`tls/ssl.pem`).
    func decrypt(ciphertext: [UInt8], path: String) -> Result<DecryptedSecret, DecryptFailure>
}

/// A decrypted secret in the cache. Open handles hold it, so the bytes a
/// handle opened stay until it is released even when the cache moves on;
/// its `SecureBuffer` wipes itself when the last holder lets go.
public final class CachedSecret: @unchecked Sendable {
    public let path: String
    public let plaintext: SecureBuffer
    public let fingerprint: Fingerprint
    public let format: String
    public let keyId: String?
    /// Monotonic time of decryption.
    public let decryptedAt: Double
    /// A short digest of the ciphertext it was decrypted from: the version
    /// open handles remember, so status can tell who holds an old one.
    public let version: String
    /// When that ciphertext appeared in SOURCE (its ctime, wall clock).
    public let appeared: Double
    /// The ciphertext's own inode was watched from before it was read
    /// (`SourceWatcher.watchFile`), so a write or a new name reaches the
    /// watcher through any of its names, also one outside SOURCE. Without,
    /// `hit` refuses it and its opens look at the ciphertext.
    public let fileWatched: Bool
    // Guarded by the cache's lock.
    var lastUsed: Double
    var hits: Int = 0
    /// A background refresh is running.
    var refreshing = false
    /// No refresh attempt before this (monotonic), after a failed one.
    var nextRefresh: Double = 0

    init(path: String, secret: DecryptedSecret, fingerprint: Fingerprint, at now: Double, version: String = "",
         fileWatched: Bool = true) {
        self.path = path
        self.fileWatched = fileWatched
        self.plaintext = secret.plaintext
        self.fingerprint = fingerprint
        self.format = secret.format
        self.keyId = secret.keyId
        self.decryptedAt = now
        self.lastUsed = now
        self.version = version
        self.appeared = Double(fingerprint.ctimeNanos) / 1e9
    }

    public var size: Int { plaintext.count }

    /// For tests and tools that build entries without a decryptor.
    public static func make(path: String, plaintext: SecureBuffer, fingerprint: Fingerprint, at now: Double,
                            format: String = "test") -> CachedSecret {
        CachedSecret(path: path, secret: DecryptedSecret(plaintext: plaintext, format: format, keyId: nil),
                     fingerprint: fingerprint, at: now)
    }
}

/// Plaintexts by path, with single-flight decryption (concurrent first
/// opens of one file make one KMS call), a TTL, a byte cap that evicts the
/// least recently used, and invalidation when the ciphertext changes.
///
/// Lifetimes:
/// - `ttl` is a hard bound: a plaintext is wiped that long after it was
///   decrypted, whatever else happens: also where an open handle still
///   holds it (a read of that handle then fails), after a rotation, an
///   eviction or a refresh took it out of the cache, or where it never
///   entered it. It is not handed to an open in its last second (a tenth
///   of a TTL under 10 s): that open decrypts again.
/// - In the last `staleWindow` seconds of its TTL (at most half of it), an
///   open is still served from the cache at once and also starts one
///   background refresh. A healthy KMS renews the plaintext before it
///   expires; while KMS is unavailable the last good plaintext keeps being
///   served, logged, until the TTL. A refresh that KMS refuses (access
///   revoked, key disabled) wipes the plaintext at once.
/// - A changed ciphertext (rotation) wipes the cached plaintext at once;
///   the next open decrypts the new one.
public final class SecretCache: @unchecked Sendable {
    public struct Configuration: Sendable {
        /// Seconds after decryption at which a plaintext is wiped; nil keeps
        /// it until unmount.
        public var ttl: Double?
        /// Cap on cached plaintext bytes (page-rounded); the least recently
        /// used go first.
        public var maxBytes: Int
        /// The refresh-ahead window before the TTL (see the type's comment).
        public var staleWindow: Double
        /// Seconds between refresh attempts while KMS is unavailable.
        public var refreshRetry: Double = 5
        public init(ttl: Double? = nil, maxBytes: Int = 256 << 20, staleWindow: Double = 0) {
            self.ttl = ttl
            self.maxBytes = maxBytes
            self.staleWindow = staleWindow
        }

        /// Age at which an entry becomes due for a background refresh: the
        /// window of `staleWindow` seconds (at most half the TTL) ends where
        /// the entry stops being handed out (`handOutMargin` before the
        /// TTL), so a short window is not swallowed by the margin.
        var refreshAge: Double? {
            guard let ttl, staleWindow > 0 else { return nil }
            return max(0, ttl - SecretCache.handOutMargin(ttl: ttl) - min(staleWindow, ttl / 2))
        }
    }

    private final class Flight {
        var result: Result<CachedSecret, DecryptFailure>?
        /// The path was invalidated while this decryption ran: its result
        /// may be of the old version and is not cached.
        var stale = false
        /// The fingerprint the file had when this decryption began.
        let fingerprint: Fingerprint?
        /// Callers that joined without waiting (`acquire(joined:)`).
        var joiners: [Joiner] = []
        init(fingerprint: Fingerprint?) { self.fingerprint = fingerprint }
    }

    public private(set) var configuration: Configuration
    private let lock = ConditionLock()
    // Keyed by the path's bytes (`PathKey`), never by Unicode-equivalent
    // Strings: `café` and `cafe\u{301}` are two files. Both maps hold only
    // what is live: a cached plaintext, or a decryption in progress. (An
    // invalidation that races a decryption marks its flight stale instead
    // of counting generations per path forever; a refresh checks that its
    // entry is still the cached one.)
    private var entries: [PathKey: CachedSecret] = [:]
    private var flights: [PathKey: Flight] = [:]
    /// Every plaintext decrypted here that anything still holds (the
    /// cache, open handles, a caller): the TTL and `wipeAll` reach those
    /// out of the cache too. Weak: a plaintext nothing holds is already
    /// wiped (its buffer wipes itself when freed).
    private struct Held { weak var secret: CachedSecret? }
    private var held: [Held] = []
    /// Plaintexts evicted for space alone (`maxBytes`) that something
    /// still holds: an open of the same version takes one back instead of
    /// decrypting a second copy beside it. Without this, a reader who
    /// keeps a handle open and churns the cache held one more locked copy
    /// (and cost one more Decrypt) per round. Invalidation, a refused
    /// refresh, the TTL and `wipeAll` drop an entry here as they do in
    /// `entries`.
    private var evicted = WeakValues<PathKey, CachedSecret>()
    /// `held` is pruned of freed plaintexts when it grows past this.
    private var heldPruneAt = 64
    private var bytes = 0
    private let now: @Sendable () -> Double
    private var sweeperRunning = false
    /// When the sweeper waits until (monotonic); infinity when it does not
    /// run. It looks at `held` then; whatever needs it sooner moves it
    /// earlier and wakes it.
    private var sweeperWakesAt = Double.infinity
    private var stopped = false

    public init(configuration: Configuration, now: @escaping @Sendable () -> Double = { SystemClock.monotonic() }) {
        self.configuration = configuration
        self.now = now
    }

    public func reconfigure(_ c: Configuration) {
        lock.withLock { configuration = c; sweeperWakesAt = -.infinity; lock.broadcast() }
    }

    /// How an `acquire` was served.
    public enum Source: Sendable, Equatable {
        case cache
        case loaded(latency: Double)
        case shared
    }

    /// What `hit` found.
    public struct Hit: Sendable {
        public let secret: CachedSecret
        /// The caller should start a background refresh (`refresh`).
        public let refreshDue: Bool
    }

    /// The cached plaintext of `path` if it is within its TTL, counted as a
    /// use; no check of the ciphertext (the hot path when SOURCE is
    /// watched). Never one whose file has more names than one (it may be
    /// rewritten through a name no directory watch sees) or whose inode
    /// had no watch of its own: its opens look first.
    public func hit(_ path: String) -> Hit? {
        lock.withLock {
            let t = now()
            guard let e = entries[PathKey(path)], isFresh(e, at: t), e.fingerprint.links <= 1, e.fileWatched else { return nil }
            e.lastUsed = t
            e.hits += 1
            return Hit(secret: e, refreshDue: claimRefresh(e, at: t))
        }
    }

    // Lock held.
    private func claimRefresh(_ e: CachedSecret, at t: Double) -> Bool {
        guard let age = configuration.refreshAge, t - e.decryptedAt >= age,
              !e.refreshing, t >= e.nextRefresh, flights[PathKey(e.path)] == nil else { return false }
        e.refreshing = true
        return true
    }

    /// What `acquire` answers: the plaintext or why not, how it was
    /// served, and whether the caller should start a background refresh.
    public typealias Outcome = (result: Result<CachedSecret, DecryptFailure>, source: Source, refreshDue: Bool)

    /// A caller that joined a decryption without waiting for it, called
    /// with its outcome by the thread that ran it: `onAnOpensThread` is
    /// true when that thread was running an open (`acquire(joined:)`),
    /// false when it is another caller's (a prefetch, a credential
    /// request, a rotation check), which the joiner must not hold up.
    public typealias Joiner = @Sendable (_ outcome: Outcome, _ onAnOpensThread: Bool) -> Void

    /// The joiners of a decryption that `acquire(joined:)` ran, with its
    /// outcome: `answer()` calls each, on this thread, once the caller has
    /// used the outcome itself.
    public struct Joined: Sendable {
        fileprivate var joiners: [Joiner] = []
        fileprivate var outcome: Outcome? = nil
        public func answer() { call(onAnOpensThread: true) }

        fileprivate func call(onAnOpensThread: Bool) {
            guard let outcome else { return }
            for j in joiners { j(outcome, onAnOpensThread) }
        }
    }

    /// The cached plaintext of `path` when it is fresh for `current` (the
    /// fingerprint the file has now); otherwise runs `load` once for every
    /// concurrent caller, who wait for it. A cached version with another
    /// fingerprint is wiped (the ciphertext was replaced).
    public func acquire(path: String, current: Fingerprint?,
                        load: () -> Result<CachedSecret, DecryptFailure>) -> Outcome {
        let (outcome, joined) = acquire(path: path, current: current, load: load, joined: nil)!
        joined.call(onAnOpensThread: false)
        return outcome
    }

    /// As `acquire`, for opens: a caller who would wait for a decryption
    /// already in flight does not; `joined` is kept, called with that
    /// decryption's outcome by the thread that ran it, and this returns
    /// nil. (Waiting held one open-pool thread per such open: 64 opens of
    /// one cold secret held all of them, and every other cold open waited
    /// for that one KMS call.) Otherwise this answers as `acquire` does,
    /// with the joiners of a decryption it ran, for the caller to answer
    /// after its own open (`Joined.answer`). A caller that waits (nil
    /// `joined`) is given the joiners too.
    public func acquire(path: String, current: Fingerprint?,
                        load: () -> Result<CachedSecret, DecryptFailure>,
                        joined: Joiner?) -> (Outcome, Joined)? {
        let key = PathKey(path)
        lock.lock()
        let t = now()
        func served(_ e: CachedSecret) -> (Outcome, Joined) {
            e.lastUsed = t
            e.hits += 1
            let due = claimRefresh(e, at: t)
            lock.unlock()
            return ((.success(e), .cache, due), Joined())
        }
        if let e = entries[key] {
            if isFresh(e, at: t), current == nil || e.fingerprint == current { return served(e) }
            if current != nil && e.fingerprint != current {
                Log.info("cache: \(e.path) changed in SOURCE; wiping the old plaintext")
            }
            removeLocked(key)
        } else if let e = evicted.removeValue(forKey: key), !e.plaintext.isRevoked,
                  isFresh(e, at: t), current == nil || e.fingerprint == current, flights[key] == nil {
            insert(e)
            return served(e)
        }
        // Join a decryption in flight only if it is of the file this caller
        // sees: one a rotation made stale, or begun on other bytes, may
        // answer with the old plaintext. Then a decryption of its own (which
        // takes the flight's place for those who come after).
        if let f = flights[key], !f.stale, f.fingerprint == nil || current == nil || f.fingerprint == current {
            if let joined {
                f.joiners.append(joined)
                lock.unlock()
                return nil
            }
            while f.result == nil { lock.wait() }
            let r = f.result!
            lock.unlock()
            return ((r, .shared, false), Joined())
        }
        let flight = Flight(fingerprint: current)
        // A decryption this one replaces read other bytes, or bytes a
        // change since made stale: its result is not cached (else, ending
        // last, it put the old plaintext back, and hits served it).
        flights[key]?.stale = true
        flights[key] = flight
        lock.unlock()

        let start = now()
        let result = load()
        let latency = now() - start

        lock.lock()
        if flights[key] === flight { flights[key] = nil }
        if case .success(let fresh) = result {
            hold(fresh)
            if !flight.stale { insert(fresh) }
        }
        flight.result = result
        let joiners = flight.joiners
        flight.joiners = []
        lock.broadcast()
        lock.unlock()
        return ((result, .loaded(latency: latency), false), Joined(joiners: joiners, outcome: (result, .shared, false)))
    }

    /// Runs a claimed refresh of `entry` (on the caller's thread: callers
    /// start a thread for it) and records the outcome.
    public func refresh(_ entry: CachedSecret, load: () -> Result<CachedSecret, DecryptFailure>) {
        let result = load()
        lock.withLock {
            entry.refreshing = false
            // An invalidation (rotation) removed the entry, or a newer
            // decryption replaced it: this result is not to be cached. One
            // evicted for space meanwhile (and still held) is what an open
            // would take back: the result replaces it.
            let key = PathKey(entry.path)
            let current = entries[key] === entry
            let evictedMeanwhile = !current && evicted[key] === entry
            switch result {
            case .success(let fresh):
                hold(fresh)
                if current || evictedMeanwhile { insert(fresh) }
                Log.debug("cache: \(entry.path) refreshed ahead of its ttl")
            case .failure(let failure):
                if failure.kind == .unavailable {
                    entry.nextRefresh = now() + configuration.refreshRetry
                } else if evictedMeanwhile {
                    evicted[key] = nil   // refused: never taken back
                }
                guard current else { return }
                let left = (configuration.ttl ?? 0) - (now() - entry.decryptedAt)
                if failure.kind == .unavailable {
                    Log.warning("\(SourceTree.mountPath(ofSource: entry.path)): refresh failed (\(failure.message)); serving the last good plaintext for at most \(max(0, Int(left))) s more (ttl)")
                } else {
                    Log.error("\(SourceTree.mountPath(ofSource: entry.path)): refresh refused (\(failure.message)); wiping the cached plaintext now")
                    removeLocked(PathKey(entry.path))
                }
            }
        }
    }

    /// Within its TTL, less the last `handOutMargin`: an open then
    /// decrypts again rather than take bytes the TTL wipes a moment later
    /// (its reads would fail).
    private func isFresh(_ e: CachedSecret, at t: Double) -> Bool {
        guard let ttl = configuration.ttl else { return true }
        return t - e.decryptedAt < ttl - SecretCache.handOutMargin(ttl: ttl)
    }

    /// The last second of a TTL (a tenth of a TTL under 10 s).
    public static func handOutMargin(ttl: Double) -> Double { min(1, ttl / 10) }

    /// The locked memory an entry takes: its buffer's capacity (more than
    /// the plaintext when the buffer was sized for an encoding) in whole
    /// pages of this machine (64 KiB on some arm64 kernels).
    private func footprint(_ e: CachedSecret) -> Int {
        let p = systemPageSize
        return (max(e.plaintext.capacity, 1) + p - 1) / p * p
    }

    // Lock held. Registers a plaintext this cache decrypted, so the TTL
    // and `wipeAll` reach it wherever it is held. After `wipeAll`, wiped
    // at once: nothing outlives the stop.
    private func hold(_ e: CachedSecret) {
        if stopped { e.plaintext.revoke(releasingPages: true); return }
        held.append(Held(secret: e))
        if held.count > heldPruneAt {
            held.removeAll { $0.secret == nil }
            heldPruneAt = max(64, held.count * 2)
        }
        // Only a sweeper that would wake later than this one's TTL must
        // look again (one idle with nothing held); every plaintext held
        // before was decrypted about as early. The lock's one condition
        // wakes it at every decryption anyway (a flight's end): without
        // this flag each wake-up walked `held`.
        if let ttl = configuration.ttl, e.decryptedAt + ttl < sweeperWakesAt {
            sweeperWakesAt = e.decryptedAt + ttl
            lock.broadcast()
        }
    }

    // Lock held. Nothing is cached once `wipeAll` has run: a decryption
    // that ends during shutdown goes to its caller only.
    private func insert(_ e: CachedSecret) {
        guard !stopped else { return }
        let key = PathKey(e.path)
        if let old = entries[key] { bytes -= footprint(old) }
        entries[key] = e
        evicted[key] = nil
        bytes += footprint(e)
        while bytes > configuration.maxBytes, entries.count > 1 {
            guard let victim = entries.values.filter({ $0 !== e }).min(by: { $0.lastUsed < $1.lastUsed }) else { break }
            Log.info("cache: evicting \(victim.path) (cache over \(configuration.maxBytes) bytes)")
            let victimKey = PathKey(victim.path)
            removeLocked(victimKey)
            evicted[victimKey] = victim
        }
        // No wake-up for the sweeper here: `hold` woke it if this entry's
        // TTL comes first (every entry was held before it was inserted).
    }

    // Lock held. The plaintext is wiped when the last open handle lets go.
    private func removeLocked(_ key: PathKey) {
        if let old = entries.removeValue(forKey: key) { bytes -= footprint(old) }
    }

    /// Wipes a path's plaintext now: its ciphertext changed or vanished.
    /// Returns the version that was cached, if one was.
    @discardableResult
    public func invalidate(_ path: String) -> String? {
        invalidateReturningEntry(path)?.version
    }

    /// `invalidate`, returning the version that was cached and the
    /// fingerprint of the ciphertext it was decrypted from: the caller can
    /// tell a version cached before a change from one an open decrypted
    /// from the new ciphertext since.
    @discardableResult
    public func invalidateReturningEntry(_ path: String) -> (version: String, fingerprint: Fingerprint)? {
        let key = PathKey(path)
        return lock.withLock {
            flights[key]?.stale = true
            let was = entries[key].map { (version: $0.version, fingerprint: $0.fingerprint) }
            removeLocked(key)
            evicted[key] = nil
            return was
        }
    }

    /// `invalidateReturningEntry` for a changed name that may hold a new
    /// ciphertext: a plaintext decrypted from `current` (the file the name
    /// holds, looked at before this call) is that new file's and stays;
    /// any other is wiped and returned. A later change sends an event of
    /// its own (and an open's hit compares fingerprints anyway). So is a
    /// decryption in flight begun on that file: it reads that file or a
    /// newer one (a path only moves forward), never the one replaced.
    @discardableResult
    public func invalidate(_ path: String, unlessDecryptedFrom current: Fingerprint?) -> (version: String, fingerprint: Fingerprint)? {
        guard let current else { return invalidateReturningEntry(path) }
        let key = PathKey(path)
        return lock.withLock {
            if let f = flights[key], f.fingerprint != current { f.stale = true }
            if let e = evicted[key], e.fingerprint != current { evicted[key] = nil }
            guard let e = entries[key], e.fingerprint != current else { return nil }
            removeLocked(key)
            return (version: e.version, fingerprint: e.fingerprint)
        }
    }

    /// Wipes every plaintext under a directory prefix (`dir/`), or all.
    public func invalidateAll(prefix: String? = nil) {
        lock.withLock {
            for (k, f) in flights where prefix == nil || k.hasPrefix(prefix!) { f.stale = true }
            for k in Array(entries.keys) where prefix == nil || k.hasPrefix(prefix!) { removeLocked(k) }
            evicted.removeAll { prefix == nil || $0.hasPrefix(prefix!) }
        }
    }

    /// Whether `path` has a plaintext here, or one being decrypted, or one
    /// evicted that something still holds: while it does, its ciphertext's
    /// own watch is kept.
    public func holds(_ path: String) -> Bool {
        let key = PathKey(path)
        return lock.withLock { entries[key] != nil || flights[key] != nil || evicted[key] != nil }
    }

    /// The cached entry of `path` if it is fresh (for `stat`), without
    /// counting a use.
    public func peek(_ path: String, fingerprint: Fingerprint?) -> CachedSecret? {
        lock.withLock {
            guard let e = entries[PathKey(path)], isFresh(e, at: now()),
                  fingerprint == nil || e.fingerprint == fingerprint else { return nil }
            return e
        }
    }

    /// Removes entries past their TTL; returns how many.
    @discardableResult
    public func expire() -> Int {
        lock.withLock { expireLocked().expired }
    }

    /// Wipes what is past its TTL; how many cache entries that was, and
    /// when the oldest plaintext still held was decrypted.
    private func expireLocked() -> (expired: Int, oldest: Double?) {
        guard let ttl = configuration.ttl else { return (0, nil) }
        let t = now()
        let expired = entries.values.filter { t - $0.decryptedAt >= ttl }
        for e in expired {
            removeLocked(PathKey(e.path))
            Log.debug("cache: \(e.path) expired after ttl \(ttl)s; wiped")
        }
        // Out of the cache or not, nothing outlives its TTL: a handle held
        // open past it reads EIO from then on.
        var oldest: Double? = nil
        held.removeAll { h in
            guard let e = h.secret else { return true }
            guard t - e.decryptedAt >= ttl else {
                oldest = min(oldest ?? e.decryptedAt, e.decryptedAt)
                return false
            }
            e.plaintext.revoke(releasingPages: true)
            return true
        }
        return (expired.count, oldest)
    }

    /// Starts a thread that wipes plaintexts as their TTL passes.
    public func startSweeper() {
        let start = lock.withLock { () -> Bool in
            if sweeperRunning { return false }
            sweeperRunning = true
            return true
        }
        guard start else { return }
        startThread(name: "kmsfs-expiry") { [self] in
            lock.lock()
            while !stopped {
                let t = now()
                if t >= sweeperWakesAt {
                    var wait = 3600.0
                    if let oldest = expireLocked().oldest, let ttl = configuration.ttl {
                        wait = max(0.01, oldest + ttl - t)
                    }
                    sweeperWakesAt = t + wait
                }
                // Woken early by another waiter's broadcast: back to sleep.
                lock.wait(seconds: max(0.001, sweeperWakesAt - t))
            }
            sweeperWakesAt = .infinity
            lock.unlock()
        }
    }

    /// True once `wipeAll` ran: the daemon is stopping, and nothing more
    /// is cached (a prefetch still running stops taking secrets).
    public var isStopped: Bool { lock.withLock { stopped } }

    /// Wipes and drops everything (unmount, SIGTERM): every plaintext
    /// decrypted here that is still held, the cache's among them.
    public func wipeAll() {
        lock.withLock {
            stopped = true
            for h in held { h.secret?.plaintext.revoke(releasingPages: true) }
            held.removeAll()
            entries.removeAll()
            evicted.removeAll()
            bytes = 0
            lock.broadcast()
        }
    }

    public struct EntryInfo: Sendable {
        public var path: String
        public var size: Int
        public var age: Double
        public var hits: Int
        public var format: String
        public var keyId: String?
        public var version: String
        public var appeared: Double
    }

    /// Copied under the lock, sorted outside it: opens wait on that lock,
    /// and any local user may ask for this through a metrics scrape.
    public var snapshot: (entries: [EntryInfo], bytes: Int) {
        let (list, total) = lock.withLock {
            let t = now()
            return (entries.values.map {
                EntryInfo(path: $0.path, size: $0.size, age: t - $0.decryptedAt, hits: $0.hits, format: $0.format, keyId: $0.keyId,
                          version: $0.version, appeared: $0.appeared)
            }, bytes)
        }
        return (list.sorted { $0.path < $1.path }, total)
    }

    public var count: Int { lock.withLock { entries.count } }

    /// Marks every decryption under way stale: its result answers its
    /// callers but is not cached.
    public func invalidateFlights() {
        lock.withLock { for f in flights.values { f.stale = true } }
    }

    /// Each cached plaintext's path and the fingerprint of the ciphertext
    /// it was decrypted from.
    public var fingerprints: [(path: String, fingerprint: Fingerprint)] {
        lock.withLock { entries.values.map { ($0.path, $0.fingerprint) } }
    }

    /// Paths the cache keeps anything for (cached plaintexts and
    /// decryptions in progress): bounded by what is live, never by how
    /// many names SOURCE ever had.
    public var trackedPaths: Int { lock.withLock { entries.count + flights.count } }
}

/// A path as a dictionary key that compares and hashes its UTF-8 bytes.
/// Swift's `String ==` and hashing use canonical equivalence, so `café`
/// (NFC) and `cafe\u{301}` (NFD), two different files in SOURCE, would
/// share one key (one node, one cached plaintext).
public struct PathKey: Hashable, Sendable, CustomStringConvertible {
    public let path: String
    public init(_ path: String) { self.path = path }
    public static func == (a: PathKey, b: PathKey) -> Bool { a.path.utf8.elementsEqual(b.path.utf8) }
    public func hash(into h: inout Hasher) {
        var p = path
        p.withUTF8 { h.combine(bytes: UnsafeRawBufferPointer($0)) }
        h.combine(0xFF as UInt8)   // never a UTF-8 byte: ends the key
    }
    /// Byte-wise prefix test.
    public func hasPrefix(_ prefix: String) -> Bool { path.utf8.starts(with: prefix.utf8) }
    public var description: String { path }
}
