// The JSON parser and the scanner that finds secret members in place
// (KMS answers and error bodies, IMDS/container documents,
// credential_process output, the control channel's answers).
@testable import AWS
@testable import KMS

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ p: UnsafePointer<UInt8>?, _ n: Int) -> Int32 {
    let data = fuzzInput(p, n)
    data.withUnsafeBytes { raw in
        if let v = JSONValue.parse(raw) {
            _ = v["KeyId"]?.stringValue
            _ = v["Version"]?.numberValue
            // What we serialize we must read back.
            let text = v.serialized
            precondition(JSONValue.parse(text) != nil, "serialized JSON does not parse")
        }
        for key in ["Plaintext", "KeyId", "CiphertextBlob", "__type", "message"] {
            precondition(JSONScanner.agreesWithParser(key, in: raw), "the scanner and the parser disagree on \(key)")
            if JSONScanner.stringMember(key, in: raw) != nil { _ = JSONScanner.nonSecretString(key, in: raw) }
        }
    }
    _ = JSONValue.parse(String(decoding: data, as: UTF8.self))
    return 0
}
