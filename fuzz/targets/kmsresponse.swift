// KMS Decrypt answers and error bodies, as KMSClient reads them (the
// plaintext decoded in place into secure memory). Input: ANSWER
// [0xFF ANSWER]...; each answer's first byte picks its HTTP status.
@testable import KMS
@testable import AWS

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ p: UnsafePointer<UInt8>?, _ n: Int) -> Int32 {
    let data = fuzzInput(p, n)
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
