import Testing
import System
#if canImport(Glibc)
import Glibc
#endif

/// System.ConditionLock: stable storage for the pthread objects, and
/// timed waits that cannot trap whatever the duration (`ttl=1e30` once
/// killed the expiry thread in `Int(Double)`).
@Suite struct ConditionLockTests {
    @Test func hugeNegativeAndNaNWaitsDoNotTrap() {
        let now = timespec(tv_sec: 1_000, tv_nsec: 999_999_999)
        for s in [1e30, Double.greatestFiniteMagnitude, .infinity, 9.3e18, Double(Int.max)] {
            let d = ConditionLock.deadline(now: now, after: s)
            #expect(d.tv_sec == 1_000 + Int(Int32.max))
            #expect((0..<1_000_000_000).contains(d.tv_nsec))
        }
        for s in [-1.0, -1e30, -.infinity, .nan, 0] {
            let d = ConditionLock.deadline(now: now, after: s)
            #expect(d.tv_sec == 1_000 && d.tv_nsec == 999_999_999)
        }
        let d = ConditionLock.deadline(now: now, after: 1.5)
        #expect(d.tv_sec == 1_002 && d.tv_nsec == 499_999_999)
        // Saturates instead of overflowing when now is already far out.
        let late = ConditionLock.deadline(now: timespec(tv_sec: Int.max - 5, tv_nsec: 0), after: 1e9)
        #expect(late.tv_sec == Int.max)
    }

    @Test func timedWaitsReturnForAnyDuration() {
        let lock = ConditionLock()
        lock.withLock {
            #expect(lock.wait(seconds: .nan) == false)
            #expect(lock.wait(seconds: -1e30) == false)
            #expect(lock.wait(seconds: 0.01) == false)
        }
        // A huge wait is a real wait that a signal ends (it used to trap).
        final class Flag: @unchecked Sendable { var set = false }
        let flag = Flag()
        startThread(name: "cl-test") {
            lock.withLock { flag.set = true; lock.broadcast() }
        }
        lock.withLock {
            while !flag.set { lock.wait(seconds: 1e30) }
        }
        #expect(flag.set)
    }

    @Test func manyThreadsContendWithoutLosingUpdates() {
        let lock = ConditionLock()
        final class Counter: @unchecked Sendable { var n = 0; var done = 0 }
        let c = Counter()
        for i in 0..<8 {
            startThread(name: "cl-\(i)") {
                for _ in 0..<2_000 { lock.withLock { c.n += 1 } }
                lock.withLock { c.done += 1; lock.broadcast() }
            }
        }
        lock.withLock { while c.done < 8 { lock.wait(seconds: 5) } }
        #expect(c.n == 16_000)
    }
}
