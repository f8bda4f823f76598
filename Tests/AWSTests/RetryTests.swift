import Testing
import AWS
import SecureMemory
import Synchronization

@Suite struct RetryTests {
    func strategy(attempts: Int = 3, random: Double = 1) -> RetryStrategy {
        var c = RetryStrategy.Configuration()
        c.maxAttempts = attempts
        return RetryStrategy(c, random: { random })
    }

    @Test func fullJitterExponentialBackoffCappedAtTwentySeconds() {
        let s = strategy(attempts: 10)
        var delays: [Double] = []
        for attempt in 1..<30 {
            if case .retry(let d, _) = s.decide(after: .transient, attempt: attempt) { delays.append(d) }
        }
        #expect(delays == [1, 2, 4, 8, 16, 20, 20, 20, 20])
        let half = strategy(attempts: 10, random: 0.5)
        if case .retry(let d, _) = half.decide(after: .transient, attempt: 3) { #expect(d == 2) } else { Issue.record("expected retry") }
        let zero = strategy(attempts: 10, random: 0)
        if case .retry(let d, _) = zero.decide(after: .timeout, attempt: 9) { #expect(d == 0) } else { Issue.record("expected retry") }
        // Throttling backs off briefly (the limiter slows the rate): 50 ms doubling, capped at 1 s.
        var throttled: [Double] = []
        for attempt in 1..<9 {
            if case .retry(let d, _) = s.decide(after: .throttling, attempt: attempt) { throttled.append(d) }
        }
        #expect(throttled == [0.05, 0.1, 0.2, 0.4, 0.8, 1, 1, 1])
    }

    @Test func maxAttemptsAndNonRetryableErrors() {
        let s = strategy(attempts: 3)
        #expect(s.decide(after: .notRetryable, attempt: 1) == .giveUp(reason: "not retryable"))
        guard case .retry = s.decide(after: .transient, attempt: 2) else { Issue.record("expected retry"); return }
        #expect(s.decide(after: .transient, attempt: 3) == .giveUp(reason: "gave up after 3 attempts"))
    }

    @Test func retryQuotaDrainsAndRefills() {
        let s = strategy(attempts: 1000)
        var retries = 0
        while case .retry = s.decide(after: .transient, attempt: 1) { retries += 1 }
        #expect(retries == 100)                       // 500 tokens / 5 each
        #expect(s.decide(after: .transient, attempt: 1) == .giveUp(reason: "retry quota exhausted"))
        s.recordSuccess(retryCost: 5)                  // a retried call that succeeded refunds its cost
        #expect(s.availableTokens == 5)
        s.recordSuccess(retryCost: 0)                  // a first-try success adds one
        #expect(s.availableTokens == 6)
        let t = strategy(attempts: 10)
        _ = t.decide(after: .timeout, attempt: 1)
        #expect(t.availableTokens == 490)             // timeouts cost 10
    }

    @Test func errorClassification() {
        func svc(_ code: String, _ status: Int) -> AWSError { .service(code: code, message: "", status: status, requestId: nil) }
        #expect(svc("ThrottlingException", 400).retryClass == .throttling)
        #expect(svc("Whatever", 429).retryClass == .throttling)
        #expect(svc("KMSInternalException", 500).retryClass == .transient)
        #expect(svc("ServiceUnavailableException", 503).retryClass == .transient)
        #expect(svc("AccessDeniedException", 400).retryClass == .notRetryable)
        #expect(svc("InvalidCiphertextException", 400).retryClass == .notRetryable)
        #expect(AWSError.transport(TransportError(.io, "reset")).retryClass == .transient)
        #expect(AWSError.transport(TransportError(.connect, "refused")).retryClass == .transient)
        #expect(AWSError.transport(TransportError(.timeout, "slow")).retryClass == .timeout)
        #expect(AWSError.transport(TransportError(.tls, "bad cert")).retryClass == .notRetryable)
    }

    @Test func aCallNeverOutlivesItsDeadline() {
        // Every attempt hangs until its timeout: the caller must stop within
        // the deadline, each attempt clamped to the time left.
        let clock = ManualClock()
        let caller = RetryingCaller(label: "test", retry: strategy(attempts: 10), clock: clock.clock,
                                    deadline: 30, attemptTimeout: 10)
        let t0 = clock.clock.monotonic()
        let timeouts = Mutex<[Double]>([])
        do {
            _ = try caller.call { timeout in
                timeouts.withLock { $0.append(timeout) }
                clock.advance(timeout)
                return .failure(.transport(TransportError(.timeout, "timed out")))
            }
            Issue.record("expected a timeout")
        } catch {
            #expect(error.retryClass == .timeout)
        }
        let elapsed = clock.clock.monotonic() - t0
        #expect(elapsed <= 30)
        let ts = timeouts.withLock { $0 }
        #expect(ts.allSatisfy { $0 <= 10 })
        #expect(ts.count >= 2)
    }

    /// Each answer the service gives is counted as it arrives, while its
    /// call is still retrying (a prefetch tells a silent KMS from a busy
    /// one by it); a timeout, a refused connection or missing credentials
    /// are not answers.
    @Test func answersAreCountedAsTheyArriveAndSilenceIsNot() {
        let clock = ManualClock()
        let metrics = CallMetrics()
        let caller = RetryingCaller(label: "test", retry: strategy(attempts: 5), clock: clock.clock,
                                    deadline: 30, attemptTimeout: 10, metrics: metrics)
        let seenDuringTheCall = Mutex<[Int]>([])
        _ = try? caller.call { _ in
            seenDuringTheCall.withLock { $0.append(metrics.answers) }
            let n = seenDuringTheCall.withLock { $0.count }
            return n < 3 ? .failure(.service(code: "ThrottlingException", message: "Rate exceeded", status: 400, requestId: nil))
                         : .failure(.transport(TransportError(.timeout, "timed out")))
        }
        // Two throttles counted before the call ended (at the third and
        // later attempts), the timeouts not at all.
        let seen = seenDuringTheCall.withLock { $0 }
        #expect(seen.prefix(3) == [0, 1, 2])
        #expect(metrics.answers == 2)
        let silent = CallMetrics()
        let quiet = RetryingCaller(label: "test", retry: strategy(attempts: 3), clock: clock.clock,
                                   deadline: 30, attemptTimeout: 10, metrics: silent)
        _ = try? quiet.call { _ in .failure(.transport(TransportError(.connect, "refused"))) }
        #expect(silent.answers == 0)
    }

    @Test func jsonClientRetriesThrottlingAndClampsAttemptTimeouts() throws {
        let clock = ManualClock()
        let t = ScriptedTransport { _, n in
            n < 3 ? .init(status: 400, body: #"{"__type":"ThrottlingException","message":"Rate exceeded"}"#)
                  : .init(status: 200, body: #"{"ok":true}"#)
        }
        let client = AWSJSONClient(signingName: "kms", targetPrefix: "TrentService", region: "us-east-1",
                                   endpoint: URLParts("https://kms.us-east-1.amazonaws.com")!,
                                   credentials: StaticCredentialProvider(creds("AKID")), transport: t, clock: clock.clock,
                                   retry: strategy(attempts: 3, random: 0.5), callDeadline: 8, attemptTimeout: 10, connectTimeout: 3)
        let r = try client.call("Decrypt", body: .bytes(Array("{}".utf8)))
        #expect(r.status == 200)
        #expect(t.count == 3)
        // The backoffs, then (KMS throttled twice, so requests are now paced)
        // the wait for the third attempt's send slot.
        #expect(Array(clock.sleeps.prefix(2)) == [0.025, 0.05])
        #expect(clock.sleeps.count == 3 && clock.sleeps[2] > 0 && clock.sleeps[2] <= 1)
        #expect(client.pacer.currentRate != nil && client.pacer.statistics.throttles == 2)
        let reqs = t.requests
        #expect(reqs[0].timeout == 8 && reqs[0].connectTimeout == 3)     // clamped to the deadline
        #expect(reqs[2].timeout! <= 8 - 0.075 + 1e-9)   // the sleeps came off the deadline
        #expect(client.metrics.snapshot.retries == 2 && client.metrics.snapshot.throttled == 2)
    }

    @Test func jsonClientSurfacesNonRetryableErrorsAtOnce() {
        let t = ScriptedTransport { _, _ in .init(status: 400, body: #"{"__type":"AccessDeniedException","message":"no"}"#) }
        let client = AWSJSONClient(signingName: "kms", targetPrefix: "TrentService", region: "us-east-1",
                                   endpoint: URLParts("https://kms.us-east-1.amazonaws.com")!,
                                   credentials: StaticCredentialProvider(creds("AKID")), transport: t, clock: ManualClock().clock)
        do { _ = try client.call("Decrypt", body: .bytes([])); Issue.record("expected") } catch {
            #expect(error.code == "AccessDeniedException")
        }
        #expect(t.count == 1)
    }
}

@Suite struct EndpointTests {
    @Test func regionalFipsAndDualStackNames() {
        #expect(AWSEndpoints.regional(service: "kms", region: "eu-west-1") == "https://kms.eu-west-1.amazonaws.com")
        #expect(AWSEndpoints.regional(service: "kms", region: "us-east-1", fips: true) == "https://kms-fips.us-east-1.amazonaws.com")
        #expect(AWSEndpoints.regional(service: "kms", region: "eu-west-1", dualStack: true) == "https://kms.eu-west-1.api.aws")
        #expect(AWSEndpoints.regional(service: "kms", region: "us-east-2", fips: true, dualStack: true) == "https://kms-fips.us-east-2.api.aws")
        #expect(AWSEndpoints.regional(service: "kms", region: "cn-north-1") == "https://kms.cn-north-1.amazonaws.com.cn")
        #expect(AWSEndpoints.regional(service: "sts", region: "us-gov-west-1", fips: true) == "https://sts-fips.us-gov-west-1.amazonaws.com")
        #expect(AWSEndpoints.isValidRegion("eu-west-1") && !AWSEndpoints.isValidRegion("EU_WEST") && !AWSEndpoints.isValidRegion(""))
    }

    @Test func configuredEndpointPrecedence() throws {
        let files = try SharedConfigFiles.parse(config: """
            [default]
            endpoint_url = http://profile-global:1
            services = s
            [profile plain]
            endpoint_url = http://profile-global:2
            use_fips_endpoint = true
            [services s]
            kms =
              endpoint_url = http://profile-kms:3
            """, credentials: nil)
        func ep(_ env: [String: String], _ profile: String = "default") -> String? {
            AWSEndpoints.configured(envName: "KMS", key: "kms", environment: Environment(env), config: files, profile: profile)?.url
        }
        #expect(ep(["AWS_ENDPOINT_URL_KMS": "http://env-kms:4", "AWS_ENDPOINT_URL": "http://env:5"]) == "http://env-kms:4")
        #expect(ep(["AWS_ENDPOINT_URL": "http://env:5"]) == "http://env:5")
        #expect(ep([:]) == "http://profile-kms:3")
        #expect(ep([:], "plain") == "http://profile-global:2")
        #expect(ep(["AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true", "AWS_ENDPOINT_URL": "http://env:5"]) == nil)
        #expect(AWSEndpoints.variants(environment: Environment([:]), profile: files.profile("plain")) == (true, false))
        #expect(AWSEndpoints.variants(environment: Environment(["AWS_USE_FIPS_ENDPOINT": "false", "AWS_USE_DUALSTACK_ENDPOINT": "true"]),
                                      profile: files.profile("plain")) == (false, true))
    }
}

@Suite struct AdaptiveTests {
    @Test func throttlingIsRetriedPastMaxAttemptsWithoutQuota() {
        var c = RetryStrategy.Configuration()
        c.maxAttempts = 3
        c.quotaCapacity = 5
        let r = RetryStrategy(c, random: { 0.5 })
        for attempt in 1..<30 {
            guard case .retry(_, let cost) = r.decide(after: .throttling, attempt: attempt) else {
                Issue.record("attempt \(attempt) should be retried"); return
            }
            #expect(cost == 0)
        }
        #expect(r.decide(after: .throttling, attempt: 30) == .giveUp(reason: "still throttled after 30 attempts"))
        #expect(r.availableTokens == 5)
        // Transient errors still spend the quota and stop at maxAttempts.
        if case .retry(_, let cost) = r.decide(after: .transient, attempt: 1) { #expect(cost == 5) } else { Issue.record("retry") }
        #expect(r.decide(after: .transient, attempt: 2) == .giveUp(reason: "retry quota exhausted"))
    }

    @Test func theLimiterHalvesOnThrottlingAndGrowsBackOnSuccess() {
        let l = AdaptiveLimiter(maximum: 16)
        let clock = Clock.system
        #expect(l.acquire(within: 0.1, clock: clock))
        l.release(.throttled)
        #expect(l.currentLimit == 8)
        for _ in 0..<4 { #expect(l.acquire(within: 0.1, clock: clock)); l.release(.throttled) }
        #expect(l.currentLimit == 1)
        #expect(l.acquire(within: 0.1, clock: clock))
        #expect(!l.acquire(within: 0.05, clock: clock))     // one in flight is the cap now
        l.release(.success)
        for _ in 0..<200 { _ = l.acquire(within: 0.1, clock: clock); l.release(.success) }
        #expect(l.currentLimit == 16)
    }
}
