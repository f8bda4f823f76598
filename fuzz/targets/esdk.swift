// Encryption SDK messages as a SOURCE file holds them: format detection,
// header (suite, context, encrypted data keys), frames, footer, and the
// decrypt path up to the KMS call. Input: the file.
@testable import KMS
@testable import AWS
import SecureMemory

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ p: UnsafePointer<UInt8>?, _ n: Int) -> Int32 {
    let data = fuzzInput(p, n)
    // The structure alone, on the whole input (0xFF bytes included).
    if let layout = try? EncryptionSDKMessage.layout(data) {
        _ = layout.header.contextValue("kmsfs:path")
        _ = try? EncryptionSDKMessage.parseContext(EncryptionSDKMessage.serializeContext(layout.header.encryptionContext))
    }
    _ = CiphertextDecoder.detect(data)
    // Through the decoder, as an open does: structure, context, path
    // binding, signature, then a Decrypt per aws-kms key. The KMS client
    // here has no credentials, so each Decrypt fails at once (signing and
    // the answers are fuzzed by the kmsresponse target; this one stays fast).
    let kms = KMSClient(region: "us-east-1", endpoint: URLParts("http://127.0.0.1:1")!,
                        credentials: FailingCredentialProvider(name: "fuzz", error: .notConfigured("fuzz")),
                        transport: FuzzTransport([]), clock: fuzzClock, retry: fuzzRetry())
    let flags = data.last ?? 0
    // With kms_key= (flag 4), the message's key ARNs meet the allow-list's
    // matching (ARNs, alias ARNs and alias names, compared part by part).
    let allowed = flags & 4 == 0 ? KMSKeyAllowList() : fuzzAllowList
    let decoder = CiphertextDecoder(kms: kms, requiredContext: flags & 1 == 0 ? [] : [("app", "web")],
                                    requirePathBinding: flags & 2 != 0, allowedKeys: allowed)
    _ = try? decoder.decrypt(data, path: "db/password")
    // With flag 8, once more under require_commitment (which refuses the
    // version 1 suites first): the pass above still reaches everything
    // past the suite for inputs that have the bit set.
    if flags & 8 != 0 {
        _ = try? CiphertextDecoder(kms: kms, requiredContext: decoder.requiredContext, requirePathBinding: flags & 2 != 0,
                                   requireCommitment: true, allowedKeys: allowed).decrypt(data, path: "db/password")
    }
    return 0
}

let fuzzAllowList: KMSKeyAllowList = {
    var list = KMSKeyAllowList()
    for k in ["arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
              "arn:aws:kms:us-east-1:111122223333:alias/app", "alias/web"] {
        list = (try? list.adding(k)) ?? list
    }
    return list
}()
