import System

/// Client-side rate adaptation for one service, after the SDKs' "adaptive"
/// retry mode but tuned for a fleet sharing one quota: a token bucket
/// paces the requests a client sends, and its rate follows the service's
/// answers (AIMD on the send rate).
///
/// - Until the service first throttles, nothing is paced (a single host far
///   below its quota never waits), unless `ceiling` caps the rate.
/// - A throttling answer cuts the rate to `decrease` (0.5) times what was being
///   sent (the measured send rate, or the rate if lower), or to the rate
///   calls succeeded at when that is lower (a storm's first throttles: the
///   client sent far more than its share, and what got through is the best
///   measure of that share): at most once per
///   `cutSpacing` sends' time at the new rate (at least `minimumCutInterval`,
///   and 4 sends), so the burst of throttles that answers one overshoot
///   counts once.
/// - Each success adds `growth / rate`, so the rate grows back by about
///   `growth` requests a second every second, the same for every client:
///   `increase` at first, slowly, so that a fleet near its quota probes it
///   gently (few throttles), then `acceleration` more for every second past
///   `steady` seconds since the last cut, so that the quota hosts that have
///   finished leave is taken up within seconds by those still working.
///   Hosts cut in proportion to what they send and grow back alike, so a
///   fleet converges to equal shares, and the quota's leftovers go to
///   whoever still has work (the AIMD fairness argument).
/// - Throttles that slowing down does not make rarer are not about this
///   client's rate (a KMS, or a proxy, throttling a share of calls whatever
///   the rate): once cuts have brought the rate to a quarter of what the
///   first throttle found, a cut after which at least `persistentShare` of
///   the sends were still throttled, no fewer than before it, is undone and
///   the next ones held, so such a pattern cannot starve the client's calls
///   past their deadlines.
/// - `quietReset` seconds without a throttle end the pacing (no ceiling).
///
/// `acquire` reserves the next send slot and sleeps until it (the bucket may
/// go into debt, so callers waiting together are served in turn), unless
/// that slot lies beyond the caller's time limit: then it reserves nothing
/// and says no, and the caller fails (an open answers EIO within `timeout=`).
/// A cut while a caller sleeps stretches the rest of its wait to the new
/// rate (the debt drains slower), never past the caller's limit: the slots
/// a prefetch's workers took before a throttle do not all go out at the
/// old pace.
public final class RateAdapter: @unchecked Sendable {
    public struct Configuration: Sendable, Equatable {
        /// Whether throttles set the pace (`kms_rate=adaptive` or `N`);
        /// when false and there is no ceiling, nothing is ever paced.
        public var adaptive = true
        /// Requests a second never exceeded (`kms_rate=`); nil: no ceiling.
        public var ceiling: Double?
        /// The share of the measured send rate kept after a throttle. Half,
        /// not the SDKs' 0.7: in a fleet each host is a small part of what
        /// overshoots the quota, and the overshoot (the throttled share)
        /// settles where the cuts undo the growth, so a deeper cut halves
        /// it (`bench/notes.md`, "Fleet storm").
        public var decrease = 0.5
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
        /// The share of throttled sends at and above which a cut that did
        /// not lower it is held.
        public var persistentShare = 0.45
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
    private var windowResponses = 0
    private var lastWindowRate: Double?
    private var lastWindowSuccessRate: Double?
    private var stats = Stats()
    /// Sends and throttles since the last cut (or hold), and the share of
    /// throttles that led to it.
    private var sendsSinceCut = 0
    private var throttlesSinceCut = 0
    private var shareAtCut: Double?
    /// When the last cut or hold was decided, and the rate before the last cut.
    private var lastDecision = -Double.infinity
    private var rateBeforeCut: Double?
    /// The send rate the first throttle found, since pacing began.
    private var episodeStart: Double?
    /// Cuts so far, and the last one's time and stretch (old ÷ new rate):
    /// a sender already holding a slot when the rate is cut waits longer.
    private var cutGeneration = 0
    private var lastCutStretch = 1.0

    public struct Stats: Sendable, Equatable {
        /// Throttles that cut the rate, and those inside one cut's spacing.
        public var cuts = 0
        public var throttles = 0
        /// Sends that had to wait for their slot, and the seconds waited.
        public var paced = 0
        public var waited = 0.0
        /// Sends refused because their slot lay beyond the caller's limit.
        public var refused = 0
        /// Cuts held because slowing down had not made throttles rarer.
        public var held = 0
    }

    public init(_ configuration: Configuration = Configuration(), clock: Clock = .system) {
        // A value out of range falls back to the default, stated once (in
        // Configuration).
        var c = configuration
        let d = Configuration()
        if let ceiling = c.ceiling, !(ceiling > 0) || !ceiling.isFinite { c.ceiling = nil }
        if !(c.decrease > 0 && c.decrease < 1) { c.decrease = d.decrease }
        if !(c.increase > 0) || !c.increase.isFinite { c.increase = d.increase }
        if !(c.acceleration >= 0) || !c.acceleration.isFinite { c.acceleration = d.acceleration }
        if !(c.steady >= 0) || !c.steady.isFinite { c.steady = d.steady }
        if !(c.floor > 0) || !c.floor.isFinite { c.floor = d.floor }
        if !(c.window > 0) || !c.window.isFinite { c.window = d.window }
        if !(c.persistentShare > 0 && c.persistentShare <= 1) { c.persistentShare = d.persistentShare }
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
        if !configuration.adaptive && configuration.ceiling == nil { return true }
        let wait: Double
        lock.lock()
        let now = clock.monotonic()
        if rate != nil, configuration.ceiling == nil, now - lastThrottle >= configuration.quietReset {
            rate = nil
        }
        if let r = rate {
            tokens = min(burstTokens(r), tokens + (now - refilled) * r)
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
        sendsSinceCut += 1
        guard wait > 0 else {
            lock.unlock()
            return true
        }
        // Sleep until the slot; a cut meanwhile stretches what is left of
        // the wait (the bucket's debt now drains at the lower rate), so
        // slots taken before a throttle do not all go out at the old pace.
        var slot = now + wait
        let limit = now + max(0, seconds)     // stretched, never past the caller's limit
        var generation = cutGeneration
        lock.unlock()
        while true {
            let left = slot - clock.monotonic()
            if left > 0 { clock.sleep(left) }
            lock.lock()
            if generation == cutGeneration {
                lock.unlock()
                return true
            }
            let cutAt = lastCut
            if slot > cutAt { slot = min(limit, cutAt + (slot - cutAt) * lastCutStretch) }
            generation = cutGeneration
            lock.unlock()
        }
    }

    public enum Outcome: Sendable { case success, throttled, other }

    /// What the service answered to a request sent through `acquire`.
    public func record(_ outcome: Outcome) {
        guard configuration.adaptive else { return }
        lock.withLock {
            let now = clock.monotonic()
            switch outcome {
            case .throttled:
                stats.throttles += 1
                throttlesSinceCut += 1
                rollWindow(now)
                windowResponses += 1
                lastThrottle = now
                let (sending, succeeding) = measuredRates(now)
                let base = rate.map { min($0, max(sending, configuration.floor)) } ?? max(sending, configuration.floor)
                let spacing = max(configuration.minimumCutInterval, configuration.cutSpacing / base)
                // A decision needs the spacing and, once paced, a few sends
                // since the last one to judge by.
                guard rate == nil || (now - lastDecision >= spacing && sendsSinceCut >= 4) else { return }
                let share = sendsSinceCut >= 4 ? Double(throttlesSinceCut) / Double(sendsSinceCut) : nil
                sendsSinceCut = 0
                throttlesSinceCut = 0
                lastDecision = now
                if let r = rate, let share, let before = shareAtCut, let start = episodeStart, r <= start / 4,
                   share >= configuration.persistentShare, share >= 0.8 * before {
                    // Slower sending did not make throttles rarer: undo the
                    // last cut, and hold.
                    stats.held += 1
                    shareAtCut = share
                    if let previous = rateBeforeCut {
                        rate = min(max(r, previous), configuration.ceiling ?? .infinity)
                        rateBeforeCut = nil
                    }
                    return
                }
                shareAtCut = share
                rateBeforeCut = base
                // What got through bounds the cut once a few answers show it.
                let through = windowResponses >= 4 ? succeeding : .infinity
                var cut = max(configuration.floor, min(configuration.decrease * base, through))
                if let ceiling = configuration.ceiling { cut = min(cut, ceiling) }
                if rate == nil { tokens = min(tokens, 1); refilled = now; episodeStart = base }
                if let r = rate, r > cut {
                    // Debt taken at the old rate drains at the new one.
                    tokens = min(burstTokens(cut), tokens + (now - refilled) * r)
                    refilled = now
                    lastCutStretch = r / cut
                } else {
                    lastCutStretch = 1
                }
                cutGeneration &+= 1
                rate = cut
                lastCut = now
                stats.cuts += 1
            case .success:
                rollWindow(now)
                windowSuccesses += 1
                windowResponses += 1
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

    private func burstTokens(_ r: Double) -> Double { max(1, r * 0.1) }

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
        windowResponses = 0
    }
}
