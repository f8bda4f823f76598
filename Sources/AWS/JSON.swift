import SecureMemory

/// A small JSON reader and writer for AWS protocol documents that carry no
/// secret (requests, errors, credential metadata). Responses that carry
/// plaintext are never parsed into these values: see `JSONScanner`.
public indirect enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case let (.bool(x), .bool(y)): return x == y
        case let (.number(x), .number(y)): return x == y
        case let (.string(x), .string(y)): return x == y
        case let (.array(x), .array(y)): return x == y
        case let (.object(x), .object(y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    public subscript(key: String) -> JSONValue? {
        if case .object(let members) = self { return members.first { $0.0 == key }?.1 }
        return nil
    }

    public var stringValue: String? { if case .string(let s) = self { return s }; return nil }
    public var numberValue: Double? { if case .number(let n) = self { return n }; return nil }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a }; return nil }

    /// Serialises compactly, keys in the given order.
    public var serialized: String {
        var out = ""
        write(to: &out)
        return out
    }

    public func write(to out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .number(let n):
            // JSON has no infinity or NaN: never write `inf` (the parser
            // refuses them too; this guards values built in code).
            if !n.isFinite { out += "null" } else if n == n.rounded(), abs(n) < 1e15 { out += String(Int64(n)) } else { out += String(n) }
        case .string(let s): JSONValue.quote(s, into: &out)
        case .array(let a):
            out += "["
            for (i, v) in a.enumerated() { if i > 0 { out += "," }; v.write(to: &out) }
            out += "]"
        case .object(let o):
            out += "{"
            for (i, (k, v)) in o.enumerated() {
                if i > 0 { out += "," }
                JSONValue.quote(k, into: &out)
                out += ":"
                v.write(to: &out)
            }
            out += "}"
        }
    }

    static func quote(_ s: String, into out: inout String) {
        // Most strings (base64 ciphertexts, key IDs) need no escaping.
        if s.utf8.allSatisfy({ $0 >= 0x20 && $0 != 0x22 && $0 != 0x5C }) {
            out += "\""
            out += s
            out += "\""
            return
        }
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 {
                    let h = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        out += "\""
    }

    /// Parses a document; nil when it is not valid JSON or an object names
    /// a member twice. String values of members named in `redacting` (at
    /// any depth) are checked but never decoded: they read as `.null`, so
    /// a secret (a credentials document's `SecretAccessKey`) never becomes
    /// a `String`; read it with `JSONScanner.secureStringMember`.
    public static func parse(_ bytes: UnsafeRawBufferPointer, redacting: Set<String> = []) -> JSONValue? {
        var p = JSONParser(bytes: bytes)
        p.redact = redacting
        guard let v = p.value() else { return nil }
        p.skipSpace()
        return p.i == bytes.count ? v : nil
    }

    public static func parse(_ text: String) -> JSONValue? {
        Array(text.utf8).withUnsafeBytes { parse($0) }
    }
}

public struct JSONParser {
    let bytes: UnsafeRawBufferPointer
    var i = 0
    var depth = 0
    var redact: Set<String> = []

    public init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    mutating func skipSpace() {
        while i < bytes.count, bytes[i] == 32 || bytes[i] == 9 || bytes[i] == 10 || bytes[i] == 13 { i += 1 }
    }

    mutating func value() -> JSONValue? {
        skipSpace()
        guard i < bytes.count else { return nil }
        depth += 1
        defer { depth -= 1 }
        guard depth < 64 else { return nil }
        switch bytes[i] {
        case UInt8(ascii: "{"):
            i += 1
            var members: [(String, JSONValue)] = []
            var names: Set<String> = []
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
            while true {
                skipSpace()
                guard let k = string() else { return nil }
                // A name twice is refused, as JSONScanner does: Python's
                // json (botocore) reads the last, `subscript` the first.
                // Compared as `subscript` compares (canonical equivalence),
                // so no two members answer one name.
                guard names.insert(k).inserted else { return nil }
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { return nil }
                i += 1
                if !redact.isEmpty, redact.contains(k) {
                    skipSpace()
                    if i < bytes.count, bytes[i] == UInt8(ascii: "\"") {
                        i += 1
                        guard JSONParser.unescape(bytes, from: &i, { _ in }) else { return nil }
                        members.append((k, .null))
                        skipSpace()
                        guard i < bytes.count else { return nil }
                        if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                        if bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
                        return nil
                    }
                }
                guard let v = value() else { return nil }
                members.append((k, v))
                skipSpace()
                guard i < bytes.count else { return nil }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
                return nil
            }
        case UInt8(ascii: "["):
            i += 1
            var items: [JSONValue] = []
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
            while true {
                guard let v = value() else { return nil }
                items.append(v)
                skipSpace()
                guard i < bytes.count else { return nil }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
                return nil
            }
        case UInt8(ascii: "\""):
            return string().map { .string($0) }
        case UInt8(ascii: "t"): return literal("true", .bool(true))
        case UInt8(ascii: "f"): return literal("false", .bool(false))
        case UInt8(ascii: "n"): return literal("null", .null)
        default:
            return number()
        }
    }

    mutating func literal(_ word: String, _ v: JSONValue) -> JSONValue? {
        let w = Array(word.utf8)
        guard i + w.count <= bytes.count else { return nil }
        for (k, c) in w.enumerated() where bytes[i + k] != c { return nil }
        i += w.count
        return v
    }

    /// RFC 8259 numbers only (`-? int frac? exp?`), and only finite ones:
    /// `1e999` is refused here rather than becoming an infinity that a
    /// later integer conversion would trap on.
    mutating func number() -> JSONValue? {
        let start = i
        func digits() -> Int {
            let s = i
            while i < bytes.count, bytes[i] >= 48, bytes[i] <= 57 { i += 1 }
            return i - s
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "-") { i += 1 }
        let intStart = i
        let n = digits()
        guard n > 0, !(n > 1 && bytes[intStart] == 48) else { return nil }
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
            i += 1
            guard digits() > 0 else { return nil }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard digits() > 0 else { return nil }
        }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self)
        guard let d = Double(text), d.isFinite else { return nil }
        return .number(d)
    }

    public mutating func string() -> String? {
        guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { return nil }
        i += 1
        var out = [UInt8]()
        guard JSONParser.unescape(bytes, from: &i, { out.append($0) }) else { return nil }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes the contents of a string from `i` (just past the opening
    /// quote) up to and past the closing quote, handing each decoded UTF-8
    /// byte to `emit`; false on malformed input. As strict parsers do, it
    /// refuses unescaped control characters, unknown escapes and unpaired
    /// surrogates (`\uD800\u0041` is an error, never arithmetic on a value
    /// that is not a low surrogate). The output is never longer than the
    /// input, so a caller may decode into a buffer of the input's size.
    static func unescape(_ bytes: UnsafeRawBufferPointer, from i: inout Int, _ emit: (UInt8) -> Void) -> Bool {
        while i < bytes.count {
            let c = bytes[i]
            if c == UInt8(ascii: "\"") { i += 1; return true }
            if c < 0x20 { return false }
            guard c == UInt8(ascii: "\\") else { emit(c); i += 1; continue }
            i += 1
            guard i < bytes.count else { return false }
            let e = bytes[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): emit(e)
            case UInt8(ascii: "n"): emit(10)
            case UInt8(ascii: "t"): emit(9)
            case UInt8(ascii: "r"): emit(13)
            case UInt8(ascii: "b"): emit(8)
            case UInt8(ascii: "f"): emit(12)
            case UInt8(ascii: "u"):
                guard let first = hex4(bytes, &i) else { return false }
                var value = first
                if (0xD800..<0xDC00).contains(first) {
                    // A high surrogate must be followed by an escaped low one.
                    guard i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else { return false }
                    i += 2
                    guard let low = hex4(bytes, &i), (0xDC00..<0xE000).contains(low) else { return false }
                    value = 0x10000 + ((first - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00..<0xE000).contains(first) {
                    return false   // a low surrogate with no high one before it
                }
                guard let u = Unicode.Scalar(value) else { return false }
                for b in u.utf8 { emit(b) }
            default:
                return false
            }
        }
        return false
    }

    static func hex4(_ bytes: UnsafeRawBufferPointer, _ i: inout Int) -> UInt32? {
        guard bytes.count - i >= 4 else { return nil }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[i]
            let d: UInt32
            switch c {
            case 48...57: d = UInt32(c - 48)
            case 65...70: d = UInt32(c - 55)
            case 97...102: d = UInt32(c - 87)
            default: return nil
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }
}

/// Finds the raw extent of a top-level string member in a JSON object
/// without copying any value: how a response that carries plaintext is
/// read (`Plaintext` is located, then base64-decoded straight from the
/// response buffer into secure memory).
public enum JSONScanner {
    /// What a document holds under the top-level member `key`.
    public enum Member: Equatable, Sendable {
        case absent
        /// The contents of the string (between its quotes).
        case string(Range<Int>)
        case notAString
        /// Named twice or more: readers disagree on which one counts (the
        /// first here, the last in Python's json and most others), so a
        /// response that does this is refused, not read either way.
        case duplicated
        /// Not one JSON object (trailing bytes included).
        case malformed
    }

    /// Byte range of the contents (between the quotes) of the top-level
    /// member `key`, if it is a string named once in a whole object.
    public static func stringMember(_ key: String, in bytes: UnsafeRawBufferPointer) -> Range<Int>? {
        if case .string(let r) = member(key, in: bytes) { return r }
        return nil
    }

    /// The top-level member `key` of a whole object: every member is
    /// walked (none decoded), so that a second `key` or bytes after the
    /// object are seen.
    public static func member(_ key: String, in bytes: UnsafeRawBufferPointer) -> Member {
        let k = Array(key.utf8)
        var i = 0
        func skip() { while i < bytes.count, bytes[i] == 32 || bytes[i] == 9 || bytes[i] == 10 || bytes[i] == 13 { i += 1 } }
        // Skips a string starting at i (the opening quote); returns the content range.
        func skipString() -> Range<Int>? {
            guard i < bytes.count, bytes[i] == 34 else { return nil }
            i += 1
            let start = i
            while i < bytes.count {
                if bytes[i] == 92 { i += 2; continue }
                if bytes[i] == 34 { let r = start..<i; i += 1; return r }
                i += 1
            }
            return nil
        }
        // Skips any value, counting nesting, without decoding it.
        func skipValue() -> Bool {
            skip()
            guard i < bytes.count else { return false }
            if bytes[i] == 34 { return skipString() != nil }
            var depth = 0
            while i < bytes.count {
                let c = bytes[i]
                if c == 34 { guard skipString() != nil else { return false }; continue }
                if c == 123 || c == 91 { depth += 1 }
                if c == 125 || c == 93 {
                    if depth == 0 { return true }
                    depth -= 1
                    if depth == 0 { i += 1; return true }
                }
                if depth == 0 && c == 44 { return true }
                i += 1
            }
            return depth == 0
        }
        skip()
        guard i < bytes.count, bytes[i] == 123 else { return .malformed }
        i += 1
        skip()
        var found: Member = .absent
        if i < bytes.count, bytes[i] == 125 {
            i += 1
        } else {
            while true {
                skip()
                guard let name = skipString() else { return .malformed }
                skip()
                guard i < bytes.count, bytes[i] == 58 else { return .malformed }
                i += 1
                skip()
                guard i < bytes.count else { return .malformed }
                // A name spelled with escapes ("Plain\u0074ext") is the
                // same member to every other reader.
                var matches = name.count == k.count && zip(name, k).allSatisfy { bytes[$0] == $1 }
                if !matches, name.count >= k.count, bytes[name].contains(92) {
                    matches = decodedString(at: name, in: bytes).map { Array($0.utf8) == k } ?? false
                }
                if matches && found != .absent { return .duplicated }
                if matches && bytes[i] == 34 {
                    guard let r = skipString() else { return .malformed }
                    found = .string(r)
                } else {
                    guard skipValue() else { return .malformed }
                    if matches { found = .notAString }
                }
                skip()
                guard i < bytes.count else { return .malformed }
                if bytes[i] == 44 { i += 1; continue }
                guard bytes[i] == 125 else { return .malformed }
                i += 1
                break
            }
        }
        skip()
        return i == bytes.count ? found : .malformed
    }
}

extension JSONScanner {
    /// The scanner's contract, for the fuzz target and the corpus replay:
    /// on any document the full parser reads, `member` says what the
    /// parser's top-level object holds under `key` (names compared as
    /// decoded bytes), and a string's range lies inside the document.
    public static func agreesWithParser(_ key: String, in bytes: UnsafeRawBufferPointer) -> Bool {
        let found = member(key, in: bytes)
        if case .string(let r) = found, !(r.lowerBound >= 1 && r.upperBound < bytes.count) { return false }
        guard let v = JSONValue.parse(bytes) else { return true }
        guard case .object(let members) = v else { return found == .malformed }
        let named = members.filter { Array($0.0.utf8) == Array(key.utf8) }
        switch found {
        case .absent: return named.isEmpty
        case .string: if case .string = named.first?.1 { return named.count == 1 } else { return false }
        case .notAString: if case .string = named.first?.1 { return false } else { return named.count == 1 }
        case .duplicated: return named.count >= 2
        case .malformed: return false
        }
    }

    /// The top-level string member `key`, decoded: for members that are
    /// not secret (a key ID, an error's code and message), read without
    /// building the rest of the document, however large.
    public static func nonSecretString(_ key: String, in bytes: UnsafeRawBufferPointer) -> String? {
        stringMember(key, in: bytes).flatMap { decodedString(at: $0, in: bytes) }
    }

    /// The string whose contents (between its quotes) `member` or
    /// `stringMember` found at `r`, decoded; nil when its escapes are not
    /// valid JSON. Not for secrets (see `secureString(at:in:)`).
    public static func decodedString(at r: Range<Int>, in bytes: UnsafeRawBufferPointer) -> String? {
        var p = JSONParser(bytes: UnsafeRawBufferPointer(rebasing: bytes[(r.lowerBound - 1)..<(r.upperBound + 1)]))
        return p.string()
    }

    /// Decodes the top-level string member `key` straight into a new
    /// secure buffer (escapes resolved there): how a secret member is read
    /// without a copy in ordinary memory. Nil when absent or malformed.
    public static func secureStringMember(_ key: String, in bytes: UnsafeRawBufferPointer) throws(SecureMemoryError) -> SecureBuffer? {
        guard let r = stringMember(key, in: bytes) else { return nil }
        return try secureString(at: r, in: bytes)
    }

    /// `secureStringMember` for the string `member` found at `r`.
    public static func secureString(at r: Range<Int>, in bytes: UnsafeRawBufferPointer) throws(SecureMemoryError) -> SecureBuffer? {
        let out = try SecureBuffer(capacity: max(r.count, 1))
        let n: Int? = out.withUnsafeMutableCapacity { cap in
            var i = r.lowerBound
            var o = 0
            // Decoded output is never longer than its escaped input.
            let ok = JSONParser.unescape(bytes, from: &i) { b in
                if o < cap.count { cap[o] = b }
                o += 1
            }
            return ok && o <= cap.count ? o : nil
        }
        guard let n else { out.wipeContents(); return nil }
        out.setCount(n)
        return out
    }
}
