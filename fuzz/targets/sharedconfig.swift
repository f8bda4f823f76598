// ~/.aws/config and ~/.aws/credentials (profiles, [services] subsections),
// the byte pass that takes their secrets out before they are parsed, the
// credential_process command line they carry, profile resolution (role
// chains, source_profile, credential_source) over a transport answering
// with the rest of the input, and the URLs they name.
// Input: CONFIG [0xFF CREDENTIALS [0xFF ANSWER...]].
import SecureMemory
@testable import AWS

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ p: UnsafePointer<UInt8>?, _ n: Int) -> Int32 {
    _ = fuzzSetup
    let data = fuzzInput(p, n)
    let raw = fuzzParts(data, max: 8)
    var secrets: [SecureBuffer] = []
    let text = raw.prefix(2).map { bytes -> String in
        guard let b = try? SecureBuffer(capacity: max(bytes.count, 1)) else { return "" }
        bytes.withUnsafeBytes { try? b.append($0) }
        // What reaches the parser carries no byte of a secret's value.
        return String(decoding: (try? SharedConfigFiles.withSecretsTakenOut(b, into: &secrets)) ?? bytes, as: UTF8.self)
    }
    let parts = raw.prefix(2).map { String(decoding: $0, as: UTF8.self) }
    for config in [parts[0], text[0]] {
        _ = URLParts(config)
        guard var files = try? SharedConfigFiles.parse(config: config, credentials: text.count > 1 ? text[1] : nil) else { continue }
        // Nothing from the host: no credential_process is run (the refusal
        // path instead), and no token file named by the input is read.
        files.untrusted = ["fuzz: no program is run"]
        let readsHostFiles = files.profiles.values.contains { $0["web_identity_token_file"] != nil }
        for name in ["default", "fuzz", "a", "p0"] {
            if let prof = files.profile(name) {
                _ = prof.flag("s3_use_arn_region")
                for (k, v) in prof.values {
                    if k == "credential_process" || k.hasPrefix("c") { _ = ProcessCredentialProvider.split(v) }
                    if k.hasSuffix("url") || k.hasSuffix("endpoint") { _ = URLParts(v) }
                }
                guard !readsHostFiles else { continue }
                let provider = ProfileCredentialProvider(profileName: name, config: files, environment: Environment([:]),
                                                         region: "us-east-1", transport: FuzzTransport(Array(raw.dropFirst(2))),
                                                         clock: fuzzClock, imds: nil)
                _ = try? provider.credentials()
            }
            _ = files.serviceValue(profile: name, service: "kms", key: "endpoint_url").map { URLParts($0) }
        }
    }
    _ = ProcessCredentialProvider.split(parts[0])
    return 0
}
