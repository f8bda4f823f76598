/// Runs submitted jobs on at most `limit` threads of its own, started when
/// work arrives and ended after `idleSeconds` without any, so the FUSE
/// workers hand off what may wait (an open that waits on KMS) and only
/// ever run short work. Jobs beyond `limit` wait in a queue of at most
/// `queueLimit`; `submit` refuses past that (the caller answers at once).
/// When no thread can be made, a job runs on the submitter's thread, or,
/// with `runsOnSubmitter: false` (jobs that would deadlock there), waits
/// in the queue for the next submit to try again.
///
/// Waiting jobs are kept in one lane per `key` (the caller's uid), and a
/// free thread takes from the lanes in turn: a user who parks thousands of
/// opens delays another user's open by one job per lane, not by all of
/// theirs, and may hold at most `keyQueueLimit` of the waiting places.
public final class WorkPool: @unchecked Sendable {
    public let limit: Int
    private let maxWaiting: Int
    private let maxWaitingPerKey: Int
    public let runsOnSubmitter: Bool
    private let name: String
    private let idleSeconds: Double
    private let lock = ConditionLock()
    /// One key's waiting jobs, from `head` on; a slot before it is cleared
    /// when its job is taken, so a job that ran keeps nothing it captured
    /// alive.
    private struct Lane {
        var jobs: [(@Sendable () -> Void)?] = []
        var head = 0
        var count: Int { jobs.count - head }
    }
    private var lanes: [UInt32: Lane] = [:]
    /// The keys with waiting jobs, in turn order; `turn` is the next.
    private var ring: [UInt32] = []
    private var turn = 0
    private var waiting = 0
    private var threads = 0
    private var idle = 0
    private var running = 0
    private var stopping = false

    public init(name: String, limit: Int, queueLimit: Int = 65_536, keyQueueLimit: Int? = nil, idleSeconds: Double = 10,
                runsOnSubmitter: Bool = true) {
        self.name = name
        self.runsOnSubmitter = runsOnSubmitter
        self.limit = max(1, limit)
        self.maxWaiting = max(1, queueLimit)
        self.maxWaitingPerKey = max(1, min(keyQueueLimit ?? queueLimit, queueLimit))
        self.idleSeconds = idleSeconds
    }

    /// Queues `job` in `key`'s lane; false when the queue or the lane is
    /// full, or the pool is stopping. `runsHere` overrides
    /// `runsOnSubmitter` for this job (false from a thread that may itself
    /// be running a job: running the next one there would nest jobs on its
    /// stack).
    @discardableResult
    public func submit(key: UInt32 = 0, runsHere: Bool? = nil, _ job: @escaping @Sendable () -> Void) -> Bool {
        lock.lock()
        guard !stopping, waiting < maxWaiting, (lanes[key]?.count ?? 0) < maxWaitingPerKey else { lock.unlock(); return false }
        if lanes[key] == nil {
            lanes[key] = Lane()
            ring.append(key)
        }
        lanes[key]!.jobs.append(job)
        waiting += 1
        // More jobs waiting than idle threads to take them: one more thread.
        let spawn = waiting > idle && threads < limit
        if spawn { threads += 1 }
        if idle > 0 { lock.signal() }
        lock.unlock()
        if spawn && !startThread(name: name, { [self] in work() }) {
            // No thread could be made: run it here rather than strand it
            // (or leave it queued for the next submit's try).
            lock.withLock { threads -= 1 }
            if runsHere ?? runsOnSubmitter, let j = take() { j() }
        }
        return true
    }

    private func take() -> (@Sendable () -> Void)? {
        lock.withLock { dequeueLocked() }
    }

    /// The next job, under the lock: the head of the lane whose turn it
    /// is. Its slot is cleared, and the lane compacted as it drains (a
    /// backlogged lane never empties, and kept every job that had run);
    /// an emptied lane leaves the ring.
    private func dequeueLocked() -> (@Sendable () -> Void)? {
        guard !ring.isEmpty else { return nil }
        if turn >= ring.count { turn = 0 }
        let key = ring[turn]
        waiting -= 1
        let j = Self.pop(&lanes[key]!)
        if lanes[key]!.count == 0 {
            lanes[key] = nil
            ring.remove(at: turn)   // the next key moves into this turn
        } else {
            turn += 1
        }
        return j
    }

    private static func pop(_ lane: inout Lane) -> (@Sendable () -> Void)? {
        let j = lane.jobs[lane.head]
        lane.jobs[lane.head] = nil
        lane.head += 1
        if lane.head > 1024 && lane.head * 2 > lane.jobs.count {
            lane.jobs.removeFirst(lane.head)
            lane.head = 0
        }
        return j
    }

    private func work() {
        lock.lock()
        while true {
            if let j = dequeueLocked() {
                running += 1
                lock.unlock()
                j()
                lock.lock()
                running -= 1
                lock.broadcast()
                continue
            }
            if stopping { break }
            // Idle for idleSeconds counted from here: a broadcast (a job
            // done, another thread ending) must not restart the count. It
            // did, and as each idle thread ended its broadcast kept every
            // other one for another idleSeconds: after a burst the pool
            // shed one thread per idleSeconds.
            idle += 1
            let deadline = SystemClock.monotonic() + idleSeconds
            var expired = false
            while waiting == 0 && !stopping {
                let left = deadline - SystemClock.monotonic()
                if left <= 0 { expired = true; break }
                lock.wait(seconds: left)
            }
            idle -= 1
            if expired { break }   // idle too long: give the stack back
        }
        threads -= 1
        lock.broadcast()
        lock.unlock()
    }

    /// True once `stop` was called: jobs should answer at once.
    public var isStopping: Bool { lock.withLock { stopping } }

    /// (jobs running, jobs waiting, threads).
    public var load: (running: Int, queued: Int, threads: Int) {
        lock.withLock { (running, waiting, threads) }
    }

    /// Refuses new jobs and waits at most `seconds` for the queue to empty
    /// and running jobs to end.
    public func stop(waiting seconds: Double) {
        lock.lock()
        stopping = true
        lock.broadcast()
        var now = SystemClock.monotonic()
        let deadline = now + seconds
        while (running > 0 || waiting > 0) && now < deadline {
            lock.wait(seconds: deadline - now)
            now = SystemClock.monotonic()
        }
        lock.unlock()
    }
}
