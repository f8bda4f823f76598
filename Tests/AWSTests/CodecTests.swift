import Testing
import AWS
import SecureMemory

@Suite struct CodecTests {
    @Test func base64RoundTrip() throws {
        for n in 0..<70 {
            let bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 * 37 + 11) }
            let text = Base64.encode(bytes)
            #expect(Base64.decode(text) == bytes)
        }
        #expect(Base64.encode(Array("hello".utf8)) == "aGVsbG8=")
        #expect(Base64.decode("not base64!") == nil)
    }

    @Test func base64DecodesInPlaceIntoSecureMemory() throws {
        let encoded = Array("c2VjcmV0LWJ5dGVz".utf8)
        let out = try SecureBuffer(capacity: Base64.maxDecodedCount(encoded.count))
        let n = encoded.withUnsafeBytes { src in out.withUnsafeMutableCapacity { Base64.decode(src, into: $0) } }
        out.setCount(n!)
        let expected = Array("secret-bytes".utf8)
        expected.withUnsafeBytes { #expect(out.constantTimeEquals($0)) }
    }

    @Test func jsonScannerFindsMembersWithoutDecodingThem() {
        let doc = #"{"KeyId":"arn:aws:kms:us-east-1:1:key/x","Nested":{"Plaintext":"no"},"List":[1,"a\"b",{}],"Plaintext":"c2VjcmV0","EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}"#
        let bytes = Array(doc.utf8)
        bytes.withUnsafeBytes { b in
            let r = JSONScanner.stringMember("Plaintext", in: b)!
            #expect(String(decoding: b[r], as: UTF8.self) == "c2VjcmV0")
            #expect(JSONScanner.stringMember("Missing", in: b) == nil)
            let k = JSONScanner.stringMember("KeyId", in: b)!
            #expect(String(decoding: b[k], as: UTF8.self) == "arn:aws:kms:us-east-1:1:key/x")
        }
    }

    /// A member named twice is read by botocore (Python's json) as the
    /// last and was read here as the first: refused now, whichever way it
    /// is spelled; so is anything that is not one whole object.
    @Test func jsonScannerRefusesAmbiguousOrIncompleteObjects() {
        func member(_ doc: String, _ key: String = "Plaintext") -> JSONScanner.Member {
            Array(doc.utf8).withUnsafeBytes { JSONScanner.member(key, in: $0) }
        }
        #expect(member(#"{"Plaintext":"QQ==","Plaintext":"Qg=="}"#) == .duplicated)
        #expect(member(#"{"Plaintext":"QQ==","KeyId":"k","Plain\u0074ext":"Qg=="}"#) == .duplicated)
        #expect(member(#"{"Plaintext":"QQ==","Plaintext":null}"#) == .duplicated)
        #expect(member(#"{"Plaintext":"QQ==","Nested":{"Plaintext":"Qg=="}}"#) == .string(14..<18))
        #expect(member(#"{"Plain\u0074ext":"QQ=="}"#, "KeyId") == .absent)
        #expect(member(#"{"Plaintext":7}"#) == .notAString)
        #expect(member(#"{}"#) == .absent)
        #expect(member(" {\"Plaintext\":\"QQ==\"}\r\n") == .string(15..<19))
        for bad in [#"{"Plaintext":"QQ=="} {"Plaintext":"Qg=="}"#, #"{"Plaintext":"QQ==""#, #"{"Plaintext":"QQ==",}"#,
                    #"{"Plaintext":"QQ==" "KeyId":"k"}"#, #"["Plaintext"]"#, "", #"{"Plaintext""#] {
            #expect(member(bad) == .malformed, "\(bad)")
        }
        let twice = Array(#"{"Plaintext":"QQ==","Plaintext":"Qg=="}"#.utf8)
        #expect(twice.withUnsafeBytes { JSONScanner.stringMember("Plaintext", in: $0) } == nil)
        #expect(twice.withUnsafeBytes { JSONScanner.nonSecretString("Plaintext", in: $0) } == nil)
    }

    @Test func jsonParseAndSerialize() {
        let v = JSONValue.parse(#"{"a":[1,2.5,true,null],"b":"x\ny\u00e9"}"#)!
        #expect(v["b"]?.stringValue == "x\nyé")
        #expect(v["a"]?.arrayValue?.count == 4)
        #expect(JSONValue.object([("k", .string("q\"\\"))]).serialized == #"{"k":"q\"\\"}"#)
        #expect(JSONValue.parse("{") == nil)
    }

    /// The parser took the first of a member named twice, where botocore
    /// (Python's json) takes the last: a credentials document could mean
    /// one key to kmsfs and another to the tools beside it. Refused now,
    /// at any depth, in small objects and in large ones, and for names
    /// that differ only in spelling (`\u0074`) or canonically (U+212A
    /// KELVIN SIGN for K), which `subscript` would otherwise find both of.
    @Test func jsonParserRefusesAMemberNamedTwice() {
        #expect(JSONValue.parse(#"{"AccessKeyId":"A","AccessKeyId":"B"}"#) == nil)
        #expect(JSONValue.parse(#"{"a":{"x":1,"x":2}}"#) == nil)
        #expect(JSONValue.parse(#"{"Token":"t","Toke\u006e":"u"}"#) == nil)
        #expect(JSONValue.parse("{\"Key\":1,\"\u{212A}ey\":2}") == nil)
        let many = (0..<40).map { "\"m\($0)\":\($0)" }
        #expect(JSONValue.parse("{" + many.joined(separator: ",") + "}")?["m39"]?.numberValue == 39)
        #expect(JSONValue.parse("{" + (many + ["\"m3\":0"]).joined(separator: ",") + "}") == nil)
        #expect(JSONValue.parse("{" + (many + ["\"m39\":0"]).joined(separator: ",") + "}") == nil)
        #expect(JSONValue.parse(#"[{"x":1},{"x":2}]"#)?.arrayValue?.count == 2)   // one name per object, not per document
        let redacted = Array(#"{"SecretAccessKey":"s","SecretAccessKey":"t"}"#.utf8)
        #expect(redacted.withUnsafeBytes { JSONValue.parse($0, redacting: ["SecretAccessKey"]) } == nil)
    }

    @Test func urlParsing() {
        let u = URLParts("http://127.0.0.1:4566/")!
        #expect(u.host == "127.0.0.1" && u.port == 4566 && u.hostHeader == "127.0.0.1:4566")
        #expect(URLParts("https://kms.eu-west-1.amazonaws.com")!.hostHeader == "kms.eu-west-1.amazonaws.com")
        #expect(URLParts("https://[::1]:8443/x?y=1")!.host == "[::1]")
        #expect(URLParts("ftp://x") == nil)
        #expect(URLParts("https://user@host") == nil)
        // A host curl cannot use was taken at mount and failed every open.
        for bad in ["http://exa mple.com", "http://exa\tmple.com", "https://host/a b", "https://ho%st", "https://h\u{E9}st",
                    "https://[::1 ]/", "https://[fe80::1%eth0]x/", "https://host\u{7f}/"] {
            #expect(URLParts(bad) == nil, "\(bad)")
        }
        #expect(URLParts("https://[fe80::1%eth0]:443/")?.host == "[fe80::1%eth0]")
        #expect(URLParts("http://kms_emulator.local:4566")?.host == "kms_emulator.local")
    }

    @Test func timestamps() {
        let t = Timestamp.parseISO8601("2015-08-30T12:36:00Z")!
        #expect(t.amzDate == "20150830T123600Z")
        #expect(Timestamp.parseISO8601("2015-08-30T14:36:00+02:00")! == t)
        #expect(Timestamp.parseISO8601("2015-08-30T12:36:00.500Z")!.seconds == t.seconds + 0.5)
    }
}
