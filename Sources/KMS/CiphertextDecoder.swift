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
    /// Refused by the mount's own limits before or after KMS answered: too
    /// many encrypted data keys, a key `kms_key=` does not allow, or a
    /// suite without key commitment under `require_commitment`.
    case refused(String)

    public var description: String {
        switch self {
        case .empty: return "the ciphertext file is empty"
        case .unrecognized(let m): return "not a ciphertext kmsfs can read: \(m)"
        case .malformed(let m): return "damaged ciphertext: \(m)"
        case .contextMismatch(let m): return "encryption context check failed: \(m)"
        case .integrity(let m): return "integrity check failed: \(m)"
        case .kms(let e): return e.description
        case .resources(let m): return m
        case .refused(let m): return "refused: \(m)"
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
    /// Refuse Encryption SDK messages under a suite without key commitment
    /// (`-o require_commitment`): the version 1 suites, which
    /// aws-encryption-cli refuses to decrypt by default.
    public let requireCommitment: Bool
    /// The KMS keys files may be under (`-o kms_key=`); empty allows any.
    public let allowedKeys: KMSKeyAllowList
    /// The most encrypted data keys an Encryption SDK message may list
    /// (`-o max_encrypted_data_keys=`), checked before any KMS call.
    public let maxEncryptedDataKeys: Int

    public init(kms: KMSClient, requiredContext: [(key: String, value: String)] = [], pathContextKey: String = kmsfsPathContextKey,
                requirePathBinding: Bool = false, requireCommitment: Bool = false, allowedKeys: KMSKeyAllowList = KMSKeyAllowList(),
                maxEncryptedDataKeys: Int = EncryptionSDKMessage.defaultMaxEncryptedDataKeys) {
        self.kms = kms
        self.requiredContext = requiredContext
        self.pathContextKey = pathContextKey
        self.requirePathBinding = requirePathBinding
        self.requireCommitment = requireCommitment
        self.allowedKeys = allowedKeys
        self.maxEncryptedDataKeys = maxEncryptedDataKeys
    }

    private var sdkDecryptor: EncryptionSDKDecryptor {
        EncryptionSDKDecryptor(kms: kms, allowedKeys: allowedKeys, maxEncryptedDataKeys: maxEncryptedDataKeys,
                               requireCommitment: requireCommitment)
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
            guard let blob = bytes.withUnsafeBytes({ Base64.decode($0) }), !blob.isEmpty else {
                throw .malformed("base64 text that does not decode")
            }
            if EncryptionSDKMessage.looksLikeMessage(blob) {
                // aws-encryption-cli --encode: a message in base64.
                var d = try sdkDecryptor.decrypt(blob, binding: binding, requiredContext: requiredContext,
                                                 pathContextKey: pathContextKey, requireBinding: requirePathBinding)
                d.formatDetail += "/base64"
                return d
            }
            if requirePathBinding { throw refuseUnbound("a raw KMS ciphertext") }
            return try decryptBlob(blob, format: .kmsBlobBase64)
        case .encryptionSDK:
            return try sdkDecryptor.decrypt(bytes, binding: binding, requiredContext: requiredContext,
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
        guard !allowedKeys.isEmpty else {
            do {
                let r = try kms.decrypt(ciphertextBlob: blob, encryptionContext: requiredContext)
                return DecodedSecret(plaintext: r.plaintext, format: format, formatDetail: format.rawValue,
                                     keyId: r.keyId, encryptionContext: requiredContext)
            } catch {
                throw .kms(error)
            }
        }
        // kms_key=: KMS Decrypt takes one KeyId, so each listed key is
        // tried in turn, and the next only while KMS refuses the one named
        // (IncorrectKeyException; AccessDeniedException where the caller may
        // not use it): at most one call per entry.
        var refusal: (entry: KMSKeyAllowList.Entry, error: KMSError)? = nil
        for entry in allowedKeys.entries {
            let r: KMSClient.Decrypted
            do {
                r = try kms.decrypt(ciphertextBlob: blob, encryptionContext: requiredContext, keyId: entry.description)
            } catch {
                guard error.kind == .incorrectKey || error.kind == .accessDenied else { throw .kms(error) }
                refusal = (entry, error)
                continue
            }
            if entry.isKeyARN, r.keyId != entry.description {
                // KMS ignored KeyId (or answers for another key): the
                // plaintext is not used.
                r.plaintext.wipeContents()
                throw .refused("KMS decrypted the ciphertext with key \(r.keyId.map(shownKey) ?? "(none named)") although the request named \(entry) (kms_key=); the plaintext was wiped")
            }
            return DecodedSecret(plaintext: r.plaintext, format: format, formatDetail: format.rawValue,
                                 keyId: r.keyId ?? entry.description, encryptionContext: requiredContext)
        }
        let (entry, error) = refusal!
        if allowedKeys.entries.count == 1 {
            throw .refused("KMS refused to decrypt it under \(entry), the key kms_key= allows: \(error)")
        }
        throw .refused("KMS refused to decrypt it under each of the \(allowedKeys.entries.count) keys kms_key= allows; the last, \(entry): \(error)")
    }
}
