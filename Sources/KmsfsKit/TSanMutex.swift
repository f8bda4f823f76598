// ThreadSanitizer builds only: System's TSanMutex (see there for why)
// shadows Synchronization's Mutex in this module.
#if KMSFS_TSAN_MUTEX
import System
typealias Mutex<Value> = TSanMutex<Value>
#endif
