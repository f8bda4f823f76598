import System

/// Client-side rate adaptation for one service, after the SDKs' "adaptive"
/// retry mode but tuned for a fleet sharing one quota: a token bucket
/// paces the requests a client sends, and its rate follows the service's
/// answers (AIMD on the send rate).
///
/// - Until the service first throttles, nothing is paced (a single host far
///   below its quota never waits), unless `ceiling` caps the rate.
/// - A throttling answer cuts the rate to `decrease` (0.7) times what was being
///   sent (the measured send rate, or the rate if lower), or to the rate
///   calls succeeded at when that is lower (a storm's first throttles: the
///   client sent far more than its share, and what got through is the best
///   measure of that share): at most once per
///   `cutSpacing` sends at the new rate (and at least `minimumCutInterval`
///   apart), so the burst of throttles that answers one overshoot counts once.
/// - Each success adds `growth / rate`, so the rate grows back by about
///   `growth` requests a second every second, the same for every client:
///   `increase` at first, slowly, so that a fleet near its quota probes it
///   gently (few throttles), then `acceleration` more for every second past
///   `steady` seconds since the last cut, so that the quota hosts that have
///   finished leave is taken up within seconds by those still working.
///   Hosts cut in proportion to what they send and grow back alike, so a
///   fleet converges to equal shares, and the quota's leftovers go to
///   whoever still has work (the AIMD fairness argument).
/// - `quietReset` seconds without a throttle end the pacing (no ceiling).
///
/// `acquire` reserves the next send slot and sleeps until it (the bucket may
/// go into debt, so callers waiting together are served in turn), unless
/// that slot lies beyond the caller's time limit: then it reserves nothing
/// and says no, and the caller fails (an open answers EIO within `timeout=`).
public final class RateAdapter: @unchecked Sendable {
    public struct Configuration: Sendable, Equatable {
        /// Requests a second never exceeded (`kms_rate=`); nil: no ceiling.
        public var ceiling: Double?
        /// The share of the measured send rate kept after a throttle.
        public var decrease = 0.7
        /// Requests a second gained per second of successes, at first ...
        public var increase = 0.2
        /// ... and, from `steady` seconds after a cut, this much more for
        /// every further second without one.
        public var acceleration = 1.0
        public var steady = 2.0
        /// The lowest rate a throttle cuts to, requests a second.
        public var floor = 0.5
        /// Seconds without a throttle after which pacing ends (no ceiling).
        public var quietReset = 30.0
        /// Throttles closer than this many sends (at the cut rate) apart, or
        /// than `minimumCutInterval` seconds, cut once.
        public var cutSpacing = 2.0
        public var minimumCutInterval = 0.25
        /// Seconds over which the send rate is measured.
        public var window = 1.0
        public init() {}
    }

    public let configuration: Configuration
    private let clock: Clock
    private let lock = ConditionLock()
    /// Requests a second; nil while unpaced.
    private var rate: Double?
    private var tokens = 1.0
    private var refilled: Double
    private var lastCut = -Double.infinity
    private var lastThrottle = -Double.infinity
    private var windowStart: Double
    private var windowCount = 0
    private var windowSuccesses = 0
    private var lastWindowRate: Double?
    private var lastWindowSuccessRate: Double?
    private var stats = Stats()

    public struct Stats: Sendable, Equatable {
        /// Throttles that cut the rate, and those inside one cut's spacing.
        public var cuts = 0
        public var throttles = 0
        /// Sends that had to wait for their slot, and the seconds waited.
        public var paced = 0
        public var waited = 0.0
        /// Sends refused because their slot lay beyond the caller's limit.
        public var refused = 0
    }

    public init(_ configuration: Configuration = Configuration(), clock: Clock = .system) {
        var c = configuration
        if let ceiling = c.ceiling, !(ceiling > 0) || !ceiling.isFinite { c.ceiling = nil }
        if !(c.decrease > 0 && c.decrease < 1) { c.decrease = 0.7 }
        if !(c.increase > 0) || !c.increase.isFinite { c.increase = 0.2 }
        if !(c.acceleration >= 0) || !c.acceleration.isFinite { c.acceleration = 1 }
        if !(c.steady >= 0) || !c.steady.isFinite { c.steady = 2 }
        if !(c.floor > 0) || !c.floor.isFinite { c.floor = 0.5 }
        if !(c.window > 0) || !c.window.isFinite { c.window = 1 }
        self.configuration = c
        self.clock = clock
        let now = clock.monotonic()
        refilled = now
        windowStart = now
        rate = c.ceiling
    }

    /// The pace now (requests a second), nil when unpaced.
    public var currentRate: Double? { lock.withLock { rate } }
    public var statistics: Stats { lock.withLock { stats } }

    /// Takes a send slot, sleeping until it comes; false (nothing taken)
    /// when it would come more than `seconds` from now.
    public func acquire(within seconds: Double) -> Bool {
        let wait: Double
        lock.lock()
        let now = clock.monotonic()
        if rate != nil, configuration.ceiling == nil, now - lastThrottle >= configuration.quietReset {
            rate = nil
        }
        if let r = rate {
            let burst = max(1, r * 0.1)
            tokens = min(burst, tokens + (now - refilled) * r)
            refilled = now
            let w = tokens >= 1 ? 0 : (1 - tokens) / r
            if w > max(0, seconds) {
                stats.refused += 1
                lock.unlock()
                return false
            }
            tokens -= 1
            wait = w
            if w > 0 { stats.paced += 1; stats.waited += w }
        } else {
            wait = 0
        }
        countSend(at: now + wait)
        lock.unlock()
        if wait > 0 { clock.sleep(wait) }
        return true
    }

    public enum Outcome: Sendable { case success, throttled, other }

    /// What the service answered to a request sent through `acquire`.
    public func record(_ outcome: Outcome) {
        lock.withLock {
            let now = clock.monotonic()
            switch outcome {
            case .throttled:
                stats.throttles += 1
                lastThrottle = now
                let (sending, succeeding) = measuredRates(now)
                let base = rate.map { min($0, max(sending, configuration.floor)) } ?? max(sending, configuration.floor)
                let spacing = max(configuration.minimumCutInterval, configuration.cutSpacing / base)
                guard rate == nil || now - lastCut >= spacing else { return }
                var cut = max(configuration.floor, min(configuration.decrease * base, succeeding))
                if let ceiling = configuration.ceiling { cut = min(cut, ceiling) }
                if rate == nil { tokens = min(tokens, 1); refilled = now }
                rate = cut
                lastCut = now
                stats.cuts += 1
            case .success:
                rollWindow(now)
                windowSuccesses += 1
                guard let r = rate else { return }
                let quiet = max(0, min(now - lastCut - configuration.steady, configuration.quietReset))
                var grown = r + (configuration.increase + configuration.acceleration * quiet) / r
                if let ceiling = configuration.ceiling { grown = min(grown, ceiling) }
                rate = grown
            case .other:
                break
            }
        }
    }

    /// Sends and successes a second over the last complete window, or over
    /// the current one once it has lasted a tenth of a window (the first
    /// throttles of a storm come before any window completes).
    private func measuredRates(_ now: Double) -> (sending: Double, succeeding: Double) {
        rollWindow(now)
        let elapsed = max(now - windowStart, configuration.window / 10)
        let sending = Double(windowCount) / elapsed, succeeding = Double(windowSuccesses) / elapsed
        guard now - windowStart < configuration.window / 2, let last = lastWindowRate, let lastOK = lastWindowSuccessRate else {
            return (sending, succeeding)
        }
        return (max(last, sending), max(lastOK, succeeding))
    }

    private func countSend(at t: Double) {
        rollWindow(t)
        windowCount += 1
    }

    private func rollWindow(_ now: Double) {
        let elapsed = now - windowStart
        guard elapsed >= configuration.window else { return }
        // A window with no send for long is no measure of the rate now.
        let recent = elapsed < 2 * configuration.window
        lastWindowRate = recent ? Double(windowCount) / elapsed : nil
        lastWindowSuccessRate = recent ? Double(windowSuccesses) / elapsed : nil
        windowStart = now
        windowCount = 0
        windowSuccesses = 0
    }
}
