#if canImport(Glibc)
import Glibc
#endif

// Threads and waits for the daemon, shared by every module that needs them
// (the secret cache, the watcher, credential refresh, the FUSE loop).

/// A mutex with a condition variable, for the waits `Mutex` cannot express
/// (single-flight decryption, the expiry sweeper, credential refresh).
public final class ConditionLock: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()

    public init() {
        pthread_mutex_init(&mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(&cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(&cond)
        pthread_mutex_destroy(&mutex)
    }

    public func lock() { pthread_mutex_lock(&mutex) }
    public func unlock() { pthread_mutex_unlock(&mutex) }

    @inline(__always)
    public func withLock<R>(_ body: () throws -> R) rethrows -> R {
        lock()
        defer { unlock() }
        return try body()
    }

    /// Waits (lock held) until signalled.
    public func wait() { pthread_cond_wait(&cond, &mutex) }

    /// Waits (lock held) at most `seconds`; false on timeout. Any value
    /// is safe: NaN and negatives wait not at all, and a wait past about
    /// 30 years is cut to that (`Int(Double)` traps out of range).
    @discardableResult
    public func wait(seconds: Double) -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let wait = seconds.isNaN ? 0 : min(max(0, seconds), 1e9)
        let whole = Int(wait)
        var sec = now.tv_sec + whole
        var nsec = now.tv_nsec + Int((wait - Double(whole)) * 1e9)
        if nsec >= 1_000_000_000 { sec += 1; nsec -= 1_000_000_000 }
        var deadline = timespec(tv_sec: sec, tv_nsec: nsec)
        return pthread_cond_timedwait(&cond, &mutex, &deadline) == 0
    }

    public func broadcast() { pthread_cond_broadcast(&cond) }
    public func signal() { pthread_cond_signal(&cond) }
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
    }
}
