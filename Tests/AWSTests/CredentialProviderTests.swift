import System
import Testing
import AWS
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

func stsAnswer(_ action: String, id: String, expiration: String = "2030-01-01T00:00:00Z") -> String {
    """
    <\(action)Response xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><\(action)Result>
    <AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/r/s</Arn><AssumedRoleId>AROA:s</AssumedRoleId></AssumedRoleUser>
    <Credentials><SessionToken>tok-\(id)</SessionToken><SecretAccessKey>sec-\(id)</SecretAccessKey>
    <Expiration>\(expiration)</Expiration><AccessKeyId>\(id)</AccessKeyId></Credentials>
    </\(action)Result><ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata></\(action)Response>
    """
}

func stsClient(_ t: HTTPTransport, _ clock: Clock) -> STSClient {
    var c = STSClient(endpoint: URLParts("https://sts.eu-west-1.amazonaws.com")!, region: "eu-west-1", transport: t, clock: clock)
    c.callDeadline = 10
    return c
}

@Suite struct EnvironmentProviderTests {
    @Test func readsKeysAndToken() throws {
        let c = try EnvironmentCredentialProvider(environment: Environment([
            "AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "S", "AWS_SESSION_TOKEN": "T"])).credentials()
        #expect(c.accessKeyId == "AKID" && c.copyOfSecretAccessKey() == "S" && c.copyOfSessionToken() == "T" && c.expiration == nil)
        #expect(c.kind == .environment)
        #expect(!c.description.contains("S,") && c.description.contains("redacted"))
    }

    @Test func partialKeysFailAndNoneIsNotConfigured() {
        #expect(throws: CredentialError.notConfigured("AWS_ACCESS_KEY_ID is not set")) {
            try EnvironmentCredentialProvider(environment: Environment([:])).credentials()
        }
        // Half a pair can never mend while the daemon runs (its
        // environment is fixed): `.invalid`, which a mount refuses, and
        // which a chain passes on as it is.
        let e = credentialError { try EnvironmentCredentialProvider(environment: Environment(["AWS_ACCESS_KEY_ID": "A"])).credentials() }
        #expect(e.kind == .invalid)
        let chained = credentialError {
            try CredentialProviderChain([EnvironmentCredentialProvider(environment: Environment(["AWS_SECRET_ACCESS_KEY": "s"]))]).credentials()
        }
        #expect(chained.kind == .invalid && chained.message.contains("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not"))
    }
}

@Suite struct WebIdentityProviderTests {
    @Test func callsAssumeRoleWithWebIdentityUnsignedAndRereadsTheToken() throws {
        let dir = TempDir()
        let file = dir.write("token", "jwt-one\n")
        let clock = ManualClock()
        let t = ScriptedTransport { req, n in .init(status: 200, body: stsAnswer("AssumeRoleWithWebIdentity", id: "ASIA\(n)")) }
        let env = Environment(["AWS_WEB_IDENTITY_TOKEN_FILE": file, "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/r",
                               "AWS_ROLE_SESSION_NAME": "my-session"])
        let sts = stsClient(t, clock.clock)
        let made = WebIdentityCredentialProvider.fromEnvironment(env, clock: clock.clock, sts: { sts })
        let p = try #require(made)
        let c = try p.credentials()
        #expect(c.accessKeyId == "ASIA1" && c.copyOfSecretAccessKey() == "sec-ASIA1" && c.copyOfSessionToken() == "tok-ASIA1")
        #expect(c.kind == .webIdentity)
        #expect(c.expiration == Timestamp.parseISO8601("2030-01-01T00:00:00Z"))
        let req = t.requests[0]
        #expect(req.method == "POST" && req.url.host == "sts.eu-west-1.amazonaws.com")
        #expect(req.header("Authorization") == nil)   // the token is the proof
        #expect(req.header("Content-Type")?.hasPrefix("application/x-www-form-urlencoded") == true)
        let form = req.form
        #expect(form["Action"] == "AssumeRoleWithWebIdentity" && form["Version"] == "2011-06-15")
        #expect(form["RoleArn"] == "arn:aws:iam::123456789012:role/r" && form["RoleSessionName"] == "my-session")
        #expect(form["WebIdentityToken"] == "jwt-one")
        // The platform rotates the token: the next fetch reads the new one.
        dir.write("token", "jwt-two")
        _ = try p.credentials()
        #expect(t.requests[1].form["WebIdentityToken"] == "jwt-two")
    }

    /// A FIFO (or a device) where the token file was expected is refused
    /// at once: opened blocking, it held the fetching thread, and with it
    /// every later credential request, forever.
    @Test func aTokenFileThatIsNotARegularFileIsRefusedAtOnce() throws {
        let dir = TempDir()
        let fifo = dir.path + "/token"
        #expect(mkfifo(fifo, 0o600) == 0)
        let clock = ManualClock()
        let t = ScriptedTransport { _, n in .init(status: 200, body: stsAnswer("AssumeRoleWithWebIdentity", id: "ASIA\(n)")) }
        let env = Environment(["AWS_WEB_IDENTITY_TOKEN_FILE": fifo, "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/r"])
        let sts = stsClient(t, clock.clock)
        let made = WebIdentityCredentialProvider.fromEnvironment(env, clock: clock.clock, sts: { sts })
        let p = try #require(made)
        let started = SystemClock.monotonic()
        let e = credentialError { try p.credentials() }
        #expect(SystemClock.monotonic() - started < 2)
        #expect(e.message.contains("is not a regular file"), "\(e.message)")
        #expect(t.requests.isEmpty)
        #expect(throws: Errno.self) { try readSmallFile(fifo, limit: 64).get() }
        // /dev/null, as people point AWS_CONFIG_FILE at it, reads as empty.
        #expect(try readSmallFile("/dev/null", limit: 64).get().isEmpty)
        _ = try SharedConfigFiles.load(environment: Environment(["AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"]))
    }

    @Test func missingRoleIsAConfigurationFailure() throws {
        let made = WebIdentityCredentialProvider.fromEnvironment(
            Environment(["AWS_WEB_IDENTITY_TOKEN_FILE": "/x"]), sts: { () throws(CredentialError) -> STSClient in throw .failed("unused") })
        let p = try #require(made)
        let e = credentialError { try p.credentials() }
        #expect(e.kind == .failed && e.message.contains("AWS_ROLE_ARN"))
        let none = WebIdentityCredentialProvider.fromEnvironment(Environment([:]), sts: { () throws(CredentialError) -> STSClient in throw .failed("unused") })
        #expect(none == nil)
    }

    @Test func invalidIdentityTokenIsRetriedAndAccessDeniedIsNot() throws {
        let dir = TempDir()
        let file = dir.write("token", "jwt")
        let clock = ManualClock()
        let flaky = ScriptedTransport { _, n in
            n == 1 ? .init(status: 400, body: "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>not yet</Message></Error></ErrorResponse>")
                   : .init(status: 200, body: stsAnswer("AssumeRoleWithWebIdentity", id: "ASIAOK"))
        }
        let sts1 = stsClient(flaky, clock.clock)
        let p = WebIdentityCredentialProvider(tokenFile: file, roleArn: "arn:r", sessionName: "s", origin: "test", sts: { sts1 })
        #expect(try p.credentials().accessKeyId == "ASIAOK")
        #expect(flaky.count == 2)

        let denied = ScriptedTransport { _, _ in
            .init(status: 403, body: "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>Not authorized</Message></Error></ErrorResponse>")
        }
        let sts2 = stsClient(denied, clock.clock)
        let q = WebIdentityCredentialProvider(tokenFile: file, roleArn: "arn:r", sessionName: "s", origin: "test", sts: { sts2 })
        let e = credentialError { try q.credentials() }
        #expect(e.kind == .failed)
        #expect(e.message.contains("AccessDenied") && e.message.contains("trust policy"))
        #expect(denied.count == 1)
    }
}

@Suite struct SharedConfigTests {
    static let config = """
    # comment
    [default]
    region = eu-west-1
    aws_access_key_id = CONFIGKEY
    aws_secret_access_key = configsecret

    [profile dev]
    Region=us-west-2
    role_arn = arn:aws:iam::1:role/dev
    source_profile = base
    services = local
    ; another comment
    [profile  base ]
    aws_access_key_id = BASEKEY
    aws_secret_access_key = basesecret
    [services local]
    kms =
      endpoint_url = http://127.0.0.1:4566
    sts =
      endpoint_url = http://127.0.0.1:4567
    [sso-session corp]
    sso_start_url = https://x
    [preview]
    cloudfront = true
    """

    static let credentials = """
    [default]
    aws_access_key_id = CREDKEY
    aws_secret_access_key = credsecret
    [only-creds]
    aws_access_key_id = K2
    aws_secret_access_key = S2
    aws_session_token = T2
    """

    @Test func parsesProfilesWithCredentialsFileWinning() throws {
        let f = try SharedConfigFiles.parse(config: Self.config, credentials: Self.credentials)
        #expect(Set(f.profiles.keys) == ["default", "dev", "base", "only-creds"])
        let d = try #require(f.profile("default"))
        #expect(d["region"] == "eu-west-1" && d["aws_access_key_id"] == "CREDKEY" && d.keysInCredentialsFile)
        #expect(f.profile("dev")?["region"] == "us-west-2")   // keys are case-insensitive
        #expect(f.profile("base")?["aws_access_key_id"] == "BASEKEY")
        #expect(f.profile("base")?.keysInCredentialsFile == false)
        #expect(f.serviceValue(profile: "dev", service: "kms", key: "endpoint_url") == "http://127.0.0.1:4566")
        #expect(f.serviceValue(profile: "dev", service: "sts", key: "endpoint_url") == "http://127.0.0.1:4567")
        #expect(f.serviceValue(profile: "default", service: "kms", key: "endpoint_url") == nil)
    }

    @Test func malformedLinesAreReportedWithTheirNumber() {
        do throws(SharedConfigError) {
            _ = try SharedConfigFiles.parse(config: "[default]\nregion = x\nthis is not a setting\n", credentials: nil, configPath: "/c")
            Issue.record("expected an error")
        } catch {
            #expect(error.message == "/c line 3: expected 'key = value'")
        }
        #expect(throws: SharedConfigError.self) { try SharedConfigFiles.parse(config: "region = x\n", credentials: nil) }
    }

    /// The AWS CLI (Python's strict RawConfigParser) refuses a file with a
    /// section or a key twice; kmsfs merged the sections, and signed with
    /// the second's key ID and the first's secret.
    @Test func aSectionOrKeyTwiceIsRefusedAsTheCLIDoes() {
        for (text, want) in [("[default]\naws_access_key_id = A\n[default]\naws_access_key_id = B\n",
                              "/c line 3: section [default] appears twice (the AWS CLI refuses this file too); keep one"),
                             ("[profile p]\nregion = a\nRegion = b\n",
                              "/c line 3: 'region' appears twice in [profile p] (the AWS CLI refuses this file too); keep one")] {
            do throws(SharedConfigError) {
                _ = try SharedConfigFiles.parse(config: text, credentials: nil, configPath: "/c")
                Issue.record("expected an error for \(text)")
            } catch {
                #expect(error.message == want)
            }
        }
    }

    /// Two sections that name one profile ([default] and [profile
    /// default]) are both accepted by the AWS CLI, the later replacing the
    /// earlier whole; kmsfs merged them key by key.
    @Test func aLaterSectionForTheSameProfileReplacesTheEarlierWhole() throws {
        let f = try SharedConfigFiles.parse(
            config: "[default]\naws_access_key_id = FIRST\naws_secret_access_key = first\nregion = a\n[profile default]\naws_access_key_id = SECOND\n",
            credentials: nil)
        let d = try #require(f.profile("default"))
        #expect(d["aws_access_key_id"] == "SECOND" && d["aws_secret_access_key"] == nil && d["region"] == nil)
    }

    /// Section names are read as botocore reads them (each expectation
    /// below is what `botocore.configloader.build_profile_map` gives for
    /// the same text, Python 3.11): kmsfs trimmed `[ default ]` into the
    /// default profile the AWS CLI does not see, and missed quoted names.
    @Test func sectionNamesAreReadAsBotocoreReadsThem() throws {
        let cases: [(String, [String])] = [
            ("[ default ]\nregion = a\n", []),
            ("[default ]\nregion = a\n", []),
            ("[profile \"my p\"]\nregion = a\n", ["my p"]),
            ("[profile 'x']\nregion = a\n", ["x"]),
            ("[profilex y]\nregion = a\n", ["y"]),
            ("[profile\tt]\nregion = a\n", ["t"]),
            ("[profile \"x]\nregion = a\n", []),
            ("[profile a b]\nregion = a\n", []),
            ("[profile a\\ b]\nregion = a\n", ["a b"]),
            ("[default] junk\nregion = a\n", ["default"]),
            ("  [default]\nregion = a\n", ["default"]),
            ("[profile  base ]\nregion = a\n", ["base"]),
            ("[sso-session s]\nregion = a\n[preview]\nregion = b\n", []),
        ]
        for (text, want) in cases {
            let f = try SharedConfigFiles.parse(config: text, credentials: nil)
            #expect(f.profiles.keys.sorted() == want, "\(text)")
        }
        // A profile's services = NAME finds [services "NAME"] as botocore does.
        let f = try SharedConfigFiles.parse(
            config: "[default]\nservices = s\n[services 's']\nkms =\n  endpoint_url = http://127.0.0.1:1\n", credentials: nil)
        #expect(f.serviceValue(profile: "default", service: "kms", key: "endpoint_url") == "http://127.0.0.1:1")
        // The credentials file's sections are profile names as written.
        let c = try SharedConfigFiles.parse(config: nil, credentials: "[ default ]\naws_access_key_id = K\n")
        #expect(c.profile("default") == nil && c.profile(" default ")?["aws_access_key_id"] == "K")
    }

    /// Regression (issue 13 A1): a CRLF credentials file (written on
    /// Windows) was one line, so its profiles were silently missing.
    @Test func crlfFilesAreReadLineByLine() throws {
        let f = try SharedConfigFiles.parse(
            config: "[profile dev]\r\nregion = eu-north-1\r\nservices = s\r\n[services s]\r\nkms =\r\n  endpoint_url = http://127.0.0.1:4566\r\n",
            credentials: "[default]\r\naws_access_key_id = CRLFKEY\r\naws_secret_access_key = CRLFSECRET\r\n")
        #expect(f.profile("default")?["aws_access_key_id"] == "CRLFKEY")
        #expect(f.profile("default")?["aws_secret_access_key"] == "CRLFSECRET")
        #expect(f.profile("default")?.keysInCredentialsFile == true)
        #expect(f.profile("dev")?["region"] == "eu-north-1")
        #expect(f.serviceValue(profile: "dev", service: "kms", key: "endpoint_url") == "http://127.0.0.1:4566")
    }

    @Test func loadsTheFilesTheEnvironmentNames() throws {
        let dir = TempDir()
        let c = dir.write("config", "[profile p]\nregion = ap-south-1\n")
        let e = Environment(["AWS_CONFIG_FILE": c, "AWS_SHARED_CREDENTIALS_FILE": dir.path + "/missing"])
        let f = try SharedConfigFiles.load(environment: e)
        #expect(f.profile("p")?["region"] == "ap-south-1")
        #expect(SharedConfigFiles.profileName(explicit: nil, environment: Environment(["AWS_PROFILE": "p"])) == ("p", true))
        #expect(SharedConfigFiles.profileName(explicit: "x", environment: Environment(["AWS_PROFILE": "p"])) == ("x", true))
        #expect(SharedConfigFiles.profileName(explicit: nil, environment: Environment([:])) == ("default", false))
    }
}

@Suite struct ProfileProviderTests {
    func provider(_ config: String, credentials: String? = nil, profile: String = "default", env: [String: String] = [:],
                  transport: HTTPTransport = ScriptedTransport { _, _ in .init(status: 500, body: "") },
                  imds: IMDSClient? = nil, clock: Clock = .system) throws -> ProfileCredentialProvider {
        let files = try SharedConfigFiles.parse(config: config, credentials: credentials)
        return ProfileCredentialProvider(profileName: profile, config: files, environment: Environment(env), region: "eu-west-1",
                                         transport: transport, clock: clock, imds: imds)
    }

    @Test func staticKeysAndMissingProfile() throws {
        let c = try provider("[default]\naws_access_key_id = A\naws_secret_access_key = B\naws_session_token = C\n").credentials()
        #expect(c.accessKeyId == "A" && c.copyOfSecretAccessKey() == "B" && c.copyOfSessionToken() == "C" && c.source == "profile default")
        #expect(c.kind == .profile)
        let pp = try provider("[profile x]\nregion = y\n")
        let e = credentialError { try pp.credentials() }
        #expect(e.kind == .notConfigured)
        let pp2 = try provider("[default]\naws_access_key_id = A\n")
        let e2 = credentialError { try pp2.credentials() }
        #expect(e2.kind == .failed && e2.message.contains("aws_secret_access_key"))
    }

    @Test func assumeRoleSignsWithTheSourceProfile() throws {
        let clock = ManualClock()
        let t = ScriptedTransport { _, _ in .init(status: 200, body: stsAnswer("AssumeRole", id: "ASIAROLE")) }
        let p = try provider("""
            [profile dev]
            role_arn = arn:aws:iam::1:role/dev
            source_profile = base
            role_session_name = kmsfs-test
            external_id = ext-1
            duration_seconds = 900
            [profile base]
            aws_access_key_id = BASEKEY
            aws_secret_access_key = basesecret
            """, profile: "dev", transport: t, clock: clock.clock)
        let c = try p.credentials()
        #expect(c.accessKeyId == "ASIAROLE" && c.copyOfSessionToken() == "tok-ASIAROLE" && c.expiration != nil)
        #expect(c.kind == .assumedRole)
        let req = t.requests[0]
        #expect(req.header("Authorization")?.contains("Credential=BASEKEY/") == true)
        #expect(req.header("Authorization")?.contains("/eu-west-1/sts/aws4_request") == true)
        let form = req.form
        #expect(form["Action"] == "AssumeRole" && form["RoleArn"] == "arn:aws:iam::1:role/dev")
        #expect(form["RoleSessionName"] == "kmsfs-test" && form["ExternalId"] == "ext-1" && form["DurationSeconds"] == "900")
    }

    @Test func roleChainsAndLoops() throws {
        let t = ScriptedTransport { req, n in .init(status: 200, body: stsAnswer("AssumeRole", id: "ASIA\(n)")) }
        let chain = try provider("""
            [profile a]
            role_arn = arn:a
            source_profile = b
            [profile b]
            role_arn = arn:b
            source_profile = c
            [profile c]
            aws_access_key_id = CKEY
            aws_secret_access_key = csecret
            """, profile: "a", transport: t)
        #expect(try chain.credentials().accessKeyId == "ASIA2")
        // b was assumed with c's keys, a with b's temporary credentials.
        #expect(t.requests[0].header("Authorization")?.contains("Credential=CKEY/") == true)
        #expect(t.requests[1].header("Authorization")?.contains("Credential=ASIA1/") == true)
        #expect(t.requests[1].header("X-Amz-Security-Token") == "tok-ASIA1")

        let loop = try provider("[profile a]\nrole_arn = arn:a\nsource_profile = b\n[profile b]\nrole_arn = arn:b\nsource_profile = a\n",
                                profile: "a", transport: t)
        let e = credentialError { try loop.credentials() }
        #expect(e.kind == .failed && e.message.contains("loop"))
    }

    /// A profile's region made the STS URL, force-unwrapped: with a blank
    /// or control byte in it (which URLParts now refuses) the daemon
    /// trapped. Found by the sharedconfig fuzz target.
    @Test func aRegionThatMakesNoHostNameIsAnErrorNotATrap() throws {
        let p = try provider("[profile a]\nregion = us\teast-1\nrole_arn = arn:a\nsource_profile = b\n[profile b]\naws_access_key_id = K\naws_secret_access_key = s\n",
                             profile: "a")
        let e = credentialError { try p.credentials() }
        #expect(e.kind == .failed && e.message.contains("for STS is not a region name"), "\(e.message)")
    }

    /// A chain of `hops` role profiles p0 -> p1 -> ... ending in static keys.
    func chain(_ hops: Int) -> String {
        var text = ""
        for i in 0..<hops { text += "[profile p\(i)]\nrole_arn = arn:\(i)\nsource_profile = p\(i + 1)\n" }
        return text + "[profile p\(hops)]\naws_access_key_id = K\naws_secret_access_key = s\n"
    }

    /// Each hop of a source_profile chain was a level of recursion: 200
    /// hops overflowed an open-pool thread's stack (SIGSEGV, the mount
    /// gone), 6,000 the main thread's at start. The longest chain followed
    /// is 16 profiles; a longer one is one short error and no STS call.
    @Test func aSourceProfileChainPastSixteenProfilesIsRefusedWithoutRecursingDeep() throws {
        let t = ScriptedTransport { req, n in .init(status: 200, body: stsAnswer("AssumeRole", id: "ASIA\(n)")) }
        #expect(try provider(chain(15), profile: "p0", transport: t).credentials().accessKeyId == "ASIA15")
        #expect(t.requests.count == 15)
        for hops in [16, 10_000] {
            let t = ScriptedTransport { req, n in .init(status: 200, body: stsAnswer("AssumeRole", id: "ASIA\(n)")) }
            let e = credentialError { try provider(chain(hops), profile: "p0", transport: t).credentials() }
            #expect(e.kind == .failed && e.message.contains("longer than 16 profiles"), "\(e.message.prefix(300))")
            #expect(e.message.utf8.count < 2048, "\(e.message.utf8.count) bytes")
            #expect(t.requests.isEmpty)
        }
    }

    @Test func credentialSourceEnvironmentAndBadSettings() throws {
        let t = ScriptedTransport { _, _ in .init(status: 200, body: stsAnswer("AssumeRole", id: "ASIAENV")) }
        let p = try provider("[default]\nrole_arn = arn:r\ncredential_source = Environment\n",
                             env: ["AWS_ACCESS_KEY_ID": "ENVKEY", "AWS_SECRET_ACCESS_KEY": "e"], transport: t)
        #expect(try p.credentials().accessKeyId == "ASIAENV")
        #expect(t.requests[0].header("Authorization")?.contains("Credential=ENVKEY/") == true)

        for (text, needle) in [
            ("[default]\nrole_arn = arn:r\n", "no source_profile"),
            ("[default]\nrole_arn = arn:r\nsource_profile = x\ncredential_source = Environment\n", "both"),
            ("[default]\nrole_arn = arn:r\ncredential_source = Ec2InstanceMetadata\n", "disabled"),
            ("[default]\nrole_arn = arn:r\ncredential_source = Magic\n", "expected Environment"),
            ("[default]\nrole_arn = arn:r\nsource_profile = nope\n", "not in"),
            ("[default]\nrole_arn = arn:r\nsource_profile = default\naws_access_key_id = A\naws_secret_access_key = B\nmfa_serial = arn:mfa\n", "MFA"),
            ("[default]\nsso_session = corp\nsso_account_id = 1\n", "SSO"),
        ] {
            let pp = try provider(text, transport: t)
            let e = credentialError { try pp.credentials() }
            #expect(e.kind == .failed, "\(text)")
            #expect(e.message.contains(needle), "\(e.message)")
        }
    }

    @Test func credentialProcessRunsWithoutAShellAndIsBounded() throws {
        let dir = TempDir()
        let script = dir.write("creds.sh", """
            #!/bin/sh
            printf '{"Version": 1, "AccessKeyId": "PROCKEY", "SecretAccessKey": "%s", "SessionToken": "pt", "Expiration": "2030-01-01T00:00:00Z"}' "$1"
            """, mode: 0o700)
        let p = try provider("[default]\ncredential_process = \(script) 'arg with spaces'\n")
        let c = try p.credentials()
        #expect(c.accessKeyId == "PROCKEY" && c.copyOfSecretAccessKey() == "arg with spaces" && c.copyOfSessionToken() == "pt")
        #expect(c.kind == .credentialProcess)
        #expect(c.expiration == Timestamp.parseISO8601("2030-01-01T00:00:00Z"))

        // Keys in the credentials file win over credential_process.
        let q = try provider("[default]\ncredential_process = /bin/false\n",
                             credentials: "[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = s\n")
        #expect(try q.credentials().accessKeyId == "FILEKEY")

        let failing = try provider("[default]\ncredential_process = /bin/sh -c 'exit 3'\n")
        let e = credentialError { try failing.credentials() }
        #expect(e.kind == .failed && e.message.contains("status 3"))
        let garbage = try provider("[default]\ncredential_process = /bin/echo hello\n")
        let e2 = credentialError { try garbage.credentials() }
        #expect(e2.message.contains("JSON"))

        var slow = ProcessCredentialProvider(command: "/bin/sleep 5", profile: "p", environment: Environment([:]))
        slow.timeout = 0.3
        let t0 = SystemClock.monotonic()
        let e3 = credentialError { try slow.credentials() }
        #expect(e3.message.contains("killed"))
        #expect(SystemClock.monotonic() - t0 < 2)

        // A timeout kills what the helper started too, not only the helper.
        let pidFile = dir.path + "/background.pid"
        var wrapper = ProcessCredentialProvider(command: "/bin/sh -c 'sleep 30 & echo $! > \(pidFile); wait'",
                                                profile: "p", environment: Environment([:]))
        wrapper.timeout = 0.5
        let e4 = credentialError { try wrapper.credentials() }
        #expect(e4.message.contains("killed"))
        let background = try #require(readSmallFile(pidFile).flatMap { Int32($0.filter(\.isNumber)) })
        func running(_ pid: Int32) -> Bool {
            // Gone, or a zombie waiting for its new parent to reap it.
            guard let text = readSmallFile("/proc/\(pid)/stat"), let close = text.lastIndex(of: ")") else { return false }
            return !text[close...].hasPrefix(") Z")
        }
        var alive = true
        for _ in 0..<200 where alive { alive = running(background); if alive { usleep(10_000) } }
        #expect(!alive, "the helper's background process \(background) outlived its timeout")
        if alive { kill(background, SIGKILL) }
    }

    @Test func commandSplitting() {
        #expect(ProcessCredentialProvider.split(#"/usr/bin/tool --x "a b" 'c d' e\ f"#) == ["/usr/bin/tool", "--x", "a b", "c d", "e f"])
        #expect(ProcessCredentialProvider.split(#"a "b\"c""#) == ["a", "b\"c"])
        #expect(ProcessCredentialProvider.split("a 'open") == nil)
        // On scalars: a quote and a combining mark after it are one Character.
        #expect(ProcessCredentialProvider.split("/bin/helper '\u{301}x y'") == ["/bin/helper", "\u{301}x y"])
    }
}

@Suite struct ContainerProviderTests {
    static let doc = #"{"AccessKeyId":"ASIACONT","SecretAccessKey":"s","Token":"t","Expiration":"2030-01-01T00:00:00Z","AccountId":"1"}"#

    @Test func relativeURIGoesToTheECSAgent() throws {
        let t = ScriptedTransport { _, _ in .init(status: 200, body: Self.doc) }
        let p = ContainerCredentialProvider(environment: Environment(["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/abc"]), transport: t)
        let c = try p.credentials()
        #expect(c.accessKeyId == "ASIACONT" && c.copyOfSessionToken() == "t" && c.expiration != nil)
        #expect(c.kind == .container)
        #expect(t.requests[0].url.description == "http://169.254.170.2/v2/credentials/abc")
        #expect(t.requests[0].method == "GET" && t.requests[0].header("Authorization") == nil)
    }

    @Test func fullURIHostsAreLimitedOverHTTP() throws {
        func endpoint(_ uri: String) -> Result<URLParts, CredentialError> {
            let p = ContainerCredentialProvider(environment: Environment(["AWS_CONTAINER_CREDENTIALS_FULL_URI": uri]),
                                                transport: ScriptedTransport { _, _ in .init(status: 500, body: "") })
            do { return .success(try p.endpoint()) } catch { return .failure(error) }
        }
        for ok in ["http://127.0.0.1:8080/creds", "http://169.254.170.23/v1/credentials", "http://[fd00:ec2::23]/v1/credentials",
                   "http://localhost/x", "http://[::1]:9/x", "https://creds.example.com/x"] {
            #expect((try? endpoint(ok).get()) != nil, "\(ok)")
        }
        for bad in ["http://10.0.0.1/creds", "http://169.254.169.254/latest", "http://example.com/x", "ftp://127.0.0.1/x"] {
            guard case .failure(let e) = endpoint(bad) else { Issue.record("\(bad) accepted"); continue }
            #expect(e.kind == .failed)
        }
        let none = ContainerCredentialProvider(environment: Environment([:]), transport: ScriptedTransport { _, _ in .init(status: 500, body: "") })
        let e = credentialError { try none.credentials() }
        #expect(e.kind == .notConfigured)
    }

    /// Temporary credentials whose expiry cannot be read would be kept,
    /// and never fetched again, long after the token died: refused, as
    /// botocore refuses them.
    @Test func temporaryCredentialsWithoutAReadableExpirationAreRefused() throws {
        for (doc, why) in [
            (#"{"AccessKeyId":"ASIACONT","SecretAccessKey":"s","Token":"t","Expiration":"not-a-date"}"#, "Expiration 'not-a-date' is not an ISO 8601 time"),
            (#"{"AccessKeyId":"ASIACONT","SecretAccessKey":"s","Token":"t","Expiration":17}"#, "Expiration (not a string)"),
            (#"{"AccessKeyId":"ASIACONT","SecretAccessKey":"s","Token":"t"}"#, "a session token but no Expiration"),
        ] {
            let t = ScriptedTransport { _, _ in .init(status: 200, body: doc) }
            let p = ContainerCredentialProvider(environment: Environment(["AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/c"]),
                                                transport: t, clock: ManualClock().clock)
            let e = credentialError { try p.credentials() }
            #expect(e.message.contains(why), "\(e.message)")
        }
        // Long-term keys need none.
        let t = ScriptedTransport { _, _ in .init(status: 200, body: #"{"AccessKeyId":"AKIACONT","SecretAccessKey":"s"}"#) }
        let p = ContainerCredentialProvider(environment: Environment(["AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/c"]), transport: t)
        #expect(try p.credentials().expiration == nil)
    }

    @Test func tokenFileWinsAndIsRereadEachFetch() throws {
        let dir = TempDir()
        let file = dir.write("token", "file-token-1\n")
        let t = ScriptedTransport { _, _ in .init(status: 200, body: Self.doc) }
        let p = ContainerCredentialProvider(environment: Environment([
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.23/v1/credentials",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": file, "AWS_CONTAINER_AUTHORIZATION_TOKEN": "env-token"]), transport: t)
        _ = try p.credentials()
        dir.write("token", "file-token-2")
        _ = try p.credentials()
        #expect(t.requests.map { $0.header("Authorization") } == ["file-token-1", "file-token-2"])

        let q = ContainerCredentialProvider(environment: Environment([
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:1/x", "AWS_CONTAINER_AUTHORIZATION_TOKEN": "bad\r\nX: y"]), transport: t)
        let e = credentialError { try q.credentials() }
        #expect(e.message.contains("line break"))
    }

    @Test func retriesThreeTimesOneSecondApart() throws {
        let clock = ManualClock()
        let t = ScriptedTransport { (_, n) throws(TransportError) -> ScriptedTransport.Answer in
            if n < 3 { throw TransportError(.connect, "refused") }
            return .init(status: 200, body: Self.doc)
        }
        let p = ContainerCredentialProvider(environment: Environment(["AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/c"]),
                                            transport: t, clock: clock.clock)
        #expect(try p.credentials().accessKeyId == "ASIACONT")
        #expect(clock.sleeps == [1, 1])
        #expect(t.requests.allSatisfy { $0.timeout == 2 })

        let down = ScriptedTransport { (_, _) throws(TransportError) -> ScriptedTransport.Answer in throw TransportError(.connect, "refused") }
        let q = ContainerCredentialProvider(environment: Environment(["AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/c"]),
                                            transport: down, clock: ManualClock().clock)
        let e = credentialError { try q.credentials() }
        #expect(e.kind == .failed)
        #expect(down.count == 3)
    }
}

@Suite struct IMDSProviderTests {
    static let doc = #"{"Code":"Success","LastUpdated":"2024-01-01T00:00:00Z","Type":"AWS-HMAC","AccessKeyId":"ASIAIMDS","SecretAccessKey":"s","Token":"t","Expiration":"2030-01-01T00:00:00Z"}"#

    /// An IMDS that requires v2 tokens.
    static func imds(putHangs: Bool = false, noRole: Bool = false, counter: Counter? = nil) -> ScriptedTransport {
        ScriptedTransport { (req, _) throws(TransportError) -> ScriptedTransport.Answer in
            if req.method == "PUT" {
                if putHangs { throw TransportError(.timeout, "Operation timed out after 1000 milliseconds with 0 bytes received") }
                guard req.url.path == "/latest/api/token", req.header("X-aws-ec2-metadata-token-ttl-seconds") == "21600" else {
                    return .init(status: 400, body: "")
                }
                counter?.bump()
                return .init(status: 200, body: "TOKEN")
            }
            if !putHangs && req.header("X-aws-ec2-metadata-token") != "TOKEN" { return .init(status: 401, body: "") }
            switch req.url.path {
            case "/latest/meta-data/iam/security-credentials/": return noRole ? .init(status: 404, body: "") : .init(status: 200, body: "my-role\n")
            case "/latest/meta-data/iam/security-credentials/my-role": return .init(status: 200, body: doc)
            case "/latest/meta-data/placement/region": return .init(status: 200, body: "eu-north-1")
            default: return .init(status: 404, body: "")
            }
        }
    }

    @Test func usesAV2TokenForEveryRequestAndCachesIt() throws {
        let puts = Counter()
        let t = Self.imds(counter: puts)
        let client = IMDSClient(endpoint: URLParts("http://169.254.169.254")!, transport: t)
        let p = IMDSCredentialProvider(client: client)
        let c = try p.credentials()
        #expect(c.accessKeyId == "ASIAIMDS" && c.copyOfSessionToken() == "t" && c.source == "instance role my-role")
        #expect(c.kind == .instanceRole)
        #expect(client.region() == "eu-north-1")
        _ = try p.credentials()
        #expect(puts.value == 1)   // one token for all five GETs
        #expect(t.requests.allSatisfy { $0.timeout == 1 && $0.connectTimeout == 1 })
        #expect(t.requests.filter { $0.method == "GET" }.allSatisfy { $0.url.host == "169.254.169.254" })
    }

    @Test func hopLimitTimeoutFallsBackToV1UnlessDisabled() throws {
        let t = Self.imds(putHangs: true)
        let client = IMDSClient(endpoint: URLParts("http://169.254.169.254")!, transport: t)
        #expect(try IMDSCredentialProvider(client: client).credentials().accessKeyId == "ASIAIMDS")
        #expect(t.requests.filter { $0.method == "GET" }.allSatisfy { $0.header("X-aws-ec2-metadata-token") == nil })
        #expect(t.requests.filter { $0.method == "PUT" }.count == 1)   // the timeout is waited out once, not per request
        #expect(client.region() == "eu-north-1")
        #expect(t.requests.filter { $0.method == "PUT" }.count == 1)

        let strict = IMDSClient(endpoint: URLParts("http://169.254.169.254")!, transport: Self.imds(putHangs: true), v1Disabled: true)
        let e = credentialError { try IMDSCredentialProvider(client: strict).credentials() }
        #expect(e.kind == .failed && e.message.contains("IMDSv1 is disabled"))
    }

    @Test func expiredTokenIsRenewedOnce() throws {
        let tokens = Mutex(0)
        let t = ScriptedTransport { req, _ in
            if req.method == "PUT" { let n = tokens.withLock { $0 += 1; return $0 }; return .init(status: 200, body: "T\(n)") }
            // Only the second token is accepted (IMDS restarted).
            guard req.header("X-aws-ec2-metadata-token") == "T2" else { return .init(status: 401, body: "") }
            return req.url.path.hasSuffix("/") ? .init(status: 200, body: "r") : .init(status: 200, body: Self.doc)
        }
        let client = IMDSClient(endpoint: URLParts("http://127.0.0.1:1")!, transport: t)
        #expect(try IMDSCredentialProvider(client: client).credentials().accessKeyId == "ASIAIMDS")
        #expect(tokens.withLock { $0 } == 2)
    }

    /// The role list split on its first line break as bytes: "\r\n" is one
    /// Character, equal to neither "\n" nor "\r", and the role kept its CR LF.
    @Test func aRoleListWithCRLFNamesItsFirstRole() throws {
        let t = ScriptedTransport { req, _ in
            if req.method == "PUT" { return .init(status: 200, body: "T") }
            switch req.url.path {
            case "/latest/meta-data/iam/security-credentials/": return .init(status: 200, body: "my-role\r\nother\r\n")
            case "/latest/meta-data/iam/security-credentials/my-role": return .init(status: 200, body: Self.doc)
            default: return .init(status: 404, body: "")
            }
        }
        let client = IMDSClient(endpoint: URLParts("http://169.254.169.254")!, transport: t)
        let c = try IMDSCredentialProvider(client: client).credentials()
        #expect(c.accessKeyId == "ASIAIMDS" && c.source == "instance role my-role")
    }

    @Test func unreachableOrNoRoleIsNotConfigured() {
        let down = ScriptedTransport { (_, _) throws(TransportError) -> ScriptedTransport.Answer in throw TransportError(.connect, "no route") }
        let a = IMDSClient(endpoint: URLParts("http://169.254.169.254")!, transport: down)
        let e = credentialError { try IMDSCredentialProvider(client: a).credentials() }
        #expect(e.kind == .notConfigured)
        #expect(a.region() == nil)
        let b = IMDSClient(endpoint: URLParts("http://169.254.169.254")!, transport: Self.imds(noRole: true))
        let e2 = credentialError { try IMDSCredentialProvider(client: b).credentials() }
        #expect(e2.kind == .notConfigured && e2.message.contains("no IAM role"))
    }

    @Test func configurationFromEnvironment() throws {
        let t = ScriptedTransport { _, _ in .init(status: 500, body: "") }
        #expect(try IMDSClient.configured(environment: Environment(["AWS_EC2_METADATA_DISABLED": "true"]), profile: nil, transport: t) == nil)
        let c = try #require(try IMDSClient.configured(environment: Environment([
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:8111/", "AWS_METADATA_SERVICE_TIMEOUT": "2",
            "AWS_METADATA_SERVICE_NUM_ATTEMPTS": "3"]), profile: nil, transport: t))
        #expect(c.endpoint.hostHeader == "127.0.0.1:8111" && c.timeout == 2 && c.attempts == 3)
        let v6 = try #require(try IMDSClient.configured(environment: Environment(["AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv6"]),
                                                         profile: nil, transport: t))
        #expect(v6.endpoint.host == "[fd00:ec2::254]")
    }
}

@Suite struct ChainTests {
    @Test func orderAndExplicitProfile() throws {
        let dir = TempDir()
        let cfg = dir.write("config", "[default]\naws_access_key_id = PROFILEKEY\naws_secret_access_key = p\n[profile other]\naws_access_key_id = OTHERKEY\naws_secret_access_key = o\n")
        let files = try SharedConfigFiles.load(environment: Environment(["AWS_CONFIG_FILE": cfg, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"]))
        let env = Environment(["AWS_ACCESS_KEY_ID": "ENVKEY", "AWS_SECRET_ACCESS_KEY": "e", "AWS_EC2_METADATA_DISABLED": "true"])
        let t = ScriptedTransport { _, _ in .init(status: 500, body: "") }
        func first(_ profile: String, explicit: Bool, _ env: Environment) throws -> AWSCredentials {
            try CredentialProviderChain(DefaultCredentialChain.providers(.init(
                environment: env, config: files, profile: profile, explicitProfile: explicit, region: "eu-west-1",
                transport: t, imds: nil))).credentials()
        }
        #expect(try first("default", explicit: false, env).accessKeyId == "ENVKEY")
        // AWS_PROFILE keeps the environment keys first; -o profile= skips them.
        #expect(try first("other", explicit: false, env).accessKeyId == "ENVKEY")
        #expect(try first("other", explicit: true, env).accessKeyId == "OTHERKEY")
        #expect(try first("default", explicit: false, Environment([:])).accessKeyId == "PROFILEKEY")

        let names = DefaultCredentialChain.providers(.init(
            environment: Environment(["AWS_WEB_IDENTITY_TOKEN_FILE": "/t", "AWS_ROLE_ARN": "arn:r"]), config: files, profile: "default",
            explicitProfile: false, region: "eu-west-1", transport: t,
            imds: IMDSClient(endpoint: URLParts("http://169.254.169.254")!, transport: t))).map(\.name)
        #expect(names == ["environment", "web identity (environment)", "profile default", "container credentials", "instance metadata (IMDS)"])
        // Container credentials configured: IMDS is not consulted.
        let ecs = DefaultCredentialChain.providers(.init(
            environment: Environment(["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/x"]), config: files, profile: "default",
            explicitProfile: true, region: nil, transport: t,
            imds: IMDSClient(endpoint: URLParts("http://169.254.169.254")!, transport: t))).map(\.name)
        #expect(ecs == ["profile default", "container credentials"])
    }

    @Test func notConfiguredPassesFailedStopsAndTheWinnerSticks() throws {
        let a = CountingProvider("a") { _ throws(CredentialError) in throw .notConfigured("nothing here") }
        let b = CountingProvider("b") { n in creds("B\(n)") }
        let c = CountingProvider("c") { n in creds("C\(n)") }
        let chain = CredentialProviderChain([a, b, c])
        #expect(try chain.credentials().accessKeyId == "B1")
        #expect(try chain.credentials().accessKeyId == "B2")
        #expect(a.count == 1 && c.count == 0)
        #expect(chain.chosenProvider?.name == "b")

        let broken = CountingProvider("broken") { _ throws(CredentialError) in throw .failed("bad config") }
        let stop = CredentialProviderChain([a, broken, c])
        let e = credentialError { try stop.credentials() }
        #expect(e.kind == .failed && e.message == "broken: bad config")
        #expect(c.count == 0)

        let none = CredentialProviderChain([a, a])
        let e2 = credentialError { try none.credentials() }
        #expect(e2.kind == .notConfigured && e2.message == "a: nothing here; a: nothing here")
    }
}

@Suite struct SharedCredentialsSecretTests {
    @Test func secretValuesNeverBecomeProfileStrings() throws {
        let dir = "/tmp/kmsfs-sharedcfg-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(dir, 0o700)
        defer { unlink(dir + "/credentials"); rmdir(dir) }
        let text = "[default]\r\naws_access_key_id = AKIDEXAMPLE\r\nAWS_Secret_Access_Key=  s3cr3t/with=equals \r\naws_session_token=TOKEN123\n[other]\naws_secret_access_key = second\n"
            + "[colon]\naws_access_key_id: AKIDCOLON\naws_secret_access_key: colon-secret\n"
            + "[indented]\n  aws_secret_access_key = indented-secret\naws_access_key_id = AKIDINDENT\n"
        let fd = open(dir + "/credentials", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        _ = text.withCString { write(fd, $0, strlen($0)) }
        close(fd)
        let files = try SharedConfigFiles.load(environment: Environment(["AWS_SHARED_CREDENTIALS_FILE": dir + "/credentials",
                                                                         "AWS_CONFIG_FILE": dir + "/none", "HOME": dir]))
        let p = try #require(files.profile("default"))
        #expect(p["aws_access_key_id"] == "AKIDEXAMPLE")
        let secret = try #require(p["aws_secret_access_key"])
        let token = try #require(p["aws_session_token"])
        #expect(secret.hasPrefix(SharedConfigFiles.secretMarker) && token.hasPrefix(SharedConfigFiles.secretMarker))
        #expect(try files.secret(secret).withUnsafeBytes { Array($0) } == Array("s3cr3t/with=equals".utf8))
        #expect(try files.secret(token).withUnsafeBytes { Array($0) } == Array("TOKEN123".utf8))
        let other = try #require(files.profile("other")?["aws_secret_access_key"])
        #expect(try files.secret(other).withUnsafeBytes { Array($0) } == Array("second".utf8))
        // "key: value" and a setting indented under its header are read as
        // settings by the INI parser: their secrets are taken out too.
        for (profile, expected) in [("colon", "colon-secret"), ("indented", "indented-secret")] {
            let v = try #require(files.profile(profile)?["aws_secret_access_key"])
            #expect(v.hasPrefix(SharedConfigFiles.secretMarker), "\(profile)")
            #expect(try files.secret(v).withUnsafeBytes { Array($0) } == Array(expected.utf8))
        }
        // A value given as text (tests, parse(config:credentials:)) is copied in.
        #expect(try files.secret("plain").withUnsafeBytes { Array($0) } == Array("plain".utf8))
    }

    /// A secret's value continued on indented lines (the INI parser joins
    /// them to the value), and a file whose lines end in a lone CR: no part
    /// of a secret stays in any profile's text.
    @Test func noPartOfASecretStaysInTheText() throws {
        let dir = "/tmp/kmsfs-sharedcfg-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(dir, 0o700)
        defer { unlink(dir + "/credentials"); unlink(dir + "/config"); rmdir(dir) }
        let credentials = "[cont]\naws_access_key_id = AKIDCONT\naws_secret_access_key = first-part\n  cont-secret-1\n\n# note\n\tcont-secret-2\n"
            + "region_after = eu-west-1\n[next]\naws_access_key_id = AKIDNEXT\n"
        let config = "[profile cr]\raws_access_key_id = AKIDCR\raws_secret_access_key = cr-secret\r"
        for (name, text) in [("credentials", credentials), ("config", config)] {
            let fd = open(dir + "/" + name, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            _ = text.withCString { write(fd, $0, strlen($0)) }
            close(fd)
        }
        let files = try SharedConfigFiles.load(environment: Environment(["AWS_SHARED_CREDENTIALS_FILE": dir + "/credentials",
                                                                         "AWS_CONFIG_FILE": dir + "/config", "HOME": dir]))
        let text = files.profiles.values.flatMap { $0.values.map { "\($0.key)=\($0.value)" } }.joined(separator: "\n")
        for part in ["first-part", "cont-secret-1", "cont-secret-2", "cr-secret"] {
            #expect(!text.contains(part), "\(part) is in the profiles' text")
        }
        let cont = try #require(files.profile("cont"))
        #expect(cont["aws_access_key_id"] == "AKIDCONT" && cont["region_after"] == "eu-west-1")
        #expect(files.profile("next")?["aws_access_key_id"] == "AKIDNEXT")
    }
}
