import Testing
@testable import System
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

@Suite struct DueQueueTests {
    /// A key asked for at once runs at once, though another waits out its
    /// delay ahead of it (one thread that slept through each delayed job
    /// kept it waiting up to the delay).
    @Test func anImmediateKeyDoesNotWaitBehindADelayedOne() {
        let ran = Mutex<[(Int, Double)]>([])
        let q = DueQueue<Int>(name: "test-due", delay: 3.0) { k in ran.withLock { $0.append((k, SystemClock.monotonic())) } }
        defer { q.stop(waiting: 1) }
        let start = SystemClock.monotonic()
        #expect(q.schedule(1, later: true))
        #expect(q.schedule(2, later: false))
        while ran.withLock({ $0.count }) < 2 && SystemClock.monotonic() - start < 10 { SystemClock.sleep(0.01) }
        let r = ran.withLock { $0 }
        #expect(r.map(\.0) == [2, 1])
        if r.count == 2 {
            #expect(r[0].1 - start < 2)
            #expect(r[1].1 - start >= 2.95)
        }
    }

    /// Asked for again while it waits, a key runs once; asked for at once
    /// while it waits out a delay, it moves up.
    @Test func aKeyRunsOnceAtTheEarlierOfItsTimes() {
        let ran = Mutex<[Int]>([])
        let q = DueQueue<Int>(name: "test-due", delay: 3) { k in ran.withLock { $0.append(k) } }
        defer { q.stop(waiting: 1) }
        let start = SystemClock.monotonic()
        for _ in 0..<100 { q.schedule(7, later: true) }
        #expect(q.waiting == 1)
        q.schedule(7, later: false)
        while ran.withLock({ $0.isEmpty }) && SystemClock.monotonic() - start < 5 { SystemClock.sleep(0.005) }
        #expect(SystemClock.monotonic() - start < 2)
        while SystemClock.monotonic() - start < 3.5 { SystemClock.sleep(0.1) }   // past the delay: it does not run again
        #expect(ran.withLock { $0 } == [7])
    }

    /// Keys moved up leave entries behind; the lanes stay bounded.
    @Test func movedUpKeysLeaveNoGrowingLane() {
        let q = DueQueue<Int>(name: "test-due", delay: 30) { _ in SystemClock.sleep(0.001) }
        defer { q.stop(waiting: 1) }
        for i in 0..<50_000 {
            q.schedule(i % 10, later: true)
            q.schedule(i % 10, later: false)
        }
        #expect(q.waiting <= 10)
        #expect(q.entries <= 2 * 10 + 1024 + 2)
    }

    /// After stop nothing more runs, and nothing is accepted.
    @Test func stopDropsWhatWaits() {
        let ran = Mutex(0)
        let q = DueQueue<Int>(name: "test-due", delay: 0.3) { _ in ran.withLock { $0 += 1 } }
        #expect(q.schedule(1, later: true))
        q.stop(waiting: 1)
        #expect(!q.schedule(2, later: false))
        SystemClock.sleep(0.5)
        #expect(ran.withLock { $0 } == 0)
    }
}
