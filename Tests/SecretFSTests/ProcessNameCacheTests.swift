import Testing
import SecretFS
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The openers' names audit records carry, read from /proc once a second
/// per process rather than on every open.
@Suite struct ProcessNameCacheTests {
    @Test func aNameIsReadOncePerProcessWithinItsLifetime() {
        let reads = Mutex(0)
        let now = Mutex(100.0)
        let cache = ProcessNameCache(lifetime: 1, now: { now.withLock { $0 } },
                                     read: { pid in reads.withLock { $0 += 1 }; return "p\(pid)" })
        for _ in 0..<1000 { #expect(cache.name(pid: 42, uid: 1, gid: 1) == "p42") }
        #expect(reads.withLock { $0 } == 1)
        // Another process, or the same pid under other ids (a recycled pid),
        // is read again.
        #expect(cache.name(pid: 43, uid: 1, gid: 1) == "p43")
        #expect(cache.name(pid: 42, uid: 2, gid: 1) == "p42")
        #expect(reads.withLock { $0 } == 3)
        // After the lifetime, read again.
        now.withLock { $0 += 1.0 }
        _ = cache.name(pid: 42, uid: 2, gid: 1)
        #expect(reads.withLock { $0 } == 4)
    }

    @Test func aGoneProcessIsNotRemembered() {
        let reads = Mutex(0)
        let cache = ProcessNameCache(lifetime: 60, read: { _ in reads.withLock { $0 += 1 }; return "?" })
        #expect(cache.name(pid: 7, uid: 0, gid: 0) == "?")
        #expect(cache.name(pid: 7, uid: 0, gid: 0) == "?")
        #expect(reads.withLock { $0 } == 2)
    }

    @Test func theRealNameOfThisProcess() {
        let cache = ProcessNameCache()
        let name = cache.name(pid: getpid(), uid: getuid(), gid: getgid())
        #expect(name == processName(pid: getpid()) && name != "?")
    }
}
