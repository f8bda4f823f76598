import System
import AWS
import KMS
import Log
#if canImport(Glibc)
import Glibc
#endif

/// Region, endpoint, credentials, CA bundle and retry settings for KMS,
/// resolved the way the AWS CLI resolves them, an explicit mount option
/// first (see docs/credentials.md for every source and its order).
public struct AWSSettings: Sendable {
    public var region: String
    /// Where the region came from ("region=", "AWS_REGION", "profile default", "IMDS").
    public var regionSource: String
    public var endpoint: URLParts
    public var endpointSource: String
    public var profile: String
    public var credentials: CredentialProvider
    public var caBundle: String?
    public var maxAttempts: Int
    /// Longest one KMS call may take, retries and backoff included (`timeout=`).
    public var callDeadline: Double
    /// Longest one attempt may take: 10 s, or half the call deadline when
    /// that is shorter, so a hung attempt always leaves time for a retry.
    public var attemptTimeout: Double
    public var connectTimeout: Double
    /// Shared by KMS, STS and the metadata services: one connection pool.
    public var transport: HTTPTransport

    public static let defaultCallDeadline = 10.0
    public static let defaultAttemptTimeout = 10.0
    public static let defaultConnectTimeout = 3.0

    /// Why the file at `path` could be changed by someone other than root
    /// or the daemon's user (it, or a directory or link on its way); nil
    /// when it cannot.
    static func trustProblem(_ path: String, because: String = "whoever may change the bundle may answer for KMS") -> String? {
        switch PathTrust.checkFile(path, because: because) {
        case .success: return nil
        case .failure(let problem): return problem.text
        }
    }

    /// Resolves every setting. Nothing here waits on the network except the
    /// instance-metadata region lookup, made only when no other source
    /// names a region.
    public static func resolve(region optRegion: String?, endpoint optEndpoint: String?, profile optProfile: String?,
                               caBundle optCABundle: String?, maxAttempts optAttempts: Int?, timeout: Double?,
                               environment env: Environment, clock: Clock = .system,
                               transport injected: HTTPTransport? = nil,
                               runner: BackgroundRunner = .thread) throws(OptionError) -> AWSSettings {
        // Shared files and the profile.
        let config: SharedConfigFiles
        do { config = try SharedConfigFiles.load(environment: env) } catch {
            throw OptionError("AWS shared config: \(error.message); fix the file or point AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE elsewhere")
        }
        let (profileName, named) = SharedConfigFiles.profileName(explicit: optProfile, environment: env)
        let profile = config.profile(profileName)
        if named && profile == nil {
            let via = optProfile != nil ? "profile=" : (env["AWS_PROFILE"] != nil ? "AWS_PROFILE" : "AWS_DEFAULT_PROFILE")
            throw OptionError("AWS profile '\(profileName)' (from \(via)) is not in \(config.locations); check the name or the files")
        }

        // CA bundle, then the one transport everything shares.
        let caBundle = optCABundle ?? env["AWS_CA_BUNDLE"] ?? profile?["ca_bundle"]
        if let ca = caBundle, access(ca, R_OK) != 0 {
            throw OptionError("CA bundle \(ca): \(Errno.text(Errno.current)); give a readable PEM file (ca_bundle=, AWS_CA_BUNDLE, profile ca_bundle)")
        }
        // Whoever may change these may name the endpoint, or add a CA that
        // answers for KMS, and be sent signed Decrypt requests to replay.
        // The AWS CLI reads them whoever owns them (a user's ~/.aws bound
        // read-only into a container is a common case), so they count,
        // and the operator is told.
        for problem in config.untrusted {
            Log.warning("AWS shared config: \(problem); another user could point kmsfs at their own endpoint (its credential_process is not run)")
        }
        if let ca = caBundle, let problem = AWSSettings.trustProblem(ca) {
            Log.warning("CA bundle \(ca): \(problem); another user could add a CA that answers for KMS")
        }
        // The token is read at every credential fetch: whoever may replace
        // the file (or a link on its way) chooses the identity the daemon
        // takes on, or has it read another file (a root-only one) and send
        // its first 64 KiB to STS as the token.
        for file in Set([env["AWS_WEB_IDENTITY_TOKEN_FILE"], profile?["web_identity_token_file"]].compactMap { $0 })
        where access(file, F_OK) == 0 {
            if let problem = AWSSettings.trustProblem(file, because: "the daemon sends its contents to STS as its identity") {
                Log.warning("web identity token file \(file): \(problem); another user could choose the role kmsfs assumes")
            }
        }
        let transport: HTTPTransport
        if let injected {
            transport = injected
        } else {
            var t = CurlTransport.Options()
            t.caBundle = caBundle
            t.connectTimeout = defaultConnectTimeout
            t.timeout = defaultAttemptTimeout
            transport = CurlTransport(options: t)
        }
        let imds: IMDSClient?
        do { imds = try IMDSClient.configured(environment: env, profile: profile, transport: transport, clock: clock) } catch {
            throw OptionError(error.message)
        }

        // Region: option, environment, profile, instance metadata.
        var region: String
        var regionSource: String
        if let r = optRegion { (region, regionSource) = (r, "region=") }
        else if let r = env["AWS_REGION"] { (region, regionSource) = (r, "AWS_REGION") }
        else if let r = env["AWS_DEFAULT_REGION"] { (region, regionSource) = (r, "AWS_DEFAULT_REGION") }
        else if let r = profile?["region"] { (region, regionSource) = (r, "profile \(profileName)") }
        else if let r = imds?.region() { (region, regionSource) = (r, "instance metadata") }
        else {
            throw OptionError("no AWS region: add -o region=REGION, set AWS_REGION, or put region = ... in profile '\(profileName)'\(imds == nil ? "" : " (instance metadata did not answer either)")")
        }
        region = String(region.filter { $0 != " " && $0 != "\t" })
        guard AWSEndpoints.isValidRegion(region) else {
            throw OptionError("AWS region '\(region)' (from \(regionSource)) is not a region name such as eu-west-1")
        }

        // Endpoint: option, configured URLs, then the regional name.
        let endpointText: String
        let endpointSource: String
        if let e = optEndpoint {
            (endpointText, endpointSource) = (e, "endpoint=")
        } else if let c = AWSEndpoints.configured(envName: "KMS", key: "kms", environment: env, config: config, profile: profileName) {
            (endpointText, endpointSource) = (c.url, c.source)
        } else {
            let v = AWSEndpoints.variants(environment: env, profile: profile)
            endpointText = AWSEndpoints.regional(service: "kms", region: region, fips: v.fips, dualStack: v.dualStack)
            endpointSource = v.fips || v.dualStack
                ? "regional\(v.fips ? " FIPS" : "")\(v.dualStack ? " dual-stack" : "") endpoint"
                : "regional endpoint"
        }
        guard let endpoint = URLParts(endpointText) else {
            throw OptionError("KMS endpoint '\(endpointText)' (from \(endpointSource)) is not an http(s) URL")
        }
        if endpoint.scheme == "http" && !endpoint.isLoopback {
            Log.warning("KMS endpoint \(endpoint) is plain http: decrypted secrets would cross the network unencrypted; use https")
        }

        // Retries.
        var attempts = 3
        if let a = optAttempts {
            attempts = a
        } else if let text = env["AWS_MAX_ATTEMPTS"] ?? profile?["max_attempts"] {
            guard let a = Int(String(text.filter { $0 != " " && $0 != "\t" })), (1...20).contains(a) else {
                throw OptionError("max attempts '\(text)' (AWS_MAX_ATTEMPTS or profile max_attempts) is not a whole number from 1 to 20")
            }
            attempts = a
        }
        if let mode = (env["AWS_RETRY_MODE"] ?? profile?["retry_mode"])?.lowercased(),
           !["standard", "legacy", "adaptive"].contains(mode) {
            throw OptionError("retry mode '\(mode)' (AWS_RETRY_MODE or profile retry_mode) is not standard, legacy or adaptive")
        }

        let deadline = timeout ?? defaultCallDeadline
        guard deadline >= 1 else { throw OptionError("timeout=\(deadline): give at least 1 second for a KMS call") }

        let chain = DefaultCredentialChain.make(.init(
            environment: env, config: config, profile: profileName, explicitProfile: optProfile != nil,
            region: region, transport: transport, clock: clock, imds: imds), runner: runner)

        return AWSSettings(region: region, regionSource: regionSource, endpoint: endpoint, endpointSource: endpointSource,
                           profile: profileName, credentials: chain, caBundle: caBundle, maxAttempts: attempts,
                           callDeadline: deadline, attemptTimeout: min(defaultAttemptTimeout, deadline / 2),
                           connectTimeout: defaultConnectTimeout, transport: transport)
    }

    /// The longest an open can wait on KMS:
    ///
    ///     open ≤ T + C
    ///
    /// T is the call deadline (`timeout=`, default 10 s), which every
    /// attempt's transfer is clamped to (each attempt `min(10 s, T/2, time
    /// left)`, its connection `min(3 s, that)`); C is one credential fetch,
    /// 0 whenever valid credentials are cached and otherwise at most
    /// `credentialFetchBound` for the default chain's sources without role
    /// chaining. Defaults: 10 + 10 = 20 s. docs/credentials.md has the table.
    public var openBound: Double { callDeadline + AWSSettings.credentialFetchBound }

    /// The longest one credential fetch takes at default settings, over the
    /// default chain's sources without role chaining: an STS call or
    /// credential_process 10 s, container credentials 8 s (3 × 2 s + 2 × 1 s),
    /// IMDS 7 s (7 requests × 1 s), environment and static profile keys 0.
    public static let credentialFetchBound = 10.0

    /// A KMS client over the shared transport with these settings. With
    /// `adaptive` (`kms_rate=adaptive` or `N`) its requests are paced once
    /// KMS throttles, never above `rate` a second when one is given;
    /// without, throttles are only retried with backoff.
    public func makeKMSClient(rate: Double? = nil, adaptive: Bool = false) -> KMSClient {
        var r = RetryStrategy.Configuration()
        r.maxAttempts = maxAttempts
        var pacing = RateAdapter.Configuration()
        pacing.ceiling = rate
        pacing.adaptive = adaptive
        return KMSClient(api: AWSJSONClient(signingName: "kms", targetPrefix: "TrentService", region: region,
                                            endpoint: endpoint, credentials: credentials, transport: transport,
                                            retry: RetryStrategy(r), callDeadline: callDeadline,
                                            attemptTimeout: attemptTimeout, connectTimeout: connectTimeout,
                                            pacing: pacing))
    }
}
