import Testing
@testable import System
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// An ending thread drops the pages of its own stack below its frame, and
/// no one else's. glibc 2.42 on Linux 6.13 guards thread stacks inside
/// their mapping (MADV_GUARD_INSTALL), so the kernel merges neighbouring
/// stacks into one mapping: bounded by the mapping alone, the release
/// zeroed the live stacks below it.
@Suite struct ThreadStackTests {
    static let page = UInt(sysconf(Int32(_SC_PAGESIZE)))

    @Test func aMergedMappingIsBoundedByTheThreadsOwnStack() {
        let p = Self.page
        let stack = (100 * p)..<(164 * p)
        // Neighbours' stacks in the same mapping, below this one.
        #expect(stackReleaseRange(here: 160 * p + 40, stack: stack, mappingStart: 4 * p, page: p)
                == (100 * p)..<(159 * p))
    }

    @Test func aGuardInsidePthreadsRangeIsBoundedByTheMapping() {
        let p = Self.page
        // Older glibc counted the guard page (a mapping of its own) in the stack.
        #expect(stackReleaseRange(here: 160 * p + 40, stack: (100 * p)..<(164 * p), mappingStart: 101 * p, page: p)
                == (101 * p)..<(159 * p))
    }

    @Test func boundsAreRoundedInwardToWholePages() {
        let p = Self.page
        #expect(stackReleaseRange(here: 160 * p + 40, stack: (100 * p + 8)..<(164 * p), mappingStart: 0, page: p)
                == (101 * p)..<(159 * p))
        #expect(stackReleaseRange(here: 160 * p, stack: (100 * p)..<(164 * p), mappingStart: 100 * p + 1, page: p)
                == (101 * p)..<(159 * p))
    }

    @Test func nothingWhenThereIsNoWholePageOrTheFrameIsElsewhere() {
        let p = Self.page
        let stack = (100 * p)..<(164 * p)
        #expect(stackReleaseRange(here: 101 * p + 40, stack: stack, mappingStart: 0, page: p) == nil)
        #expect(stackReleaseRange(here: 102 * p, stack: stack, mappingStart: 0, page: p) == (100 * p)..<(101 * p))
        #expect(stackReleaseRange(here: 99 * p, stack: stack, mappingStart: 0, page: p) == nil)
        #expect(stackReleaseRange(here: 164 * p, stack: stack, mappingStart: 0, page: p) == nil)
        #expect(stackReleaseRange(here: 160 * p, stack: stack, mappingStart: 170 * p, page: p) == nil)
        #expect(stackReleaseRange(here: 40, stack: 0..<(4 * p), mappingStart: 0, page: p) == nil)
        #expect(stackReleaseRange(here: .max - 1, stack: (.max - 4 * p)..<UInt.max, mappingStart: .max - 10, page: p) == nil)
    }

    /// Three stacks in one anonymous mapping, as the kernel merges glibc
    /// 2.42's: the thread on the middle one releases its own pages below
    /// its frame and leaves its neighbours' bytes alone.
    @Test func releaseKeepsToItsOwnStackInAMappingSharedWithOthers() throws {
        let slice = 1 << 20
        let raw = mmap(nil, 3 * slice, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        let base = try #require(raw == MAP_FAILED ? nil : raw)
        defer { munmap(base, 3 * slice) }
        let below = base, own = base + slice, above = base + 2 * slice
        memset(below, 0xA5, slice)
        memset(above, 0xA5, slice)
        memset(own, 0x5A, slice / 2)
        #expect(mappingStart(containing: UInt(bitPattern: own)).map { $0 <= UInt(bitPattern: below) } == true)
        // Whether the kernel has MADV_DONTNEED_LOCKED (Linux 5.18) at all.
        let released = madvise(own + slice / 2, Int(Self.page), 24) == 0

        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        pthread_attr_setstack(&attr, own, slice)
        var tid = pthread_t()
        let rc = pthread_create(&tid, &attr, { _ in
            releaseStackBelowHere()
            return nil
        }, nil)
        pthread_attr_destroy(&attr)
        try #require(rc == 0)
        pthread_join(tid, nil)

        func count(_ p: UnsafeMutableRawPointer, _ n: Int, _ byte: UInt8) -> Int {
            (0..<n).reduce(0) { $0 + (p.load(fromByteOffset: $1, as: UInt8.self) == byte ? 1 : 0) }
        }
        #expect(count(below, slice, 0xA5) == slice)
        #expect(count(above, slice, 0xA5) == slice)
        if released { #expect(count(own, slice / 4, 0) == slice / 4) }
    }

    /// Live threads' stack-resident bytes survive other threads ending
    /// (each started by startThread, which releases as the thread ends).
    /// The ending thread starts first: glibc maps stacks downward, so
    /// later ones, if new, are the ones below it.
    @Test func anEndingThreadLeavesItsSiblingsStacksAlone() {
        final class Shared: @unchecked Sendable {
            let lock = ConditionLock()
            var ready = 0, checked = 0, intact = 0
            var ended = false
            let tid = Atomic<Int32>(0)
        }
        let s = Shared()
        #expect(startThread(name: "stack-ender") {
            s.tid.store(callingThreadID(), ordering: .sequentiallyConsistent)
            s.lock.withLock { while s.ready < 3 { s.lock.wait(seconds: 10) } }
        })
        for i in 0..<3 {
            #expect(startThread(name: "stack-sibling-\(i)") {
                withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 512) { sentinel in
                    for j in sentinel.indices { sentinel[j] = UInt8(truncatingIfNeeded: j &* 31 &+ i) }
                    s.lock.withLock {
                        s.ready += 1
                        s.lock.broadcast()
                        while !s.ended { s.lock.wait(seconds: 10) }
                    }
                    let ok = sentinel.indices.allSatisfy { sentinel[$0] == UInt8(truncatingIfNeeded: $0 &* 31 &+ i) }
                    s.lock.withLock { s.checked += 1; if ok { s.intact += 1 }; s.lock.broadcast() }
                }
            })
        }
        var t: Int32 = 0
        for _ in 0..<5000 where t == 0 { usleep(1000); t = s.tid.load(ordering: .sequentiallyConsistent) }
        #expect(t > 0)
        for _ in 0..<5000 where access("/proc/self/task/\(t)", F_OK) == 0 { usleep(1000) }
        s.lock.withLock {
            s.ended = true
            s.lock.broadcast()
            while s.checked < 3 { if !s.lock.wait(seconds: 10) { break } }
        }
        #expect(s.intact == 3)
    }
}
