/// The default credential chain, in the order the SDKs use (AWS SDK for
/// Java 2 / aws-sdk-swift; botocore differs only in trying profile roles
/// before web identity):
///
/// 1. environment variables (`AWS_ACCESS_KEY_ID`, ...), skipped when a
///    profile was named explicitly (`-o profile=`), as botocore skips them
///    for `--profile`;
/// 2. web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`);
/// 3. the shared config and credentials files (the selected profile);
/// 4. container credentials (ECS, EKS Pod Identity);
/// 5. EC2 instance metadata (IMDSv2), unless `AWS_EC2_METADATA_DISABLED`.
///
/// The chain is wrapped in one `CachingCredentialProvider`, which refreshes
/// temporary credentials ahead of expiry and bridges short outages.
public enum DefaultCredentialChain {
    public struct Inputs: Sendable {
        public var environment: Environment
        public var config: SharedConfigFiles
        public var profile: String
        /// `-o profile=` was given (not merely `AWS_PROFILE`).
        public var explicitProfile: Bool
        public var region: String?
        public var transport: HTTPTransport
        public var clock: Clock
        public var imds: IMDSClient?

        public init(environment: Environment, config: SharedConfigFiles, profile: String, explicitProfile: Bool,
                    region: String?, transport: HTTPTransport, clock: Clock = .system, imds: IMDSClient?) {
            self.environment = environment
            self.config = config
            self.profile = profile
            self.explicitProfile = explicitProfile
            self.region = region
            self.transport = transport
            self.clock = clock
            self.imds = imds
        }
    }

    public static func providers(_ i: Inputs) -> [CredentialProvider] {
        var list: [CredentialProvider] = []
        if !i.explicitProfile {
            list.append(EnvironmentCredentialProvider(environment: i.environment))
        }
        let (env, config, profile, region, transport, clock) = (i.environment, i.config, i.profile, i.region, i.transport, i.clock)
        if let w = WebIdentityCredentialProvider.fromEnvironment(env, clock: clock, sts: { () throws(CredentialError) -> STSClient in
            try STSClient.resolve(region: region, environment: env, config: config, profile: profile,
                                  transport: transport, clock: clock)
        }) {
            list.append(w)
        }
        list.append(ProfileCredentialProvider(profileName: profile, config: config, environment: env, region: region,
                                              transport: transport, clock: clock, imds: i.imds))
        let container = ContainerCredentialProvider(environment: env, transport: transport, clock: clock)
        list.append(container)
        // As aws-c-auth: container and instance credentials exclude each other.
        if let imds = i.imds, !container.isConfigured {
            list.append(IMDSCredentialProvider(client: imds))
        }
        return list
    }

    public static func make(_ i: Inputs, policy: CachingCredentialProvider.Policy = .init(),
                            runner: BackgroundRunner = .thread) -> CachingCredentialProvider {
        CachingCredentialProvider(CredentialProviderChain(providers(i)), policy: policy, clock: i.clock, runner: runner)
    }
}
