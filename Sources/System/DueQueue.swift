/// Runs `action(key)` on one thread of its own when each key falls due,
/// once per key however often it is asked for meanwhile: a key already
/// waiting keeps the earlier of its two times. Two lanes, each in order of
/// asking and so of falling due: `now` and `later` (`delay` seconds on).
/// A key asked for `now` while it waits in `later` moves up; nothing waits
/// behind a delay that is not its own (one thread that slept through each
/// delayed job kept an immediate one waiting up to the delay).
///
/// The thread starts when there is work and ends after `idleSeconds`
/// without any. `stop` ends it; keys still waiting are never run.
public final class DueQueue<Key: Hashable & Sendable>: @unchecked Sendable {
    public let delay: Double
    private let name: String
    private let idleSeconds: Double
    private let action: @Sendable (Key) -> Void
    private let lock = ConditionLock()
    /// When each waiting key falls due; a lane's entry whose time is not
    /// its key's (moved up, or already run) is skipped.
    private var due: [Key: Double] = [:]
    private var lanes: [[(key: Key, at: Double)]] = [[], []]
    private var heads = [0, 0]
    private var thread = false
    private var stopping = false

    public init(name: String, delay: Double, idleSeconds: Double = 2, action: @escaping @Sendable (Key) -> Void) {
        self.name = name
        self.delay = max(0, delay)
        self.idleSeconds = idleSeconds
        self.action = action
    }

    /// Queues `key` to run at once (`later: false`) or `delay` seconds from
    /// now. False when stopping or no thread could be made (nothing queued).
    @discardableResult
    public func schedule(_ key: Key, later: Bool) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard !stopping else { return false }
        let at = SystemClock.monotonic() + (later ? delay : 0)
        if let waiting = due[key], waiting <= at { return true }
        let lane = later ? 1 : 0
        due[key] = at
        lanes[lane].append((key, at))
        compact(lane)
        if thread {
            lock.signal()
            return true
        }
        thread = true
        if startThread(name: name, { [self] in work() }) { return true }
        thread = false
        due[key] = nil
        return false
    }

    /// Whether `key` waits to run (asked for and not yet run).
    public func isWaiting(_ key: Key) -> Bool { lock.withLock { due[key] != nil } }

    /// Keys waiting (for tests and status).
    public var waiting: Int { lock.withLock { due.count } }
    /// Lane entries held, stale ones included (for tests).
    var entries: Int { lock.withLock { lanes[0].count - heads[0] + lanes[1].count - heads[1] } }

    /// Refuses new keys, drops those waiting, and waits at most `seconds`
    /// for a running action to end.
    public func stop(waiting seconds: Double) {
        lock.lock()
        stopping = true
        due.removeAll()
        lanes = [[], []]
        heads = [0, 0]
        lock.broadcast()
        let deadline = SystemClock.monotonic() + seconds
        while thread {
            let left = deadline - SystemClock.monotonic()
            if left <= 0 { break }
            lock.wait(seconds: left)
        }
        lock.unlock()
    }

    /// Lock held: the earliest valid head of the two lanes, stale entries
    /// skipped.
    private func next() -> (lane: Int, key: Key, at: Double)? {
        var best: (Int, Key, Double)? = nil
        for lane in 0..<2 {
            while heads[lane] < lanes[lane].count {
                let e = lanes[lane][heads[lane]]
                if due[e.key] == e.at { break }
                heads[lane] += 1
            }
            if heads[lane] == lanes[lane].count {
                lanes[lane].removeAll(keepingCapacity: lanes[lane].capacity <= 4096)
                heads[lane] = 0
                continue
            }
            let e = lanes[lane][heads[lane]]
            if best == nil || e.at < best!.2 { best = (lane, e.key, e.at) }
        }
        return best
    }

    /// Lock held: entries outnumbering the keys waiting (keys moved up
    /// leave theirs behind) are swept, so a lane stays within twice the
    /// keys plus a constant, amortized.
    private func compact(_ lane: Int) {
        let live = lanes[lane].count - heads[lane]
        guard live > 2 * due.count + 1024 else { return }
        lanes[lane] = lanes[lane][heads[lane]...].filter { due[$0.key] == $0.at }
        heads[lane] = 0
    }

    private func work() {
        lock.lock()
        var idleSince = SystemClock.monotonic()
        while !stopping {
            let now = SystemClock.monotonic()
            guard let n = next() else {
                let left = idleSince + idleSeconds - now
                if left <= 0 { break }
                lock.wait(seconds: left)
                continue
            }
            if n.at > now {
                lock.wait(seconds: n.at - now)
                continue
            }
            heads[n.lane] += 1
            due[n.key] = nil
            lock.unlock()
            action(n.key)
            lock.lock()
            idleSince = SystemClock.monotonic()
        }
        thread = false
        lock.broadcast()
        lock.unlock()
    }
}
