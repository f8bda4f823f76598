import AWS

/// A failed KMS call, typed by the service's error code, with a hint that
/// tells the operator what to check.
public struct KMSError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public let underlying: AWSError

    public init(operation: String, _ underlying: AWSError) {
        self.operation = operation
        self.underlying = underlying
    }

    /// The KMS error code (`AccessDeniedException`, ...), or the transport
    /// failure kind (`transport:connect`, ...).
    public var code: String {
        switch underlying {
        case .service(let code, _, _, _): return code
        case .transport(let t): return "transport:\(t.kind.rawValue)"
        case .credentials: return "NoCredentials"
        case .malformedResponse: return "MalformedResponse"
        }
    }

    public var isThrottling: Bool { underlying.retryClass == .throttling }
    /// True when KMS could not be reached or was failing (not the file's fault).
    public var isUnavailable: Bool { underlying.retryClass != .notRetryable }

    public var description: String {
        "KMS \(operation) failed: \(underlying). \(hint)"
    }

    public var hint: String { KMSError.hint(for: code) }

    public static func hint(for code: String) -> String {
        switch code {
        case "AccessDeniedException":
            return "Check that the key policy and the caller's IAM policy allow kms:\("Decrypt") on this key, including any kms:EncryptionContext conditions."
        case "IncorrectKeyException":
            return "The ciphertext was encrypted under a different KMS key than the one named."
        case "InvalidCiphertextException":
            return "The file is not a ciphertext of this account and region, was damaged, or its encryption context does not match."
        case "KMSInvalidStateException":
            return "The key is pending deletion, pending import or otherwise unusable; check its key state."
        case "DisabledException":
            return "The key is disabled; enable it (kms:EnableKey)."
        case "NotFoundException":
            return "The key does not exist here; check the region (region=, AWS_REGION) and the key ID."
        case "KeyUnavailableException":
            return "The key's custom key store is unavailable; check the CloudHSM cluster or external key manager."
        case "InvalidKeyUsageException":
            return "The key is not a symmetric ENCRYPT_DECRYPT key, or the algorithm does not match."
        case "InvalidGrantTokenException":
            return "A grant token is not valid."
        case "DependencyTimeoutException", "KMSInternalException":
            return "KMS had an internal problem; it is retried, and the next open tries again."
        case "ThrottlingException", "LimitExceededException":
            return "KMS throttled the request rate; retries were exhausted. Consider prefetch or a higher KMS quota."
        case "UnrecognizedClientException", "InvalidClientTokenId":
            return "The access key ID is not known to AWS; check the credentials in use."
        case "InvalidSignatureException", "SignatureDoesNotMatch", "IncompleteSignature":
            return "The request signature was rejected: the secret access key is wrong, or the clock is skewed."
        case "ExpiredTokenException", "ExpiredToken", "RequestExpired":
            return "The credentials (session token) expired, or the system clock is wrong."
        case "NoCredentials":
            return "No AWS credentials were found; see docs/troubleshooting.md."
        case "transport:connect":
            return "The KMS endpoint could not be reached; check the network, endpoint= and region=."
        case "transport:timeout":
            return "The KMS endpoint did not answer in time."
        case "transport:tls":
            return "TLS to the KMS endpoint failed; check the CA bundle (AWS_CA_BUNDLE) and the endpoint name."
        default:
            return ""
        }
    }
}
