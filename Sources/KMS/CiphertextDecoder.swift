import AWS
import SecureMemory

/// The ciphertext formats kmsfs reads, detected per file.
public enum CiphertextFormat: String, Sendable {
    /// The raw KMS `CiphertextBlob` (`aws kms encrypt ... | base64 --decode`).
    case kmsBlob = "kms-blob"
    /// The same blob as base64 text (`aws kms encrypt ... --output text`).
    case kmsBlobBase64 = "kms-blob-base64"
    /// An AWS Encryption SDK message (`aws-encryption-cli`, `kmsfs encrypt`).
    case encryptionSDK = "aws-encryption-sdk"
}

/// What went wrong decoding a file. `description` is the operator's line:
/// it names what is wrong and never includes plaintext.
public enum DecodeError: Error, CustomStringConvertible, Sendable {
    case empty
    case unrecognized(String)
    case malformed(String)
    case contextMismatch(String)
    case integrity(String)
    case kms(KMSError)
    case resources(String)

    public var description: String {
        switch self {
        case .empty: return "the ciphertext file is empty"
        case .unrecognized(let m): return "not a ciphertext kmsfs can read: \(m)"
        case .malformed(let m): return "damaged ciphertext: \(m)"
        case .contextMismatch(let m): return "encryption context check failed: \(m)"
        case .integrity(let m): return "integrity check failed: \(m)"
        case .kms(let e): return e.description
        case .resources(let m): return m
        }
    }

    /// True when KMS, the network or this machine (secure memory ran out)
    /// was at fault rather than the file: worth trying again.
    public var isUnavailable: Bool {
        switch self {
        case .kms(let e): return e.isUnavailable
        case .resources: return true
        default: return false
        }
    }

    /// True when KMS refused on policy grounds (may change without the file changing).
    public var isRefusal: Bool {
        if case .kms(let e) = self { return !e.isUnavailable && ["AccessDeniedException", "DisabledException", "KMSInvalidStateException", "NotFoundException", "KeyUnavailableException", "NoCredentials", "UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException", "InvalidClientTokenId", "SignatureDoesNotMatch", "IncompleteSignature"].contains(e.code) }
        return false
    }
}

/// The encryption-context key `kmsfs encrypt` binds a file's path to
/// (relative to SOURCE, without `.encrypted`).
public let kmsfsPathContextKey = "kmsfs:path"

/// A decrypted file and what was learnt about it (no plaintext in the
/// non-secret fields).
public struct DecodedSecret: Sendable {
    public var plaintext: SecureBuffer
    public var format: CiphertextFormat
    public var formatDetail: String
    public var keyId: String?
    public var encryptionContext: [(key: String, value: String)]
}

/// Detects a file's format and decrypts it through KMS, checking the
/// encryption context the mount requires.
public final class CiphertextDecoder: Sendable {
    public let kms: KMSClient
    /// Context pairs every file must carry (raw blobs: sent with Decrypt, so
    /// KMS checks them; Encryption SDK messages: checked against the header).
    public let requiredContext: [(key: String, value: String)]
    /// The context key that binds a file to its path (`kmsfs:path`); when a
    /// message carries it, it must equal the file's path in the mount.
    public let pathContextKey: String
    /// Refuse a file that is not bound to its path (`-o require_binding`):
    /// raw KMS blobs, and messages without `kmsfs:path`.
    public let requirePathBinding: Bool

    public init(kms: KMSClient, requiredContext: [(key: String, value: String)] = [], pathContextKey: String = kmsfsPathContextKey,
                requirePathBinding: Bool = false) {
        self.kms = kms
        self.requiredContext = requiredContext
        self.pathContextKey = pathContextKey
        self.requirePathBinding = requirePathBinding
    }

    private func refuseUnbound(_ what: String) -> DecodeError {
        .contextMismatch("\(what) is not bound to its path (\(pathContextKey)) and the mount has require_binding; re-encrypt it with kmsfs encrypt --root SOURCE")
    }

    public static func detect(_ bytes: [UInt8]) -> CiphertextFormat? {
        guard !bytes.isEmpty else { return nil }
        if EncryptionSDKMessage.looksLikeMessage(bytes) { return .encryptionSDK }
        if bytes.withUnsafeBytes({ Base64.looksLikeBase64($0) }) { return .kmsBlobBase64 }
        return .kmsBlob
    }

    /// Decrypts a file's bytes; `path` is its path in the mount (relative
    /// to SOURCE, without `.encrypted`), which a message's `kmsfs:path`
    /// must equal.
    public func decrypt(_ bytes: [UInt8], path: String) throws(DecodeError) -> DecodedSecret {
        try decrypt(bytes, binding: .exact(path))
    }

    public func decrypt(_ bytes: [UInt8], binding: PathBinding) throws(DecodeError) -> DecodedSecret {
        guard let format = CiphertextDecoder.detect(bytes) else { throw .empty }
        switch format {
        case .kmsBlob:
            if requirePathBinding { throw refuseUnbound("a raw KMS ciphertext") }
            return try decryptBlob(bytes, format: .kmsBlob)
        case .kmsBlobBase64:
            guard let blob = Base64.decode(String(decoding: bytes, as: UTF8.self)), !blob.isEmpty else {
                throw .malformed("base64 text that does not decode")
            }
            if EncryptionSDKMessage.looksLikeMessage(blob) {
                // aws-encryption-cli --encode: a message in base64.
                var d = try EncryptionSDKDecryptor(kms: kms).decrypt(blob, binding: binding, requiredContext: requiredContext,
                                                                     pathContextKey: pathContextKey, requireBinding: requirePathBinding)
                d.formatDetail += "/base64"
                return d
            }
            if requirePathBinding { throw refuseUnbound("a raw KMS ciphertext") }
            return try decryptBlob(blob, format: .kmsBlobBase64)
        case .encryptionSDK:
            return try EncryptionSDKDecryptor(kms: kms).decrypt(bytes, binding: binding, requiredContext: requiredContext,
                                                                pathContextKey: pathContextKey, requireBinding: requirePathBinding)
        }
    }

    private func decryptBlob(_ blob: [UInt8], format: CiphertextFormat) throws(DecodeError) -> DecodedSecret {
        guard blob.count >= 16 else {
            throw .unrecognized("\(blob.count) bytes is too short for a KMS ciphertext")
        }
        guard blob.count <= 6144 + 4096 else {
            throw .unrecognized("\(blob.count) bytes is too long for a KMS ciphertext (KMS encrypts at most 4096 bytes; larger files need the Encryption SDK format)")
        }
        do {
            let r = try kms.decrypt(ciphertextBlob: blob, encryptionContext: requiredContext)
            return DecodedSecret(plaintext: r.plaintext, format: format, formatDetail: format.rawValue,
                                 keyId: r.keyId, encryptionContext: requiredContext)
        } catch {
            throw .kms(error)
        }
    }
}
