/// Runs submitted jobs on at most `limit` threads of its own, started when
/// work arrives and ended after `idleSeconds` without any, so the FUSE
/// workers hand off what may wait (an open that waits on KMS) and only
/// ever run short work. Jobs beyond `limit` wait in a queue of at most
/// `queueLimit`; `submit` refuses past that (the caller answers at once).
/// When no thread can be made, a job runs on the submitter's thread, or,
/// with `runsOnSubmitter: false` (jobs that would deadlock there), waits
/// in the queue for the next submit to try again.
public final class WorkPool: @unchecked Sendable {
    public let limit: Int
    public let queueLimit: Int
    public let runsOnSubmitter: Bool
    private let name: String
    private let idleSeconds: Double
    private let lock = ConditionLock()
    /// Jobs from `head` on wait; a slot before it is cleared when its job
    /// is taken, so a job that ran keeps nothing it captured alive.
    private var queue: [(@Sendable () -> Void)?] = []
    private var head = 0
    private var threads = 0
    private var idle = 0
    private var running = 0
    private var stopping = false

    public init(name: String, limit: Int, queueLimit: Int = 65_536, idleSeconds: Double = 10,
                runsOnSubmitter: Bool = true) {
        self.name = name
        self.runsOnSubmitter = runsOnSubmitter
        self.limit = max(1, limit)
        self.queueLimit = max(1, queueLimit)
        self.idleSeconds = idleSeconds
    }

    /// Queues `job`; false when the queue is full or the pool is stopping.
    @discardableResult
    public func submit(_ job: @escaping @Sendable () -> Void) -> Bool {
        lock.lock()
        guard !stopping, queue.count - head < queueLimit else { lock.unlock(); return false }
        queue.append(job)
        // More jobs waiting than idle threads to take them: one more thread.
        let spawn = queue.count - head > idle && threads < limit
        if spawn { threads += 1 }
        if idle > 0 { lock.signal() }
        lock.unlock()
        if spawn && !startThread(name: name, { [self] in work() }) {
            // No thread could be made: run it here rather than strand it
            // (or leave it queued for the next submit's try).
            lock.withLock { threads -= 1 }
            if runsOnSubmitter, let j = take() { j() }
        }
        return true
    }

    private func take() -> (@Sendable () -> Void)? {
        lock.withLock { dequeueLocked() }
    }

    /// The next job, under the lock. Its slot is cleared, and the queue is
    /// compacted as it drains: while the pool stays backlogged (more opens
    /// parked than threads) the queue is never empty, and it kept every
    /// job that had run (an open's handle, its secret) until it was.
    private func dequeueLocked() -> (@Sendable () -> Void)? {
        guard head < queue.count else { return nil }
        let j = queue[head]
        queue[head] = nil
        head += 1
        if head == queue.count {
            queue.removeAll(keepingCapacity: queue.capacity <= 4096)
            head = 0
        } else if head > 1024 && head * 2 > queue.count {
            queue.removeFirst(head)
            head = 0
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
            while head >= queue.count && !stopping {
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
        lock.withLock { (running, queue.count - head, threads) }
    }

    /// Refuses new jobs and waits at most `seconds` for the queue to empty
    /// and running jobs to end.
    public func stop(waiting seconds: Double) {
        lock.lock()
        stopping = true
        lock.broadcast()
        var now = SystemClock.monotonic()
        let deadline = now + seconds
        while (running > 0 || head < queue.count) && now < deadline {
            lock.wait(seconds: deadline - now)
            now = SystemClock.monotonic()
        }
        lock.unlock()
    }
}
