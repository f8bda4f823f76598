import AWS
import SecureMemory

// The AWS Encryption SDK message format (aws-encryption-sdk-specification,
// data-format/message-header.md, message-body.md, message-footer.md,
// framework/algorithm-suites.md), versions 1 and 2, read whole from memory.
//
//   message = header body [footer]
//   header  = header-body header-auth
//   v1 header-body: 01 80 suite(2) message-id(16) aad-len(2) aad
//                   edk-count(2) edk* content-type(1) reserved(4)=0
//                   iv-len(1)=12 frame-len(4)
//   v2 header-body: 02 suite(2) message-id(32) aad-len(2) aad
//                   edk-count(2) edk* content-type(1) frame-len(4)
//                   commitment(32, committing suites)
//   header-auth: v1 iv(12) tag(16); v2 tag(16) (the IV is 12 zero bytes)
//   edk   = provider-id-len(2) provider-id provider-info-len(2)
//           provider-info ciphertext-len(2) ciphertext
//   aad   = (empty) | count(2) (key-len(2) key value-len(2) value)*
//   framed body: frame* final-frame, where
//     frame       = seq(4) iv(12) content(frame-len) tag(16)
//     final-frame = ffffffff seq(4) iv(12) len(4) content(len) tag(16)
//   unframed body: iv(12) len(8) content(len) tag(16)
//   footer: sig-len(2) signature (DER ECDSA over header and body)

/// An algorithm suite of the Encryption SDK.
public struct EncryptionSDKSuite: Sendable, Equatable, CustomStringConvertible {
    public let id: UInt16
    public let name: String
    /// The message format version this suite is written in.
    public let messageVersion: UInt8
    public let dataKeyLength: Int
    /// HKDF digest ("SHA256", "SHA384", "SHA512"); nil for the identity KDF.
    public let kdfDigest: String?
    public let committing: Bool
    let curve: ESDKCurve?

    public var isSigned: Bool { curve != nil }
    public var hexID: String {
        let h = String(id, radix: 16)
        return "0x" + String(repeating: "0", count: 4 - h.count) + h
    }
    public var description: String { "\(hexID) \(name)" }

    public static func == (a: EncryptionSDKSuite, b: EncryptionSDKSuite) -> Bool { a.id == b.id }

    public static let all: [EncryptionSDKSuite] = [
        .init(id: 0x0014, name: "AES_128_GCM_IV12_TAG16", messageVersion: 1, dataKeyLength: 16, kdfDigest: nil, committing: false, curve: nil),
        .init(id: 0x0046, name: "AES_192_GCM_IV12_TAG16", messageVersion: 1, dataKeyLength: 24, kdfDigest: nil, committing: false, curve: nil),
        .init(id: 0x0078, name: "AES_256_GCM_IV12_TAG16", messageVersion: 1, dataKeyLength: 32, kdfDigest: nil, committing: false, curve: nil),
        .init(id: 0x0114, name: "AES_128_GCM_IV12_TAG16_HKDF_SHA256", messageVersion: 1, dataKeyLength: 16, kdfDigest: "SHA256", committing: false, curve: nil),
        .init(id: 0x0146, name: "AES_192_GCM_IV12_TAG16_HKDF_SHA256", messageVersion: 1, dataKeyLength: 24, kdfDigest: "SHA256", committing: false, curve: nil),
        .init(id: 0x0178, name: "AES_256_GCM_IV12_TAG16_HKDF_SHA256", messageVersion: 1, dataKeyLength: 32, kdfDigest: "SHA256", committing: false, curve: nil),
        .init(id: 0x0214, name: "AES_128_GCM_IV12_TAG16_HKDF_SHA256_ECDSA_P256", messageVersion: 1, dataKeyLength: 16, kdfDigest: "SHA256", committing: false, curve: .p256),
        .init(id: 0x0346, name: "AES_192_GCM_IV12_TAG16_HKDF_SHA384_ECDSA_P384", messageVersion: 1, dataKeyLength: 24, kdfDigest: "SHA384", committing: false, curve: .p384),
        .init(id: 0x0378, name: "AES_256_GCM_IV12_TAG16_HKDF_SHA384_ECDSA_P384", messageVersion: 1, dataKeyLength: 32, kdfDigest: "SHA384", committing: false, curve: .p384),
        .init(id: 0x0478, name: "AES_256_GCM_HKDF_SHA512_COMMIT_KEY", messageVersion: 2, dataKeyLength: 32, kdfDigest: "SHA512", committing: true, curve: nil),
        .init(id: 0x0578, name: "AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384", messageVersion: 2, dataKeyLength: 32, kdfDigest: "SHA512", committing: true, curve: .p384),
    ]

    public static func byID(_ id: UInt16) -> EncryptionSDKSuite? { all.first { $0.id == id } }

    /// The default suite of the SDKs and of `kmsfs encrypt`.
    public static var committingSigned: EncryptionSDKSuite { byID(0x0578)! }
}

/// One encrypted copy of the data key, as the header lists it.
public struct EncryptedDataKey: Sendable {
    public let providerID: String
    public let providerInfo: [UInt8]
    public let ciphertext: [UInt8]
    /// The provider information as text (the key ARN for "aws-kms").
    public var providerInfoText: String? { String(validating: providerInfo, as: UTF8.self) }
}

/// The encryption-context key that carries the signing public key.
public let encryptionSDKPublicKeyContextKey = "aws-crypto-public-key"

/// A parsed message header. Nothing in it is secret; nothing in it is
/// trusted until the header authentication tag has been checked.
public struct EncryptionSDKHeader: Sendable {
    public let version: UInt8
    public let suite: EncryptionSDKSuite
    public let messageID: [UInt8]
    /// In serialized order (sorted by key bytes).
    public let encryptionContext: [(key: String, value: String)]
    public let encryptedDataKeys: [EncryptedDataKey]
    public let framed: Bool
    /// Bytes per frame (0 for unframed bodies).
    public let frameLength: Int
    /// The committed key (v2 committing suites), else empty.
    public let commitment: [UInt8]
    /// `bytes[0..<bodyLength]` is the header body (the header-auth AAD).
    let bodyLength: Int
    let authIV: [UInt8]
    let authTag: Range<Int>
    /// The header's length (body and authentication): where the message
    /// body begins.
    public let length: Int

    /// Keys compare as bytes (KMS's view), never as Unicode-equivalent Strings.
    public func contextValue(_ key: String) -> String? {
        encryptionContext.first { $0.key.utf8.elementsEqual(key.utf8) }?.value
    }
}

/// A message's layout. Frames are not kept (a 64 MiB message of 1-byte
/// frames has two million): `layout(_:visit:)` hands each one to a visitor
/// as it is parsed. Offsets into the message bytes; nothing is decrypted.
struct EncryptionSDKLayout {
    struct Frame {
        let sequence: UInt32
        let final: Bool
        let iv: Range<Int>
        let content: Range<Int>
        let tag: Range<Int>
    }
    let header: EncryptionSDKHeader
    let frameCount: Int
    /// `bytes[0..<signedLength]` is what the footer signs (header and body).
    let signedLength: Int
    let signature: Range<Int>?
    let plaintextLength: Int
}

public enum EncryptionSDKMessage {
    /// Version 1 messages start 0x01 0x80 (version, type) and a known
    /// suite; version 2 messages start 0x02 and a committing suite.
    public static func looksLikeMessage(_ bytes: [UInt8]) -> Bool {
        guard bytes.count >= 3 else { return false }
        if bytes[0] == 0x01 && bytes[1] == 0x80 { return true }
        if bytes[0] == 0x02, let s = EncryptionSDKSuite.byID(UInt16(bytes[1]) << 8 | UInt16(bytes[2])),
           s.messageVersion == 2 { return true }
        return false
    }

    /// The most encrypted data keys a message may list unless the mount
    /// says otherwise (`max_encrypted_data_keys=`, the SDKs' option of the
    /// same name). Each "aws-kms" key may cost one KMS Decrypt; the format
    /// allows 65,535. See docs/formats.md for why 10.
    public static let defaultMaxEncryptedDataKeys = 10
    /// What `max_encrypted_data_keys=` and `--max-encrypted-data-keys` accept.
    public static let maxEncryptedDataKeysRange = 1...100

    /// Parses the header alone. With `maxEncryptedDataKeys`, a header that
    /// lists more keys is refused as soon as the count is read.
    public static func parseHeader(_ bytes: [UInt8], maxEncryptedDataKeys: Int? = nil) throws(DecodeError) -> EncryptionSDKHeader {
        var r = ByteReader(bytes)
        return try parseHeader(&r, maxEncryptedDataKeys: maxEncryptedDataKeys)
    }

    static func parseHeader(_ r: inout ByteReader, maxEncryptedDataKeys: Int? = nil) throws(DecodeError) -> EncryptionSDKHeader {
        let version = try r.u8("the header version")
        guard version == 1 || version == 2 else {
            throw .unrecognized("Encryption SDK message version \(version) is not 1 or 2")
        }
        if version == 1 {
            let type = try r.u8("the header type")
            guard type == 0x80 else { throw .malformed("bad header: message type 0x\(String(type, radix: 16)) is not 0x80") }
        }
        let suiteID = try r.u16("the algorithm suite ID")
        guard let suite = EncryptionSDKSuite.byID(suiteID) else {
            throw .malformed("bad header: unknown algorithm suite 0x\(String(suiteID, radix: 16))")
        }
        guard suite.messageVersion == version else {
            throw .malformed("bad header: algorithm suite \(suite.hexID) cannot appear in a version \(version) message")
        }
        let messageID = try r.take(version == 1 ? 16 : 32, "the message ID")
        let aadLength = Int(try r.u16("the encryption context length"))
        let aad = try r.take(aadLength, "the encryption context")
        let context = try parseContext(aad)

        let edkCount = Int(try r.u16("the encrypted data key count"))
        guard edkCount > 0 else { throw .malformed("bad header: no encrypted data keys") }
        if let limit = maxEncryptedDataKeys, edkCount > limit {
            throw .refused("the message lists \(edkCount) encrypted data keys, more than the limit of \(limit) (max_encrypted_data_keys=); no KMS call was made")
        }
        var edks: [EncryptedDataKey] = []
        for i in 1...edkCount {
            let idLen = Int(try r.u16("encrypted data key \(i)"))
            let id = try r.take(idLen, "encrypted data key \(i)")
            let infoLen = Int(try r.u16("encrypted data key \(i)"))
            let info = try r.take(infoLen, "encrypted data key \(i)")
            let ctLen = Int(try r.u16("encrypted data key \(i)"))
            let ct = try r.take(ctLen, "encrypted data key \(i)")
            guard let provider = String(validating: id, as: UTF8.self) else {
                throw .malformed("bad header: encrypted data key \(i) has a provider ID that is not UTF-8")
            }
            edks.append(EncryptedDataKey(providerID: provider, providerInfo: info, ciphertext: ct))
        }
        let contentType = try r.u8("the content type")
        guard contentType == 1 || contentType == 2 else {
            throw .malformed("bad header: content type \(contentType) is neither 1 (unframed) nor 2 (framed)")
        }
        let framed = contentType == 2
        if version == 1 {
            let reserved = try r.u32("the reserved field")
            guard reserved == 0 else { throw .malformed("bad header: the reserved field is not zero") }
            let ivLength = try r.u8("the IV length")
            guard ivLength == 12 else { throw .malformed("bad header: IV length \(ivLength) is not 12") }
        }
        let frameLength = Int(try r.u32("the frame length"))
        if framed {
            guard frameLength > 0 else { throw .malformed("bad header: a framed message with frame length 0") }
        } else {
            guard frameLength == 0 else { throw .malformed("bad header: an unframed message with frame length \(frameLength)") }
        }
        let commitment = suite.committing ? try r.take(32, "the key commitment") : []
        let bodyLength = r.position
        let authIV = version == 1 ? try r.take(12, "the header authentication IV") : [UInt8](repeating: 0, count: 12)
        let tagStart = r.position
        _ = try r.skip(16, "the header authentication tag")
        return EncryptionSDKHeader(version: version, suite: suite, messageID: messageID, encryptionContext: context,
                                   encryptedDataKeys: edks, framed: framed, frameLength: frameLength,
                                   commitment: commitment, bodyLength: bodyLength, authIV: authIV,
                                   authTag: tagStart..<(tagStart + 16), length: r.position)
    }

    /// The serialized encryption context: empty, or a count and that many
    /// key/value pairs of UTF-8, keys unique.
    static func parseContext(_ aad: [UInt8]) throws(DecodeError) -> [(key: String, value: String)] {
        guard !aad.isEmpty else { return [] }
        var r = ByteReader(aad, what: "encryption context")
        let count = Int(try r.u16("the pair count"))
        var pairs: [(key: String, value: String)] = []
        var seen = Set<[UInt8]>()   // by bytes, as the SDKs compare keys
        for i in 0..<count {
            let k = try r.take(Int(try r.u16("pair \(i + 1)")), "pair \(i + 1)")
            let v = try r.take(Int(try r.u16("pair \(i + 1)")), "pair \(i + 1)")
            guard let key = String(validating: k, as: UTF8.self), let value = String(validating: v, as: UTF8.self) else {
                throw .malformed("bad header: encryption context pair \(i + 1) is not UTF-8")
            }
            guard seen.insert(Array(k)).inserted else {
                throw .malformed("bad header: encryption context key '\(shownKey(key))' appears twice")
            }
            pairs.append((key, value))
        }
        guard r.atEnd else { throw .malformed("bad header: \(r.remaining) stray bytes after the encryption context") }
        return pairs
    }

    /// Serializes a context the way the SDKs do: pairs sorted by key bytes.
    static func serializeContext(_ pairs: [(key: String, value: String)]) -> [UInt8] {
        guard !pairs.isEmpty else { return [] }
        let sorted = pairs.map { (Array($0.key.utf8), Array($0.value.utf8)) }.sorted { $0.0.lexicographicallyPrecedes($1.0) }
        var out: [UInt8] = []
        out.appendU16(sorted.count)
        for (k, v) in sorted {
            out.appendU16(k.count); out += k
            out.appendU16(v.count); out += v
        }
        return out
    }

    /// Parses the whole message: header, every frame, footer, checking the
    /// structure (lengths, order, nothing left over). `visit` sees each frame
    /// in order; an error it returns ends the parse.
    static func layout(_ bytes: [UInt8], maxEncryptedDataKeys: Int? = nil,
                       visit: ((EncryptionSDKLayout.Frame) -> DecodeError?)? = nil)
        throws(DecodeError) -> EncryptionSDKLayout {
        var r = ByteReader(bytes)
        let header = try parseHeader(&r, maxEncryptedDataKeys: maxEncryptedDataKeys)
        var count = 0
        var plaintext = 0
        func add(_ frame: EncryptionSDKLayout.Frame) throws(DecodeError) {
            count += 1
            plaintext += frame.content.count
            if let visit, let e = visit(frame) { throw e }
        }
        if header.framed {
            var expected: UInt32 = 1
            while true {
                // The field's name is built only for an error (a message
                // may hold millions of frames).
                var seq = try r.u32("frame \(expected)")
                let final = seq == 0xFFFF_FFFF
                if final { seq = try r.u32("frame \(expected)") }
                guard seq == expected else {
                    throw .malformed("bad frame \(expected): sequence number \(seq) out of order")
                }
                let iv = try r.skip(12, "frame \(expected)")
                let length: Int
                if final {
                    length = Int(try r.u32("frame \(expected)"))
                    guard length <= header.frameLength else {
                        throw .malformed("bad frame \(expected): final frame of \(length) bytes is longer than the frame length \(header.frameLength)")
                    }
                } else {
                    length = header.frameLength
                }
                let content = try r.skip(length, "frame \(expected)")
                let tag = try r.skip(16, "frame \(expected)")
                try add(.init(sequence: seq, final: final, iv: iv, content: content, tag: tag))
                if final { break }
                guard expected < 0xFFFF_FFFE else { throw .malformed("bad frame \(expected): too many frames") }
                expected += 1
            }
        } else {
            let iv = try r.skip(12, "the unframed body")
            let length = try r.u64("the unframed body")
            guard length <= (1 << 36) - 32, Int(length) <= r.remaining else {
                throw .malformed("truncated: the unframed body claims \(length) bytes but \(r.remaining) remain")
            }
            let content = try r.skip(Int(length), "the unframed body")
            let tag = try r.skip(16, "the unframed body")
            try add(.init(sequence: 1, final: true, iv: iv, content: content, tag: tag))
        }
        let signedLength = r.position
        var signature: Range<Int>? = nil
        if header.suite.isSigned {
            let n = Int(try r.u16("the footer (signature)"))
            signature = try r.skip(n, "the footer (signature)")
        }
        guard r.atEnd else {
            throw .malformed("\(r.remaining) unexpected bytes after the end of the message")
        }
        return EncryptionSDKLayout(header: header, frameCount: count, signedLength: signedLength,
                                   signature: signature, plaintextLength: plaintext)
    }

    /// The body AAD of one frame (message-body-aad.md).
    static func bodyAAD(messageID: [UInt8], framed: Bool, final: Bool, sequence: UInt32, length: Int) -> [UInt8] {
        let label = !framed ? "AWSKMSEncryptionClient Single Block"
            : final ? "AWSKMSEncryptionClient Final Frame" : "AWSKMSEncryptionClient Frame"
        var aad = messageID
        aad += Array(label.utf8)
        aad.appendU32(Int(sequence))
        aad.appendU64(UInt64(length))
        return aad
    }

    /// The data encryption key and, for committing suites, the commitment
    /// (framework/algorithm-suites.md, key derivation and commitment).
    static func deriveKeys(suite: EncryptionSDKSuite, dataKey: SecureBuffer,
                           messageID: [UInt8]) -> (key: SecureBuffer, commitment: [UInt8]?)? {
        guard let digest = suite.kdfDigest else {
            // Identity KDF: the data key itself.
            guard let copy = dataKey.withUnsafeBytes({ try? SecureBuffer(copying: $0) }) else { return nil }
            return (copy, nil)
        }
        var idBytes: [UInt8] = []
        idBytes.appendU16(Int(suite.id))
        if suite.committing {
            guard let key = dataKey.withUnsafeBytes({
                ESDKCrypto.hkdf(digest: digest, salt: messageID, ikm: $0, info: idBytes + Array("DERIVEKEY".utf8),
                                length: suite.dataKeyLength)
            }), let commit = dataKey.withUnsafeBytes({
                ESDKCrypto.hkdf(digest: digest, salt: messageID, ikm: $0, info: Array("COMMITKEY".utf8), length: 32)
            }) else { return nil }
            let c = commit.withUnsafeBytes { Array($0) }   // public: it is written in the header
            return (key, c)
        }
        guard let key = dataKey.withUnsafeBytes({
            ESDKCrypto.hkdf(digest: digest, salt: nil, ikm: $0, info: idBytes + messageID, length: suite.dataKeyLength)
        }) else { return nil }
        return (key, nil)
    }
}

/// Decrypts one message: structure, context, signature (before any KMS
/// call), data key through KMS, key commitment, header authentication,
/// then every frame into secure memory. Nothing is returned unless every
/// check passed.
struct EncryptionSDKDecryptor {
    let kms: KMSClient
    /// `kms_key=`: empty allows any key.
    var allowedKeys = KMSKeyAllowList()
    /// `max_encrypted_data_keys=`: also the most Decrypt calls one message may cost.
    var maxEncryptedDataKeys = EncryptionSDKMessage.defaultMaxEncryptedDataKeys
    /// `require_commitment`: a suite without key commitment is refused.
    var requireCommitment = false

    func decrypt(_ bytes: [UInt8], binding: PathBinding, requiredContext: [(key: String, value: String)],
                 pathContextKey: String, requireBinding: Bool = false) throws(DecodeError) -> DecodedSecret {
        let layout = try EncryptionSDKMessage.layout(bytes, maxEncryptedDataKeys: maxEncryptedDataKeys)
        let header = layout.header
        let suite = header.suite
        // Before any KMS call: what the mount refuses costs no quota.
        if requireCommitment && !suite.committing {
            throw .refused("the message's algorithm suite \(suite.hexID) (\(suite.name)) has no key commitment and the mount has require_commitment; re-encrypt it with kmsfs encrypt or aws-encryption-cli's default suite")
        }

        try checkContext(header, binding: binding, requiredContext: requiredContext, pathContextKey: pathContextKey,
                         requireBinding: requireBinding)

        // The signature covers header and body; check it before spending a
        // KMS call or decrypting anything.
        let publicKey = header.contextValue(encryptionSDKPublicKeyContextKey)
        if let curve = suite.curve, let signature = layout.signature {
            guard let publicKey else {
                throw .malformed("bad header: signed suite \(suite.hexID) but no \(encryptionSDKPublicKeyContextKey) in the encryption context")
            }
            guard let point = Base64.decode(publicKey), let verifier = ESDKVerifier(curve: curve, compressedPoint: point) else {
                throw .malformed("bad header: \(encryptionSDKPublicKeyContextKey) is not a compressed \(curve.name) public key")
            }
            let ok = bytes.withUnsafeBytes { b in
                verifier.update(UnsafeRawBufferPointer(rebasing: b[0..<layout.signedLength]))
                    && verifier.verify(UnsafeRawBufferPointer(rebasing: b[signature]))
            }
            guard ok else {
                throw .integrity("signature mismatch: the \(curve.name) signature does not verify over the header and body (the file was changed after it was written)")
            }
        } else if publicKey != nil {
            throw .malformed("bad header: unsigned suite \(suite.hexID) but the encryption context carries \(encryptionSDKPublicKeyContextKey)")
        }

        let (dataKey, keyID) = try unwrapDataKey(header)
        guard dataKey.count == suite.dataKeyLength else {
            throw .integrity("KMS returned a \(dataKey.count)-byte data key; suite \(suite.hexID) needs \(suite.dataKeyLength)")
        }
        guard let (key, commitment) = EncryptionSDKMessage.deriveKeys(suite: suite, dataKey: dataKey, messageID: header.messageID) else {
            throw .resources("cannot derive the data encryption key (libcrypto HKDF or secure memory failed)")
        }
        if let commitment {
            guard constantTimeEqual(commitment, header.commitment) else {
                throw .integrity("commitment mismatch: the data key does not match the key commitment in the header (the message was built to decrypt differently under another key)")
            }
        }

        // Header authentication: GCM over the header body, empty plaintext.
        let headerOK = key.withUnsafeBytes { k in
            bytes.withUnsafeBytes { b in
                header.authIV.withUnsafeBytes { iv in
                    ESDKCrypto.gcmOpen(key: k, iv: iv, aad: UnsafeRawBufferPointer(rebasing: b[0..<header.bodyLength]),
                                       ciphertext: UnsafeRawBufferPointer(start: nil, count: 0),
                                       tag: UnsafeRawBufferPointer(rebasing: b[header.authTag]), into: nil)
                }
            }
        }
        guard headerOK else {
            throw .integrity("bad header: the header authentication tag does not verify (the header was changed)")
        }

        let plaintext: SecureBuffer
        do { plaintext = try SecureBuffer(capacity: max(layout.plaintextLength, 1)) } catch {
            throw .resources("cannot allocate \(layout.plaintextLength) bytes of secure memory: \(error)")
        }
        let total = layout.frameCount
        // One key schedule for every frame (the IV is the frame's own).
        guard let opener = key.withUnsafeBytes({ ESDKCrypto.GCMOpener(key: $0, ivLength: 12) }) else {
            plaintext.wipeContents()
            throw .resources("cannot set up AES-GCM for suite \(suite.hexID)")
        }
        _ = try EncryptionSDKMessage.layout(bytes) { frame -> DecodeError? in
            let aad = EncryptionSDKMessage.bodyAAD(messageID: header.messageID, framed: header.framed, final: frame.final,
                                                   sequence: frame.sequence, length: frame.content.count)
            let ok = bytes.withUnsafeBytes { b in
                aad.withUnsafeBytes { a in
                    plaintext.withUnsafeMutableCapacity { out in
                        opener.open(iv: UnsafeRawBufferPointer(rebasing: b[frame.iv]), aad: a,
                                    ciphertext: UnsafeRawBufferPointer(rebasing: b[frame.content]),
                                    tag: UnsafeRawBufferPointer(rebasing: b[frame.tag]),
                                    into: out.baseAddress.map { $0 + plaintext.count })
                    }
                }
            }
            guard ok else {
                plaintext.withUnsafeMutableCapacity { secureWipe($0.baseAddress, $0.count) }
                plaintext.setCount(0)
                return .integrity(header.framed ? "bad frame \(frame.sequence) of \(total): authentication failed (the frame was changed, moved or cut)"
                                                : "bad body: authentication of the unframed body failed (the body was changed)")
            }
            plaintext.setCount(plaintext.count + frame.content.count)
            return nil
        }
        let detail = "aws-encryption-sdk-v\(header.version)/\(suite.hexID)/" + (header.framed ? "frame-\(header.frameLength)" : "unframed")
        return DecodedSecret(plaintext: plaintext, format: .encryptionSDK, formatDetail: detail, keyId: keyID,
                             encryptionContext: header.encryptionContext)
    }

    /// The mount's required pairs and the path binding, from the header
    /// (checked again, cryptographically, by the header authentication tag).
    func checkContext(_ header: EncryptionSDKHeader, binding: PathBinding, requiredContext: [(key: String, value: String)],
                      pathContextKey: String, requireBinding: Bool = false) throws(DecodeError) {
        for (k, v) in requiredContext {
            guard let have = header.contextValue(k) else {
                throw .contextMismatch("the mount requires \(k)=\(v) but the file's context has no '\(k)'")
            }
            guard have.utf8.elementsEqual(v.utf8) else {
                throw .contextMismatch("the mount requires \(k)=\(v) but the file carries \(k)=\(shownKey(have))")
            }
        }
        if requireBinding, header.contextValue(pathContextKey) == nil {
            throw .contextMismatch("the message is not bound to its path (no \(pathContextKey) in its context) and the mount has require_binding; re-encrypt it with kmsfs encrypt --root SOURCE")
        }
        if let bound = header.contextValue(pathContextKey), !binding.admits(bound) {
            throw .contextMismatch("the file is bound to '\(shownKey(bound))' (\(pathContextKey)) but is served as '\(binding.path)'; it was renamed, copied or swapped, or encrypted without --root SOURCE")
        }
    }

    /// KMS Decrypt of each "aws-kms" encrypted data key in turn, with the
    /// message's encryption context, until one succeeds. With `kms_key=`,
    /// only the data keys a listed key could have written are tried, each
    /// with that entry as `KeyId` (KMSKeyAllowList); never more than
    /// `maxEncryptedDataKeys` calls.
    func unwrapDataKey(_ header: EncryptionSDKHeader) throws(DecodeError) -> (SecureBuffer, String?) {
        let candidates = header.encryptedDataKeys.filter { $0.providerID == "aws-kms" }
        guard !candidates.isEmpty else {
            let providers = boundedText(Set(header.encryptedDataKeys.map { shownKey($0.providerID) }).sorted().joined(separator: ", "), 1024)
            throw .unrecognized("no encrypted data key from AWS KMS (provider \"aws-kms\"); the message's keys come from: \(providers)")
        }
        func keyARN(_ edk: EncryptedDataKey) -> String? { edk.providerInfoText.flatMap { $0.hasPrefix("arn:") ? $0 : nil } }
        // (data key, KeyId to send, the allow-list entry it came from)
        var attempts: [(edk: EncryptedDataKey, keyId: String?, entry: KMSKeyAllowList.Entry?)] = []
        if allowedKeys.isEmpty {
            attempts = candidates.map { ($0, keyARN($0), nil) }
        } else {
            for edk in candidates {
                for entry in allowedKeys.keyIds(forDataKeyOf: keyARN(edk)) { attempts.append((edk, entry.description, entry)) }
            }
            guard !attempts.isEmpty else {
                let arns = candidates.map { keyARN($0).map(shownKey) ?? "(no key ARN)" }
                let shown = arns.prefix(3).joined(separator: ", ") + (arns.count > 3 ? " and \(arns.count - 3) more" : "")
                throw .refused("no encrypted data key of the message is under a key kms_key= allows (its AWS KMS keys: \(shown)); no KMS call was made")
            }
        }
        var failures: [DecodeError] = []
        for (edk, sent, entry) in attempts.prefix(maxEncryptedDataKeys) {
            let arn = keyARN(edk)
            let r: KMSClient.Decrypted
            do {
                r = try kms.decrypt(ciphertextBlob: edk.ciphertext, encryptionContext: header.encryptionContext, keyId: sent)
            } catch {
                if entry != nil, error.kind == .incorrectKey || error.kind == .accessDenied {
                    failures.append(.refused("KMS refused the data key of \(arn.map(shownKey) ?? "a key without an ARN") under \(sent ?? "?"), which kms_key= allows: \(error)"))
                } else {
                    failures.append(.kms(error))
                }
                continue
            }
            if let entry, entry.isKeyARN, r.keyId != entry.description {
                // A KMS that ignored KeyId: the plaintext is not used.
                r.plaintext.wipeContents()
                failures.append(.refused("KMS decrypted the data key with key \(r.keyId.map(shownKey) ?? "(none named)") although the request named \(entry) (kms_key=); the plaintext was wiped"))
                continue
            }
            // The answer must name the key the data key is under (docs/
            // formats.md): one naming none, or another, is not used.
            if let arn, r.keyId != arn {
                r.plaintext.wipeContents()
                failures.append(.kms(KMSError(operation: "Decrypt", .malformedResponse("KMS answered with key \(r.keyId.map(shownKey) ?? "(none named)") for a data key of \(shownKey(arn))"))))
                continue
            }
            return (r.plaintext, r.keyId ?? edk.providerInfoText)
        }
        // Report a transient failure before a refusal: the cache retries those.
        if let transient = failures.first(where: { $0.isUnavailable }) { throw transient }
        throw failures[failures.count - 1]
    }
}

/// How a decrypted message's `kmsfs:path` must relate to where it is served.
public enum PathBinding: Sendable {
    /// The mount and `kmsfs check`: the bound path must equal this path
    /// (relative to SOURCE, without `.encrypted`).
    case exact(String)
    /// `kmsfs decrypt FILE` without `--root`: the file's path (without
    /// `.encrypted`) must end with the bound path, component-wise.
    case suffix(String)

    public var path: String {
        switch self { case .exact(let p), .suffix(let p): return p }
    }

    /// Compares bytes: Swift's `String ==` uses canonical equivalence, so a
    /// file renamed to the NFD spelling of its bound NFC path (another name,
    /// which the policy's byte-wise patterns may treat differently) would pass.
    public func admits(_ bound: String) -> Bool {
        let b = Array(bound.utf8)
        switch self {
        case .exact(let p): return Array(p.utf8) == b
        case .suffix(let p):
            let path = Array(p.utf8)
            return path == b || path.reversed().starts(with: ([UInt8(ascii: "/")] + b).reversed())
        }
    }
}

/// A key name from a message header or a KMS answer, for a log line: the
/// header's provider info may be 65,535 bytes of anyone's choosing.
func shownKey(_ s: String) -> String { boundedText(s, 160) }

/// Big-endian reads over a message held in memory; running off the end is
/// a "truncated" error that names the field.
struct ByteReader {
    let bytes: [UInt8]
    private(set) var position = 0
    let what: String

    init(_ bytes: [UInt8], what: String = "message") {
        self.bytes = bytes
        self.what = what
    }

    var remaining: Int { bytes.count - position }
    var atEnd: Bool { position == bytes.count }

    mutating func skip(_ n: Int, _ field: @autoclosure () -> String) throws(DecodeError) -> Range<Int> {
        guard n >= 0, n <= remaining else {
            if what == "message" {
                throw .malformed("truncated: the file ends in \(field()) (it has \(bytes.count) bytes, the message needs at least \(position + n))")
            }
            throw .malformed("bad header: the \(what) ends in \(field())")
        }
        defer { position += n }
        return position..<(position + n)
    }

    mutating func take(_ n: Int, _ field: @autoclosure () -> String) throws(DecodeError) -> [UInt8] {
        Array(bytes[try skip(n, field())])
    }

    mutating func u8(_ field: @autoclosure () -> String) throws(DecodeError) -> UInt8 { bytes[try skip(1, field()).lowerBound] }

    mutating func u16(_ field: @autoclosure () -> String) throws(DecodeError) -> UInt16 {
        let r = try skip(2, field())
        return UInt16(bytes[r.lowerBound]) << 8 | UInt16(bytes[r.lowerBound + 1])
    }

    mutating func u32(_ field: @autoclosure () -> String) throws(DecodeError) -> UInt32 {
        let r = try skip(4, field())
        var v: UInt32 = 0
        for i in r { v = v << 8 | UInt32(bytes[i]) }
        return v
    }

    mutating func u64(_ field: @autoclosure () -> String) throws(DecodeError) -> UInt64 {
        let r = try skip(8, field())
        var v: UInt64 = 0
        for i in r { v = v << 8 | UInt64(bytes[i]) }
        return v
    }
}

extension Array where Element == UInt8 {
    mutating func appendU16(_ v: Int) { append(UInt8(truncatingIfNeeded: v >> 8)); append(UInt8(truncatingIfNeeded: v)) }
    mutating func appendU32(_ v: Int) { for s in stride(from: 24, through: 0, by: -8) { append(UInt8(truncatingIfNeeded: v >> s)) } }
    mutating func appendU64(_ v: UInt64) { for s in stride(from: 56, through: 0, by: -8) { append(UInt8(truncatingIfNeeded: v >> UInt64(s))) } }
}
