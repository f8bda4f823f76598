// What credential sources answer: the container endpoint, IMDS (token,
// role name, document), STS AssumeRole XML, credential_process JSON, ISO
// 8601 expirations. Input: SELECTOR ANSWER [0xFF ANSWER]... where each
// answer's first byte picks its HTTP status (see FuzzTransport).
@testable import AWS
import SecureMemory

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ p: UnsafePointer<UInt8>?, _ n: Int) -> Int32 {
    var data = fuzzInput(p, n)
    guard let selector = data.first else { return 0 }
    data.removeFirst()
    let parts = fuzzParts(data)
    let transport = FuzzTransport(parts)
    switch selector % 5 {
    case 0:
        var c = ContainerCredentialProvider(environment: Environment(["AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:1/creds",
                                                                      "AWS_CONTAINER_AUTHORIZATION_TOKEN": "tok"]),
                                            transport: transport, clock: fuzzClock)
        c.attempts = 2
        c.pause = 0
        _ = try? c.credentials()
    case 1:
        let imds = IMDSClient(endpoint: URLParts("http://169.254.169.254")!, transport: transport, clock: fuzzClock, attempts: 2)
        _ = try? IMDSCredentialProvider(client: imds).credentials()
        _ = imds.region()
    case 2:
        let sts = STSClient(endpoint: URLParts("https://sts.us-east-1.amazonaws.com")!, region: "us-east-1",
                            transport: transport, clock: fuzzClock, retry: fuzzRetry())
        let creds = try! AWSCredentials(accessKeyId: "AKID", secretAccessKey: "SECRET", source: "fuzz", kind: .other)
        if parts.count % 2 == 0 {
            _ = try? sts.assumeRole(roleArn: "arn:aws:iam::1:role/r", sessionName: "s", sourceCredentials: creds, source: "fuzz")
        } else {
            if let token = try? SecureBuffer(capacity: 1), (try? token.append(utf8: "t")) != nil {
                _ = try? sts.assumeRoleWithWebIdentity(roleArn: "arn:aws:iam::1:role/r", sessionName: "s", token: token, source: "fuzz")
            }
        }
    case 3:
        // credential_process prints one JSON document.
        data.withUnsafeBytes { raw in
            if let doc = parseCredentialsDocument(raw) {
                _ = doc["Version"]?.numberValue
                if let c = credentialsFromJSON(doc, bytes: raw, source: "fuzz", kind: .other) {
                    _ = temporaryCredentialsProblem(doc, c, requireExpiry: false)   // its Expiration, echoed bounded
                }
            }
        }
    default:
        _ = Timestamp.parseISO8601(String(decoding: data, as: UTF8.self))
        _ = xmlElement("Expiration", in: String(decoding: data, as: UTF8.self))
    }
    return 0
}
