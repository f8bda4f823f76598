import Testing
import AWS
import KMS
import SecureMemory
import Synchronization

/// A transport that answers from a closure and records requests.
final class FakeTransport: HTTPTransport, @unchecked Sendable {
    let requests = Mutex<[HTTPRequest]>([])
    let answer: @Sendable (HTTPRequest, Int) throws(TransportError) -> (Int, String)

    init(_ answer: @escaping @Sendable (HTTPRequest, Int) throws(TransportError) -> (Int, String)) {
        self.answer = answer
    }

    func send(_ request: HTTPRequest) throws(TransportError) -> HTTPResponse {
        let n = requests.withLock { $0.append(request); return $0.count }
        let (status, body) = try answer(request, n)
        let buf = try! SecureBuffer(capacity: max(body.utf8.count, 1))
        try! buf.append(utf8: body)
        return HTTPResponse(status: status, headers: [("x-amzn-RequestId", "req-\(n)")], body: buf)
    }
}

func client(_ t: FakeTransport, attempts: Int = 3) -> KMSClient {
    var r = RetryStrategy.Configuration()
    r.maxAttempts = attempts
    r.baseDelay = 0.001
    let creds = StaticCredentialProvider(try! AWSCredentials(accessKeyId: "AKID", secretAccessKey: "SECRET", source: "test", kind: .other))
    return KMSClient(region: "us-east-1", endpoint: URLParts("http://127.0.0.1:1")!, credentials: creds,
                     transport: t, retry: RetryStrategy(r, random: { 1.0 }))
}

@Suite struct KMSClientTests {
    @Test func decryptSendsASignedJSONRequestAndDecodesPlaintext() throws {
        let t = FakeTransport { _, _ in (200, #"{"KeyId":"arn:k","Plaintext":"aGVsbG8=","EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}"#) }
        let r = try client(t).decrypt(ciphertextBlob: [1, 2, 3], encryptionContext: [("app", "web")])
        r.plaintext.withUnsafeBytes { #expect(String(decoding: $0, as: UTF8.self) == "hello") }
        #expect(r.keyId == "arn:k")
        let req = t.requests.withLock { $0[0] }
        #expect(req.headers.contains { $0.name == "X-Amz-Target" && $0.value == "TrentService.Decrypt" })
        #expect(req.headers.contains { $0.name == "Content-Type" && $0.value == "application/x-amz-json-1.1" })
        #expect(req.headers.contains { $0.name == "Authorization" && $0.value.hasPrefix("AWS4-HMAC-SHA256 Credential=AKID/") && $0.value.contains("/us-east-1/kms/aws4_request") })
        guard case .bytes(let body) = req.body else { Issue.record("body should be plain bytes"); return }
        let doc = JSONValue.parse(String(decoding: body, as: UTF8.self))!
        #expect(doc["CiphertextBlob"]?.stringValue == "AQID")
        #expect(doc["EncryptionContext"]?["app"]?.stringValue == "web")
    }

    /// JSON lets an encoder escape any character of the base64 (`\u002B`
    /// for `+`, `\/` for `/`): the Plaintext is the unescaped text's bytes,
    /// never the escape sequences decoded as base64; an escape that is not
    /// JSON, or a control character, is malformed.
    @Test func escapedPlaintextIsUnescapedBeforeDecoding() throws {
        // "+++/" is fb ef bf; "aGVsbG8=" is "hello".
        for (member, expected) in [(#""\u002B\u002B\u002B\/""#, [0xfb, 0xef, 0xbf]),
                                   (#""\u0061GVsbG8\u003D""#, Array("hello".utf8)),
                                   (#""aGVs\nbG8=""#, Array("hello".utf8)),
                                   (#""aGVsbG8=""#, Array("hello".utf8))] as [(String, [UInt8])] {
            let t = FakeTransport { _, _ in (200, #"{"KeyId":"arn:k","Plaintext":\#(member)}"#) }
            let r = try client(t).decrypt(ciphertextBlob: [1])
            #expect(r.plaintext.withUnsafeBytes { Array($0) } == expected, "\(member)")
        }
        for member in [#""aGVs\qbG8=""#, #""aGVs\u00""#, #""\uD800aGVsbG8=""#, #""\u0000aGVsbG8=""#] {
            let t = FakeTransport { _, _ in (200, #"{"KeyId":"arn:k","Plaintext":\#(member)}"#) }
            do {
                _ = try client(t).decrypt(ciphertextBlob: [1])
                Issue.record("expected an error for \(member)")
            } catch {
                #expect(error.code == "MalformedResponse", "\(member)")
            }
        }
    }

    @Test func hostileEscapesInResponsesAreErrorsNotTraps() {
        // Issue 13 A2: a KMS answering {"KeyId":"\uD800\u0041",...} trapped
        // the daemon in the JSON string decoder.
        for keyId in [#""\uD800\u0041""#, #""\uDC00""#, #""\uD800""#, #""a\x""#] {
            let t = FakeTransport { _, _ in (200, #"{"KeyId":\#(keyId),"Plaintext":"aGVsbG8=","EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}"#) }
            do {
                _ = try client(t).decrypt(ciphertextBlob: [1, 2, 3])
                Issue.record("expected an error for \(keyId)")
            } catch {
                #expect(error.code == "MalformedResponse")
            }
        }
        // Error bodies go through the same parser.
        let e = FakeTransport { _, _ in (400, #"{"__type":"\uD800\u0041","message":"\uDBFF\uDBFF"}"#) }
        do {
            _ = try client(e, attempts: 1).decrypt(ciphertextBlob: [1])
            Issue.record("expected an error")
        } catch {
            #expect(error.code == "HTTP400")
        }
    }

    /// A response naming Plaintext or KeyId twice is refused, with what is
    /// wrong, rather than read as its first (botocore reads the last).
    @Test func ambiguousResponsesAreRefused() {
        for (body, says) in [(#"{"KeyId":"arn:k","Plaintext":"aGVsbG8=","Plaintext":"d29ybGQ="}"#, "Plaintext appears more than once"),
                             (#"{"KeyId":"arn:a","Plaintext":"aGVsbG8=","KeyId":"arn:b"}"#, "KeyId appears more than once"),
                             (#"{"KeyId":"arn:k","Plaintext":"aGVsbG8=","Plain\u0074ext":"d29ybGQ="}"#, "Plaintext appears more than once"),
                             (#"{"KeyId":"arn:k","Plaintext":"aGVsbG8="}{"#, "not one JSON object"),
                             (#"{"KeyId":"arn:k","Plaintext":12}"#, "Plaintext in the response is not a JSON string")] {
            let t = FakeTransport { _, _ in (200, body) }
            do {
                _ = try client(t, attempts: 1).decrypt(ciphertextBlob: [1, 2, 3])
                Issue.record("expected an error for \(body)")
            } catch {
                #expect(error.code == "MalformedResponse")
                #expect("\(error)".contains(says), "\(error)")
            }
        }
    }

    @Test func errorsAreTypedWithHints() {
        let t = FakeTransport { _, _ in (400, #"{"__type":"com.amazonaws.kms#InvalidCiphertextException","message":"bad"}"#) }
        do {
            _ = try client(t).decrypt(ciphertextBlob: [1])
            Issue.record("expected an error")
        } catch {
            #expect(error.code == "InvalidCiphertextException")
            #expect(error.description.contains("InvalidCiphertextException"))
            #expect(!error.isUnavailable)
        }
        #expect(t.requests.withLock { $0.count } == 1)   // not retried
        // KMS's message ends in a full stop already: not a second one.
        let nf = FakeTransport { _, _ in (400, #"{"__type":"NotFoundException","message":"Alias arn:aws:kms:us-east-1:1:alias/x is not found."}"#) }
        do {
            _ = try client(nf, attempts: 1).decrypt(ciphertextBlob: [1])
            Issue.record("expected an error")
        } catch {
            #expect(error.description.contains("is not found. The key does not exist"), "\(error.description)")
            #expect(!error.description.contains(".."), "\(error.description)")
        }
    }

    @Test func throttlingIsRetriedThenSucceeds() throws {
        let t = FakeTransport { _, n in
            n < 3 ? (400, #"{"__type":"ThrottlingException","message":"slow down"}"#) : (200, #"{"Plaintext":"eA=="}"#)
        }
        let r = try client(t).decrypt(ciphertextBlob: [1])
        #expect(r.plaintext.count == 1)
        #expect(t.requests.withLock { $0.count } == 3)
    }

    @Test func transportFailuresAreRetriedAndReported() {
        let t = FakeTransport { (_, _) throws(TransportError) -> (Int, String) in throw TransportError(.connect, "refused") }
        do {
            _ = try client(t, attempts: 2).decrypt(ciphertextBlob: [1])
            Issue.record("expected an error")
        } catch {
            #expect(error.code == "transport:connect")
            #expect(error.isUnavailable)
        }
        #expect(t.requests.withLock { $0.count } == 2)
    }

    @Test func detectsFormats() {
        #expect(CiphertextDecoder.detect([]) == nil)
        #expect(CiphertextDecoder.detect(Array("AQIDBAUGBwgJ\n".utf8)) == .kmsBlobBase64)
        #expect(CiphertextDecoder.detect([0x01, 0x02, 0x02, 0x00, 0xFF, 0x00]) == .kmsBlob)
        #expect(CiphertextDecoder.detect([0x02, 0x05, 0x78, 0x00]) == .encryptionSDK)
        #expect(CiphertextDecoder.detect([0x01, 0x80, 0x03, 0x78]) == .encryptionSDK)
    }
}
