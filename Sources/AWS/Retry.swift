import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The AWS SDKs' "standard" retry mode: a bounded number of attempts,
/// exponential backoff with full jitter, and a retry quota (token bucket)
/// shared by every call of a client, so an outage is not multiplied by
/// retries. See botocore `retries/standard.py` and the SDK reference
/// "Retry behavior".
public final class RetryStrategy: Sendable {
    public struct Configuration: Sendable {
        /// Attempts per call, the first included (`AWS_MAX_ATTEMPTS`).
        public var maxAttempts = 3
        /// Backoff before retry n (1-based) is random(0, 1) * base * 2^(n-1),
        /// capped at `maxBackoff`.
        public var baseDelay = 1.0
        public var maxBackoff = 20.0
        /// Quota: initial tokens, cost of a retry, cost of a retry after a
        /// timeout, refund for a success that needed no retry.
        public var quotaCapacity = 500
        public var retryCost = 5
        public var timeoutRetryCost = 10
        public var noRetryIncrement = 1
        /// Attempts a throttled call may make within its deadline, and its
        /// backoff (full jitter, doubling from the base up to the cap).
        public var maxThrottleAttempts = 30
        public var throttleBaseDelay = 0.05
        public var maxThrottleBackoff = 1.0
        public init() {}
    }

    public let configuration: Configuration
    private let tokens: Mutex<Int>
    private let random: @Sendable () -> Double

    public init(_ configuration: Configuration = Configuration(),
                random: @escaping @Sendable () -> Double = { Double(UInt32.random(in: 0...UInt32.max)) / Double(UInt32.max) }) {
        self.configuration = configuration
        self.tokens = Mutex(configuration.quotaCapacity)
        self.random = random
    }

    /// Tokens left in the retry quota.
    public var availableTokens: Int { tokens.withLock { $0 } }

    /// What the caller should do after a failed attempt.
    public enum Decision: Equatable, Sendable {
        case retry(after: Double, cost: Int)
        case giveUp(reason: String)
    }

    /// `attempt` is the 1-based number of the attempt that just failed.
    ///
    /// Throttling is the service asking to slow down, not a failure to
    /// count against the outage quota: with an `AdaptiveLimiter` cutting the
    /// calls in flight, a throttled call is retried with backoff for as long
    /// as its deadline allows (at least `maxAttempts`, at most
    /// `maxThrottleAttempts`), and takes no quota.
    public func decide(after failure: RetryClass, attempt: Int) -> Decision {
        guard failure != .notRetryable else { return .giveUp(reason: "not retryable") }
        if failure == .throttling {
            guard attempt < max(configuration.maxAttempts, configuration.maxThrottleAttempts) else {
                return .giveUp(reason: "still throttled after \(attempt) attempts")
            }
            // The limiter already throttles the rate (calls in flight); the
            // backoff only spreads the retries: short, capped at a second.
            let delay = random() * min(configuration.maxThrottleBackoff,
                                       configuration.throttleBaseDelay * pow(2, Double(min(attempt, 10) - 1)))
            return .retry(after: delay, cost: 0)
        }
        guard attempt < configuration.maxAttempts else {
            return .giveUp(reason: "gave up after \(attempt) attempts")
        }
        let cost = failure == .timeout ? configuration.timeoutRetryCost : configuration.retryCost
        let acquired = tokens.withLock { t -> Bool in
            guard t >= cost else { return false }
            t -= cost
            return true
        }
        guard acquired else { return .giveUp(reason: "retry quota exhausted") }
        let delay = min(random() * configuration.baseDelay * pow(2, Double(attempt - 1)), configuration.maxBackoff)
        return .retry(after: delay, cost: cost)
    }

    /// Records a success: refunds a retry's cost, or adds the small
    /// increment when the first attempt succeeded.
    public func recordSuccess(retryCost: Int) {
        tokens.withLock { t in
            t = min(configuration.quotaCapacity, t + (retryCost > 0 ? retryCost : configuration.noRetryIncrement))
        }
    }
}

/// How a failed attempt classifies for retrying.
public enum RetryClass: Equatable, Sendable {
    case throttling
    case transient     // 5xx, connection reset, connect failure
    case timeout
    case notRetryable
}

/// Error codes the SDKs treat as throttling.
public let throttlingErrorCodes: Set<String> = [
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "TransactionInProgressException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
    "EC2ThrottledException",
]

/// Error codes the SDKs treat as transient whatever their status.
public let transientErrorCodes: Set<String> = [
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
    "InternalError", "InternalFailure", "ServiceUnavailable", "IDPCommunicationError",
]

public let transientStatusCodes: Set<Int> = [500, 502, 503, 504]
