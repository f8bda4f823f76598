import System
import Log

/// Caches what another provider returns and refreshes temporary
/// credentials ahead of their expiry, the way the SDKs'
/// `RefreshableCredentials` (botocore) and cached provider (aws-c-auth) do,
/// with two differences a file system needs:
///
/// - **Readers never wait while the credentials they hold are valid.** The
///   first caller that finds them inside the refresh window starts one
///   background refresh and returns the current credentials at once; so do
///   all callers after it until the refresh lands. Callers wait only when
///   nothing valid is cached (the first use, or after expiry), and then they
///   wait for a single fetch (single flight).
/// - **A brief outage of the source does not take the mount down.** When a
///   refresh fails after the credentials expired, the last credentials keep
///   being served for at most `gracePeriod` seconds past their expiry (some
///   sources, IMDS among them, keep honouring credentials a while; botocore
///   extends IMDS credentials the same way). A warning says so; past the
///   grace period callers get the source's error.
///
/// A failed fetch is not repeated for `retryInterval` seconds: callers in
/// between get the last credentials (inside the grace period) or the last
/// error at once, so an unreachable source is not hammered by every open.
public final class CachingCredentialProvider: CredentialProvider, @unchecked Sendable {
    public struct Policy: Sendable {
        /// Start refreshing this long before expiry (halved for short-lived
        /// credentials, so they are not refreshed on every call).
        public var refreshAhead: Double = 300
        /// Credentials this close to expiry are treated as expired.
        public var expiryMargin: Double = 15
        /// How long past expiry the last credentials may be served while
        /// their source is failing. 0 disables.
        public var gracePeriod: Double = 600
        /// Least time between two fetch attempts after a failure.
        public var retryInterval: Double = 5
        /// Longest a caller waits for another caller's fetch.
        public var maxWait: Double = 60
        public init() {}
    }

    public let source: CredentialProvider
    public let policy: Policy
    private let clock: Clock
    private let runner: BackgroundRunner
    private let lock = ConditionLock()

    // Guarded by `lock`.
    private var cached: AWSCredentials?
    private var fetchedAt: Timestamp?
    private var fetching = false
    private var lastError: CredentialError?
    private var nextAttempt = -Double.infinity   // monotonic seconds
    private var warnedGrace = false
    private var fetches = 0

    public var name: String { source.name }

    public init(_ source: CredentialProvider, policy: Policy = Policy(), clock: Clock = .system,
                runner: BackgroundRunner = .thread) {
        self.source = source
        self.policy = policy
        self.clock = clock
        self.runner = runner
    }

    /// How many times the source was asked (for tests and `status`).
    public var fetchCount: Int {
        lock.lock(); defer { lock.unlock() }
        return fetches
    }

    /// The credentials cached now, if any (no fetch).
    public var current: AWSCredentials? {
        lock.lock(); defer { lock.unlock() }
        return cached
    }

    public func invalidate(_ rejected: AWSCredentials) {
        lock.lock(); defer { lock.unlock() }
        guard let c = cached, c == rejected else { return }   // already replaced
        cached = nil
        nextAttempt = -Double.infinity
        Log.notice("AWS credentials from \(c.source) (\(CachingCredentialProvider.redact(c.accessKeyId))) were rejected as expired; fetching new ones")
    }

    public func credentials() throws(CredentialError) -> AWSCredentials {
        lock.lock()
        var waited = 0.0
        while true {
            let now = clock.now()
            let mono = clock.monotonic()
            if let c = cached {
                guard let exp = c.expiration else { lock.unlock(); return c }
                let lifetime = max(0, exp - (fetchedAt ?? now))
                let margin = min(policy.expiryMargin, lifetime / 4)
                if now < exp + (-margin) {
                    // Valid: hand it out; maybe start one background refresh.
                    let refreshAt = exp + (-min(policy.refreshAhead, lifetime / 2))
                    let refresh = now >= refreshAt && !fetching && mono >= nextAttempt
                    if refresh {
                        fetching = true
                        fetches += 1
                    }
                    lock.unlock()
                    // Started with the lock released: with no thread to be
                    // had the runner does the job right here, and it takes
                    // the lock (a non-recursive mutex) itself.
                    if refresh { runner.run("kmsfs-creds") { [self] in self.backgroundRefresh() } }
                    return c
                }
                // Expired (or about to). Serve it within the grace period
                // while a fetch is running or was just tried.
                let inGrace = now < exp + policy.gracePeriod
                if inGrace && (fetching || mono < nextAttempt) {
                    warnGraceLocked(c, exp)
                    lock.unlock()
                    return c
                }
            }
            if let e = lastError, mono < nextAttempt, !fetching {
                // Tried a moment ago and failed: do not hammer the source.
                lock.unlock()
                throw e
            }
            if fetching {
                // Someone else is fetching and nothing usable is cached: wait.
                let t0 = clock.monotonic()
                lock.wait(seconds: min(1, policy.maxWait - waited))
                waited += max(0.001, clock.monotonic() - t0)
                if waited >= policy.maxWait {
                    lock.unlock()
                    throw .failed("timed out waiting for credentials from \(source.name)")
                }
                continue
            }
            // Fetch here, lock released, others wait (or get grace).
            fetching = true
            fetches += 1
            lock.unlock()
            let result = fetchOnce()
            lock.lock()
            let outcome = finishLocked(result)
            lock.unlock()
            switch outcome {
            case .success(let c): return c
            case .failure(let e): throw e
            }
        }
    }

    private func fetchOnce() -> Result<AWSCredentials, CredentialError> {
        do { return .success(try source.credentials()) } catch { return .failure(error) }
    }

    private func backgroundRefresh() {
        let result = fetchOnce()
        lock.lock()
        _ = finishLocked(result)
        lock.unlock()
    }

    /// Records a fetch's result (lock held) and returns what the fetching
    /// caller should get.
    private func finishLocked(_ result: Result<AWSCredentials, CredentialError>) -> Result<AWSCredentials, CredentialError> {
        fetching = false
        defer { lock.broadcast() }
        let now = clock.now()
        var result = result
        if case .success(let c) = result, let exp = c.expiration, now >= exp {
            // Expired on arrival (a clock far off, or a source serving stale
            // credentials): a failure like any other, tried again after
            // `retryInterval`, not on every call.
            result = .failure(.failed("the credentials from \(c.source) arrived already expired (at \(exp), and this machine's clock says \(now)): check the clock"))
        }
        switch result {
        case .success(let c):
            let first = cached == nil
            let recovered = lastError != nil
            cached = c
            fetchedAt = now
            lastError = nil
            nextAttempt = -Double.infinity
            warnedGrace = false
            let until = c.expiration.map { ", valid until \($0)" } ?? ""
            if first || recovered {
                Log.notice("AWS credentials from \(c.source) (access key \(CachingCredentialProvider.redact(c.accessKeyId))\(until))")
            } else {
                Log.info("AWS credentials refreshed from \(c.source)\(until)")
            }
            return .success(c)
        case .failure(let e):
            lastError = e
            nextAttempt = clock.monotonic() + policy.retryInterval
            if let c = cached, let exp = c.expiration {
                if now < exp {
                    Log.warning("refreshing AWS credentials from \(source.name) failed (\(e.message)); the current ones stay valid until \(exp), retrying in \(displaySeconds(policy.retryInterval)) s")
                    return .success(c)
                }
                if now < exp + policy.gracePeriod {
                    warnGraceLocked(c, exp)
                    return .success(c)
                }
                Log.error("AWS credentials from \(source.name) expired at \(exp) and could not be refreshed: \(e.message)")
            }
            return .failure(e)
        }
    }

    private func warnGraceLocked(_ c: AWSCredentials, _ exp: Timestamp) {
        guard !warnedGrace else { return }
        warnedGrace = true
        Log.warning("AWS credentials from \(c.source) expired at \(exp) and their source is failing (\(lastError?.message ?? "refresh in progress")); still using them for at most \(displaySeconds(policy.gracePeriod)) s past expiry")
    }

    /// `AKIA…WXYZ`: enough to tell keys apart in a log, not to use one.
    public static func redact(_ accessKeyId: String) -> String {
        guard accessKeyId.count > 8 else { return "…" }
        return String(accessKeyId.prefix(4)) + "…" + String(accessKeyId.suffix(4))
    }
}
