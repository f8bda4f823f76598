import System
import Testing
import AWS
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

@Suite struct CachingCredentialTests {
    func policy(grace: Double = 600) -> CachingCredentialProvider.Policy {
        var p = CachingCredentialProvider.Policy()
        p.refreshAhead = 300
        p.expiryMargin = 15
        p.gracePeriod = grace
        p.retryInterval = 5
        return p
    }

    @Test func longTermKeysAreFetchedOnce() throws {
        let src = CountingProvider { n in creds("K\(n)") }
        let c = CachingCredentialProvider(src, clock: ManualClock().clock, runner: ManualRunner().runner)
        for _ in 0..<5 { #expect(try c.credentials().accessKeyId == "K1") }
        #expect(src.count == 1)
    }

    @Test func refreshesAheadOfExpiryInTheBackgroundWithoutBlockingReaders() throws {
        let clock = ManualClock()
        let start = clock.now
        let src = CountingProvider { n in creds("K\(n)", expires: start + Double(3600 * n)) }
        let runner = ManualRunner()
        let c = CachingCredentialProvider(src, policy: policy(), clock: clock.clock, runner: runner.runner)
        #expect(try c.credentials().accessKeyId == "K1")
        clock.advance(3600 - 301)            // not yet in the refresh window
        #expect(try c.credentials().accessKeyId == "K1")
        #expect(runner.pending == 0)
        clock.advance(2)                     // 299 s before expiry
        #expect(try c.credentials().accessKeyId == "K1")   // answered at once
        #expect(runner.pending == 1)
        for _ in 0..<10 { #expect(try c.credentials().accessKeyId == "K1") }
        #expect(runner.pending == 1)         // one refresh, however many readers
        runner.runAll()
        #expect(try c.credentials().accessKeyId == "K2")
        #expect(src.count == 2)
    }

    @Test func shortLivedCredentialsRefreshAtHalfTheirLife() throws {
        let clock = ManualClock()
        let start = clock.now
        let src = CountingProvider { n in creds("K\(n)", expires: start + 60 * Double(n)) }
        let runner = ManualRunner()
        let c = CachingCredentialProvider(src, policy: policy(), clock: clock.clock, runner: runner.runner)
        _ = try c.credentials()
        clock.advance(29)
        _ = try c.credentials()
        #expect(runner.pending == 0)
        clock.advance(2)
        #expect(try c.credentials().accessKeyId == "K1")
        #expect(runner.pending == 1)
    }

    @Test func readersKeepValidCredentialsWhileARealThreadRefreshes() throws {
        let clock = ManualClock()
        let start = clock.now
        let release = Mutex(false)
        let src = CountingProvider { n in
            if n > 1 { while !release.withLock({ $0 }) { usleep(1000) } }   // the refresh hangs
            return creds("K\(n)", expires: start + Double(3600 * n))
        }
        let c = CachingCredentialProvider(src, policy: policy(), clock: clock.clock, runner: .thread)
        _ = try c.credentials()
        clock.advance(3600 - 100)
        let t0 = SystemClock.monotonic()
        for _ in 0..<200 { #expect(try c.credentials().accessKeyId == "K1") }
        // Nobody waited on the hung refresh (it never ends by itself; the
        // bound only allows for a loaded machine).
        #expect(SystemClock.monotonic() - t0 < 3)
        #expect(c.fetchCount == 2)               // one refresh started, not 200
        release.withLock { $0 = true }
        let deadline = SystemClock.monotonic() + 5
        while c.current?.accessKeyId != "K2" && SystemClock.monotonic() < deadline { usleep(1000) }
        #expect(try c.credentials().accessKeyId == "K2")
    }

    @Test func concurrentFirstCallsMakeOneFetch() throws {
        let src = CountingProvider { n in usleep(200_000); return creds("K\(n)", expires: Timestamp.now() + 3600) }
        let c = CachingCredentialProvider(src, runner: .thread)
        let results = Mutex<[String]>([])
        var threads: [pthread_t] = []
        final class Box: @unchecked Sendable { let f: () -> Void; init(_ f: @escaping () -> Void) { self.f = f } }
        for _ in 0..<8 {
            let box = Box { if let k = try? c.credentials().accessKeyId { results.withLock { $0.append(k) } } }
            var tid = pthread_t()
            pthread_create(&tid, nil, { arg in
                Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue().f()
                return nil
            }, Unmanaged.passRetained(box).toOpaque())
            threads.append(tid)
        }
        for t in threads { pthread_join(t, nil) }
        #expect(src.count == 1)
        #expect(results.withLock { $0 } == Array(repeating: "K1", count: 8))
    }

    @Test func lastCredentialsServeForABoundedGracePeriodWhileTheSourceIsDown() throws {
        let clock = ManualClock()
        let down = Mutex(false)
        let src = CountingProvider { (n) throws(CredentialError) -> AWSCredentials in
            if down.withLock({ $0 }) { throw .failed("IMDS unreachable") }
            return creds("K\(n)", expires: clock.now + 3600)   // fresh when fetched (start + 3600 the first time)
        }
        let runner = ManualRunner()
        let c = CachingCredentialProvider(src, policy: policy(grace: 600), clock: clock.clock, runner: runner.runner)
        _ = try c.credentials()
        down.withLock { $0 = true }
        clock.advance(3600 - 200)
        #expect(try c.credentials().accessKeyId == "K1")
        runner.runAll()                       // the background refresh fails
        clock.advance(400)                    // 200 s past expiry
        #expect(try c.credentials().accessKeyId == "K1")   // grace
        clock.advance(390)                    // 590 s past expiry
        #expect(try c.credentials().accessKeyId == "K1")
        clock.advance(20)                     // 610 s: the grace period is over
        do { _ = try c.credentials(); Issue.record("expected the source's error") } catch {
            #expect(error.message == "IMDS unreachable")
        }
        down.withLock { $0 = false }
        clock.advance(5)
        #expect(try c.credentials().accessKeyId.hasPrefix("K"))
    }

    @Test func aFailedFetchIsNotRepeatedWithinTheRetryInterval() throws {
        let clock = ManualClock()
        let src = CountingProvider { (_) throws(CredentialError) -> AWSCredentials in throw .failed("STS down") }
        let c = CachingCredentialProvider(src, policy: policy(), clock: clock.clock, runner: ManualRunner().runner)
        for _ in 0..<5 { #expect(throws: CredentialError.self) { try c.credentials() } }
        #expect(src.count == 1)
        clock.advance(5)
        #expect(throws: CredentialError.self) { try c.credentials() }
        #expect(src.count == 2)
    }

    /// With no thread to be had, the runner does the refresh on the caller's
    /// thread: it must find the lock free, not deadlock on it.
    @Test func aRefreshRunInlineDoesNotDeadlock() throws {
        let clock = ManualClock()
        let src = CountingProvider { n in creds("K\(n)", expires: clock.now + 3600) }
        let inline = BackgroundRunner { _, body in body() }
        let c = CachingCredentialProvider(src, policy: policy(), clock: clock.clock, runner: inline)
        #expect(try c.credentials().accessKeyId == "K1")
        clock.advance(3600 - 200)                           // in the refresh window
        #expect(try c.credentials().accessKeyId == "K1")   // refreshed inline, answered with what it held
        #expect(try c.credentials().accessKeyId == "K2")
        #expect(src.count == 2)
    }

    /// Credentials that arrive already expired (a clock far off) are a
    /// failure that says so, tried again after the retry interval: not a
    /// fetch (a process spawned, IMDS asked) on every open.
    @Test func credentialsExpiredOnArrivalAreAFailureNotAFetchPerCall() throws {
        let clock = ManualClock()
        let src = CountingProvider { n in creds("K\(n)", expires: clock.now + (-3600)) }
        let c = CachingCredentialProvider(src, policy: policy(), clock: clock.clock, runner: ManualRunner().runner)
        for _ in 0..<5 {
            let e = credentialError { try c.credentials() }
            #expect(e.kind == .failed && e.message.contains("arrived already expired") && e.message.contains("clock"))
        }
        #expect(src.count == 1)
        clock.advance(5)
        _ = credentialError { try c.credentials() }
        #expect(src.count == 2)
    }

    @Test func redactsAccessKeys() {
        #expect(CachingCredentialProvider.redact("AKIAIOSFODNN7EXAMPLE") == "AKIA…MPLE")
        #expect(CachingCredentialProvider.redact("short") == "…")
    }
}
