import Testing
import AWS
import KMS
import SecureMemory
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

// Golden messages in Tests/Fixtures/esdk, written by the Python Encryption
// SDK (make_fixtures.py) with a stand-in "aws-kms" key whose data key is
// known: the fake KMS here answers Decrypt for them.

let fixtureDir: String = {
    var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(2)                       // KMSTests/EncryptionSDKTests.swift
    return parts.joined(separator: "/") + "/Fixtures/esdk/"
}()

func readFixture(_ name: String) -> [UInt8] {
    let fd = open(fixtureDir + name, O_RDONLY)
    precondition(fd >= 0, "missing fixture \(fixtureDir + name)")
    defer { close(fd) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        precondition(n >= 0)
        if n == 0 { break }
        out += buf[0..<n]
    }
    return out
}

let fixtureDataKey: [UInt8] = Array(0x40..<0x60)
let fixtureKeyARN = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000001"
let fixtureDenyARN = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000002"
/// An alias the fake KMS resolves to fixtureKeyARN.
let fixtureAlias = "alias/fixture"
let goldenPlaintext = readFixture("plaintext.txt")
let allSuiteIDs = ["0014", "0046", "0078", "0114", "0146", "0178", "0214", "0346", "0378", "0478", "0578"]

/// A KMS that knows the fixtures' data keys and generates its own for the
/// writer: "fixture-key-N" -> the first N bytes of the fixture key,
/// "fixture-deny" -> AccessDeniedException, "generated-N" -> the key it
/// handed out for GenerateDataKey.
final class FakeKMS: @unchecked Sendable {
    struct Call { let operation: String; let body: JSONValue }
    let calls = Mutex<[Call]>([])
    let generated = Mutex<[UInt8]>(Array(0xA0..<0xC0))
    /// Answers Decrypt without naming the key (a hostile or broken endpoint).
    let omitKeyId = Mutex(false)

    var transport: FakeTransport {
        FakeTransport { [self] req, _ in
            let op = req.headers.first { $0.name == "X-Amz-Target" }?.value.split(separator: ".").last.map(String.init) ?? "?"
            guard case .bytes(let raw) = req.body, let body = JSONValue.parse(String(decoding: raw, as: UTF8.self)) else {
                return (400, #"{"__type":"SerializationException"}"#)
            }
            calls.withLock { $0.append(Call(operation: op, body: body)) }
            switch op {
            case "Decrypt":
                let blob = String(decoding: Base64.decode(body["CiphertextBlob"]?.stringValue ?? "") ?? [], as: UTF8.self)
                if blob == "fixture-deny" { return (400, #"{"__type":"AccessDeniedException","message":"no"}"#) }
                // KeyId names the key (or an alias of it): any other is refused, as KMS does.
                if let kid = body["KeyId"]?.stringValue, kid != fixtureKeyARN, kid != fixtureAlias {
                    return (400, #"{"__type":"IncorrectKeyException","message":"The key ID in the request does not identify a KMS key that can perform this operation."}"#)
                }
                if blob.hasPrefix("fixture-raw-blob") {
                    return (200, #"{"KeyId":"\#(fixtureKeyARN)","Plaintext":"\#(Base64.encode(Array("raw secret".utf8)))"}"#)
                }
                if blob.hasPrefix("fixture-key-"), let n = Int(blob.dropFirst(12)) {
                    if omitKeyId.withLock({ $0 }) { return (200, #"{"Plaintext":"\#(Base64.encode(Array(fixtureDataKey[0..<n])))"}"#) }
                    return (200, #"{"KeyId":"\#(fixtureKeyARN)","Plaintext":"\#(Base64.encode(Array(fixtureDataKey[0..<n])))"}"#)
                }
                if blob == "generated-32" {
                    let k = generated.withLock { $0 }
                    return (200, #"{"KeyId":"\#(fixtureKeyARN)","Plaintext":"\#(Base64.encode(k))"}"#)
                }
                return (400, #"{"__type":"InvalidCiphertextException","message":"unknown blob"}"#)
            case "GenerateDataKey":
                let n = Int(body["NumberOfBytes"]?.numberValue ?? 0)
                let k = generated.withLock { $0 }
                let blob = Base64.encode(Array("generated-\(n)".utf8))
                return (200, #"{"KeyId":"\#(fixtureKeyARN)","CiphertextBlob":"\#(blob)","Plaintext":"\#(Base64.encode(Array(k[0..<n])))"}"#)
            default:
                return (400, #"{"__type":"UnknownOperationException"}"#)
            }
        }
    }

    func decoder(required: [(key: String, value: String)] = [], keys: [String] = [],
                 maxEncryptedDataKeys: Int = EncryptionSDKMessage.defaultMaxEncryptedDataKeys) -> CiphertextDecoder {
        var allowed = KMSKeyAllowList()
        for k in keys { allowed = try! allowed.adding(k) }
        return CiphertextDecoder(kms: client(transport, attempts: 1), requiredContext: required, allowedKeys: allowed,
                                 maxEncryptedDataKeys: maxEncryptedDataKeys)
    }

    /// The KeyId member of each Decrypt request, in order (nil: none sent).
    var decryptKeyIds: [String?] {
        calls.withLock { $0.filter { $0.operation == "Decrypt" }.map { $0.body["KeyId"]?.stringValue } }
    }

    var count: Int { calls.withLock { $0.count } }
}

func text(_ b: SecureBuffer) -> [UInt8] { b.withUnsafeBytes { Array($0) } }

/// The DecodeError a decryption throws (nil when it succeeds).
func failure(_ body: () throws(DecodeError) -> DecodedSecret) -> DecodeError? {
    do { _ = try body(); return nil } catch { return error }
}

@Suite struct EncryptionSDKGoldenTests {
    @Test(arguments: allSuiteIDs.flatMap { ["\($0)-framed", "\($0)-unframed"] })
    func goldenMessageDecrypts(_ name: String) throws {
        let kms = FakeKMS()
        let bytes = readFixture(name + ".esdk")
        #expect(CiphertextDecoder.detect(bytes) == .encryptionSDK)
        let d = try kms.decoder().decrypt(bytes, path: "golden/" + name)
        #expect(text(d.plaintext) == goldenPlaintext)
        let suite = name.prefix(4)
        let version = suite.hasPrefix("04") || suite.hasPrefix("05") ? 2 : 1
        let framing = name.hasSuffix("-framed") ? "frame-128" : "unframed"
        #expect(d.formatDetail == "aws-encryption-sdk-v\(version)/0x\(suite)/\(framing)")
        #expect(d.format == .encryptionSDK)
        #expect(d.keyId == fixtureKeyARN)
        #expect(d.encryptionContext.contains { $0.key == "purpose" && $0.value == "golden" })
        // KMS saw the message's whole context (signing key included) and the key ARN.
        let call = try #require(kms.calls.withLock { $0.first })
        #expect(call.operation == "Decrypt")
        #expect(call.body["KeyId"]?.stringValue == fixtureKeyARN)
        #expect(call.body["EncryptionContext"]?["kmsfs:path"]?.stringValue == "golden/" + name)
        let signed = ["0214", "0346", "0378", "0578"].contains(String(suite))
        #expect((call.body["EncryptionContext"]?["aws-crypto-public-key"] != nil) == signed)
    }

    /// `require_commitment`: every version 1 suite (no key commitment) is
    /// refused before any KMS call, base64-encoded or not; the committing
    /// ones decrypt.
    @Test(arguments: allSuiteIDs)
    func requireCommitmentRefusesEveryNonCommittingSuiteBeforeKMS(_ suite: String) throws {
        let kms = FakeKMS()
        let decoder = CiphertextDecoder(kms: client(kms.transport, attempts: 1), requireCommitment: true)
        let bytes = readFixture(suite + "-framed.esdk")
        let committing = suite == "0478" || suite == "0578"
        for input in [bytes, Array(Base64.encode(bytes).utf8)] {
            let e = failure { () throws(DecodeError) in try decoder.decrypt(input, path: "golden/\(suite)-framed") }
            if committing {
                #expect(e == nil)
            } else {
                let name = try #require(EncryptionSDKSuite.all.first { $0.hexID == "0x" + suite }).name
                #expect(e?.description == "refused: the message's algorithm suite 0x\(suite) (\(name)) has no key commitment and the mount has require_commitment; re-encrypt it with kmsfs encrypt or aws-encryption-cli's default suite")
            }
        }
        #expect(kms.count == (committing ? 2 : 0))
    }

    @Test func everySuiteTheCLICanWriteIsKnown() {
        let ids = EncryptionSDKSuite.all.map { $0.hexID }
        #expect(ids == allSuiteIDs.map { "0x" + $0 })
        #expect(EncryptionSDKSuite.committingSigned.name == "AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384")
    }

    /// An answer that does not name the key the data key is under is not
    /// used (docs/formats.md): a hostile endpoint cannot slip one past the
    /// check by leaving KeyId out.
    @Test func anAnswerNamingNoKeyIsNotUsed() throws {
        let kms = FakeKMS()
        kms.omitKeyId.withLock { $0 = true }
        #expect(throws: (any Error).self) { try kms.decoder().decrypt(readFixture("0578-exact-frames.esdk"), path: "golden/0578-exact-frames") }
        kms.omitKeyId.withLock { $0 = false }
        #expect(try kms.decoder().decrypt(readFixture("0578-exact-frames.esdk"), path: "golden/0578-exact-frames").plaintext.count > 0)
    }

    @Test func exactMultipleOfTheFrameLengthEndsWithAnEmptyFinalFrame() throws {
        let d = try FakeKMS().decoder().decrypt(readFixture("0578-exact-frames.esdk"), path: "golden/0578-exact-frames")
        #expect(text(d.plaintext) == Array(goldenPlaintext[0..<256]))
    }

    @Test func eachAwsKmsDataKeyIsTriedUntilOneWorks() throws {
        let kms = FakeKMS()
        let bytes = readFixture("0578-two-keys.esdk")
        let header = try EncryptionSDKMessage.parseHeader(bytes)
        #expect(header.encryptedDataKeys.count == 2)
        #expect(header.encryptedDataKeys.first?.ciphertext == Array("fixture-deny".utf8))
        let d = try kms.decoder().decrypt(bytes, path: "golden/0578-two-keys")
        #expect(text(d.plaintext) == goldenPlaintext)
        #expect(kms.count == 2)
    }

    @Test func aMessageWithoutPathBindingDecryptsAnywhere() throws {
        let d = try FakeKMS().decoder().decrypt(readFixture("0478-no-context.esdk"), path: "any/name")
        #expect(text(d.plaintext) == goldenPlaintext)
        #expect(d.formatDetail == "aws-encryption-sdk-v2/0x0478/frame-4096")
    }

    @Test func base64EncodedMessagesAreRead() throws {
        // aws-encryption-cli --encode
        let b64 = Array(Base64.encode(readFixture("0578-framed.esdk")).utf8) + [10]
        #expect(CiphertextDecoder.detect(b64) == .kmsBlobBase64)
        let d = try FakeKMS().decoder().decrypt(b64, path: "golden/0578-framed")
        #expect(text(d.plaintext) == goldenPlaintext)
        #expect(d.formatDetail == "aws-encryption-sdk-v2/0x0578/frame-128/base64")
    }
}

@Suite struct EncryptionContextTests {
    @Test func pathBindingRefusesAnotherNameWithoutCallingKMS() {
        let kms = FakeKMS()
        let e = failure { () throws(DecodeError) in
            try kms.decoder().decrypt(readFixture("0578-framed.esdk"), path: "golden/0478-framed")
        }
        guard case .contextMismatch(let m)? = e else { Issue.record("expected contextMismatch, got \(String(describing: e))"); return }
        #expect(m.contains("bound to 'golden/0578-framed' (kmsfs:path) but is served as 'golden/0478-framed'"))
        #expect(kms.count == 0)
    }

    @Test func suffixBindingForTheDecryptTool() throws {
        let kms = FakeKMS()
        let bytes = readFixture("0578-framed.esdk")
        _ = try kms.decoder().decrypt(bytes, binding: .suffix("/srv/secrets/golden/0578-framed"))
        _ = try kms.decoder().decrypt(bytes, binding: .suffix("golden/0578-framed"))
        #expect(failure { () throws(DecodeError) in try kms.decoder().decrypt(bytes, binding: .suffix("/srv/xgolden/0578-framed")) } != nil)
        #expect(failure { () throws(DecodeError) in try kms.decoder().decrypt(bytes, binding: .suffix("/srv/0578-framed")) } != nil)
    }

    /// Regression (issue 13 A13): `String ==` is canonical equivalence, so
    /// a file bound to an NFC path passed when served under its NFD spelling
    /// (another name in SOURCE, which byte-wise policy patterns treat apart).
    @Test func pathBindingComparesBytesNotUnicodeEquivalence() {
        let nfc = "db/caf\u{E9}.password"
        let nfd = "db/cafe\u{301}.password"
        #expect(nfc == nfd)   // the premise: Swift calls them equal
        #expect(!PathBinding.exact(nfd).admits(nfc))
        #expect(!PathBinding.exact(nfc).admits(nfd))
        #expect(PathBinding.exact(nfc).admits(nfc))
        #expect(!PathBinding.suffix("/srv/" + nfd).admits(nfc))
        #expect(PathBinding.suffix("/srv/" + nfc).admits(nfc))
        #expect(!PathBinding.suffix("/srv/x" + nfc).admits(nfc))
    }

    @Test func requiredContextIsCheckedAgainstTheHeader() throws {
        let bytes = readFixture("0178-framed.esdk")
        let path = "golden/0178-framed"
        _ = try FakeKMS().decoder(required: [("purpose", "golden")]).decrypt(bytes, path: path)
        let wrong = failure { () throws(DecodeError) in try FakeKMS().decoder(required: [("purpose", "prod")]).decrypt(bytes, path: path) }
        #expect(wrong?.description == "encryption context check failed: the mount requires purpose=prod but the file carries purpose=golden")
        let missing = failure { () throws(DecodeError) in try FakeKMS().decoder(required: [("team", "web")]).decrypt(bytes, path: path) }
        #expect(missing?.description == "encryption context check failed: the mount requires team=web but the file's context has no 'team'")
    }
}

/// Damaged messages: each names what is wrong, and none yields plaintext.
@Suite struct DamagedMessageTests {
    func decodeError(_ name: String, path: String? = nil, _ damage: (inout [UInt8]) -> Void) -> (DecodeError?, Int) {
        var bytes = readFixture(name + ".esdk")
        damage(&bytes)
        let kms = FakeKMS()
        let e = failure { () throws(DecodeError) in try kms.decoder().decrypt(bytes, path: path ?? "golden/" + name) }
        return (e, kms.count)
    }

    func layout(_ name: String) throws -> (header: EncryptionSDKHeader, bytes: [UInt8]) {
        let b = readFixture(name + ".esdk")
        return (try EncryptionSDKMessage.parseHeader(b), b)
    }

    @Test func flippedSignatureByteIsASignatureMismatchBeforeKMS() {
        let (e, calls) = decodeError("0578-framed") { $0[$0.count - 10] ^= 0x01 }
        #expect(e?.description.hasPrefix("integrity check failed: signature mismatch") == true, "\(String(describing: e))")
        #expect(calls == 0)
    }

    @Test func changedBodyOfSignedMessageIsASignatureMismatch() {
        let (e, calls) = decodeError("0346-framed") { $0[$0.count - 200] ^= 0x80 }
        #expect(e?.description.contains("signature mismatch") == true, "\(String(describing: e))")
        #expect(calls == 0)
    }

    @Test func changedFrameOfUnsignedMessageNamesTheFrame() throws {
        // 0478-framed: header, frame 1 and 2 of seq(4) iv(12) content(128) tag(16), final frame.
        let (h, _) = try layout("0478-framed")
        let frame2 = h.length + (4 + 12 + 128 + 16)
        let (e, _) = decodeError("0478-framed") { $0[frame2 + 4 + 12 + 5] ^= 0x01 }
        #expect(e?.description == "integrity check failed: bad frame 2 of 3: authentication failed (the frame was changed, moved or cut)")
    }

    @Test func changedUnframedBodyIsReported() {
        let (e, _) = decodeError("0178-unframed") { $0[$0.count - 30] ^= 0x01 }
        #expect(e?.description.contains("bad body: authentication of the unframed body failed") == true, "\(String(describing: e))")
    }

    @Test func changedCommitmentIsACommitmentMismatch() throws {
        let (h, _) = try layout("0478-framed")
        // The commitment is the 32 bytes just before the 16-byte header tag.
        let (e, _) = decodeError("0478-framed") { $0[h.length - 16 - 1] ^= 0x01 }
        #expect(e?.description.hasPrefix("integrity check failed: commitment mismatch") == true, "\(String(describing: e))")
    }

    @Test func changedHeaderOfV1MessageFailsHeaderAuthentication() {
        // A byte of the message ID (offset 4..<20 in v1).
        let (e, _) = decodeError("0178-framed") { $0[8] ^= 0x01 }
        #expect(e?.description == "integrity check failed: bad header: the header authentication tag does not verify (the header was changed)")
    }

    @Test func changedContextOfV2UnsignedMessageFailsHeaderAuthentication() {
        // 'purpose'='golden' -> 'golden' with one letter changed (same length),
        // and bound path unchanged: the tag (and the KMS context) catch it.
        let (e, _) = decodeError("0478-framed") { b in
            let needle = Array("golden".utf8)
            let i = (0..<(b.count - needle.count)).first { Array(b[$0..<($0 + needle.count)]) == needle && b[$0 - 1] == 6 }!
            b[i] = UInt8(ascii: "G")
        }
        #expect(e != nil)
        #expect(e?.description.contains("header authentication tag") == true, "\(String(describing: e))")
    }

    @Test func truncatedMessagesSayWhere() {
        let (e1, _) = decodeError("0478-framed") { $0.removeLast(20) }
        #expect(e1?.description.hasPrefix("damaged ciphertext: truncated: the file ends in frame 3") == true, "\(String(describing: e1))")
        let (e2, _) = decodeError("0578-framed") { $0.removeLast(50) }
        #expect(e2?.description.hasPrefix("damaged ciphertext: truncated: the file ends in the footer (signature)") == true, "\(String(describing: e2))")
        let (e3, _) = decodeError("0578-framed") { $0.removeLast($0.count - 40) }
        #expect(e3?.description.hasPrefix("damaged ciphertext: truncated: the file ends in the encryption context") == true, "\(String(describing: e3))")
    }

    @Test func trailingBytesAreRefused() {
        let (e, _) = decodeError("0478-framed") { $0 += [0, 0, 0] }
        #expect(e?.description == "damaged ciphertext: 3 unexpected bytes after the end of the message")
    }

    @Test func reorderedFramesAreRefused() throws {
        let (e, _) = decodeError("0478-framed") { b in
            let frame = 4 + 12 + 128 + 16
            let final = 4 + 4 + 12 + 4 + 44 + 16
            let start = b.count - final - 2 * frame
            let f1 = Array(b[start..<(start + frame)])
            let f2 = Array(b[(start + frame)..<(start + 2 * frame)])
            b.replaceSubrange(start..<(start + 2 * frame), with: f2 + f1)
        }
        #expect(e?.description == "damaged ciphertext: bad frame 1: sequence number 2 out of order")
    }

    @Test func unknownSuiteAndVersion() {
        let (e1, _) = decodeError("0178-framed") { $0[2] = 0x09 }
        #expect(e1?.description == "damaged ciphertext: bad header: unknown algorithm suite 0x978")
        var v3 = readFixture("0478-framed.esdk")
        v3[0] = 3
        #expect(CiphertextDecoder.detect(v3) == .kmsBlob)   // not an SDK message at all: KMS will say so
    }

    @Test func noAwsKmsDataKey() {
        let (e, calls) = decodeError("0478-framed") { b in
            let i = (0..<(b.count - 7)).first { Array(b[$0..<($0 + 7)]) == Array("aws-kms".utf8) }!
            b[i] = UInt8(ascii: "x")
        }
        #expect(e?.description.hasPrefix("not a ciphertext kmsfs can read: no encrypted data key from AWS KMS") == true, "\(String(describing: e))")
        #expect(calls == 0)
    }
}

@Suite struct EncryptionSDKWriterTests {
    @Test(arguments: [0, 1, 4095, 4096, 4097, 10_000, 100_000])
    func writerRoundTrips(_ size: Int) throws {
        let kms = FakeKMS()
        let plain = try SecureBuffer(capacity: max(size, 1))
        plain.withUnsafeMutableCapacity { p in for i in 0..<size { p[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) } }
        plain.setCount(size)
        let kmsClient = client(kms.transport, attempts: 1)
        let m = try EncryptionSDKWriter.encrypt(plain, kms: kmsClient, keyId: "alias/test",
                                                context: [("team", "web"), ("kmsfs:path", "app/db.password")])
        #expect(m.keyId == fixtureKeyARN)
        let gdk = try #require(kms.calls.withLock { $0.first })
        #expect(gdk.operation == "GenerateDataKey")
        #expect(gdk.body["KeyId"]?.stringValue == "alias/test")
        #expect(gdk.body["NumberOfBytes"]?.numberValue == 32)
        #expect(gdk.body["EncryptionContext"]?["aws-crypto-public-key"] != nil)

        let h = try EncryptionSDKMessage.parseHeader(m.bytes)
        #expect(h.version == 2 && h.suite.id == 0x0578 && h.framed && h.frameLength == 4096)
        #expect(h.encryptionContext.map { $0.key } == ["aws-crypto-public-key", "kmsfs:path", "team"])   // sorted
        #expect(h.encryptedDataKeys.count == 1 && h.encryptedDataKeys[0].providerID == "aws-kms")
        #expect(h.encryptedDataKeys[0].providerInfoText == fixtureKeyARN)

        let d = try kms.decoder(required: [("team", "web")]).decrypt(m.bytes, path: "app/db.password")
        #expect(d.plaintext.count == size)
        #expect(d.plaintext.withUnsafeBytes { p in plain.withUnsafeBytes { $0.elementsEqual(p) } })
        #expect(d.formatDetail == "aws-encryption-sdk-v2/0x0578/frame-4096")
        // Exactly one frame more than the full frames (the final one may be empty).
        let frames = size / 4096 + 1
        let expectedSize = h.length + (frames - 1) * (4 + 12 + 4096 + 16) + (4 + 4 + 12 + 4 + size % 4096 + 16)
        #expect(m.bytes.count > expectedSize && m.bytes.count <= expectedSize + 2 + 104)
    }

    @Test func writtenMessagesRefuseTamperingBeforeKMS() throws {
        let kms = FakeKMS()
        let plain = try SecureBuffer(capacity: 9000)
        try [UInt8](repeating: 0x61, count: 9000).withUnsafeBytes { try plain.append($0) }
        var m = try EncryptionSDKWriter.encrypt(plain, kms: client(kms.transport, attempts: 1), keyId: "k",
                                                context: [("kmsfs:path", "x")]).bytes
        m[m.count / 2] ^= 0x04
        let before = kms.count
        let e = failure { () throws(DecodeError) in try kms.decoder().decrypt(m, path: "x") }
        #expect(e?.description.contains("signature mismatch") == true)
        #expect(kms.count == before)
    }

    /// A header's context values are the file's bytes: a 60 KB binding
    /// made one 60 KB log, audit and `check` line per open. Cut to a
    /// bounded length, marked.
    @Test func hugeContextValuesAreShownBounded() throws {
        let kms = FakeKMS()
        let plain = try SecureBuffer(capacity: 1)
        try plain.append(utf8: "x")
        let huge = String(repeating: "p", count: 60_000)
        let cases: [(context: [(String, String)], required: [(key: String, value: String)])] = [
            ([("kmsfs:path", huge)], []), ([("team", huge)], [("team", "web")])]
        for (context, required) in cases {
            let m = try EncryptionSDKWriter.encrypt(plain, kms: client(kms.transport, attempts: 1), keyId: "k", context: context)
            let e = failure { () throws(DecodeError) in
                try kms.decoder(required: required).decrypt(m.bytes, path: "a")
            }
            #expect(e != nil)
            let text = "\(e!)"
            #expect(text.utf8.count < 1024 && text.contains("(60000 bytes)"), "\(text.utf8.count) bytes")
        }
    }

    @Test func reservedContextKeysAreRefused() throws {
        let plain = try SecureBuffer(capacity: 1)
        do {
            _ = try EncryptionSDKWriter.encrypt(plain, kms: client(FakeKMS().transport), keyId: "k",
                                                context: [("aws-crypto-public-key", "x")])
            Issue.record("expected an error")
        } catch {
            #expect(error.description == "encryption context key 'aws-crypto-public-key' is reserved for the Encryption SDK")
        }
    }

    @Test func kmsFailuresAreReported() throws {
        let t = FakeTransport { _, _ in (400, #"{"__type":"NotFoundException","message":"Alias not found"}"#) }
        let plain = try SecureBuffer(capacity: 1)
        do {
            _ = try EncryptionSDKWriter.encrypt(plain, kms: client(t), keyId: "alias/none", context: [])
            Issue.record("expected an error")
        } catch {
            #expect(error.description.contains("NotFoundException"))
        }
    }
}

/// A structurally complete v2 message (suite 0x0478, unsigned, framed,
/// one empty final frame, no context) listing the given encrypted data
/// keys. Its header tag and commitment are not real: it is only good for
/// what happens before those are checked.
func messageWithKeys(_ keys: [(provider: String, info: String, ciphertext: String)]) -> [UInt8] {
    var m: [UInt8] = [0x02, 0x04, 0x78]
    m += [UInt8](repeating: 0x11, count: 32)           // message ID
    m.appendU16Test(0)                                  // no encryption context
    m.appendU16Test(keys.count)
    for k in keys {
        for field in [k.provider, k.info, k.ciphertext] {
            m.appendU16Test(field.utf8.count)
            m += Array(field.utf8)
        }
    }
    m += [0x02]                                         // framed
    m += [0x00, 0x00, 0x10, 0x00]                       // 4096-byte frames
    m += [UInt8](repeating: 0x22, count: 32)            // commitment
    m += [UInt8](repeating: 0x33, count: 16)            // header tag
    m += [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 1]           // final frame 1
    m += [UInt8](repeating: 0x44, count: 12)            // IV
    m += [0, 0, 0, 0]                                   // no content
    m += [UInt8](repeating: 0x55, count: 16)            // tag
    return m
}

extension Array where Element == UInt8 {
    mutating func appendU16Test(_ v: Int) { append(UInt8(truncatingIfNeeded: v >> 8)); append(UInt8(truncatingIfNeeded: v)) }
}

/// Issue 13 A3: a header may list 65,535 encrypted data keys, each a KMS
/// Decrypt; the count is capped before any KMS call.
@Suite struct EncryptedDataKeyLimitTests {
    /// 299 refused keys, then one KMS would answer: the old reader made 300 calls.
    let many: [UInt8] = messageWithKeys(
        Array(repeating: ("aws-kms", fixtureDenyARN, "fixture-deny"), count: 299) + [("aws-kms", fixtureKeyARN, "fixture-key-32")])

    @Test func tooManyDataKeysAreRefusedBeforeAnyKMSCall() {
        let kms = FakeKMS()
        let e = failure { () throws(DecodeError) in try kms.decoder().decrypt(many, path: "x") }
        #expect(e?.description == "refused: the message lists 300 encrypted data keys, more than the limit of 10 (max_encrypted_data_keys=); no KMS call was made")
        #expect(kms.count == 0)
        // Base64-encoded (aws-encryption-cli --encode) is no way round it.
        let b64 = Array(Base64.encode(many).utf8)
        let e2 = failure { () throws(DecodeError) in try kms.decoder().decrypt(b64, path: "x") }
        #expect(e2?.description.hasPrefix("refused: the message lists 300 encrypted data keys") == true)
        #expect(kms.count == 0)
    }

    @Test func theLimitIsTheMounts() throws {
        let kms = FakeKMS()
        let e = failure { () throws(DecodeError) in try kms.decoder(maxEncryptedDataKeys: 299).decrypt(many, path: "x") }
        #expect(e?.description == "refused: the message lists 300 encrypted data keys, more than the limit of 299 (max_encrypted_data_keys=); no KMS call was made")
        #expect(kms.count == 0)
        // A real message of two keys: refused under a limit of 1, read under 2.
        let two = readFixture("0578-two-keys.esdk")
        let e1 = failure { () throws(DecodeError) in try kms.decoder(maxEncryptedDataKeys: 1).decrypt(two, path: "golden/0578-two-keys") }
        #expect(e1?.description == "refused: the message lists 2 encrypted data keys, more than the limit of 1 (max_encrypted_data_keys=); no KMS call was made")
        #expect(kms.count == 0)
        let d = try kms.decoder(maxEncryptedDataKeys: 2).decrypt(two, path: "golden/0578-two-keys")
        #expect(text(d.plaintext) == goldenPlaintext)
    }

    @Test func theHeaderParserTakesTheLimit() throws {
        #expect(throws: DecodeError.self) { try EncryptionSDKMessage.parseHeader(many, maxEncryptedDataKeys: 10) }
        #expect(try EncryptionSDKMessage.parseHeader(many).encryptedDataKeys.count == 300)
        // At the limit: tried (and, with 10 refused keys, 10 calls at most).
        let ten = messageWithKeys(Array(repeating: ("aws-kms", fixtureDenyARN, "fixture-deny"), count: 10))
        let kms = FakeKMS()
        let e = failure { () throws(DecodeError) in try kms.decoder().decrypt(ten, path: "x") }
        #expect(e?.description.contains("AccessDeniedException") == true, "\(String(describing: e))")
        #expect(kms.count == 10)
        #expect(EncryptionSDKMessage.defaultMaxEncryptedDataKeys == 10)
    }
}

/// Issue 13 A4: `kms_key=` (the SDKs' strict mode).
@Suite struct KeyAllowListTests {
    /// Not base64 (NUL, space): read as a raw KMS blob.
    let rawBlob: [UInt8] = Array("fixture-raw-blob 0001".utf8) + [0, 1]
    let otherARN = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-0000000000ff"

    @Test func rawBlobsSendTheListedKeyAsKeyId() throws {
        let kms = FakeKMS()
        let d = try kms.decoder(keys: [fixtureKeyARN]).decrypt(rawBlob, path: "raw")
        #expect(text(d.plaintext) == Array("raw secret".utf8))
        #expect(kms.decryptKeyIds == [fixtureKeyARN])
        // Without a list, no KeyId (as before).
        let open = FakeKMS()
        _ = try open.decoder().decrypt(rawBlob, path: "raw")
        #expect(open.decryptKeyIds == [nil])
    }

    @Test func aRawBlobOfAnotherKeyIsRefusedByKMS() {
        let kms = FakeKMS()
        let e = failure { () throws(DecodeError) in try kms.decoder(keys: [otherARN]).decrypt(rawBlob, path: "raw") }
        guard case .refused(let m)? = e else { Issue.record("expected refused, got \(String(describing: e))"); return }
        #expect(m.hasPrefix("KMS refused to decrypt it under \(otherARN), the key kms_key= allows: KMS Decrypt failed: IncorrectKeyException"), "\(m)")
        #expect(kms.decryptKeyIds == [otherARN])
    }

    @Test func severalKeysAreTriedInTurnWhileKMSRefuses() throws {
        let kms = FakeKMS()
        let d = try kms.decoder(keys: [otherARN + "+" + fixtureAlias]).decrypt(rawBlob, path: "raw")
        #expect(text(d.plaintext) == Array("raw secret".utf8))
        #expect(kms.decryptKeyIds == [otherARN, fixtureAlias])
        #expect(d.keyId == fixtureKeyARN)

        let none = FakeKMS()
        let other2 = "arn:aws:kms:eu-west-1:111122223333:alias/other"
        let e = failure { () throws(DecodeError) in try none.decoder(keys: [otherARN, other2]).decrypt(rawBlob, path: "raw") }
        #expect(e?.description.hasPrefix("refused: KMS refused to decrypt it under each of the 2 keys kms_key= allows; the last, \(other2): KMS Decrypt failed: IncorrectKeyException") == true, "\(String(describing: e))")
        #expect(none.count == 2)
    }

    @Test func aKMSThatIgnoresKeyIdIsCaughtByTheAnswer() {
        // Answers every Decrypt for another key, whatever KeyId says.
        let t = FakeTransport { _, _ in (200, #"{"KeyId":"arn:aws:kms:us-east-1:999999999999:key/evil","Plaintext":"c2VjcmV0"}"#) }
        let allowed = try! KMSKeyAllowList().adding(fixtureKeyARN)
        let decoder = CiphertextDecoder(kms: client(t, attempts: 1), allowedKeys: allowed)
        let e = failure { () throws(DecodeError) in try decoder.decrypt(rawBlob, path: "raw") }
        #expect(e?.description == "refused: KMS decrypted the ciphertext with key arn:aws:kms:us-east-1:999999999999:key/evil although the request named \(fixtureKeyARN) (kms_key=); the plaintext was wiped")
        let e2 = failure { () throws(DecodeError) in try decoder.decrypt(readFixture("0478-framed.esdk"), path: "golden/0478-framed") }
        #expect(e2?.description.hasPrefix("refused: KMS decrypted the data key with key arn:aws:kms:us-east-1:999999999999:key/evil although the request named \(fixtureKeyARN)") == true, "\(String(describing: e2))")
    }

    @Test func messagesTryOnlyDataKeysOfListedKeys() throws {
        // 0578-two-keys: the refused key's data key first, then fixtureKeyARN's.
        let kms = FakeKMS()
        let d = try kms.decoder(keys: [fixtureKeyARN]).decrypt(readFixture("0578-two-keys.esdk"), path: "golden/0578-two-keys")
        #expect(text(d.plaintext) == goldenPlaintext)
        #expect(kms.decryptKeyIds == [fixtureKeyARN])   // the other data key was never sent
    }

    @Test func aMessageWithNoDataKeyOfAListedKeyIsRefusedWithoutKMS() {
        let kms = FakeKMS()
        let e = failure { () throws(DecodeError) in
            try kms.decoder(keys: [otherARN]).decrypt(readFixture("0578-framed.esdk"), path: "golden/0578-framed")
        }
        #expect(e?.description == "refused: no encrypted data key of the message is under a key kms_key= allows (its AWS KMS keys: \(fixtureKeyARN)); no KMS call was made")
        #expect(kms.count == 0)
        // An alias ARN of another account cannot name the message's key: not tried either.
        let e2 = failure { () throws(DecodeError) in
            try kms.decoder(keys: ["arn:aws:kms:us-east-1:444455556666:alias/fixture"]).decrypt(readFixture("0578-framed.esdk"), path: "golden/0578-framed")
        }
        #expect(e2?.description.hasPrefix("refused: no encrypted data key of the message is under a key kms_key= allows") == true)
        #expect(kms.count == 0)
    }

    @Test func aliasesAreSentAsKeyIdForKMSToEnforce() throws {
        let kms = FakeKMS()
        let d = try kms.decoder(keys: [fixtureAlias]).decrypt(readFixture("0478-framed.esdk"), path: "golden/0478-framed")
        #expect(text(d.plaintext) == goldenPlaintext)
        #expect(kms.decryptKeyIds == [fixtureAlias])
        #expect(d.keyId == fixtureKeyARN)
        let refused = FakeKMS()
        let e = failure { () throws(DecodeError) in
            try refused.decoder(keys: ["alias/other"]).decrypt(readFixture("0478-framed.esdk"), path: "golden/0478-framed")
        }
        #expect(e?.description.hasPrefix("refused: KMS refused the data key of \(fixtureKeyARN) under alias/other, which kms_key= allows: KMS Decrypt failed: IncorrectKeyException") == true, "\(String(describing: e))")
        #expect(refused.count == 1)
    }

    @Test func theListsSyntax() throws {
        let l = try KMSKeyAllowList().adding("\(fixtureKeyARN)+alias/app/db+arn:aws-us-gov:kms:us-gov-west-1:111122223333:alias/x_y-z")
        #expect(l.entries == [.keyARN(fixtureKeyARN), .aliasName("alias/app/db"), .aliasARN("arn:aws-us-gov:kms:us-gov-west-1:111122223333:alias/x_y-z")])
        #expect(l.description == "\(fixtureKeyARN)+alias/app/db+arn:aws-us-gov:kms:us-gov-west-1:111122223333:alias/x_y-z")
        #expect(try l.adding(fixtureKeyARN).entries.count == 3)   // duplicates dropped
        #expect(try KMSKeyAllowList().adding("arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd").keyARNs.count == 1)
        let bad: [(String, String)] = [
            ("00000000-0000-4000-8000-000000000001", "is neither a key ARN, an alias ARN nor alias/NAME"),
            ("alias/", "is not an alias name"),
            ("alias/a b", "is not an alias name"),
            ("alias/a++alias/b", "an empty entry; separate keys with '+'"),
            ("arn:aws:kms:us-east-1:1111:key/x", "is not a KMS key or alias ARN"),
            ("arn:aws:s3:us-east-1:111122223333:key/x", "is not a KMS key or alias ARN"),
            ("arn:aws:kms:us-east-1:111122223333:key/", "has a malformed key ID"),
            ("arn:aws:kms:us-east-1:111122223333:grant/x", "its resource is neither key/ID nor alias/NAME"),
        ]
        for (text, reason) in bad {
            do { _ = try KMSKeyAllowList().adding(text); Issue.record("accepted \(text)") } catch {
                #expect(error.message.contains(reason), "\(text): \(error.message)")
            }
        }
        let eleven = (1...11).map { "alias/k\($0)" }.joined(separator: "+")
        do { _ = try KMSKeyAllowList().adding(eleven); Issue.record("accepted 11 keys") } catch {
            #expect(error.message == "11 keys, more than the 10 allowed")
        }
    }
}

@Suite struct KeyAllowListLogTests {
    @Test func aHugeKeyNameInAHeaderIsShortenedInTheLine() {
        let huge = "arn:aws:kms:us-east-1:111122223333:key/" + String(repeating: "x", count: 60_000)
        let m = messageWithKeys([("aws-kms", huge, "fixture-key-32")])
        let kms = FakeKMS()
        let e = failure { () throws(DecodeError) in try kms.decoder(keys: [fixtureKeyARN]).decrypt(m, path: "x") }
        let line = e?.description ?? ""
        #expect(line.hasPrefix("refused: no encrypted data key of the message is under a key kms_key= allows (its AWS KMS keys: arn:aws:kms:us-east-1:111122223333:key/xxx"))
        #expect(line.contains("...(60039 bytes)); no KMS call was made"), "\(line.suffix(80))")
        #expect(line.utf8.count < 400)
        #expect(kms.count == 0)
    }
}
