// ThreadSanitizer builds only: System's TSanMutex (see there for why)
// shadows Synchronization's Mutex in this test module too, so TSan sees
// the locking of the tests' own fakes (a recording transport, a scripted
// KMS) and does not report the data they guard as raced.
#if KMSFS_TSAN_MUTEX
import System
typealias Mutex<Value> = TSanMutex<Value>
#endif
