// Base64 (KMS answers, base64 ciphertext files, the ESDK public key) and
// raw-blob detection. Checks the round trip both ways.
import AWS
@testable import KMS

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ p: UnsafePointer<UInt8>?, _ n: Int) -> Int32 {
    let data = fuzzInput(p, n)
    _ = CiphertextDecoder.detect(data)
    _ = EncryptionSDKMessage.looksLikeMessage(data)
    data.withUnsafeBytes { raw in
        _ = Base64.looksLikeBase64(raw)
        var out = [UInt8](repeating: 0, count: Base64.maxDecodedCount(raw.count))
        if let k = out.withUnsafeMutableBytes({ Base64.decode(raw, into: $0) }) {
            precondition(k <= out.count, "decode wrote past its bound")
            // What decodes re-encodes to something that decodes the same.
            let again = Base64.decode(Base64.encode(Array(out[0..<k])))
            precondition(again == Array(out[0..<k]), "base64 round trip differs")
        }
    }
    if let s = Base64.decode(String(decoding: data, as: UTF8.self)) { _ = s.count }
    precondition(Base64.decode(Base64.encode(data)) == data, "encode/decode round trip differs")
    return 0
}
