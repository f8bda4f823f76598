// ~/.aws/config and ~/.aws/credentials (profiles, [services] subsections)
// and the credential_process command line they carry.
// Input: CONFIG [0xFF CREDENTIALS].
@testable import AWS

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ p: UnsafePointer<UInt8>?, _ n: Int) -> Int32 {
    let data = fuzzInput(p, n)
    let parts = fuzzParts(data, max: 2).map { String(decoding: $0, as: UTF8.self) }
    let files = try? SharedConfigFiles.parse(config: parts[0], credentials: parts.count > 1 ? parts[1] : nil)
    if let files {
        for name in ["default", "fuzz", "a"] {
            if let prof = files.profile(name) {
                _ = prof.flag("s3_use_arn_region")
                for (k, v) in prof.values where k == "credential_process" || k.hasPrefix("c") {
                    _ = ProcessCredentialProvider.split(v)
                }
            }
            _ = files.serviceValue(profile: name, service: "kms", key: "endpoint_url")
        }
    }
    _ = ProcessCredentialProvider.split(parts[0])
    return 0
}
