import SecureMemory
/// Credentials a shared-config profile describes, in botocore's order for
/// one profile:
///
/// 1. `role_arn` with `source_profile` (credentials of another profile, which
///    may itself assume a role; loops are refused) or `credential_source`
///    (`Environment`, `Ec2InstanceMetadata`, `EcsContainer`): STS `AssumeRole`,
///    with `role_session_name`, `external_id`, `duration_seconds`;
///    `role_arn` with `web_identity_token_file`: STS `AssumeRoleWithWebIdentity`;
/// 2. access keys from the credentials file;
/// 3. `credential_process`;
/// 4. access keys from the config file.
///
/// SSO profiles and `mfa_serial` need an interactive login a daemon cannot
/// do: they fail with a line saying so.
public struct ProfileCredentialProvider: CredentialProvider {
    public let profileName: String
    public let config: SharedConfigFiles
    public let environment: Environment
    /// The region resolved for the mount (STS is called there when the
    /// profile does not name one).
    public let region: String?
    public let transport: HTTPTransport
    public let clock: Clock
    public let imds: IMDSClient?

    public var name: String { "profile \(profileName)" }

    public init(profileName: String, config: SharedConfigFiles, environment: Environment, region: String?,
                transport: HTTPTransport, clock: Clock = .system, imds: IMDSClient?) {
        self.profileName = profileName
        self.config = config
        self.environment = environment
        self.region = region
        self.transport = transport
        self.clock = clock
        self.imds = imds
    }

    public func credentials() throws(CredentialError) -> AWSCredentials {
        guard let p = config.profile(profileName) else {
            throw .notConfigured("no profile '\(profileName)' in \(config.locations)")
        }
        return try resolve(p, visited: [])
    }

    func sts(for p: ConfigProfile) throws(CredentialError) -> STSClient {
        try STSClient.resolve(region: p["region"] ?? region, environment: environment, config: config,
                              profile: profileName, transport: transport, clock: clock)
    }

    /// The most profiles a `source_profile` chain may name, the first and
    /// the last included.
    static let maxSourceProfileChain = 16

    func resolve(_ p: ConfigProfile, visited: [String]) throws(CredentialError) -> AWSCredentials {
        if let role = p["role_arn"] {
            if p["source_profile"] == nil && p["credential_source"] == nil {
                guard let file = p["web_identity_token_file"] else {
                    throw .failed("profile '\(p.name)' has role_arn but no source_profile, credential_source or web_identity_token_file")
                }
                let sts = try sts(for: p)
                return try WebIdentityCredentialProvider(
                    tokenFile: file, roleArn: role, sessionName: p["role_session_name"],
                    durationSeconds: p["duration_seconds"].flatMap { Int($0) }, origin: "profile \(p.name)",
                    clock: clock, sts: { sts }).credentials()
            }
            if p["source_profile"] != nil && p["credential_source"] != nil {
                throw .failed("profile '\(p.name)' has both source_profile and credential_source; keep one")
            }
            if p["mfa_serial"] != nil {
                throw .failed("profile '\(p.name)' needs an MFA code (mfa_serial), which a daemon cannot ask for; use a role without MFA")
            }
            let source = try sourceCredentials(for: p, visited: visited)
            let duration = p["duration_seconds"].flatMap { Int($0) }
            return try sts(for: p).assumeRole(
                roleArn: role, sessionName: p["role_session_name"] ?? WebIdentityCredentialProvider.defaultSessionName(clock),
                externalId: p["external_id"], durationSeconds: duration, sourceCredentials: source,
                source: "profile \(p.name) (role \(role))")
        }
        if p["web_identity_token_file"] != nil {
            throw .failed("profile '\(p.name)' has web_identity_token_file but no role_arn")
        }
        if p["sso_start_url"] != nil || p["sso_session"] != nil || p["sso_account_id"] != nil {
            throw .failed("profile '\(p.name)' uses IAM Identity Center (SSO), which needs an interactive `aws sso login`; kmsfs does not read the SSO cache. Use a role (role_arn), an instance or container role, or credential_process")
        }
        if p.keysInCredentialsFile { return try staticKeys(p) }
        if let command = p["credential_process"] {
            // The file chooses the program and its arguments
            // (`/usr/bin/python3 -c ...` passes any check of the program):
            // it must be as safe from other users as the program itself.
            if let problem = config.untrusted.first {
                throw .failed("profile '\(p.name)': not running its credential_process: \(problem)")
            }
            return try ProcessCredentialProvider(command: command, profile: p.name, environment: environment).credentials()
        }
        if p["aws_access_key_id"] != nil || p["aws_secret_access_key"] != nil { return try staticKeys(p) }
        throw .notConfigured("profile '\(p.name)' has no credentials (aws_access_key_id, role_arn, credential_process or web_identity_token_file)")
    }

    func staticKeys(_ p: ConfigProfile) throws(CredentialError) -> AWSCredentials {
        guard let id = p["aws_access_key_id"] else {
            throw .failed("profile '\(p.name)' has aws_secret_access_key but no aws_access_key_id")
        }
        guard let secret = p["aws_secret_access_key"] else {
            throw .failed("profile '\(p.name)' has aws_access_key_id but no aws_secret_access_key")
        }
        // Values `SharedConfigFiles.load` took out into secure memory come
        // back from there: no String is made of them.
        let source = "profile \(p.name)"
        do {
            // An empty value is no value, as for the AWS CLI (the value
            // taken out leaves a marker, which is never empty itself).
            let s = try config.secret(secret)
            guard s.count > 0 else {
                throw CredentialError.failed("profile '\(p.name)' has aws_access_key_id but no aws_secret_access_key")
            }
            var t: SecureBuffer? = nil
            if let v = p["aws_session_token"] ?? p["aws_security_token"] { t = try config.secret(v) }
            if let token = t, token.count == 0 { t = nil }
            if let t, !AWSCredentials.isPrintableWord(t) {
                throw CredentialError.failed("the session token from \(source) holds a blank or a control character")
            }
            return AWSCredentials(accessKeyId: id, secret: s, token: t, source: source, kind: .profile)
        } catch let e as CredentialError {
            throw e
        } catch {
            throw .failed("cannot hold the AWS credentials from \(source) in secure memory: \(error)")
        }
    }

    func sourceCredentials(for p: ConfigProfile, visited: [String]) throws(CredentialError) -> AWSCredentials {
        if let sp = p["source_profile"] {
            if sp == p.name {
                // botocore: a profile naming itself uses its own static keys.
                return try staticKeys(p)
            }
            guard !visited.contains(sp) else {
                throw .failed("profiles \((visited + [p.name, sp]).joined(separator: " -> ")) form a source_profile loop")
            }
            // Each hop is a level of recursion (on a 256 KiB open-pool
            // stack: 200 hops overflowed it and killed the mount) and an
            // AssumeRole call per refresh. Refused before any call is made.
            guard visited.count + 2 <= Self.maxSourceProfileChain else {
                throw .failed("profile '\(visited.first ?? p.name)' starts a source_profile chain longer than \(Self.maxSourceProfileChain) profiles; kmsfs follows at most \(Self.maxSourceProfileChain)")
            }
            guard let source = config.profile(sp) else {
                throw .failed("profile '\(p.name)' names source_profile '\(sp)', which is not in \(config.locations)")
            }
            do {
                return try resolve(source, visited: visited + [p.name])
            } catch {
                throw .failed("source_profile '\(sp)' of profile '\(p.name)': \(error.message)")
            }
        }
        let cs = p["credential_source"] ?? ""
        let provider: CredentialProvider
        switch cs {
        case "Environment":
            provider = EnvironmentCredentialProvider(environment: environment)
        case "Ec2InstanceMetadata":
            guard let imds else {
                throw .failed("profile '\(p.name)' has credential_source = Ec2InstanceMetadata but instance metadata is disabled (AWS_EC2_METADATA_DISABLED)")
            }
            provider = IMDSCredentialProvider(client: imds)
        case "EcsContainer":
            provider = ContainerCredentialProvider(environment: environment, transport: transport, clock: clock)
        default:
            throw .failed("profile '\(p.name)' has credential_source = '\(cs)'; expected Environment, Ec2InstanceMetadata or EcsContainer")
        }
        do {
            return try provider.credentials()
        } catch {
            throw CredentialError(error.kind == .invalid ? .invalid : .failed, "credential_source \(cs) of profile '\(p.name)': \(error.message)")
        }
    }
}
