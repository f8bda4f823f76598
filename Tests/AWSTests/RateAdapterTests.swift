import Testing
import Synchronization
import AWS

@Suite struct RateAdapterTests {
    /// `count` sends `gap` seconds apart, each answered with `outcome`.
    func send(_ a: RateAdapter, _ clock: ManualClock, count: Int, gap: Double, _ outcome: RateAdapter.Outcome = .success) {
        for _ in 0..<count {
            #expect(a.acquire(within: 10))
            a.record(outcome)
            clock.advance(gap)
        }
    }

    @Test func nothingIsPacedUntilTheServiceThrottles() {
        let clock = ManualClock()
        let a = RateAdapter(clock: clock.clock)
        for _ in 0..<1000 { #expect(a.acquire(within: 0)); a.record(.success) }
        #expect(a.currentRate == nil)
        #expect(clock.sleeps.isEmpty)
    }

    @Test func notAdaptiveNeverPacesWhateverTheServiceAnswers() {
        let clock = ManualClock()
        var c = RateAdapter.Configuration()
        c.adaptive = false
        let a = RateAdapter(c, clock: clock.clock)
        for i in 0..<1000 {
            #expect(a.acquire(within: 0))
            a.record(i % 2 == 0 ? .throttled : .success)
            clock.advance(0.001)
        }
        #expect(a.currentRate == nil)
        #expect(clock.sleeps.isEmpty)
        #expect(a.statistics.cuts == 0)
    }

    @Test func aThrottleCutsToHalfTheMeasuredSendRateOncePerBurst() throws {
        let clock = ManualClock()
        let a = RateAdapter(clock: clock.clock)
        send(a, clock, count: 40, gap: 0.05)          // 20 requests a second for 2 s
        a.record(.throttled)
        #expect(abs(try #require(a.currentRate) - 10) < 1e-6)
        // The rest of the overshoot's throttles, within one cut's spacing: no further cut.
        for _ in 0..<5 { a.record(.throttled) }
        #expect(abs(try #require(a.currentRate) - 10) < 1e-6)
        #expect(a.statistics.cuts == 1 && a.statistics.throttles == 6)
        // Past the spacing, but with no send since: no judging, no cut.
        clock.advance(0.3)
        a.record(.throttled)
        #expect(a.statistics.cuts == 1)
        // Four sends later (paced at 10 a second), the next throttle cuts again.
        for _ in 0..<4 { #expect(a.acquire(within: 1)); a.record(.success) }
        a.record(.throttled)
        #expect(a.statistics.cuts == 2)
        #expect(try #require(a.currentRate) < 10 * 0.75)
    }

    @Test func aStormsFirstThrottleCutsToWhatGotThrough() throws {
        let clock = ManualClock()
        let a = RateAdapter(clock: clock.clock)
        // 16 calls at once (a prefetch's workers), one answered, then throttles.
        for _ in 0..<16 { #expect(a.acquire(within: 0)) }
        clock.advance(0.02)
        for _ in 0..<3 { a.record(.success) }
        a.record(.throttled)
        // 160 sent a second, 30 got through (4 answers): the share is near 30, not 80.
        #expect(abs(try #require(a.currentRate) - 30) < 1e-6)
        // One answer is no measure of what gets through: half the send rate.
        let b = RateAdapter(clock: clock.clock)
        for _ in 0..<16 { #expect(b.acquire(within: 0)) }
        b.record(.throttled)
        #expect(abs(try #require(b.currentRate) - 80) < 1e-6)
    }

    @Test func sendsArePacedAtTheRateAndRefusedPastTheCallersLimit() throws {
        let clock = ManualClock()
        var c = RateAdapter.Configuration()
        c.ceiling = 4
        let a = RateAdapter(c, clock: clock.clock)
        let t0 = clock.clock.monotonic()
        for _ in 0..<9 { #expect(a.acquire(within: 5)) }      // the first goes at once, then every 0.25 s
        #expect(abs(clock.clock.monotonic() - t0 - 2.0) < 1e-9)
        // Callers waiting together queue: the slot after a reservation is further away.
        #expect(!a.acquire(within: 0.1))
        #expect(a.statistics.refused == 1)
        #expect(a.acquire(within: 0.25))
        // A ceiling holds from the start and growth never passes it.
        for _ in 0..<100 { a.record(.success) }
        #expect(a.currentRate == 4)
    }

    @Test func successesGrowTheRateBackSlowlyThenFaster() throws {
        let clock = ManualClock()
        let a = RateAdapter(clock: clock.clock)
        send(a, clock, count: 20, gap: 0.25)          // 4 a second
        a.record(.throttled)
        let cut = try #require(a.currentRate)
        #expect(abs(cut - 2.0) < 1e-6)
        func succeed(for seconds: Double) throws -> Double {
            let start = clock.clock.monotonic()
            while clock.clock.monotonic() - start < seconds {
                #expect(a.acquire(within: 10))
                a.record(.success)
            }
            return try #require(a.currentRate)
        }
        // The first 2 s after the cut: +0.2 a second each second.
        let early = try succeed(for: 2)
        #expect(early > cut + 0.2 && early < cut + 0.8, "rate \(early)")
        // Then 1 more each further second: 8 s more make 0.2 × 8 + (1 + ... + 8) ≈ 34.
        let late = try succeed(for: 8)
        #expect(late > early + 25 && late < early + 40, "rate \(late)")
    }

    /// A KMS (or proxy) that throttles every other request whatever the
    /// rate: slowing down does not thin the throttles, so once the rate is
    /// a quarter of where it began it holds instead of sinking to the floor
    /// (and opens to their deadlines).
    @Test func throttlesThatSlowingDownDoesNotThinAreNotChasedToTheFloor() throws {
        let clock = ManualClock()
        let a = RateAdapter(clock: clock.clock)
        var n = 0
        var firstCut: Double?
        var lowest = Double.infinity
        let start = clock.clock.monotonic()
        while clock.clock.monotonic() - start < 60 {
            #expect(a.acquire(within: 100))
            n += 1
            a.record(n % 2 == 0 ? .throttled : .success)
            if firstCut == nil { firstCut = a.currentRate }
            if clock.clock.monotonic() - start > 10 { lowest = min(lowest, try #require(a.currentRate)) }
            clock.advance(0.02)
        }
        // Cuts go on until the rate is about a quarter of where it began
        // (10 a second here), then hold: it stays there, far from the floor.
        let first = try #require(firstCut)
        #expect(lowest >= first / 4 * 0.5 && lowest > 2, "first cut \(first), lowest later \(lowest)")
        #expect(a.statistics.held > 10, "\(a.statistics)")
    }

    @Test func quietEndsThePacing() {
        let clock = ManualClock()
        let a = RateAdapter(clock: clock.clock)
        send(a, clock, count: 10, gap: 0.1)
        a.record(.throttled)
        #expect(a.currentRate != nil)
        clock.advance(31)
        #expect(a.acquire(within: 0))
        #expect(a.currentRate == nil)
    }

    @Test func throttlesNeverCutBelowTheFloor() throws {
        let clock = ManualClock()
        let a = RateAdapter(clock: clock.clock)
        for _ in 0..<50 {
            #expect(a.acquire(within: 100))
            a.record(.throttled)
            clock.advance(10)
        }
        #expect(try #require(a.currentRate) >= 0.5)
        #expect(a.acquire(within: 2.5))
    }

    @Test func nonsenseConfigurationFallsBackToTheDefaults() {
        var c = RateAdapter.Configuration()
        c.ceiling = .nan
        c.decrease = 7
        c.increase = -.infinity
        c.acceleration = .nan
        c.steady = -1
        c.floor = 0
        c.window = .nan
        let a = RateAdapter(c, clock: ManualClock().clock)
        #expect(a.configuration.ceiling == nil && a.configuration.decrease == 0.5 && a.configuration.increase == 0.2
                && a.configuration.acceleration == 1 && a.configuration.steady == 2
                && a.configuration.floor == 0.5 && a.configuration.window == 1)
        #expect(a.acquire(within: 0))
    }

    /// Two hosts sharing one quota: the one that started greedy gives up
    /// more at each shared throttle and both grow back alike, so their
    /// rates converge (AIMD), where cutting both by the same amount would
    /// keep the gap.
    @Test func twoHostsSharingAQuotaConvergeToEqualShares() throws {
        let clock = ManualClock()
        var c = RateAdapter.Configuration()
        c.ceiling = 1000          // paced from the start, so the rates are set by the test
        let big = RateAdapter(c, clock: clock.clock), small = RateAdapter(c, clock: clock.clock)
        send(big, clock, count: 40, gap: 1.0 / 40)        // ~40 a second
        big.record(.throttled)
        send(small, clock, count: 4, gap: 0.25)           // ~4 a second
        small.record(.throttled)
        var (b, s) = (try #require(big.currentRate), try #require(small.currentRate))
        let gap0 = b - s
        // Rounds: each sends at its pace for 3 s (successes), then both see a throttle.
        for _ in 0..<8 {
            let end = clock.clock.monotonic() + 3
            while clock.clock.monotonic() < end {
                for a in [big, small] where a.acquire(within: 0) { a.record(.success) }
                clock.advance(0.005)
            }
            big.record(.throttled)
            small.record(.throttled)
        }
        (b, s) = (try #require(big.currentRate), try #require(small.currentRate))
        #expect(b - s < gap0 / 10, "big \(b), small \(s)")
    }

    /// A send already holding a slot when another call's throttle cuts the
    /// rate waits for the slot the new rate gives it, not the old one.
    @Test func aCutStretchesTheWaitOfSlotsAlreadyTaken() throws {
        let manual = ManualClock()
        let box = Mutex<RateAdapter?>(nil)
        let throttleDuringSleep = Mutex(false)
        let clock = Clock(now: manual.clock.now, monotonic: manual.clock.monotonic, sleep: { d in
            // Half way through the sleep, another call is throttled.
            manual.advance(d / 2)
            if throttleDuringSleep.withLock({ let v = $0; $0 = false; return v }) {
                box.withLock { $0 }?.record(.throttled)
            }
            manual.advance(d / 2)
        })
        let a = RateAdapter(clock: clock)
        box.withLock { $0 = a }
        send(a, manual, count: 40, gap: 0.05)          // 20 a second
        a.record(.throttled)                            // cut to 14
        for _ in 0..<8 { #expect(a.acquire(within: 10)); a.record(.success) }
        manual.advance(0.3)                             // past the cut spacing
        for _ in 0..<2 { #expect(a.acquire(within: 10)) }   // the bucket is empty now
        let before = try #require(a.currentRate)
        let t0 = manual.clock.monotonic()
        throttleDuringSleep.withLock { $0 = true }
        #expect(a.acquire(within: 10))
        let waited = manual.clock.monotonic() - t0
        let after = try #require(a.currentRate)
        #expect(a.statistics.cuts == 2 && after < before, "\(a.statistics)")
        // Half the wait at the old rate, the other half stretched by old ÷ new.
        let unstretched = 1 / before
        #expect(waited > unstretched * (0.5 + 0.5 * before / after) * 0.9, "waited \(waited), one slot \(unstretched)")
        // Never past the caller's limit, however deep the cut.
        for _ in 0..<8 { #expect(a.acquire(within: 10)); a.record(.success) }
        manual.advance(0.3)
        for _ in 0..<2 { #expect(a.acquire(within: 10)) }
        let rate = try #require(a.currentRate), limit = 1.1 / rate
        throttleDuringSleep.withLock { $0 = true }
        let t1 = manual.clock.monotonic()
        #expect(a.acquire(within: limit))
        let deeper = try #require(a.currentRate)
        #expect(a.statistics.cuts == 3 && deeper < rate / 1.2, "\(a.statistics)")
        #expect(manual.clock.monotonic() - t1 <= limit + 1e-9)
    }
}
