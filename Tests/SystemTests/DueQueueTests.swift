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

    /// Keys moved up leave entries behind, and behind a key that waits out
    /// its delay at a lane's head they are not taken off as they come
    /// due: the lanes stay bounded all the same.
    @Test func movedUpKeysLeaveNoGrowingLane() {
        let q = DueQueue<Int>(name: "test-due", delay: 30) { _ in }
        defer { q.stop(waiting: 1) }
        q.schedule(-1, later: true)   // at the head of the later lane for 30 s
        var most = 0
        for _ in 0..<3_000 {
            for k in 0..<10 {
                q.schedule(k, later: true)    // its entry goes stale at once:
                q.schedule(k, later: false)   // the key moves up, and runs
            }
            let start = SystemClock.monotonic()
            while q.waiting > 1 && SystemClock.monotonic() - start < 10 { SystemClock.sleep(0.0001) }
            most = max(most, q.entries)
        }
        #expect(q.waiting == 1)
        #expect(most <= 2 * 11 + 1024 + 12, "\(most) entries held for at most 11 keys")
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
