import Testing
import System
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

@Suite struct WorkPoolTests {
    @Test func runsEveryJobWithAtMostLimitAtOnce() {
        let pool = WorkPool(name: "test-pool", limit: 3, idleSeconds: 0.2)
        let running = Mutex(0), peak = Mutex(0), done = Mutex(0)
        for _ in 0..<30 {
            #expect(pool.submit {
                let now = running.withLock { $0 += 1; return $0 }
                peak.withLock { $0 = max($0, now) }
                usleep(5_000)
                running.withLock { $0 -= 1 }
                done.withLock { $0 += 1 }
            })
        }
        pool.stop(waiting: 10)
        #expect(done.withLock { $0 } == 30)
        #expect(peak.withLock { $0 } <= 3)
        #expect(peak.withLock { $0 } >= 2)
        #expect(!pool.submit {})
    }

    @Test func aFullQueueRefusesAndIdleThreadsEnd() {
        let pool = WorkPool(name: "test-pool", limit: 1, queueLimit: 2, idleSeconds: 0.1)
        let gate = ConditionLock()
        let open = Mutex(false)
        #expect(pool.submit { gate.withLock { while !open.withLock({ $0 }) { gate.wait() } } })
        usleep(50_000)   // the first job runs and blocks: the queue is empty
        #expect(pool.submit {})
        #expect(pool.submit {})
        #expect(!pool.submit {})   // two waiting: full
        gate.withLock { open.withLock { $0 = true }; gate.broadcast() }
        var waited = 0
        while pool.load.threads > 0 && waited < 100 { usleep(20_000); waited += 1 }
        #expect(pool.load.threads == 0)
        #expect(pool.load.queued == 0)
    }

    /// Threads that go idle together end together, idleSeconds later: one
    /// ending must not make the others wait another idleSeconds each.
    @Test(.timeLimit(.minutes(1)))
    func idleThreadsEndTogetherAfterABurst() {
        let idle = 0.5
        let pool = WorkPool(name: "test-pool", limit: 6, idleSeconds: idle)
        let gate = ConditionLock()
        let started = Mutex(0)
        let open = Mutex(false)
        for _ in 0..<6 {
            #expect(pool.submit {
                started.withLock { $0 += 1 }
                gate.withLock { while !open.withLock({ $0 }) { gate.wait() } }
            })
        }
        while started.withLock({ $0 }) < 6 { usleep(5_000) }
        #expect(pool.load.threads == 6)
        gate.withLock { open.withLock { $0 = true }; gate.broadcast() }
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let t0 = Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
        var t = t0
        while pool.load.threads > 0 && t - t0 < 10 {
            usleep(10_000)
            clock_gettime(CLOCK_MONOTONIC, &ts)
            t = Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
        }
        #expect(pool.load.threads == 0)
        // All six within a few idle periods (one after another, as before,
        // took six: 3 s), with room for a loaded machine.
        #expect(t - t0 < idle * 4, "threads ended \(t - t0) s after the burst")
    }

    /// A job that ran keeps nothing alive, even while the queue never
    /// empties: it kept every finished job (and what each captured) until
    /// the queue drained, so a pool kept backlogged grew without bound.
    @Test(.timeLimit(.minutes(1)))
    func finishedJobsAreReleasedWhileThePoolStaysBacklogged() {
        final class Live: Sendable { let n = Mutex(0) }
        final class Token: Sendable {
            let live: Live
            init(_ live: Live) { self.live = live; live.n.withLock { $0 += 1 } }
            deinit { live.n.withLock { $0 -= 1 } }
        }
        let pool = WorkPool(name: "test-pool", limit: 2, idleSeconds: 1)
        let live = Live(), done = Mutex(0)
        // 64 submitters, each resubmitting as its job runs: the queue
        // always holds about 62 jobs, and is never empty.
        @Sendable func submit() {
            let token = Token(live)
            _ = pool.submit {
                withExtendedLifetime(token) {}
                done.withLock { $0 += 1 }
                if done.withLock({ $0 }) < 20_000 { submit() }
            }
        }
        for _ in 0..<64 { submit() }
        var peak = 0
        while done.withLock({ $0 }) < 20_000 {
            peak = max(peak, live.n.withLock { $0 })
            usleep(1_000)
        }
        pool.stop(waiting: 10)
        // At most the waiting jobs and the two running ones (and the slack
        // of a submit racing the count).
        #expect(peak < 200, "\(peak) jobs' captures alive at once")
        #expect(live.n.withLock { $0 } == 0)
    }

    /// Lanes are taken in turn: another user's job waits behind one job of
    /// a user who queued a hundred, not behind all of them (it waited for
    /// all, first come first served).
    @Test(.timeLimit(.minutes(1)))
    func eachKeysLaneIsTakenInTurn() {
        let pool = WorkPool(name: "test-pool", limit: 1, idleSeconds: 1)
        let gate = ConditionLock()
        let open = Mutex(false)
        let order = Mutex<[UInt32]>([])
        #expect(pool.submit(key: 1) {
            gate.withLock { while !open.withLock({ $0 }) { gate.wait() } }
            order.withLock { $0.append(1) }
        })
        usleep(50_000)   // the first job runs and blocks
        for _ in 0..<99 { #expect(pool.submit(key: 1) { order.withLock { $0.append(1) } }) }
        #expect(pool.submit(key: 2) { order.withLock { $0.append(2) } })
        gate.withLock { open.withLock { $0 = true }; gate.broadcast() }
        pool.stop(waiting: 10)
        let ran = order.withLock { $0 }
        #expect(ran.count == 101)
        #expect((ran.firstIndex(of: 2) ?? 999) <= 2, "key 2's job ran \((ran.firstIndex(of: 2) ?? 999) + 1)th")
    }

    /// One key may hold at most keyQueueLimit of the waiting places, so
    /// another key can still queue.
    @Test func oneKeyCannotTakeEveryWaitingPlace() {
        let pool = WorkPool(name: "test-pool", limit: 1, queueLimit: 20, keyQueueLimit: 10, idleSeconds: 0.2)
        let gate = ConditionLock()
        let open = Mutex(false)
        #expect(pool.submit(key: 1) { gate.withLock { while !open.withLock({ $0 }) { gate.wait() } } })
        usleep(50_000)
        for _ in 0..<10 { #expect(pool.submit(key: 1) {}) }
        #expect(!pool.submit(key: 1) {})
        for _ in 0..<10 { #expect(pool.submit(key: 2) {}) }
        #expect(!pool.submit(key: 3) {})   // the whole queue is full
        gate.withLock { open.withLock { $0 = true }; gate.broadcast() }
        pool.stop(waiting: 10)
        #expect(pool.load.queued == 0)
    }
}
