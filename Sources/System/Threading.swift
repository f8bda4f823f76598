import CLinux
#if canImport(Glibc)
import Glibc
#endif

// Threads and waits for the daemon, shared by every module that needs them
// (the secret cache, the watcher, credential refresh, the FUSE loop).

/// A mutex with a condition variable, for the waits `Mutex` cannot express
/// (single-flight decryption, the expiry sweeper, credential refresh).
///
/// The `pthread_mutex_t` and `pthread_cond_t` live in memory allocated once
/// and never moved (as swift-nio's `NIOLock` does with `ManagedBuffer`):
/// `&storedProperty` on a class hands C a pointer Swift only promises for
/// the duration of the call, which is not enough for a lock other threads
/// block on.
public final class ConditionLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        cond = .allocate(capacity: 1)
        cond.initialize(to: pthread_cond_t())
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deinitialize(count: 1)
        cond.deallocate()
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    public func lock() { pthread_mutex_lock(mutex) }
    public func unlock() { pthread_mutex_unlock(mutex) }

    @inline(__always)
    public func withLock<R>(_ body: () throws -> R) rethrows -> R {
        lock()
        defer { unlock() }
        return try body()
    }

    /// Waits (lock held) until signalled.
    public func wait() { pthread_cond_wait(cond, mutex) }

    /// Waits (lock held) at most `seconds`; false on timeout. Any `seconds`
    /// is safe: negative or NaN waits not at all, and a huge one (`1e30`,
    /// infinity) is clamped to a deadline about 68 years out rather than
    /// trapping in `Int(Double)`.
    @discardableResult
    public func wait(seconds: Double) -> Bool {
        var deadline = ConditionLock.deadline(now: SystemClock.monotonicTimespec(), after: seconds)
        return pthread_cond_timedwait(cond, mutex, &deadline) == 0
    }

    /// The longest wait (seconds): `Int32.max`, so that `now + wait` fits
    /// `time_t` on every platform for the next few decades.
    public static let longestWait = Double(Int32.max)

    /// `now + seconds` as a `timespec`, saturating: never traps.
    public static func deadline(now: timespec, after seconds: Double) -> timespec {
        let s = seconds.isNaN ? 0 : min(max(0, seconds), longestWait)
        let whole = s.rounded(.towardZero)           // in 0...Int32.max: exact in Int
        var sec = Int(whole)
        var nsec = Int(((s - whole) * 1e9).rounded(.towardZero)) + Int(now.tv_nsec)
        if nsec >= 1_000_000_000 { nsec -= 1_000_000_000; sec += 1 }
        let (total, overflow) = Int(now.tv_sec).addingReportingOverflow(sec)
        return timespec(tv_sec: overflow ? Int.max : total, tv_nsec: nsec)
    }

    public func broadcast() { pthread_cond_broadcast(cond) }
    public func signal() { pthread_cond_signal(cond) }
}

/// Starts a detached pthread running `body` (no Foundation, no Dispatch:
/// the daemon controls its threads and their stack sizes). False when no
/// thread could be made (the body does not run).
@discardableResult
public func startThread(name: String, stackSize: Int = 256 * 1024, _ body: @escaping @Sendable () -> Void) -> Bool {
    let arg = Unmanaged.passRetained(ThreadBody(body, name: name)).toOpaque()
    var attr = pthread_attr_t()
    pthread_attr_init(&attr)
    pthread_attr_setstacksize(&attr, stackSize)
    pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
    var tid = pthread_t()
    let rc = pthread_create(&tid, &attr, { arg in
        Unmanaged<ThreadBody>.fromOpaque(arg!).takeRetainedValue().run()
        return nil
    }, arg)
    pthread_attr_destroy(&attr)
    if rc != 0 { Unmanaged<ThreadBody>.fromOpaque(arg).release() }
    return rc == 0
}

final class ThreadBody {
    let body: @Sendable () -> Void
    let name: String
    init(_ body: @escaping @Sendable () -> Void, name: String) { self.body = body; self.name = name }
    func run() {
        let fd = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
        if fd >= 0 {
            _ = String(name.prefix(15)).withCString { write(fd, $0, strlen($0)) }
            close(fd)
        }
        body()
        releaseStackBelowHere()
    }
}

/// `MADV_DONTNEED_LOCKED` (Linux 5.18): MADV_DONTNEED for locked pages,
/// which keep their lock (the pages that fault in later are locked again).
/// Not in every libc's headers yet.
private let madviseDontNeedLocked: Int32 = 24

/// Gives back the pages of this thread's stack below the running frame, as
/// the thread ends. glibc keeps the stacks of ended threads for new ones,
/// and tries to discard their used pages with MADV_DONTNEED, which the
/// kernel refuses for locked memory (the daemon locks all of it): so every
/// page any thread ever touched stayed resident in the cached stacks, and
/// each burst of threads left a little more behind. MADV_DONTNEED_LOCKED
/// drops them (their contents with them) and the stack stays locked. On a
/// kernel without it the call fails and nothing changes.
@inline(never)
func releaseStackBelowHere() {
    let page = UInt(sysconf(Int32(_SC_PAGESIZE)))
    var marker: UInt8 = 0
    let here = withUnsafeMutablePointer(to: &marker) { UInt(bitPattern: $0) }
    var stackLow: UInt = 0, stackSize = 0
    guard kmsfs_thread_stack(&stackLow, &stackSize) == 0 else { return }
    let (stackHigh, overflow) = stackLow.addingReportingOverflow(UInt(stackSize))
    guard !overflow, let mapping = mappingStart(containing: here),
          let range = stackReleaseRange(here: here, stack: stackLow..<stackHigh, mappingStart: mapping, page: page)
    else { return }
    _ = madvise(UnsafeMutableRawPointer(bitPattern: range.lowerBound), Int(range.count), madviseDontNeedLocked)
}

/// The whole pages `releaseStackBelowHere` may drop for a frame at `here`:
/// from the thread's own stack (as pthread reports it) up to a page of
/// margin below `here`, for the call itself. The mapping holding `here`
/// alone is not a bound: glibc 2.42 on Linux 6.13 guards stacks with
/// MADV_GUARD_INSTALL rather than a PROT_NONE mapping of their own (unless
/// memory is locked, where that fails), so the kernel merges neighbouring
/// stacks into one mapping, and dropping from its start zeroed other live
/// threads' stacks. Nor is pthread's range alone: older glibc counted the
/// guard page in it. So both, rounded inward to pages; nil when nothing is
/// left.
func stackReleaseRange(here: UInt, stack: Range<UInt>, mappingStart: UInt, page: UInt) -> Range<UInt>? {
    guard page > 0, stack.contains(here), here >= page else { return nil }
    let bottom = max(stack.lowerBound, mappingStart)
    let (up, overflow) = bottom.addingReportingOverflow(page - 1)
    guard !overflow else { return nil }
    let low = up / page * page
    let high = min(here - page, stack.upperBound) / page * page
    guard high > low else { return nil }
    return low..<high
}

/// The start of the mapping of this process that contains `address`, from
/// /proc/self/maps (`start-end perms ...`, one line each), read a page at
/// a time into a buffer on the stack.
func mappingStart(containing address: UInt) -> UInt? {
    let fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 4096) { buf -> UInt? in
        var start: UInt = 0, end: UInt = 0
        var field = 0          // 0: start, 1: end, 2: the rest of the line
        while true {
            let n = read(fd, buf.baseAddress, buf.count)
            if n < 0 && Errno.current == EINTR { continue }
            guard n > 0 else { return nil }
            for i in 0..<n {
                let c = buf[i]
                switch (field, c) {
                case (_, UInt8(ascii: "\n")):
                    field = 0; start = 0; end = 0
                case (0, UInt8(ascii: "-")):
                    field = 1
                case (1, UInt8(ascii: " ")):
                    field = 2
                    if start <= address && address < end { return start }
                case (0, _), (1, _):
                    let digit: UInt
                    switch c {
                    case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt(c - UInt8(ascii: "0"))
                    case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt(c - UInt8(ascii: "a") + 10)
                    default: return nil
                    }
                    if field == 0 { start = start &<< 4 | digit } else { end = end &<< 4 | digit }
                default:
                    break
                }
            }
        }
    }
}