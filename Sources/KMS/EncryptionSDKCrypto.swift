import CCrypto
import SecureMemory

/// The libcrypto primitives the Encryption SDK format needs: AES-GCM,
/// HKDF, and ECDSA over P-256/P-384. Keys are read from and derived into
/// secure memory; nothing here keeps a copy.
enum ESDKCrypto {
    static func gcmCipher(keyLength: Int) -> OpaquePointer? {
        switch keyLength {
        case 16: return EVP_aes_128_gcm()
        case 24: return EVP_aes_192_gcm()
        case 32: return EVP_aes_256_gcm()
        default: return nil
        }
    }

    /// AES-GCM decryption of `ciphertext` into `output` (which holds at least
    /// `ciphertext.count` bytes). False when the tag does not verify; the
    /// caller then discards `output`.
    static func gcmOpen(key: UnsafeRawBufferPointer, iv: UnsafeRawBufferPointer, aad: UnsafeRawBufferPointer,
                        ciphertext: UnsafeRawBufferPointer, tag: UnsafeRawBufferPointer,
                        into output: UnsafeMutableRawPointer?) -> Bool {
        guard let opener = GCMOpener(key: key, ivLength: iv.count) else { return false }
        return opener.open(iv: iv, aad: aad, ciphertext: ciphertext, tag: tag, into: output)
    }

    /// One key's AES-GCM decryption context, for many messages under it
    /// (a message's frames): the key schedule is set up once, each `open`
    /// only sets its IV. A message of a million 1-byte frames made as many
    /// contexts and key schedules. The context (and with it the key
    /// schedule) is wiped and freed with the opener.
    final class GCMOpener {
        private let ctx: OpaquePointer
        private let ivLength: Int

        init?(key: UnsafeRawBufferPointer, ivLength: Int) {
            guard let cipher = gcmCipher(keyLength: key.count), let ctx = EVP_CIPHER_CTX_new() else { return nil }
            guard EVP_DecryptInit_ex(ctx, cipher, nil, nil, nil) == 1,
                  kmsfs_gcm_set_ivlen(ctx, Int32(ivLength)) == 1,
                  EVP_DecryptInit_ex(ctx, nil, nil, u8(key), nil) == 1 else {
                EVP_CIPHER_CTX_free(ctx)
                return nil
            }
            self.ctx = ctx
            self.ivLength = ivLength
        }

        deinit { EVP_CIPHER_CTX_free(ctx) }   // wipes the key schedule

        /// As `gcmOpen`, under this opener's key; `iv` must have the length
        /// it was made for.
        func open(iv: UnsafeRawBufferPointer, aad: UnsafeRawBufferPointer, ciphertext: UnsafeRawBufferPointer,
                  tag: UnsafeRawBufferPointer, into output: UnsafeMutableRawPointer?) -> Bool {
            guard tag.count == 16, iv.count == ivLength,
                  EVP_DecryptInit_ex(ctx, nil, nil, nil, u8(iv)) == 1 else { return false }
            return ESDKCrypto.finishOpen(ctx, aad: aad, ciphertext: ciphertext, tag: tag, into: output)
        }
    }

    /// The rest of a decryption once key and IV are set.
    private static func finishOpen(_ ctx: OpaquePointer, aad: UnsafeRawBufferPointer, ciphertext: UnsafeRawBufferPointer,
                                   tag: UnsafeRawBufferPointer, into output: UnsafeMutableRawPointer?) -> Bool {
        var len: Int32 = 0
        if aad.count > 0 {
            guard chunked(aad, { p, n in EVP_DecryptUpdate(ctx, nil, &len, p, n) == 1 }) else { return false }
        }
        if ciphertext.count > 0 {
            guard let output else { return false }
            var offset = 0
            let ok = chunked(ciphertext) { p, n in
                var outLen: Int32 = 0
                guard EVP_DecryptUpdate(ctx, (output + offset).assumingMemoryBound(to: UInt8.self), &outLen, p, n) == 1
                else { return false }
                offset += Int(outLen)
                return true
            }
            guard ok else { return false }
        }
        guard kmsfs_gcm_set_tag(ctx, u8(tag), 16) == 1 else { return false }
        var finalLen: Int32 = 0
        var scratch = [UInt8](repeating: 0, count: 16)
        return scratch.withUnsafeMutableBufferPointer { EVP_DecryptFinal_ex(ctx, $0.baseAddress, &finalLen) } == 1
    }

    /// AES-GCM encryption of `plaintext` (from secure memory), appending the
    /// ciphertext and then the 16-byte tag to `output`.
    static func gcmSeal(key: UnsafeRawBufferPointer, iv: [UInt8], aad: [UInt8],
                        plaintext: UnsafeRawBufferPointer, appendingTo output: inout [UInt8]) -> Bool {
        guard let cipher = gcmCipher(keyLength: key.count), let ctx = EVP_CIPHER_CTX_new() else { return false }
        defer { EVP_CIPHER_CTX_free(ctx) }
        var len: Int32 = 0
        let ok0 = iv.withUnsafeBytes { ivp in
            EVP_EncryptInit_ex(ctx, cipher, nil, nil, nil) == 1
                && kmsfs_gcm_set_ivlen(ctx, Int32(ivp.count)) == 1
                && EVP_EncryptInit_ex(ctx, nil, nil, u8(key), u8(ivp)) == 1
        }
        guard ok0 else { return false }
        if !aad.isEmpty {
            let ok = aad.withUnsafeBytes { a in chunked(a) { p, n in EVP_EncryptUpdate(ctx, nil, &len, p, n) == 1 } }
            guard ok else { return false }
        }
        let start = output.count
        output.append(contentsOf: repeatElement(0, count: plaintext.count + 16))
        let ok = output.withUnsafeMutableBytes { out -> Bool in
            var offset = start
            if plaintext.count > 0 {
                let fine = chunked(plaintext) { p, n in
                    var outLen: Int32 = 0
                    guard EVP_EncryptUpdate(ctx, (out.baseAddress! + offset).assumingMemoryBound(to: UInt8.self), &outLen, p, n) == 1
                    else { return false }
                    offset += Int(outLen)
                    return true
                }
                guard fine else { return false }
            }
            var finalLen: Int32 = 0
            var scratch = [UInt8](repeating: 0, count: 16)
            guard scratch.withUnsafeMutableBufferPointer({ EVP_EncryptFinal_ex(ctx, $0.baseAddress, &finalLen) }) == 1,
                  finalLen == 0, offset == start + plaintext.count else { return false }
            return kmsfs_gcm_get_tag(ctx, (out.baseAddress! + offset).assumingMemoryBound(to: UInt8.self), 16) == 1
        }
        if !ok { output.removeLast(output.count - start) }
        return ok
    }

    /// HKDF (extract and expand) into a new secure buffer of `length` bytes.
    static func hkdf(digest: String, salt: [UInt8]?, ikm: UnsafeRawBufferPointer, info: [UInt8],
                     length: Int) -> SecureBuffer? {
        try? SecureBuffer(unsafeUninitializedCapacity: length) { o in
            let ok = info.withUnsafeBytes { i in
                (salt ?? []).withUnsafeBytes { s in
                    kmsfs_hkdf(digest, 0, u8(s), salt == nil ? 0 : s.count, u8(ikm), ikm.count,
                               u8(i), i.count, o.baseAddress?.assumingMemoryBound(to: UInt8.self), length)
                }
            }
            return ok == 1 ? length : nil
        }
    }

    static func randomBytes(_ n: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: n)
        let ok = out.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32(n)) }
        return ok == 1 ? out : nil
    }

    /// Feeds `data` to `body` in pieces that fit an Int32 length.
    private static func chunked(_ data: UnsafeRawBufferPointer,
                                _ body: (UnsafePointer<UInt8>, Int32) -> Bool) -> Bool {
        guard let base = data.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return true }
        var offset = 0
        while offset < data.count {
            let n = min(data.count - offset, 1 << 30)
            guard body(base + offset, Int32(n)) else { return false }
            offset += n
        }
        return true
    }

    @inline(__always)
    static func u8(_ p: UnsafeRawBufferPointer) -> UnsafePointer<UInt8>? {
        p.baseAddress?.assumingMemoryBound(to: UInt8.self)
    }
}

/// The curves of the signed algorithm suites.
enum ESDKCurve: Sendable {
    case p256, p384

    var groupName: String { self == .p256 ? "P-256" : "P-384" }
    var fieldBytes: Int { self == .p256 ? 32 : 48 }
    var digest: OpaquePointer? { self == .p256 ? EVP_sha256() : EVP_sha384() }
    var name: String { self == .p256 ? "ECDSA P-256" : "ECDSA P-384" }
}

/// Streaming ECDSA verification of a message's header and body against
/// the public key carried in its encryption context.
final class ESDKVerifier {
    private let key: OpaquePointer
    private let ctx: OpaquePointer

    /// `compressedPoint` is the decoded `aws-crypto-public-key` value.
    init?(curve: ESDKCurve, compressedPoint: [UInt8]) {
        guard compressedPoint.count == 1 + curve.fieldBytes,
              compressedPoint[0] == 0x02 || compressedPoint[0] == 0x03 else { return nil }
        guard let key = compressedPoint.withUnsafeBytes({
            kmsfs_ec_public_key(curve.groupName, ESDKCrypto.u8($0), $0.count)
        }) else { return nil }
        guard let ctx = EVP_MD_CTX_new() else { EVP_PKEY_free(key); return nil }
        guard EVP_DigestVerifyInit(ctx, nil, curve.digest, nil, key) == 1 else {
            EVP_MD_CTX_free(ctx)
            EVP_PKEY_free(key)
            return nil
        }
        self.key = key
        self.ctx = ctx
    }

    deinit {
        EVP_MD_CTX_free(ctx)
        EVP_PKEY_free(key)
    }

    func update(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count > 0 else { return true }
        return EVP_DigestVerifyUpdate(ctx, bytes.baseAddress, bytes.count) == 1
    }

    /// True only when `signature` (DER) verifies over everything updated.
    func verify(_ signature: UnsafeRawBufferPointer) -> Bool {
        guard signature.count > 0 else { return false }
        let r = EVP_DigestVerifyFinal(ctx, ESDKCrypto.u8(signature), signature.count)
        ERR_clear_error()
        return r == 1
    }
}

/// A one-message ECDSA signing key (`kmsfs encrypt`): generated per
/// message, its public half travels in the encryption context, its private
/// half is freed (and cleared by libcrypto) when the signer goes away.
final class ESDKSigner {
    private let key: OpaquePointer
    private let ctx: OpaquePointer
    let curve: ESDKCurve
    /// The SEC 1 compressed public point.
    let publicKey: [UInt8]

    init?(curve: ESDKCurve) {
        guard let key = kmsfs_ec_generate(curve.groupName) else { return nil }
        var point = [UInt8](repeating: 0, count: 1 + curve.fieldBytes)
        let n = point.withUnsafeMutableBufferPointer { kmsfs_ec_compressed_public_key(key, $0.baseAddress, $0.count) }
        guard n == point.count, let ctx = EVP_MD_CTX_new() else { EVP_PKEY_free(key); return nil }
        guard EVP_DigestSignInit(ctx, nil, curve.digest, nil, key) == 1 else {
            EVP_MD_CTX_free(ctx)
            EVP_PKEY_free(key)
            return nil
        }
        self.key = key
        self.ctx = ctx
        self.curve = curve
        self.publicKey = point
    }

    deinit {
        EVP_MD_CTX_free(ctx)
        EVP_PKEY_free(key)
    }

    func update(_ bytes: [UInt8]) -> Bool {
        guard !bytes.isEmpty else { return true }
        return bytes.withUnsafeBytes { EVP_DigestSignUpdate(ctx, $0.baseAddress, $0.count) == 1 }
    }

    /// The DER signature over everything updated.
    func finish() -> [UInt8]? {
        var len = 0
        guard EVP_DigestSignFinal(ctx, nil, &len) == 1 else { return nil }
        var sig = [UInt8](repeating: 0, count: len)
        guard sig.withUnsafeMutableBufferPointer({ EVP_DigestSignFinal(ctx, $0.baseAddress, &len) }) == 1 else { return nil }
        sig.removeLast(sig.count - len)
        return sig
    }
}
