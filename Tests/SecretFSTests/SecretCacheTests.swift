import Testing
import Foundation
import SecretFS
import SecureMemory
import Synchronization

final class FakeClock: @unchecked Sendable {
    let t = Mutex(100.0)
    func advance(_ d: Double) { t.withLock { $0 += d } }
    var now: @Sendable () -> Double { { [self] in t.withLock { $0 } } }
}

func fingerprint(_ n: Int64) -> Fingerprint {
    Fingerprint(device: 1, inode: 2, size: n, mtimeNanos: n, ctimeNanos: n)
}

func secret(_ text: String, _ fp: Fingerprint, _ clock: FakeClock, path: String = "p") -> Result<CachedSecret, DecryptFailure> {
    let b = try! SecureBuffer(capacity: text.utf8.count)
    try! b.append(utf8: text)
    return .success(CachedSecret.make(path: path, plaintext: b, fingerprint: fp, at: clock.now()))
}

func content(_ r: Result<CachedSecret, DecryptFailure>) -> String? {
    guard case .success(let s) = r else { return nil }
    return s.plaintext.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
}

@Suite struct SecretCacheTests {
    @Test func ttlIsAHardBound() {
        let clock = FakeClock()
        let cache = SecretCache(configuration: .init(ttl: 10, staleWindow: 100), now: clock.now)
        var loads = 0
        _ = cache.acquire(path: "p", current: fingerprint(1)) { loads += 1; return secret("v1", fingerprint(1), clock) }
        clock.advance(8.9)
        #expect(cache.hit("p") != nil)
        clock.advance(0.2)
        #expect(cache.hit("p") == nil)          // its last second: not handed out...
        #expect(cache.expire() == 0)            // ...but cached until the ttl
        clock.advance(1)
        #expect(cache.expire() == 1)
        #expect(loads == 1)
    }

    /// An open in the last second of a TTL decrypts again: the plaintext it
    /// would get is wiped a moment later, and its reads would fail.
    @Test func anOpenInTheLastSecondOfATTLDecryptsAgain() {
        let clock = FakeClock()
        let cache = SecretCache(configuration: .init(ttl: 60), now: clock.now)
        _ = cache.acquire(path: "p", current: fingerprint(1)) { secret("v1", fingerprint(1), clock, path: "p") }
        clock.advance(59.5)
        let (r, source, _) = cache.acquire(path: "p", current: fingerprint(1)) { secret("v2", fingerprint(1), clock, path: "p") }
        #expect(content(r) == "v2" && source != .cache)
        #expect(SecretCache.handOutMargin(ttl: 1) == 0.1 && SecretCache.handOutMargin(ttl: 3600) == 1)
    }

    /// The TTL reaches plaintexts open handles hold: the cached one, one a
    /// rotation took out of the cache, and one never cached (its decryption
    /// raced an invalidation). Each is wiped at its own TTL, not before.
    @Test func ttlWipesWhatOpenHandlesHoldToo() {
        let clock = FakeClock()
        let cache = SecretCache(configuration: .init(ttl: 10), now: clock.now)
        let (cached, _, _) = cache.acquire(path: "a", current: fingerprint(1)) { secret("a1", fingerprint(1), clock, path: "a") }
        let (uncached, _, _) = cache.acquire(path: "b", current: fingerprint(1)) {
            cache.invalidate("b")
            return secret("b1", fingerprint(1), clock, path: "b")
        }
        clock.advance(5)
        let (rotated, _, _) = cache.acquire(path: "c", current: fingerprint(1)) { secret("c1", fingerprint(1), clock, path: "c") }
        _ = cache.acquire(path: "c", current: fingerprint(2)) { secret("c2", fingerprint(2), clock, path: "c") }
        let handles = [cached, uncached, rotated].map { try! $0.get() }   // as open handles hold them
        #expect(handles.map { $0.plaintext.count } == [2, 2, 2])
        clock.advance(5)
        #expect(cache.expire() == 1)                          // a1 left the cache
        #expect(handles.map { $0.plaintext.count } == [0, 0, 2])
        #expect(handles.map { $0.plaintext.isRevoked } == [true, true, false])   // read: EIO, not EOF
        #expect(content(.success(handles[2])) == "c1")       // c1 was decrypted 5 s later
        clock.advance(5)
        #expect(cache.expire() == 1)                          // c2
        #expect(handles[2].plaintext.count == 0)
        #expect(cache.count == 0)
    }

    /// The sweeper waits in real time, an hour when nothing is held: the
    /// first plaintext decrypted after that must wake it, or it outlives
    /// its TTL by up to an hour. A later one is wiped on time too.
    @Test func anIdleSweeperIsWokenByTheNextPlaintextAndWipesEachOnTime() {
        let clock: @Sendable () -> Double = {
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
        }
        let cache = SecretCache(configuration: .init(ttl: 0.3), now: clock)
        cache.startSweeper()
        defer { cache.wipeAll() }   // ends the sweeper
        usleep(100_000)             // idle: nothing held
        func decrypt(_ path: String) -> CachedSecret {
            let b = try! SecureBuffer(capacity: 2)
            try! b.append(utf8: "s1")
            let r = cache.acquire(path: path, current: fingerprint(1)) {
                .success(CachedSecret.make(path: path, plaintext: b, fingerprint: fingerprint(1), at: clock()))
            }.result
            return try! r.get()
        }
        let first = decrypt("a")
        usleep(100_000)
        let second = decrypt("b")
        let start = clock()
        while !(first.plaintext.isRevoked && second.plaintext.isRevoked) && clock() - start < 5 { usleep(10_000) }
        #expect(first.plaintext.isRevoked && second.plaintext.isRevoked)
        #expect(clock() - start < 2)
        #expect(cache.count == 0)

        // A ttl given on remount, to a sweeper idle without one: it looks
        // again at once, and wipes what is past the new ttl.
        let untimed = SecretCache(configuration: .init(), now: clock)
        untimed.startSweeper()
        defer { untimed.wipeAll() }
        let b = try! SecureBuffer(capacity: 2)
        try! b.append(utf8: "s1")
        let kept = try! untimed.acquire(path: "k", current: fingerprint(1)) {
            .success(CachedSecret.make(path: "k", plaintext: b, fingerprint: fingerprint(1), at: clock()))
        }.result.get()
        usleep(100_000)
        #expect(!kept.plaintext.isRevoked)
        untimed.reconfigure(.init(ttl: 0.2))
        let since = clock()
        while !kept.plaintext.isRevoked && clock() - since < 5 { usleep(10_000) }
        #expect(kept.plaintext.isRevoked)
        #expect(clock() - since < 1)
    }

    @Test func wipeAllReachesHeldPlaintextsAndWhatEndsAfterIt() {
        let clock = FakeClock()
        let cache = SecretCache(configuration: .init(), now: clock.now)
        let (old, _, _) = cache.acquire(path: "p", current: fingerprint(1)) { secret("v1", fingerprint(1), clock) }
        _ = cache.acquire(path: "p", current: fingerprint(2)) { secret("v2", fingerprint(2), clock) }
        let late = cache.acquire(path: "q", current: fingerprint(1)) {
            cache.wipeAll()                                   // the stop comes while KMS answers
            return secret("q1", fingerprint(1), clock, path: "q")
        }.result
        #expect((try! old.get()).plaintext.count == 0)
        #expect((try! late.get()).plaintext.count == 0)
    }

    @Test func refreshIsDueInTheWindowOnceAndKeepsServingWhileKMSIsDown() {
        let clock = FakeClock()
        let cache = SecretCache(configuration: .init(ttl: 10, staleWindow: 4), now: clock.now)
        _ = cache.acquire(path: "p", current: fingerprint(1)) { secret("v1", fingerprint(1), clock) }
        clock.advance(4.5)
        #expect(cache.hit("p")?.refreshDue == false)       // window: ttl - 1 (margin) - 4 = 5
        clock.advance(2)
        let hit = cache.hit("p")!
        #expect(hit.refreshDue)
        #expect(cache.hit("p")?.refreshDue == false)        // one refresh at a time
        cache.refresh(hit.secret) { .failure(DecryptFailure(.unavailable, "KMS down")) }
        #expect(content(.success(cache.hit("p")!.secret)) == "v1")   // still served, until the ttl
        #expect(cache.hit("p")?.refreshDue == false)        // next attempt after refreshRetry (5 s)
        clock.advance(2)
        let again = cache.hit("p")!
        cache.refresh(again.secret) { secret("v2", fingerprint(1), clock) }
        #expect(content(.success(cache.hit("p")!.secret)) == "v2")
        clock.advance(8.5)                                    // v2 is young: still served
        #expect(cache.hit("p") != nil)
    }

    /// A refresh window no longer than the hand-out margin (`stale=1` with a
    /// ttl of a minute) still opens: it ends where the margin begins.
    @Test func aShortRefreshWindowIsNotSwallowedByTheMargin() {
        let clock = FakeClock()
        let cache = SecretCache(configuration: .init(ttl: 60, staleWindow: 1), now: clock.now)
        _ = cache.acquire(path: "p", current: fingerprint(1)) { secret("v1", fingerprint(1), clock) }
        clock.advance(57.9)
        #expect(cache.hit("p")?.refreshDue == false)
        clock.advance(0.2)                                    // 58.1: in [58, 59)
        #expect(cache.hit("p")?.refreshDue == true)
    }

    /// A plaintext evicted for space while a handle still holds it is
    /// taken back by the next open of the same version: one locked copy
    /// and one Decrypt, however often a reader churns the cache. Another
    /// version, an invalidation, a refused refresh or the TTL decrypt anew.
    @Test func anEvictedPlaintextStillHeldIsTakenBackNotDecryptedAgain() {
        let clock = FakeClock()
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let cache = SecretCache(configuration: .init(ttl: 60, maxBytes: page, staleWindow: 10), now: clock.now)
        var loads = 0
        func open(_ path: String, _ fp: Int64 = 1) -> (CachedSecret?, SecretCache.Source) {
            let (r, source, _) = cache.acquire(path: path, current: fingerprint(fp)) {
                loads += 1
                return secret("\(path)-\(fp)", fingerprint(fp), clock, path: path)
            }
            guard case .success(let s) = r else { return (nil, source) }
            return (s, source)
        }
        let (a, _) = open("a")               // a handle keeps it
        for round in 0..<5 {
            _ = open("b")                     // evicts a (one page at most)
            #expect(cache.hit("a") == nil)
            let (again, source) = open("a")   // evicts b, takes a back
            #expect(again === a && source == .cache, "round \(round)")
        }
        #expect(loads == 6)                   // a once, b once a round
        _ = open("b")
        let (other, _) = open("a", 2)         // the ciphertext changed
        #expect(other !== a && content(.success(other!)) == "a-2")
        _ = open("b")
        cache.invalidate("a")                 // a rotation seen by the watcher
        let (afterInvalidate, _) = open("a", 2)
        #expect(afterInvalidate !== other)
        _ = open("b")                         // evicted while a refresh of it ran...
        cache.refresh(afterInvalidate!) { .failure(DecryptFailure(.refused, "AccessDeniedException")) }
        let (afterRefusal, _) = open("a", 2)  // ...and refused: not taken back
        #expect(afterRefusal !== afterInvalidate)
        _ = open("b")
        clock.advance(59.5)                   // the last second of its TTL
        #expect(open("a", 2).0 !== afterRefusal)
        #expect(loads == 14)                  // b, which nothing holds, each time it is opened again
        _ = a
    }

    /// A refresh that ends after its entry was evicted for space (and is
    /// still held) replaces it: the next open gets the new copy, and the
    /// old one is not taken back to be refreshed a second time.
    @Test func aRefreshOfAnEvictedEntryReplacesIt() {
        let clock = FakeClock()
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let cache = SecretCache(configuration: .init(ttl: 10, maxBytes: page, staleWindow: 4), now: clock.now)
        let a = try! cache.acquire(path: "a", current: fingerprint(1)) { secret("a1", fingerprint(1), clock, path: "a") }.result.get()
        clock.advance(7)
        let due = cache.hit("a")!
        #expect(due.refreshDue)
        _ = cache.acquire(path: "b", current: fingerprint(1)) { secret("b", fingerprint(1), clock, path: "b") }   // evicts a
        var fresh: CachedSecret?
        cache.refresh(due.secret) {
            let r = secret("a2", fingerprint(1), clock, path: "a")
            fresh = try! r.get()
            return r
        }
        #expect(cache.hit("a")?.secret === fresh)
        #expect(a !== fresh)
    }

    @Test func aRefusedRefreshWipesAtOnce() {
        let clock = FakeClock()
        let cache = SecretCache(configuration: .init(ttl: 10, staleWindow: 4), now: clock.now)
        _ = cache.acquire(path: "p", current: fingerprint(1)) { secret("v1", fingerprint(1), clock) }
        clock.advance(7)
        let hit = cache.hit("p")!
        cache.refresh(hit.secret) { .failure(DecryptFailure(.refused, "AccessDeniedException")) }
        #expect(cache.hit("p") == nil)
    }

    @Test func aChangedCiphertextIsWipedAndDecryptedAnew() {
        let clock = FakeClock()
        let cache = SecretCache(configuration: .init(), now: clock.now)
        _ = cache.acquire(path: "p", current: fingerprint(1)) { secret("v1", fingerprint(1), clock) }
        let (r, source, _) = cache.acquire(path: "p", current: fingerprint(2)) { .failure(DecryptFailure(.unavailable, "down")) }
        #expect(source == .loaded(latency: 0))
        #expect(content(r) == nil)                            // never the old version
        #expect(cache.count == 0)
    }

    @Test func aDecryptionRacingAnInvalidationIsNotCached() {
        let clock = FakeClock()
        let cache = SecretCache(configuration: .init(), now: clock.now)
        let (r, _, _) = cache.acquire(path: "p", current: fingerprint(1)) {
            cache.invalidate("p")                             // the watcher saw a rotation meanwhile
            return secret("old", fingerprint(1), clock)
        }
        #expect(content(r) == "old")                          // this opener gets what it asked for...
        #expect(cache.count == 0)                             // ...but it is not cached
    }

    /// The watcher's late event for the file a decryption (or a cached
    /// plaintext) was made from keeps it; for any other file it wipes.
    @Test func anEventForTheFileDecryptedKeepsItAndForAnotherWipes() {
        let clock = FakeClock()
        let cache = SecretCache(configuration: .init(), now: clock.now)
        _ = cache.acquire(path: "p", current: fingerprint(2)) {
            #expect(cache.invalidate("p", unlessDecryptedFrom: fingerprint(2)) == nil)   // in flight, of this file
            return secret("new", fingerprint(2), clock)
        }
        #expect(cache.count == 1)
        #expect(cache.invalidate("p", unlessDecryptedFrom: fingerprint(2)) == nil)       // cached, of this file
        #expect(cache.count == 1)
        _ = cache.acquire(path: "q", current: fingerprint(1)) {
            cache.invalidate("q", unlessDecryptedFrom: fingerprint(2))                  // in flight, of the old file
            return secret("old", fingerprint(1), clock, path: "q")
        }
        #expect(cache.peek("q", fingerprint: nil) == nil)
        let was = cache.invalidate("p", unlessDecryptedFrom: fingerprint(3))           // cached, of the old file
        #expect(was?.fingerprint == fingerprint(2))
        #expect(cache.count == 0)
        _ = cache.acquire(path: "p", current: fingerprint(3)) { secret("v3", fingerprint(3), clock) }
        #expect(cache.invalidate("p", unlessDecryptedFrom: nil) != nil)                 // gone from SOURCE
        #expect(cache.count == 0)
    }

    /// Regression (issue 13 A10): a per-path generation counter was kept
    /// for every name ever invalidated (80,000 created-and-deleted names
    /// grew locked RSS from 23 to 49 MB). Nothing outlives its entry now.
    /// An opener that sees the new ciphertext does not join a decryption a
    /// rotation made stale (or one begun on other bytes): it would be
    /// answered with the old plaintext.
    @Test func aCallerSeeingTheNewVersionDoesNotJoinAStaleDecryption() {
        let clock = FakeClock()
        let cache = SecretCache(configuration: .init(), now: clock.now)
        let entered = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        final class Box: @unchecked Sendable { var first: Result<CachedSecret, DecryptFailure>? }
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            box.first = cache.acquire(path: "p", current: fingerprint(1)) {
                entered.signal()
                release.wait()
                return secret("old", fingerprint(1), clock)
            }.result
            done.signal()
        }
        entered.wait()
        // Should the second caller join the first decryption after all, it
        // gets its answer (the wrong one) after 2 s instead of hanging.
        DispatchQueue.global().asyncAfter(deadline: .now() + 2) { release.signal() }
        cache.invalidate("p")                                   // the watcher saw a rotation
        let (r, source, _) = cache.acquire(path: "p", current: fingerprint(2)) { secret("new", fingerprint(2), clock) }
        #expect(content(r) == "new")
        if case .shared = source { Issue.record("joined the stale decryption") }
        release.signal()
        done.wait()
        #expect(content(box.first!) == "old")                   // its own caller still gets what it asked for
        #expect(content(cache.acquire(path: "p", current: fingerprint(2)) { secret("x", fingerprint(2), clock) }.result) == "new")
    }

    @Test func createdAndDeletedNamesLeaveNothingBehind() {
        let clock = FakeClock()
        let cache = SecretCache(configuration: .init(), now: clock.now)
        for i in 0..<20_000 {
            let path = "churn/f\(i).encrypted"
            _ = cache.acquire(path: path, current: fingerprint(1)) { secret("v", fingerprint(1), clock, path: path) }
            cache.invalidate(path)
            cache.invalidate("never-cached/\(i)")
        }
        cache.invalidateAll(prefix: "gone/")
        #expect(cache.count == 0)
        #expect(cache.trackedPaths == 0)
    }

    /// Keys are bytes: `café` (NFC) and `cafe\u{301}` (NFD) are two files
    /// and never share a cached plaintext.
    @Test func unicodeEquivalentPathsAreDistinct() throws {
        let clock = FakeClock()
        let cache = SecretCache(configuration: .init(), now: clock.now)
        let nfc = "caf\u{E9}.encrypted", nfd = "cafe\u{301}.encrypted"
        _ = cache.acquire(path: nfc, current: fingerprint(1)) { secret("nfc", fingerprint(1), clock, path: nfc) }
        #expect(cache.hit(nfd) == nil)
        var loads = 0
        let r = cache.acquire(path: nfd, current: fingerprint(1)) { loads += 1; return secret("nfd", fingerprint(1), clock, path: nfd) }
        #expect(loads == 1 && content(r.result) == "nfd")
        #expect(cache.count == 2)
        cache.invalidate(nfd)
        let left = try #require(cache.hit(nfc))
        #expect(content(.success(left.secret)) == "nfc")
    }
}

@Suite struct SupersededFlightTests {
    /// One open decrypts the old ciphertext; the file changes; an open that
    /// sees the new fingerprint starts its own decryption, which takes the
    /// first one's place; the watcher's invalidation marks only that one.
    /// The first, ending last, put the old plaintext in the cache, and hits
    /// served it until the TTL (for ever at ttl=0). (Found in review.)
    @Test func aSupersededDecryptionDoesNotCacheTheOldPlaintext() {
        let clock = FakeClock()
        let cache = SecretCache(configuration: .init(), now: clock.now)
        let entered = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            _ = cache.acquire(path: "p", current: fingerprint(1)) {
                entered.signal()
                release.wait()
                return secret("old", fingerprint(1), clock)
            }
            done.signal()
        }
        entered.wait()
        let (r, _, _) = cache.acquire(path: "p", current: fingerprint(2)) {
            cache.invalidate("p")          // the watcher applies the change meanwhile
            return secret("new", fingerprint(2), clock)
        }
        #expect(content(r) == "new")
        release.signal()
        done.wait()
        let served = cache.hit("p").map { $0.secret.plaintext.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } }
        #expect(served == nil, "hit served \(served ?? "-")")
    }
}
