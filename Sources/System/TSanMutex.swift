// ThreadSanitizer builds only (make sanitize passes -DKMSFS_TSAN_MUTEX):
// on Linux, TSan does not see the synchronization inside Swift's
// `Synchronization.Mutex` (a 15-line program with four threads appending
// under one Mutex is reported as racing; docs/fuzzing.md), so every access
// it protects would be reported. `TSanMutex` locks with a pthread mutex
// TSan understands; each module that uses `Mutex` shadows the imported one
// with it (its own TSanMutex.swift: `typealias Mutex = TSanMutex`).
// Release and debug builds never compile it.
#if KMSFS_TSAN_MUTEX
#if canImport(Glibc)
import Glibc
#endif

public final class TSanMutex<Value>: @unchecked Sendable {
    private let lock: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    public init(_ initialValue: Value) {
        value = initialValue
        lock = .allocate(capacity: 1)
        lock.initialize(to: pthread_mutex_t())
        pthread_mutex_init(lock, nil)
    }

    deinit {
        pthread_mutex_destroy(lock)
        lock.deinitialize(count: 1)
        lock.deallocate()
    }

    public func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return try body(&value)
    }
}
#endif
