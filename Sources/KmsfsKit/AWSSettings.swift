import AWS
import KMS

/// Region, endpoint and credentials for KMS, resolved the way the AWS CLI
/// resolves them, an explicit mount option first.
public struct AWSSettings: Sendable {
    public var region: String
    public var endpoint: URLParts
    public var credentials: CredentialProvider
    public var caBundle: String?
    public var maxAttempts: Int
    public var callDeadline: Double

    public static func resolve(region optRegion: String?, endpoint optEndpoint: String?, profile: String?,
                               caBundle: String?, maxAttempts: Int?, timeout: Double?,
                               environment env: Environment) throws(OptionError) -> AWSSettings {
        guard let region = optRegion ?? env["AWS_REGION"] ?? env["AWS_DEFAULT_REGION"] else {
            throw OptionError("no AWS region: add -o region=REGION or set AWS_REGION")
        }
        let endpointText = optEndpoint ?? env["AWS_ENDPOINT_URL_KMS"] ?? env["AWS_ENDPOINT_URL"]
            ?? AWSSettings.defaultEndpoint(region: region)
        guard let endpoint = URLParts(endpointText) else {
            throw OptionError("KMS endpoint '\(endpointText)' is not a URL (check endpoint=, AWS_ENDPOINT_URL_KMS, AWS_ENDPOINT_URL)")
        }
        let attempts = maxAttempts ?? env["AWS_MAX_ATTEMPTS"].flatMap { Int($0) } ?? 3
        return AWSSettings(region: region, endpoint: endpoint,
                           credentials: EnvironmentCredentialProvider(environment: env),
                           caBundle: caBundle ?? env["AWS_CA_BUNDLE"], maxAttempts: max(1, attempts),
                           callDeadline: timeout ?? 30)
    }

    public static func defaultEndpoint(region: String) -> String {
        region.hasPrefix("cn-") ? "https://kms.\(region).amazonaws.com.cn" : "https://kms.\(region).amazonaws.com"
    }

    /// A KMS client over libcurl with these settings.
    public func makeKMSClient() -> KMSClient {
        var t = CurlTransport.Options()
        t.caBundle = caBundle
        var r = RetryStrategy.Configuration()
        r.maxAttempts = maxAttempts
        return KMSClient(region: region, endpoint: endpoint, credentials: credentials,
                         transport: CurlTransport(options: t), retry: RetryStrategy(r), callDeadline: callDeadline)
    }
}
