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

    /// The error as a type: every code KMS documents, the AWS-wide
    /// authentication and throttling codes, and the local failures. Codes
    /// KMS adds later come out as `.other`.
    public var kind: Kind { Kind(code: code) }

    /// True when KMS could not be reached or was failing (not the file's fault).
    public var isUnavailable: Bool { underlying.retryClass != .notRetryable }

    public var description: String {
        let h = hint
        // KMS's own messages mostly end in a full stop: no second one.
        let what = "\(underlying)"
        let stop = what.hasSuffix(".") || what.hasSuffix("!") || what.hasSuffix("?") ? "" : "."
        return "KMS \(operation) failed: \(what)\(stop)\(h.isEmpty ? "" : " " + h)"
    }

    public var hint: String { kind.hint(operation: operation) }

    public static func hint(for code: String) -> String { Kind(code: code).hint(operation: "Decrypt") }

    /// What went wrong, by what the operator has to look at.
    public enum Kind: Equatable, Sendable {
        // The caller may not use the key.
        case accessDenied
        case invalidGrantToken
        case invalidGrantId
        // The key cannot be used now.
        case disabled
        case invalidState
        case keyUnavailable
        case notFound
        case invalidArn
        case customKeyStore(String)
        case externalKeyStore(String)
        // The ciphertext or the request does not fit the key.
        case invalidCiphertext
        case incorrectKey
        case invalidKeyUsage
        case unsupportedOperation
        case validation
        case invalidSignatureOrMac
        case dryRun
        // Management operations kmsfs does not make; typed all the same.
        case management(String)
        // KMS itself.
        case throttling
        case limitExceeded
        case internalError
        case dependencyTimeout
        case serviceUnavailable
        // Authentication of the request.
        case unknownAccessKey
        case badSignature
        case expiredCredentials
        case missingAuthentication
        case optInRequired
        // Local failures.
        case noCredentials
        case connect
        case timeout
        case tls
        case io
        case malformedResponse
        case other(String)

        public init(code: String) {
            switch code {
            case "AccessDeniedException", "AccessDenied", "AccessDeniedError": self = .accessDenied
            case "InvalidGrantTokenException": self = .invalidGrantToken
            case "InvalidGrantIdException": self = .invalidGrantId
            case "DisabledException": self = .disabled
            case "KMSInvalidStateException": self = .invalidState
            case "KeyUnavailableException": self = .keyUnavailable
            case "NotFoundException": self = .notFound
            case "InvalidArnException": self = .invalidArn
            case "CustomKeyStoreInvalidStateException", "CustomKeyStoreNotFoundException", "CustomKeyStoreHasCMKsException",
                 "CustomKeyStoreNameInUseException", "CloudHsmClusterInUseException", "CloudHsmClusterInvalidConfigurationException",
                 "CloudHsmClusterNotActiveException", "CloudHsmClusterNotFoundException", "CloudHsmClusterNotRelatedException",
                 "IncorrectTrustAnchorException":
                self = .customKeyStore(code)
            case _ where code.hasPrefix("XksKey") || code.hasPrefix("XksProxy"):
                self = .externalKeyStore(code)
            case "InvalidCiphertextException": self = .invalidCiphertext
            case "IncorrectKeyException": self = .incorrectKey
            case "InvalidKeyUsageException": self = .invalidKeyUsage
            case "UnsupportedOperationException": self = .unsupportedOperation
            case "ValidationException", "ValidationError", "InvalidParameterValue", "InvalidParameterCombination",
                 "MissingParameter", "SerializationException", "InvalidAction", "InvalidQueryParameter", "MalformedQueryString":
                self = .validation
            case "KMSInvalidSignatureException", "KMSInvalidMacException": self = .invalidSignatureOrMac
            case "DryRunOperationException": self = .dryRun
            case "AlreadyExistsException", "ConflictException", "ExpiredImportTokenException", "IncorrectKeyMaterialException",
                 "InvalidAliasNameException", "InvalidImportTokenException", "InvalidMarkerException",
                 "MalformedPolicyDocumentException", "TagException":
                self = .management(code)
            case "ThrottlingException", "Throttling", "RequestLimitExceeded", "TooManyRequestsException": self = .throttling
            case "LimitExceededException": self = .limitExceeded
            case "KMSInternalException", "InternalFailure", "InternalError", "InternalServerError": self = .internalError
            case "DependencyTimeoutException", "RequestTimeout", "RequestTimeoutException": self = .dependencyTimeout
            case "ServiceUnavailable", "ServiceUnavailableException": self = .serviceUnavailable
            case "UnrecognizedClientException", "InvalidClientTokenId", "InvalidAccessKeyId": self = .unknownAccessKey
            case "InvalidSignatureException", "SignatureDoesNotMatch", "IncompleteSignature": self = .badSignature
            case "ExpiredTokenException", "ExpiredToken", "RequestExpired", "TokenRefreshRequired": self = .expiredCredentials
            case "MissingAuthenticationToken", "MissingAuthenticationTokenException": self = .missingAuthentication
            case "OptInRequired", "SubscriptionRequiredException", "NotAuthorized": self = .optInRequired
            case "NoCredentials": self = .noCredentials
            case "transport:connect": self = .connect
            case "transport:timeout": self = .timeout
            case "transport:tls": self = .tls
            case "transport:io": self = .io
            case "MalformedResponse", "transport:tooLarge": self = .malformedResponse
            default: self = .other(code)
            }
        }

        /// One or two sentences: what to check, in the operator's terms.
        public func hint(operation: String) -> String {
            switch self {
            case .accessDenied:
                return "Check that the key policy, a grant, or the caller's IAM policy allows kms:\(operation) on this key for the identity in use (and any kms:EncryptionContext or kms:ViaService conditions)."
            case .invalidGrantToken:
                return "A grant token is not valid: the grant was retired or revoked; check the key's grants."
            case .invalidGrantId:
                return "The grant ID is not valid for this key; check the key's grants."
            case .disabled:
                return "The key is disabled: check its key state and enable it (kms:EnableKey)."
            case .invalidState:
                return "The key is not in a usable state (pending deletion, pending import, unavailable): check its key state; cancel a scheduled deletion with kms:CancelKeyDeletion."
            case .keyUnavailable:
                return "The key material is unavailable (custom key store disconnected, or imported material expired): check the key store and the key's state."
            case .notFound:
                return "The key does not exist in this account and region: check the region (region=, AWS_REGION) and the key ID or alias."
            case .invalidArn:
                return "The key ARN is malformed or names another partition; check the key ID."
            case .customKeyStore(let code):
                return "The key's CloudHSM key store is not usable (\(code)): check the key store's connection state and its CloudHSM cluster."
            case .externalKeyStore(let code):
                return "The key's external key store failed (\(code)): check the XKS proxy, its credentials and the external key."
            case .invalidCiphertext:
                return "The file is not a ciphertext of a key in this account and region, was damaged, or its encryption context does not match; check the region and how the file was made."
            case .incorrectKey:
                return "The ciphertext was encrypted under a different KMS key than the one named; check the key ID."
            case .invalidKeyUsage:
                return "The key is not a symmetric ENCRYPT_DECRYPT key, or the algorithm does not match; check the key's usage and spec."
            case .unsupportedOperation:
                return "The key does not support this operation (key spec or key store); check the key's spec."
            case .validation:
                return "KMS rejected the request's parameters; the ciphertext may be oversized or damaged."
            case .invalidSignatureOrMac:
                return "A signature or MAC did not verify."
            case .dryRun:
                return "The request was a dry run."
            case .management(let code):
                return "A key management call failed (\(code)); kmsfs does not make these."
            case .throttling:
                return "KMS kept throttling for the whole call deadline although kmsfs slowed its calls down; check the account's KMS request quotas (Service Quotas), spread mounts' start, or give more time with timeout=."
            case .limitExceeded:
                return "An account limit was exceeded; check the KMS quotas (Service Quotas)."
            case .internalError, .serviceUnavailable:
                return "KMS had an internal problem; the call was retried and the next open tries again."
            case .dependencyTimeout:
                return "KMS timed out reaching a dependency (a custom key store, for one); the next open tries again."
            case .unknownAccessKey:
                return "The access key ID is not known to AWS in this partition: check which credentials are in use (kmsfs logs their source) and the region."
            case .badSignature:
                return "The request signature was rejected: the secret access key does not match the access key ID, or the system clock is wrong (check NTP)."
            case .expiredCredentials:
                return "The credentials (session token) expired: check their source can still refresh them (kmsfs logs refresh failures) and the system clock."
            case .missingAuthentication:
                return "The request was not signed; check the endpoint (endpoint=) is a KMS endpoint."
            case .optInRequired:
                return "The account is not subscribed to KMS in this region, or the region is not enabled; check the region."
            case .noCredentials:
                return "No AWS credentials could be obtained; see docs/credentials.md for the sources kmsfs tries and their order."
            case .connect:
                return "The KMS endpoint could not be reached: check the network, DNS, a VPC endpoint's security group, endpoint= and region=."
            case .timeout:
                return "The KMS endpoint did not answer in time (timeout=); check the network path and any proxy."
            case .tls:
                return "TLS to the KMS endpoint failed: check the CA bundle (ca_bundle=, AWS_CA_BUNDLE), the system clock, and that the endpoint name matches its certificate."
            case .io:
                return "The connection to KMS broke; the call was retried and the next open tries again."
            case .malformedResponse:
                return "KMS's answer could not be read; check endpoint= points at KMS, not at a proxy page."
            case .other:
                return ""
            }
        }
    }
}
