/// Base64 (RFC 4648, standard alphabet), with a decoder that writes into a
/// caller's buffer so decoded plaintext lands directly in secure memory.
public enum Base64 {
    static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    static let table: [UInt8] = {
        var t = [UInt8](repeating: 0xFF, count: 256)
        for (i, c) in alphabet.enumerated() { t[Int(c)] = UInt8(i) }
        t[Int(UInt8(ascii: "-"))] = 62   // URL-safe alphabet accepted on input
        t[Int(UInt8(ascii: "_"))] = 63
        return t
    }()

    public static func encode(_ data: UnsafeRawBufferPointer) -> String {
        var out = [UInt8]()
        out.reserveCapacity((data.count + 2) / 3 * 4)
        var i = 0
        while i + 3 <= data.count {
            let n = UInt32(data[i]) << 16 | UInt32(data[i + 1]) << 8 | UInt32(data[i + 2])
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], alphabet[Int(n >> 6 & 63)], alphabet[Int(n & 63)]]
            i += 3
        }
        let rest = data.count - i
        if rest == 1 {
            let n = UInt32(data[i]) << 16
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], 61, 61]
        } else if rest == 2 {
            let n = UInt32(data[i]) << 16 | UInt32(data[i + 1]) << 8
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], alphabet[Int(n >> 6 & 63)], 61]
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func encode(_ bytes: [UInt8]) -> String { bytes.withUnsafeBytes { encode($0) } }

    /// Upper bound of the decoded size of `count` encoded bytes.
    public static func maxDecodedCount(_ count: Int) -> Int { (count + 3) / 4 * 3 }

    /// Decodes `input` into `output` (which may be `input` itself: the
    /// write position never passes the read position). Whitespace is
    /// skipped, and so is the backslash of the JSON escape `\/`; any other
    /// backslash is malformed (a JSON string with other escapes is
    /// unescaped first). Returns the decoded length, or nil on malformed
    /// input. Leaves no copy anywhere else.
    public static func decode(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Int? {
        var acc: UInt32 = 0
        var bits = 0
        var o = 0
        var padding = 0
        for i in 0..<input.count {
            let c = input[i]
            if c == 32 || c == 10 || c == 13 || c == 9 { continue }
            if c == 92 {   // the backslash of "\/"
                guard i + 1 < input.count, input[i + 1] == UInt8(ascii: "/") else { return nil }
                continue
            }
            if c == 61 { padding += 1; continue }
            if padding > 0 { return nil }
            let v = table[Int(c)]
            if v == 0xFF { return nil }
            acc = acc << 6 | UInt32(v)
            bits += 6
            if bits >= 8 {
                bits -= 8
                guard o < output.count else { return nil }
                output[o] = UInt8(truncatingIfNeeded: acc >> UInt32(bits))
                o += 1
            }
        }
        acc = 0
        guard padding <= 2, bits < 6 else { return nil }
        return o
    }

    /// Decodes non-secret bytes (a ciphertext file in base64): straight
    /// into the one array returned, so a file of many MiB costs its decoded
    /// size once, not copies of its text as well.
    public static func decode(_ input: UnsafeRawBufferPointer) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: maxDecodedCount(input.count))
        guard let n = out.withUnsafeMutableBytes({ decode(input, into: $0) }) else { return nil }
        out.removeLast(out.count - n)
        return out
    }

    /// Decodes non-secret text (ciphertexts, tokens).
    public static func decode(_ text: String) -> [UInt8]? {
        var text = text
        return text.withUTF8 { decode(UnsafeRawBufferPointer($0)) }
    }

    /// True when every byte is in the base64 alphabet, `=` or whitespace.
    public static func looksLikeBase64(_ data: UnsafeRawBufferPointer) -> Bool {
        var significant = 0
        for c in data {
            if c == 32 || c == 10 || c == 13 || c == 9 || c == 61 { continue }
            if table[Int(c)] == 0xFF { return false }
            significant += 1
        }
        return significant > 0
    }
}

extension Base64 {
    /// Encodes into a caller's buffer (secure memory for plaintext); returns
    /// the number of bytes written. `output` must hold `(n + 2) / 3 * 4`.
    public static func encode(_ data: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Int {
        precondition(output.count >= (data.count + 2) / 3 * 4)
        var o = 0
        var i = 0
        func put(_ c: UInt8) { output[o] = c; o += 1 }
        while i + 3 <= data.count {
            let n = UInt32(data[i]) << 16 | UInt32(data[i + 1]) << 8 | UInt32(data[i + 2])
            put(alphabet[Int(n >> 18 & 63)]); put(alphabet[Int(n >> 12 & 63)])
            put(alphabet[Int(n >> 6 & 63)]); put(alphabet[Int(n & 63)])
            i += 3
        }
        let rest = data.count - i
        if rest == 1 {
            let n = UInt32(data[i]) << 16
            put(alphabet[Int(n >> 18 & 63)]); put(alphabet[Int(n >> 12 & 63)]); put(61); put(61)
        } else if rest == 2 {
            let n = UInt32(data[i]) << 16 | UInt32(data[i + 1]) << 8
            put(alphabet[Int(n >> 18 & 63)]); put(alphabet[Int(n >> 12 & 63)]); put(alphabet[Int(n >> 6 & 63)]); put(61)
        }
        return o
    }
}
