import System

/// Client-side congestion control for one service, as the SDKs' "adaptive"
/// retry mode does it: a cap on calls in flight that halves when the
/// service throttles and grows back by one per window of successes (AIMD).
/// A boot storm of many opens therefore slows down to what KMS accepts
/// instead of burning its retries on throttling errors.
public final class AdaptiveLimiter: @unchecked Sendable {
    public let maximum: Double
    private let lock = ConditionLock()
    private var limit: Double
    private var inFlight = 0

    /// `maximum` calls may be in flight at once when the service is happy
    /// (the transport keeps as many connections).
    public init(maximum: Int = 16) {
        self.maximum = Double(max(1, maximum))
        self.limit = Double(max(1, maximum))
    }

    /// Waits for a slot until `seconds` have passed; false if none came.
    public func acquire(within seconds: Double, clock: Clock) -> Bool {
        let start = clock.monotonic()
        lock.lock()
        defer { lock.unlock() }
        while inFlight >= Int(limit) {
            let left = seconds - (clock.monotonic() - start)
            if left <= 0 { return false }
            lock.wait(seconds: min(left, 0.5))
        }
        inFlight += 1
        return true
    }

    public enum Outcome { case success, throttled, other }

    public func release(_ outcome: Outcome) {
        lock.withLock {
            inFlight -= 1
            switch outcome {
            case .throttled: limit = max(1, limit / 2)
            case .success: limit = min(maximum, limit + 1 / limit)
            case .other: break
            }
            lock.broadcast()
        }
    }

    /// The current cap (for status and tests).
    public var currentLimit: Int { lock.withLock { Int(limit) } }
}
