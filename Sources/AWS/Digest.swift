import CCrypto

/// SHA-256 and HMAC-SHA-256 on libcrypto, the primitives SigV4 needs.
public enum Digest {
    public static func sha256(_ data: UnsafeRawBufferPointer) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        out.withUnsafeMutableBufferPointer { o in
            _ = SHA256(data.baseAddress?.assumingMemoryBound(to: UInt8.self), data.count, o.baseAddress)
        }
        return out
    }

    public static func sha256<C: Collection>(_ bytes: C) -> [UInt8] where C.Element == UInt8 {
        Array(bytes).withUnsafeBytes { sha256($0) }
    }

    public static func hmacSHA256(key: [UInt8], data: UnsafeRawBufferPointer) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var len: UInt32 = 32
        key.withUnsafeBytes { k in
            out.withUnsafeMutableBufferPointer { o in
                _ = HMAC(EVP_sha256(), k.baseAddress, Int32(k.count),
                         data.baseAddress?.assumingMemoryBound(to: UInt8.self), data.count,
                         o.baseAddress, &len)
            }
        }
        return out
    }

    public static func hmacSHA256(key: [UInt8], _ text: String) -> [UInt8] {
        Array(text.utf8).withUnsafeBytes { hmacSHA256(key: key, data: $0) }
    }

    /// HMAC-SHA-256 of `data` under `key` into `out` (32 bytes): for key
    /// material that must stay in secure memory (SigV4's signing keys).
    public static func hmacSHA256(key: UnsafeRawBufferPointer, data: UnsafeRawBufferPointer, into out: UnsafeMutableRawPointer) {
        var len: UInt32 = 32
        _ = HMAC(EVP_sha256(), key.baseAddress, Int32(key.count),
                 data.baseAddress?.assumingMemoryBound(to: UInt8.self), data.count,
                 out.assumingMemoryBound(to: UInt8.self), &len)
    }

    /// Incremental SHA-256, so a document can be hashed from pieces some
    /// of which live in secure memory (a canonical request carrying the
    /// session token) without assembling it anywhere.
    public final class SHA256Stream {
        private let ctx: OpaquePointer?
        public init() {
            ctx = EVP_MD_CTX_new()
            _ = EVP_DigestInit_ex(ctx, EVP_sha256(), nil)
        }
        deinit { EVP_MD_CTX_free(ctx) }
        public func update(_ data: UnsafeRawBufferPointer) {
            if data.count > 0 { _ = EVP_DigestUpdate(ctx, data.baseAddress, data.count) }
        }
        public func update(_ text: String) {
            var t = text
            t.withUTF8 { update(UnsafeRawBufferPointer($0)) }
        }
        public func finish() -> [UInt8] {
            var out = [UInt8](repeating: 0, count: 32)
            var len: UInt32 = 32
            out.withUnsafeMutableBufferPointer { _ = EVP_DigestFinal_ex(ctx, $0.baseAddress, &len) }
            return out
        }
    }

    public static func hex(_ bytes: [UInt8]) -> String {
        let digits: [UInt8] = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// SHA-256 of the empty string, the payload hash of a request without a body.
    public static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
}
