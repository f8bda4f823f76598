// KMS Decrypt answers and error bodies, as KMSClient reads them (the
// plaintext decoded in place into secure memory). Input: ANSWER
// [0xFF ANSWER]...; each answer's first byte picks its HTTP status.
// Every line of the input is also read as a line of a response's head,
// as curl's header callback hands it over.
@testable import KMS
@testable import AWS

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ p: UnsafePointer<UInt8>?, _ n: Int) -> Int32 {
    let data = fuzzInput(p, n)
    for line in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
        _ = ResponseHeaderLine(line)
    }
    let kms = KMSClient(region: "us-east-1", endpoint: URLParts("http://127.0.0.1:1")!,
                        credentials: StaticCredentialProvider(try! AWSCredentials(accessKeyId: "AKID", secretAccessKey: "SECRET", source: "fuzz", kind: .other)),
                        transport: FuzzTransport(fuzzParts(data)), clock: fuzzClock, retry: fuzzRetry())
    do {
        let r = try kms.decrypt(ciphertextBlob: [1, 2, 3], encryptionContext: [("app", "web")])
        _ = r.keyId
    } catch {
        _ = error.kind
        _ = error.description
    }
    return 0
}
