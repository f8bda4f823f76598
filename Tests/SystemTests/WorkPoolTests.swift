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
}
