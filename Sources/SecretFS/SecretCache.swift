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
public struct DecryptFailure: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable {
        /// The file itself is bad (damaged, unknown format, too large,
        /// wrong context): retrying the same bytes cannot help.
        case badInput
        /// KMS refused (access denied, key disabled): may change with policy.
        case refused
        /// KMS or the network failed (throttling, timeouts, 5xx).
        case unavailable
    }
    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }
}

/// Decrypts ciphertext files; implemented over KMS by the executable,
/// by fakes in tests.
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
    // Guarded by the cache's lock.
    var lastUsed: Double
    var hits: Int = 0
    /// When a refresh of this entry first failed for want of KMS.
    var staleSince: Double?
    /// The ciphertext changed (watcher): check it on the next open.
    var changed = false

    init(path: String, secret: DecryptedSecret, fingerprint: Fingerprint, at now: Double) {
        self.path = path
        self.plaintext = secret.plaintext
        self.fingerprint = fingerprint
        self.format = secret.format
        self.keyId = secret.keyId
        self.decryptedAt = now
        self.lastUsed = now
    }

    public var size: Int { plaintext.count }
}

/// Plaintexts by path, with single-flight decryption (concurrent first
/// opens of one file make one KMS call), expiry after `ttl`, a byte cap
/// that evicts the least recently used, and invalidation when the
/// ciphertext changes.
public final class SecretCache: @unchecked Sendable {
    public struct Configuration: Sendable {
        /// Seconds after decryption at which a plaintext is wiped; nil keeps
        /// it until unmount.
        public var ttl: Double?
        /// Cap on cached plaintext bytes (page-rounded); the least recently
        /// used go first.
        public var maxBytes: Int
        /// How long the last good plaintext may still be served when a
        /// refresh (after expiry or rotation) fails because KMS is down.
        public var staleWindow: Double
        public init(ttl: Double? = nil, maxBytes: Int = 256 << 20, staleWindow: Double = 0) {
            self.ttl = ttl
            self.maxBytes = maxBytes
            self.staleWindow = staleWindow
        }
    }

    private final class Flight {
        var result: Result<CachedSecret, DecryptFailure>?
        var waiters = 0
    }


    public private(set) var configuration: Configuration
    private let lock = ConditionLock()
    private var entries: [String: CachedSecret] = [:]
    private var flights: [String: Flight] = [:]
    private var bytes = 0
    private let now: @Sendable () -> Double
    private var sweeperRunning = false
    private var stopped = false

    public init(configuration: Configuration, now: @escaping @Sendable () -> Double = { monotonicNow() }) {
        self.configuration = configuration
        self.now = now
    }

    public func reconfigure(_ c: Configuration) {
        lock.withLock { configuration = c; lock.broadcast() }
    }

    /// How an `acquire` was served.
    public enum Source: Sendable, Equatable {
        case cache
        case loaded(latency: Double)
        case shared
        case stale(DecryptFailure.Kind)

        public static func == (a: Source, b: Source) -> Bool {
            switch (a, b) {
            case (.cache, .cache), (.shared, .shared): return true
            case (.loaded, .loaded): return true
            case (.stale, .stale): return true
            default: return false
            }
        }
    }

    /// The cached plaintext of `path` when it is fresh for `current` (the
    /// fingerprint the file has now); otherwise runs `load` once for every
    /// concurrent caller.
    public func acquire(path: String, current: Fingerprint?,
                        load: () -> Result<CachedSecret, DecryptFailure>) -> (Result<CachedSecret, DecryptFailure>, Source) {
        lock.lock()
        let t = now()
        var previous: CachedSecret? = nil
        if let e = entries[path] {
            if isFresh(e, at: t), !e.changed, current == nil || e.fingerprint == current {
                e.lastUsed = t
                e.hits += 1
                lock.unlock()
                return (.success(e), .cache)
            }
            previous = e
        }
        if let f = flights[path] {
            f.waiters += 1
            while f.result == nil { lock.wait() }
            let r = f.result!
            lock.unlock()
            return (r, .shared)
        }
        let flight = Flight()
        flights[path] = flight
        lock.unlock()

        let start = now()
        let result = load()
        let latency = now() - start

        lock.lock()
        flights[path] = nil
        var served = result
        var source = Source.loaded(latency: latency)
        switch result {
        case .success(let fresh):
            insert(fresh)
        case .failure(let failure):
            // KMS unavailable while refreshing a replaced ciphertext: keep
            // serving the last good plaintext for the stale window. The TTL
            // stays a hard bound: an expired plaintext is never served.
            let t2 = now()
            if failure.kind == .unavailable, let prev = previous, entries[path] === prev,
               configuration.staleWindow > 0, configuration.ttl.map({ t2 - prev.decryptedAt < $0 }) ?? true {
                let since = prev.staleSince ?? t2
                prev.staleSince = since
                if t2 - since < configuration.staleWindow {
                    prev.hits += 1
                    served = .success(prev)
                    source = .stale(failure.kind)
                    Log.warning("\(path): refresh failed (\(failure.message)); serving the last good plaintext, stale for \(Int(t2 - since)) s of the \(Int(configuration.staleWindow)) s window")
                } else {
                    Log.error("\(path): stale window of \(Int(configuration.staleWindow)) s passed without a successful refresh; wiping the old plaintext")
                    remove(path)
                }
            } else if let prev = previous, entries[path] === prev {
                remove(path)
            }
        }
        flight.result = served
        lock.broadcast()
        lock.unlock()
        return (served, source)
    }

    private func isFresh(_ e: CachedSecret, at t: Double) -> Bool {
        guard let ttl = configuration.ttl else { return true }
        return t - e.decryptedAt < ttl
    }

    private func pageRounded(_ n: Int) -> Int { (max(n, 1) + 4095) / 4096 * 4096 }

    // Lock held.
    private func insert(_ e: CachedSecret) {
        if let old = entries[e.path] { bytes -= pageRounded(old.size) }
        entries[e.path] = e
        bytes += pageRounded(e.size)
        while bytes > configuration.maxBytes, entries.count > 1 {
            guard let victim = entries.values.filter({ $0 !== e }).min(by: { $0.lastUsed < $1.lastUsed }) else { break }
            Log.info("cache: evicting \(victim.path) (cache over \(configuration.maxBytes) bytes)")
            remove(victim.path)
        }
        lock.broadcast()
    }

    // Lock held.
    private func remove(_ path: String) {
        if let old = entries.removeValue(forKey: path) { bytes -= pageRounded(old.size) }
    }

    /// Drops a path's plaintext (its ciphertext changed or vanished).
    public func invalidate(_ path: String) {
        lock.withLock { remove(path) }
    }

    /// The cached plaintext of `path` when it is fresh and its ciphertext is
    /// not known to have changed, counted as a use; nil otherwise. The hot
    /// path when SOURCE is watched (no stat of the ciphertext needed).
    public func hit(_ path: String) -> CachedSecret? {
        lock.withLock {
            let t = now()
            guard let e = entries[path], !e.changed, isFresh(e, at: t) else { return nil }
            e.lastUsed = t
            e.hits += 1
            return e
        }
    }

    /// The ciphertext of `path` changed: its next open checks and decrypts
    /// anew, keeping the old plaintext only as the stale fallback.
    public func markChanged(_ path: String) {
        lock.withLock { entries[path]?.changed = true }
    }

    public func markAllChanged() {
        lock.withLock { for e in entries.values { e.changed = true } }
    }

    /// Drops every plaintext under a directory prefix (`dir/`), or all.
    public func invalidateAll(prefix: String? = nil) {
        lock.withLock {
            for k in entries.keys where prefix == nil || k.hasPrefix(prefix!) { remove(k) }
        }
    }

    /// The cached entry of `path` if it is fresh (for `stat`), without
    /// counting a use.
    public func peek(_ path: String, fingerprint: Fingerprint?) -> CachedSecret? {
        lock.withLock {
            guard let e = entries[path], isFresh(e, at: now()),
                  fingerprint == nil || e.fingerprint == fingerprint else { return nil }
            return e
        }
    }

    /// Removes entries past their TTL; returns how many.
    @discardableResult
    public func expire() -> Int {
        lock.withLock { expireLocked() }
    }

    private func expireLocked() -> Int {
        guard let ttl = configuration.ttl else { return 0 }
        let t = now()
        let stale = entries.values.filter { t - $0.decryptedAt >= ttl }
        for e in stale {
            // Kept for the stale window only if one is configured.
            remove(e.path)
            Log.debug("cache: \(e.path) expired after ttl \(ttl)s; wiped")
        }
        return stale.count
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
                _ = expireLocked()
                var wait = 3600.0
                if let ttl = configuration.ttl, let oldest = entries.values.map(\.decryptedAt).min() {
                    wait = max(0.01, oldest + ttl - now())
                }
                lock.wait(seconds: wait)
            }
            lock.unlock()
        }
    }

    /// Wipes and drops everything (unmount, SIGTERM).
    public func wipeAll() {
        lock.withLock {
            stopped = true
            for e in entries.values { e.plaintext.wipeContents() }
            entries.removeAll()
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
    }

    public var snapshot: (entries: [EntryInfo], bytes: Int) {
        lock.withLock {
            let t = now()
            let list = entries.values.map {
                EntryInfo(path: $0.path, size: $0.size, age: t - $0.decryptedAt, hits: $0.hits, format: $0.format, keyId: $0.keyId)
            }.sorted { $0.path < $1.path }
            return (list, bytes)
        }
    }

    public var count: Int { lock.withLock { entries.count } }
}

#if canImport(Glibc)
import Glibc
#endif

/// Monotonic seconds.
public func monotonicNow() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
