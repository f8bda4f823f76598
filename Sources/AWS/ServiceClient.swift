import SecureMemory
import Log
import Synchronization

/// An error from an AWS call: the service answered with an error, or it
/// could not be reached, or there were no credentials to sign with.
public enum AWSError: Error, CustomStringConvertible, Sendable {
    case service(code: String, message: String, status: Int, requestId: String?)
    case transport(TransportError)
    case credentials(CredentialError)
    case malformedResponse(String)

    public var description: String {
        switch self {
        case let .service(code, message, status, requestId):
            let m = message.isEmpty ? "" : ": \(message)"
            return "\(code) (HTTP \(status)\(requestId.map { ", request \($0)" } ?? ""))\(m)"
        case .transport(let t): return "transport error: \(t)"
        case .credentials(let c): return "no credentials: \(c)"
        case .malformedResponse(let m): return "malformed response: \(m)"
        }
    }

    /// The service error code, if the service answered.
    public var code: String? {
        if case .service(let code, _, _, _) = self { return code }
        return nil
    }

    public var retryClass: RetryClass {
        switch self {
        case let .service(code, _, status, _):
            if throttlingErrorCodes.contains(code) || status == 429 { return .throttling }
            if transientErrorCodes.contains(code) || transientStatusCodes.contains(status) { return .transient }
            return .notRetryable
        case .transport(let t):
            switch t.kind {
            case .timeout: return .timeout
            case .connect, .io: return .transient
            default: return .notRetryable
            }
        case .credentials, .malformedResponse:
            return .notRetryable
        }
    }
}

/// Counters a client keeps for `kmsfs status`.
public final class CallMetrics: Sendable {
    struct State {
        var calls = 0
        var failures = 0
        var retries = 0
        var throttled = 0
        var answers = 0
        var latencies: [Double] = []   // ring of recent successful call latencies, seconds
        var next = 0
        var buckets = [Int](repeating: 0, count: CallMetrics.bucketBounds.count)   // cumulative by bound
        var latencySum = 0.0
        var latencyCount = 0
        var lastSuccess: Double? = nil   // wall clock, seconds since the epoch
    }
    private let state = Mutex(State())
    static let window = 1024
    /// Upper bounds (seconds) of the latency histogram's buckets, as
    /// Prometheus' `le` labels; `+Inf` is the count.
    public static let bucketBounds: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

    public init() {}

    /// Attempts the service answered (any HTTP answer: success, a throttle,
    /// an error), counted as each arrives, not when its call ends. What a
    /// prefetch reads to tell a KMS that answers nothing (a network not up
    /// yet) from a busy one.
    public var answers: Int { state.withLock { $0.answers } }

    func noteAnswer() { state.withLock { $0.answers += 1 } }

    func record(latency: Double?, failed: Bool, retries: Int, throttled: Int) {
        state.withLock { s in
            s.calls += 1
            if failed { s.failures += 1 }
            s.retries += retries
            s.throttled += throttled
            if let latency {
                for (j, bound) in CallMetrics.bucketBounds.enumerated() where latency <= bound { s.buckets[j] += 1 }
                s.latencySum += latency
                s.latencyCount += 1
                s.lastSuccess = Timestamp.now().seconds
                if s.latencies.count < CallMetrics.window { s.latencies.append(latency) } else { s.latencies[s.next] = latency }
                s.next = (s.next + 1) % CallMetrics.window
            }
        }
    }

    public struct Snapshot: Sendable {
        public var calls: Int
        public var failures: Int
        public var retries: Int
        public var throttled: Int
        public var p50: Double?
        public var p99: Double?
        /// Successful calls per latency bucket (cumulative, by `bucketBounds`).
        public var buckets: [Int]
        public var latencySum: Double
        public var latencyCount: Int
        /// When the last call succeeded (wall clock, seconds since the epoch).
        public var lastSuccess: Double?
    }

    public var snapshot: Snapshot {
        state.withLock { s in
            let sorted = s.latencies.sorted()
            func q(_ p: Double) -> Double? {
                guard !sorted.isEmpty else { return nil }
                return sorted[min(sorted.count - 1, Int((Double(sorted.count) * p).rounded(.down)))]
            }
            return Snapshot(calls: s.calls, failures: s.failures, retries: s.retries, throttled: s.throttled,
                            p50: q(0.5), p99: q(0.99), buckets: s.buckets, latencySum: s.latencySum,
                            latencyCount: s.latencyCount, lastSuccess: s.lastSuccess)
        }
    }
}

/// Sends one logical call with the standard retry mode inside a hard
/// deadline. `attempt` gets the seconds left for its one HTTP exchange
/// (never more than `attemptTimeout`), so no single attempt can outlive the
/// call; backoff sleeps are skipped when they would cross the deadline.
/// Hence a call returns within `deadline` seconds of its start, plus only
/// the time `attempt` spends before sending (getting credentials, see
/// `CachingCredentialProvider`).
public struct RetryingCaller: Sendable {
    public let label: String
    public let retry: RetryStrategy
    public let clock: Clock
    public let deadline: Double
    public let attemptTimeout: Double
    public let metrics: CallMetrics?
    public let limiter: AdaptiveLimiter?
    public let pacer: RateAdapter?

    public init(label: String, retry: RetryStrategy, clock: Clock, deadline: Double, attemptTimeout: Double,
                metrics: CallMetrics? = nil, limiter: AdaptiveLimiter? = nil, pacer: RateAdapter? = nil) {
        self.label = label
        self.retry = retry
        self.clock = clock
        self.deadline = deadline
        self.attemptTimeout = attemptTimeout
        self.metrics = metrics
        self.limiter = limiter
        self.pacer = pacer
    }

    /// Seconds under which an attempt is not worth starting.
    static let minimumAttemptTime = 0.05

    public func call(_ attempt: (_ timeout: Double) -> Result<HTTPResponse, AWSError>) throws(AWSError) -> HTTPResponse {
        let start = clock.monotonic()
        var number = 0
        var retries = 0
        var throttled = 0
        var lastCost = 0
        while true {
            number += 1
            var remaining = deadline - (clock.monotonic() - start)
            let result: Result<HTTPResponse, AWSError>
            if remaining < RetryingCaller.minimumAttemptTime {
                result = .failure(.transport(TransportError(.timeout, "\(label): no time left within the \(RetryingCaller.seconds(deadline)) s call deadline")))
            } else if let limiter, !limiter.acquire(within: remaining - RetryingCaller.minimumAttemptTime, clock: clock) {
                result = .failure(.transport(TransportError(.timeout, "\(label): no call slot within the \(RetryingCaller.seconds(deadline)) s call deadline (KMS is throttling; calls are slowed down)")))
            } else if let pacer, !pacer.acquire(within: deadline - (clock.monotonic() - start) - RetryingCaller.minimumAttemptTime) {
                // In flight, but no send slot in time: give the call slot back unused.
                limiter?.release(.other)
                result = .failure(.transport(TransportError(.timeout, "\(label): no send slot within the \(RetryingCaller.seconds(deadline)) s call deadline (KMS is throttling; requests are paced at \(RetryingCaller.rate(pacer.currentRate)))")))
            } else {
                remaining = deadline - (clock.monotonic() - start)
                let r = attempt(min(attemptTimeout, max(remaining, RetryingCaller.minimumAttemptTime)))
                switch r {
                case .success, .failure(.service), .failure(.malformedResponse): metrics?.noteAnswer()
                case .failure(.transport), .failure(.credentials): break
                }
                if let limiter {
                    switch r {
                    case .success: limiter.release(.success)
                    case .failure(let e): limiter.release(e.retryClass == .throttling ? .throttled : .other)
                    }
                }
                if let pacer {
                    switch r {
                    case .success: pacer.record(.success)
                    case .failure(let e): pacer.record(e.retryClass == .throttling ? .throttled : .other)
                    }
                }
                result = r
            }
            switch result {
            case .success(let response):
                retry.recordSuccess(retryCost: lastCost)
                metrics?.record(latency: clock.monotonic() - start, failed: false, retries: retries, throttled: throttled)
                return response
            case .failure(let error):
                let cls = error.retryClass
                if cls == .throttling { throttled += 1 }
                let decision = retry.decide(after: cls, attempt: number)
                if case .retry(let delay, let cost) = decision,
                   clock.monotonic() - start + delay + RetryingCaller.minimumAttemptTime < deadline {
                    Log.info("\(label) attempt \(number) failed (\(error)); retrying in \(clampedMilliseconds(delay)) ms")
                    lastCost = cost
                    retries += 1
                    clock.sleep(delay)
                    continue
                }
                if case .giveUp(let reason) = decision, number > 1 || reason != "not retryable" {
                    Log.debug("\(label): \(reason)")
                }
                metrics?.record(latency: nil, failed: true, retries: retries, throttled: throttled)
                throw error
            }
        }
    }

    static func rate(_ r: Double?) -> String {
        guard let r else { return "no set rate" }
        return r >= 10 ? "\(displaySeconds(r))/s" : "\(Double(clampedMilliseconds(r / 10)) / 100)/s"
    }

    static func seconds(_ d: Double) -> String {
        d == d.rounded() ? String(displaySeconds(d)) : String(d)
    }
}

/// A client for an AWS JSON 1.1 service (KMS: `TrentService`): signs each
/// request with SigV4, sends it, classifies errors and retries in the
/// standard mode.
///
/// Time bound: a call returns (success or error) within `callDeadline`
/// seconds plus the time to obtain credentials, which is zero while cached
/// credentials are valid (see `CachingCredentialProvider` and
/// docs/credentials.md). Each attempt's transfer is limited to
/// `min(attemptTimeout, time left)`, its connection to
/// `min(connectTimeout, that)`.
public final class AWSJSONClient: Sendable {
    public let signingName: String
    public let targetPrefix: String
    public let region: String
    public let endpoint: URLParts
    public let credentials: CredentialProvider
    public let transport: HTTPTransport
    public let clock: Clock
    public let retry: RetryStrategy
    public let metrics = CallMetrics()
    /// Calls in flight: at most the transport's pooled connections, halved
    /// while the service throttles.
    public let limiter: AdaptiveLimiter
    /// Requests sent: paced once the service throttles (`RateAdapter`).
    public let pacer: RateAdapter
    /// Longest a call may take, retries and backoff included.
    public let callDeadline: Double
    /// Longest one attempt may take (connection included).
    public let attemptTimeout: Double
    /// Longest a connection (TCP and TLS handshakes) may take.
    public let connectTimeout: Double

    public init(signingName: String, targetPrefix: String, region: String, endpoint: URLParts,
                credentials: CredentialProvider, transport: HTTPTransport, clock: Clock = .system,
                retry: RetryStrategy = RetryStrategy(), callDeadline: Double = 30,
                attemptTimeout: Double = 10, connectTimeout: Double = 3, maxInFlight: Int = 16,
                pacing: RateAdapter.Configuration = RateAdapter.Configuration()) {
        self.limiter = AdaptiveLimiter(maximum: maxInFlight)
        self.pacer = RateAdapter(pacing, clock: clock)
        self.signingName = signingName
        self.targetPrefix = targetPrefix
        self.region = region
        self.endpoint = endpoint
        self.credentials = credentials
        self.transport = transport
        self.clock = clock
        self.retry = retry
        self.callDeadline = callDeadline
        self.attemptTimeout = attemptTimeout
        self.connectTimeout = connectTimeout
    }

    /// Calls `operation` with a JSON body; returns the 2xx response.
    public func call(_ operation: String, body: HTTPBody) throws(AWSError) -> HTTPResponse {
        let caller = RetryingCaller(label: "\(targetPrefix).\(operation)", retry: retry, clock: clock,
                                    deadline: callDeadline, attemptTimeout: attemptTimeout, metrics: metrics,
                                    limiter: limiter, pacer: pacer)
        return try caller.call { timeout in
            do throws(AWSError) { return .success(try attemptOnce(operation, body: body, timeout: timeout)) } catch { return .failure(error) }
        }
    }

    private func attemptOnce(_ operation: String, body: HTTPBody, timeout: Double) throws(AWSError) -> HTTPResponse {
        let started = clock.monotonic()
        let creds: AWSCredentials
        do { creds = try credentials.credentials() } catch { throw .credentials(error) }
        do {
            return try send(operation, body: body, credentials: creds, timeout: timeout)
        } catch {
            // Temporary credentials the service calls expired (revoked early,
            // or a skewed clock read their expiry late): drop them and try
            // once more with fresh ones, within this attempt's time.
            // Any session token: one whose expiry was not known (a profile's
            // aws_session_token, a credential_process without Expiration)
            // is dropped as well, or it would be served until a restart.
            guard let code = error.code, AWSJSONClient.expiredTokenCodes.contains(code), creds.hasSessionToken else { throw error }
            credentials.invalidate(creds)
            let fresh: AWSCredentials
            do { fresh = try credentials.credentials() } catch { throw .credentials(error) }
            guard fresh != creds else { throw error }
            Log.notice("\(targetPrefix).\(operation): \(code); retrying with credentials fetched anew from \(fresh.source)")
            let left = timeout - (clock.monotonic() - started)
            guard left > 0.05 else { throw error }
            return try send(operation, body: body, credentials: fresh, timeout: left)
        }
    }

    static let expiredTokenCodes: Set<String> = ["ExpiredTokenException", "ExpiredToken"]

    private func send(_ operation: String, body: HTTPBody, credentials creds: AWSCredentials,
                      timeout: Double) throws(AWSError) -> HTTPResponse {
        let payloadHash = body.withUnsafeBytes { Digest.hex(Digest.sha256($0)) }
        var headers: [(name: String, value: String)] = [
            ("Host", endpoint.hostHeader),
            ("Content-Type", "application/x-amz-json-1.1"),
            ("X-Amz-Target", "\(targetPrefix).\(operation)"),
        ]
        let signer = SigV4Signer(region: region, service: signingName)
        let req = SigV4Signer.Request(method: "POST", path: endpoint.path, query: endpoint.query,
                                      headers: headers, payloadHash: payloadHash)
        headers += signer.sign(req, credentials: creds, date: clock.now())
        headers.append(("User-Agent", "kmsfs/\(kmsfsVersion)"))
        let response: HTTPResponse
        do {
            var request = HTTPRequest(method: "POST", url: endpoint, headers: headers, body: body,
                                      timeout: timeout, connectTimeout: min(connectTimeout, timeout))
            request.secureHeaders = SigV4Signer.secureHeaders(for: creds)
            response = try transport.send(request)
        } catch {
            throw .transport(error)
        }
        guard (200..<300).contains(response.status) else {
            throw AWSJSONClient.parseError(response)
        }
        return response
    }

    /// Reads `__type` / `message` (or `x-amzn-ErrorType`) from an error
    /// response. Error bodies carry no secret; one that does anyway (a
    /// broken front end) has only those three members read, never its
    /// credential or plaintext members. Nor is the rest of the document
    /// built: a megabyte of `[0,0,...]` made a tree of some 20 MB of
    /// locked memory for every throttled retry.
    public static func parseError(_ response: HTTPResponse) -> AWSError {
        let requestId = response.header("x-amzn-RequestId")
        var code = response.header("x-amzn-ErrorType").map { String($0.split(separator: ":").first ?? "") } ?? ""
        var message = ""
        let json: (type: String?, message: String?) = response.body.withUnsafeBytes { b in
            (JSONScanner.nonSecretString("__type", in: b),
             JSONScanner.nonSecretString("message", in: b) ?? JSONScanner.nonSecretString("Message", in: b))
        }
        if json.type != nil || json.message != nil {
            if let t = json.type { code = t }
            message = json.message ?? ""
        } else {
            // Some front ends (and emulators) answer auth failures in the
            // query protocol's XML: <Error><Code>..</Code><Message>..</Message>.
            let text = response.nonSecretBodyText(limit: 4096)
            if let c = xmlElement("Code", in: text) { code = c }
            if let m = xmlElement("Message", in: text) { message = m }
            else if code.isEmpty { message = String(text.prefix(200)) }
        }
        if let hash = code.lastIndex(of: "#") { code = String(code[code.index(after: hash)...]) }
        if code.isEmpty { code = "HTTP\(response.status)" }
        // The endpoint's words go into every retry's log line, audit
        // records and status: bounded here, where they are read.
        return .service(code: boundedText(code, 128), message: boundedText(message, 512), status: response.status,
                        requestId: requestId.map { boundedText($0, 128) })
    }
}

/// At most `limit` bytes of an endpoint's text (cut on a byte: a cut
/// character shows as U+FFFD), marked when cut.
public func boundedText(_ s: String, _ limit: Int) -> String {
    guard s.utf8.count > limit else { return s }
    return String(decoding: s.utf8.prefix(limit), as: UTF8.self) + "...(\(s.utf8.count) bytes)"
}

/// The text of the first `<name>...</name>` element (no nesting, entities
/// for &amp; &lt; &gt; &quot; &apos; decoded, others left as they are).
/// Enough for AWS error bodies. Found in the bytes, as `XMLBytes` finds
/// STS's answers: a Character search missed `<Code>` followed by a
/// combining mark, which made one Character of `>` and the mark.
public func xmlElement(_ name: String, in text: String) -> String? {
    var text = text
    return text.withUTF8 { u -> String? in
        let b = UnsafeRawBufferPointer(u)
        guard let r = XMLBytes.range(name, in: b) else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(r.count)
        _ = XMLBytes.decode(b, r, lenient: true) { out.append($0) }
        return String(decoding: out, as: UTF8.self)
    }
}
