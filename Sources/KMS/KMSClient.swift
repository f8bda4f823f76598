import AWS
import SecureMemory

/// The KMS operations kmsfs uses, over the JSON 1.1 protocol
/// (`X-Amz-Target: TrentService.<Operation>`). Responses that carry
/// plaintext are never parsed into Swift strings: the `Plaintext` member is
/// located in the response buffer and base64-decoded straight into a new
/// secure buffer; the response buffer is wiped when it is released.
public final class KMSClient: Sendable {
    public let api: AWSJSONClient

    public init(api: AWSJSONClient) { self.api = api }

    public convenience init(region: String, endpoint: URLParts, credentials: CredentialProvider,
                            transport: HTTPTransport, clock: Clock = .system,
                            retry: RetryStrategy = RetryStrategy(), callDeadline: Double = 30) {
        self.init(api: AWSJSONClient(signingName: "kms", targetPrefix: "TrentService", region: region,
                                     endpoint: endpoint, credentials: credentials, transport: transport,
                                     clock: clock, retry: retry, callDeadline: callDeadline))
    }

    public struct Decrypted: Sendable {
        public let plaintext: SecureBuffer
        public let keyId: String?
    }

    public typealias EncryptionContext = [(key: String, value: String)]

    public func decrypt(ciphertextBlob: [UInt8], encryptionContext: EncryptionContext = [],
                        keyId: String? = nil) throws(KMSError) -> Decrypted {
        var members: [(String, JSONValue)] = [("CiphertextBlob", .string(Base64.encode(ciphertextBlob)))]
        if !encryptionContext.isEmpty {
            members.append(("EncryptionContext", .object(encryptionContext.map { ($0.key, .string($0.value)) })))
        }
        if let keyId { members.append(("KeyId", .string(keyId))) }
        let response: HTTPResponse
        do {
            response = try api.call("Decrypt", body: .bytes(Array(JSONValue.object(members).serialized.utf8)))
        } catch {
            throw KMSError(operation: "Decrypt", error)
        }
        // The key ID first: no plaintext is held yet if it is refused.
        let kid = try response.body.withUnsafeBytes { (b) throws(KMSError) -> String? in
            switch JSONScanner.member("KeyId", in: b) {
            case .absent: return nil
            case .string(let r):
                // A KeyId that is not a valid JSON string: a damaged or hostile answer.
                guard let k = JSONScanner.decodedString(at: r, in: b) else {
                    throw KMSError(operation: "Decrypt", .malformedResponse("the KeyId in the response is not a valid JSON string"))
                }
                return k
            case let other:
                throw KMSError(operation: "Decrypt", .malformedResponse(KMSClient.problem(other, "KeyId")))
            }
        }
        let plaintext = try KMSClient.decodeSecretMember("Plaintext", of: response, operation: "Decrypt")
        return Decrypted(plaintext: plaintext, keyId: kid)
    }

    public struct DataKey: Sendable {
        public let plaintext: SecureBuffer
        public let ciphertextBlob: [UInt8]
        public let keyId: String
    }

    public func generateDataKey(keyId: String, numberOfBytes: Int,
                                encryptionContext: EncryptionContext = []) throws(KMSError) -> DataKey {
        var members: [(String, JSONValue)] = [
            ("KeyId", .string(keyId)),
            ("NumberOfBytes", .number(Double(numberOfBytes))),
        ]
        if !encryptionContext.isEmpty {
            members.append(("EncryptionContext", .object(encryptionContext.map { ($0.key, .string($0.value)) })))
        }
        let response: HTTPResponse
        do {
            response = try api.call("GenerateDataKey", body: .bytes(Array(JSONValue.object(members).serialized.utf8)))
        } catch {
            throw KMSError(operation: "GenerateDataKey", error)
        }
        let plaintext = try KMSClient.decodeSecretMember("Plaintext", of: response, operation: "GenerateDataKey")
        let (blob, kid): ([UInt8]?, String?) = response.body.withUnsafeBytes { b in
            (JSONScanner.nonSecretString("CiphertextBlob", in: b).flatMap { Base64.decode($0) },
             JSONScanner.nonSecretString("KeyId", in: b))
        }
        guard let blob else {
            throw KMSError(operation: "GenerateDataKey", .malformedResponse("no CiphertextBlob in the response"))
        }
        return DataKey(plaintext: plaintext, ciphertextBlob: blob, keyId: kid ?? keyId)
    }

    /// Encrypts up to 4096 bytes directly under `keyId`. The request body,
    /// which carries the plaintext in base64, is built in secure memory.
    public func encrypt(keyId: String, plaintext: UnsafeRawBufferPointer,
                        encryptionContext: EncryptionContext = []) throws(KMSError) -> (ciphertextBlob: [UInt8], keyId: String) {
        var prefix = "{\"KeyId\":"
        JSONValue.string(keyId).write(to: &prefix)
        if !encryptionContext.isEmpty {
            prefix += ",\"EncryptionContext\":"
            JSONValue.object(encryptionContext.map { ($0.key, .string($0.value)) }).write(to: &prefix)
        }
        prefix += ",\"Plaintext\":\""
        let suffix = "\"}"
        let body: SecureBuffer
        do {
            body = try SecureBuffer(capacity: prefix.utf8.count + (plaintext.count + 2) / 3 * 4 + suffix.utf8.count)
            try body.append(utf8: prefix)
            let written = body.withUnsafeMutableCapacity { cap in
                Base64.encode(plaintext, into: UnsafeMutableRawBufferPointer(rebasing: cap[body.count...]))
            }
            body.setCount(body.count + written)
            try body.append(utf8: suffix)
        } catch {
            throw KMSError(operation: "Encrypt", .malformedResponse("cannot allocate secure memory: \(error)"))
        }
        let response: HTTPResponse
        do {
            response = try api.call("Encrypt", body: .secure(body))
        } catch {
            throw KMSError(operation: "Encrypt", error)
        }
        let (blob, kid): ([UInt8]?, String?) = response.body.withUnsafeBytes { b in
            (JSONScanner.nonSecretString("CiphertextBlob", in: b).flatMap { Base64.decode($0) },
             JSONScanner.nonSecretString("KeyId", in: b))
        }
        guard let blob else { throw KMSError(operation: "Encrypt", .malformedResponse("no CiphertextBlob in the response")) }
        return (blob, kid ?? keyId)
    }

    // MARK: Response reading

    /// Base64-decodes the string member `name` of a JSON response directly
    /// into a new secure buffer of the exact size. A member written with
    /// JSON escapes other than `\/` (`\u002B` for `+`, as some encoders
    /// write) is unescaped into secure memory first, never decoded as it
    /// stands.
    static func decodeSecretMember(_ name: String, of response: HTTPResponse, operation: String) throws(KMSError) -> SecureBuffer {
        let result: Result<SecureBuffer, KMSError> = response.body.withUnsafeBytes { body in
            let found = JSONScanner.member(name, in: body)
            guard case .string(let range) = found else {
                return .failure(KMSError(operation: operation, .malformedResponse(problem(found, name))))
            }
            if body[range].contains(UInt8(ascii: "\\")) {
                return decodeEscapedSecretMember(name, at: range, in: body, operation: operation)
            }
            let encoded = UnsafeRawBufferPointer(rebasing: body[range])
            do {
                guard let out = try SecureBuffer(unsafeUninitializedCapacity: max(Base64.maxDecodedCount(encoded.count), 1),
                                                 initializingWith: { Base64.decode(encoded, into: $0) }) else {
                    return .failure(KMSError(operation: operation, .malformedResponse("\(name) is not base64")))
                }
                return .success(out)
            } catch {
                return .failure(KMSError(operation: operation, .malformedResponse("cannot allocate secure memory: \(error)")))
            }
        }
        return try result.get()
    }

    /// What is wrong with a response's member `name` that is not one string.
    static func problem(_ found: JSONScanner.Member, _ name: String) -> String {
        switch found {
        case .absent, .string: return "no \(name) in the response"
        case .notAString: return "\(name) in the response is not a JSON string"
        case .duplicated: return "\(name) appears more than once in the response"
        case .malformed: return "the response is not one JSON object"
        }
    }

    /// `decodeSecretMember` for a member with escapes: unescaped into a
    /// secure buffer, then decoded in place.
    private static func decodeEscapedSecretMember(_ name: String, at range: Range<Int>, in body: UnsafeRawBufferPointer,
                                                  operation: String) -> Result<SecureBuffer, KMSError> {
        let text: SecureBuffer
        do {
            guard let t = try JSONScanner.secureString(at: range, in: body) else {
                return .failure(KMSError(operation: operation, .malformedResponse("\(name) is not a JSON string")))
            }
            text = t
        } catch {
            return .failure(KMSError(operation: operation, .malformedResponse("cannot allocate secure memory: \(error)")))
        }
        let n: Int? = text.withUnsafeMutableCapacity { cap in
            Base64.decode(UnsafeRawBufferPointer(rebasing: cap[0..<text.count]), into: cap)
        }
        guard let n else {
            text.wipeContents()
            return .failure(KMSError(operation: operation, .malformedResponse("\(name) is not base64")))
        }
        text.setCount(n)
        return .success(text)
    }

}
