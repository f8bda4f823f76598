/// Where a service lives: a configured endpoint URL (environment, then
/// shared config), or the regional default name with the FIPS and
/// dual-stack variants, following the SDKs' "service-specific endpoints"
/// and "FIPS and dual-stack endpoints" settings.
public enum AWSEndpoints {
    /// A configured endpoint and where it came from (for messages).
    public struct Configured: Sendable, Equatable {
        public var url: String
        public var source: String
    }

    /// The configured endpoint URL for a service, in the SDKs' order:
    /// `AWS_ENDPOINT_URL_<SERVICE>`, `AWS_ENDPOINT_URL`, the profile's
    /// `services` section (`<service> =` / `endpoint_url =`), the profile's
    /// `endpoint_url`. `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true` (or
    /// `ignore_configured_endpoint_urls = true`) ignores all of them.
    /// `envName` is the service's environment suffix (`KMS`, `STS`),
    /// `key` its config key (`kms`, `sts`).
    public static func configured(envName: String, key: String, environment env: Environment,
                                  config: SharedConfigFiles, profile: String) -> Configured? {
        let p = config.profile(profile)
        let ignore = env["AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"]?.lowercased() == "true"
            || (env["AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"] == nil && p?.flag("ignore_configured_endpoint_urls") == true)
        if ignore { return nil }
        if let v = env["AWS_ENDPOINT_URL_\(envName)"] { return Configured(url: v, source: "AWS_ENDPOINT_URL_\(envName)") }
        if let v = env["AWS_ENDPOINT_URL"] { return Configured(url: v, source: "AWS_ENDPOINT_URL") }
        if let v = config.serviceValue(profile: profile, service: key, key: "endpoint_url") {
            return Configured(url: v, source: "the \(key) endpoint_url of profile '\(profile)' services section")
        }
        if let v = p?["endpoint_url"] { return Configured(url: v, source: "endpoint_url in profile '\(profile)'") }
        return nil
    }

    /// `use_fips_endpoint` / `AWS_USE_FIPS_ENDPOINT` and
    /// `use_dualstack_endpoint` / `AWS_USE_DUALSTACK_ENDPOINT`.
    public static func variants(environment env: Environment, profile: ConfigProfile?) -> (fips: Bool, dualStack: Bool) {
        func flag(_ envName: String, _ key: String) -> Bool {
            if let v = env[envName] { return v.lowercased() == "true" }
            return profile?.flag(key) ?? false
        }
        return (flag("AWS_USE_FIPS_ENDPOINT", "use_fips_endpoint"), flag("AWS_USE_DUALSTACK_ENDPOINT", "use_dualstack_endpoint"))
    }

    /// `https://kms.eu-west-1.amazonaws.com`, `https://kms-fips.us-east-1.amazonaws.com`,
    /// `https://kms.eu-west-1.api.aws` (dual-stack), `https://kms.cn-north-1.amazonaws.com.cn`.
    public static func regional(service: String, region: String, fips: Bool = false, dualStack: Bool = false) -> String {
        let host = fips ? "\(service)-fips" : service
        return "https://\(host).\(region).\(dnsSuffix(region: region, dualStack: dualStack))"
    }

    /// The partition's DNS suffix for a region.
    public static func dnsSuffix(region: String, dualStack: Bool) -> String {
        if region.hasPrefix("cn-") { return dualStack ? "api.amazonwebservices.com.cn" : "amazonaws.com.cn" }
        if region.hasPrefix("us-isob-") { return "sc2s.sgov.gov" }
        if region.hasPrefix("us-iso-") { return "c2s.ic.gov" }
        return dualStack ? "api.aws" : "amazonaws.com"
    }

    /// True for names AWS uses for regions (`eu-west-1`, `us-gov-west-1`, ...).
    public static func isValidRegion(_ r: String) -> Bool {
        !r.isEmpty && r.count <= 64 && r.first != "-" && r.last != "-"
            && r.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" }
    }
}
