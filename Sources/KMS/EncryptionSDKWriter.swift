import AWS
import SecureMemory

/// Why `kmsfs encrypt` could not produce a message.
public enum EncryptError: Error, CustomStringConvertible, Sendable {
    case kms(KMSError)
    case invalid(String)
    case crypto(String)

    public var description: String {
        switch self {
        case .kms(let e): return e.description
        case .invalid(let m): return m
        case .crypto(let m): return m
        }
    }
}

/// Writes AWS Encryption SDK version 2 messages with the default suite
/// (0x0578: AES-256-GCM, HKDF-SHA512, key commitment, ECDSA P-384
/// signature), framed, with one "aws-kms" data key from GenerateDataKey.
/// Readable by every Encryption SDK (aws-encryption-cli included) and by
/// `EncryptionSDKDecryptor`.
public enum EncryptionSDKWriter {
    public static let defaultFrameLength = 4096

    public struct Message: Sendable {
        /// The whole message (ciphertext: not secret).
        public let bytes: [UInt8]
        /// The key ARN KMS named in its GenerateDataKey answer.
        public let keyId: String
        /// The context written into the header, signing key included.
        public let encryptionContext: [(key: String, value: String)]
    }

    /// A key that `context` holds more than once (compared by bytes, as
    /// readers compare them), or nil.
    public static func duplicateKey(in context: [(key: String, value: String)]) -> String? {
        var seen = Set<[UInt8]>()
        return context.first { !seen.insert(Array($0.key.utf8)).inserted }?.key
    }

    /// Encrypts `plaintext` under a data key that KMS generates under `keyId`.
    public static func encrypt(_ plaintext: SecureBuffer, kms: KMSClient, keyId: String,
                               context: [(key: String, value: String)],
                               frameLength: Int = defaultFrameLength) throws(EncryptError) -> Message {
        let suite = EncryptionSDKSuite.committingSigned
        guard frameLength > 0, frameLength <= Int(Int32.max) else { throw .invalid("frame length \(frameLength) is out of range") }
        for (k, _) in context where k.hasPrefix("aws-crypto-") {
            throw .invalid("encryption context key '\(k)' is reserved for the Encryption SDK")
        }
        if let k = duplicateKey(in: context) {
            // The message could never be read: every reader refuses it.
            throw .invalid("encryption context key '\(k)' is given twice")
        }
        guard let signer = ESDKSigner(curve: .p384) else { throw .crypto("cannot generate an ECDSA P-384 signing key (libcrypto)") }
        var fullContext = context
        fullContext.append((encryptionSDKPublicKeyContextKey, Base64.encode(signer.publicKey)))
        let aad = EncryptionSDKMessage.serializeContext(fullContext)
        guard aad.count <= Int(UInt16.max) else { throw .invalid("the encryption context is too large (\(aad.count) bytes serialized)") }

        let dataKey: KMSClient.DataKey
        do {
            dataKey = try kms.generateDataKey(keyId: keyId, numberOfBytes: suite.dataKeyLength, encryptionContext: fullContext)
        } catch {
            throw .kms(error)
        }
        guard dataKey.plaintext.count == suite.dataKeyLength else {
            throw .crypto("KMS returned a \(dataKey.plaintext.count)-byte data key; \(suite.dataKeyLength) were asked for")
        }
        guard dataKey.ciphertextBlob.count <= Int(UInt16.max), dataKey.keyId.utf8.count <= Int(UInt16.max) else {
            throw .crypto("the encrypted data key from KMS is too large for the message format")
        }
        guard let messageID = ESDKCrypto.randomBytes(32) else { throw .crypto("no random bytes for the message ID (libcrypto)") }
        guard let (key, commitment) = EncryptionSDKMessage.deriveKeys(suite: suite, dataKey: dataKey.plaintext, messageID: messageID),
              let commitment else {
            throw .crypto("cannot derive the data encryption key (libcrypto HKDF or secure memory failed)")
        }

        // Header body.
        var out: [UInt8] = [2]
        out.appendU16(Int(suite.id))
        out += messageID
        out.appendU16(aad.count)
        out += aad
        out.appendU16(1)
        let provider = Array("aws-kms".utf8), info = Array(dataKey.keyId.utf8)
        out.appendU16(provider.count); out += provider
        out.appendU16(info.count); out += info
        out.appendU16(dataKey.ciphertextBlob.count); out += dataKey.ciphertextBlob
        out.append(2)                       // framed
        out.appendU32(frameLength)
        out += commitment
        // Header authentication: GCM over the header body, zero IV.
        let headerBody = out
        let zeroIV = [UInt8](repeating: 0, count: 12)
        let sealed = key.withUnsafeBytes { k in
            ESDKCrypto.gcmSeal(key: k, iv: zeroIV, aad: headerBody, plaintext: UnsafeRawBufferPointer(start: nil, count: 0),
                               appendingTo: &out)
        }
        guard sealed else { throw .crypto("AES-GCM failed on the header (libcrypto)") }

        // Frames: full frames while more than a frame's worth remains; the
        // final frame holds the rest (possibly nothing), as the SDKs do.
        var offset = 0
        var sequence = 1
        let total = plaintext.count
        while true {
            let remaining = total - offset
            let final = remaining < frameLength
            let n = final ? remaining : frameLength
            guard sequence < 0xFFFF_FFFF else { throw .invalid("the plaintext needs more frames than the format allows") }
            if final { out.appendU32(0xFFFF_FFFF) }
            out.appendU32(sequence)
            var iv = [UInt8](repeating: 0, count: 8)
            iv.appendU32(sequence)
            out += iv
            if final { out.appendU32(n) }
            let aadFrame = EncryptionSDKMessage.bodyAAD(messageID: messageID, framed: true, final: final,
                                                        sequence: UInt32(sequence), length: n)
            let ok = key.withUnsafeBytes { k in
                plaintext.withUnsafeBytes { p in
                    ESDKCrypto.gcmSeal(key: k, iv: iv, aad: aadFrame,
                                       plaintext: UnsafeRawBufferPointer(rebasing: p[offset..<(offset + n)]), appendingTo: &out)
                }
            }
            guard ok else { throw .crypto("AES-GCM failed on frame \(sequence) (libcrypto)") }
            offset += n
            sequence += 1
            if final { break }
        }

        // Footer: the signature over header and body.
        guard signer.update(out), let signature = signer.finish() else { throw .crypto("ECDSA signing failed (libcrypto)") }
        out.appendU16(signature.count)
        out += signature
        return Message(bytes: out, keyId: dataKey.keyId, encryptionContext: fullContext)
    }
}
