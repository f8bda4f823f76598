import System
import Testing
@testable import AWS
#if canImport(Glibc)
import Glibc
#endif

/// `credential_process` runs as the daemon's user, root as a rule: the
/// program, the directories and links on its way, and the config file
/// that names it must be safe from other users, as an `on_change=`
/// program is. A reviewer had root run a script from a world-writable
/// config file, and a helper found first in a user's directory on PATH.
@Suite struct CredentialProcessTrustTests {
    static let json = #"{"Version": 1, "AccessKeyId": "PROCKEY", "SecretAccessKey": "s"}"#

    /// A helper that leaves `marker` behind when it runs.
    static func helper(in dir: String, name: String = "helper", marker: String, mode: mode_t = 0o755) -> String {
        let p = dir + "/" + name
        let fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, mode)
        let text = "#!/bin/sh\ntouch \(marker)\nprintf '%s' '\(json)'\n"
        _ = text.withCString { write(fd, $0, strlen($0)) }
        close(fd)
        chmod(p, mode)
        return p
    }

    @Test func aProgramAnotherUserMayChangeIsNotRun() throws {
        guard geteuid() == 0 else { return }   // chown needs root (make test runs as root)
        let dir = TempDir()
        let marker = dir.path + "/ran"
        let open = dir.path + "/open"
        mkdir(open, 0o777)
        chmod(open, 0o777)   // not sticky: anyone may replace what is in it
        let cases: [(String, String)] = [
            (Self.helper(in: open, marker: marker), "may be written by anyone"),
            (Self.helper(in: dir.path, name: "writable", marker: marker, mode: 0o777), "may be written by anyone"),
            ({ let p = Self.helper(in: dir.path, name: "theirs", marker: marker); chown(p, 65534, 65534); return p }(), "belongs to uid 65534"),
        ]
        for (program, needle) in cases {
            let p = ProcessCredentialProvider(command: program, profile: "p", environment: Environment([:]))
            let e = credentialError { try p.credentials() }
            #expect(e.message.contains("not running it") && e.message.contains(needle), "\(e.message)")
            #expect(access(marker, F_OK) != 0, "\(program) ran")
        }
        // The same program where only root may change it runs.
        let good = Self.helper(in: dir.path, name: "good", marker: marker)
        #expect(try ProcessCredentialProvider(command: good, profile: "p", environment: Environment([:])).credentials().accessKeyId == "PROCKEY")
        #expect(access(marker, F_OK) == 0)
    }

    @Test func aBareNameIsLookedUpInPATHsAbsoluteDirectoriesOnly() throws {
        let dir = TempDir()
        let marker = dir.path + "/ran"
        _ = Self.helper(in: dir.path, name: "kmsfs-test-cred-helper", marker: marker)
        // Relative and empty entries (the working directory) are skipped.
        let found = ProcessCredentialProvider(command: "kmsfs-test-cred-helper --flag", profile: "p",
                                              environment: Environment(["PATH": "relative::bin:" + dir.path]))
        #expect(try found.credentials().accessKeyId == "PROCKEY")
        unlink(marker)
        // The helper's directory named relative to the working directory
        // (../../tmp/...), as a PATH entry: skipped.
        var cwd = [UInt8](repeating: 0, count: 4096)
        #expect(cwd.withUnsafeMutableBufferPointer { b in
            b.withMemoryRebound(to: CChar.self) { getcwd($0.baseAddress, $0.count) } } != nil)
        let depth = String(decoding: cwd.prefix { $0 != 0 }, as: UTF8.self).split(separator: "/").count
        let relative = String(repeating: "../", count: depth) + String(dir.path.dropFirst())
        #expect(access(relative + "/kmsfs-test-cred-helper", X_OK) == 0)
        let none = ProcessCredentialProvider(command: "kmsfs-test-cred-helper", profile: "p",
                                             environment: Environment(["PATH": relative + ":.:"]))
        let e = credentialError { try none.credentials() }
        #expect(e.message.contains("no kmsfs-test-cred-helper in the absolute directories of PATH"), "\(e.message)")
        #expect(access(marker, F_OK) != 0, "the helper ran from a relative PATH entry")
        // A program named relative to the working directory is refused.
        let rel = ProcessCredentialProvider(command: relative + "/kmsfs-test-cred-helper", profile: "p", environment: Environment([:]))
        let e2 = credentialError { try rel.credentials() }
        #expect(e2.message.contains("give the program's absolute path"), "\(e2.message)")
        // A directory of that name earlier in PATH is passed over.
        let shadow = TempDir()
        mkdir(shadow.path + "/kmsfs-test-cred-helper", 0o755)
        defer { rmdir(shadow.path + "/kmsfs-test-cred-helper") }
        let past = ProcessCredentialProvider(command: "kmsfs-test-cred-helper", profile: "p",
                                             environment: Environment(["PATH": shadow.path + ":" + dir.path]))
        #expect(try past.credentials().accessKeyId == "PROCKEY")
    }

    /// The config file names the program and its arguments: one another
    /// user may change is read (as the AWS CLI reads it), noted, and names
    /// no program to run.
    @Test func aConfigFileOthersMayChangeNamesNoProgramToRun() throws {
        let dir = TempDir()
        let marker = dir.path + "/ran"
        let program = Self.helper(in: dir.path, marker: marker)
        let config = dir.write("config", "[default]\ncredential_process = \(program)\n", mode: 0o600)
        let env = Environment(["AWS_CONFIG_FILE": config, "AWS_SHARED_CREDENTIALS_FILE": dir.path + "/none", "HOME": dir.path])
        func provider() throws -> ProfileCredentialProvider {
            ProfileCredentialProvider(profileName: "default", config: try SharedConfigFiles.load(environment: env), environment: env,
                                      region: "eu-west-1", transport: ScriptedTransport { _, _ in .init(status: 500, body: "") },
                                      imds: nil)
        }
        #expect(try provider().config.untrusted.isEmpty)
        #expect(try provider().credentials().accessKeyId == "PROCKEY")
        unlink(marker)
        chmod(config, 0o666)
        let p = try provider()
        #expect(p.config.untrusted.first?.contains("\(config) may be written by anyone") == true, "\(p.config.untrusted)")
        let e = credentialError { try p.credentials() }
        #expect(e.message.contains("not running its credential_process"), "\(e.message)")
        #expect(access(marker, F_OK) != 0, "the program ran")
    }

    /// Trust is decided on the file read, never on a second look at its
    /// path: another user's pty (which reads as the text they wrote) looked
    /// like "not a regular file, nothing to check", and a file renamed away
    /// after the read was judged by what stood there next.
    @Test func trustIsDecidedOnTheFileRead() throws {
        let dir = TempDir()
        let config = dir.write("config", "[default]\nregion = eu-west-1\n", mode: 0o600)
        var read = stat()
        #expect(stat(config, &read) == 0)
        #expect(SharedConfigFiles.trustProblem(config, read: read) == nil)
        // Replaced after the read, by a file as trusted as the first.
        let other = dir.write("other", "[default]\n", mode: 0o600)
        #expect(rename(other, config) == 0)
        #expect(SharedConfigFiles.trustProblem(config, read: read) == "\(config) was replaced while it was read")
        // A device: /dev/null alone reads as a config file (an empty one).
        var null = stat(), zero = stat()
        #expect(stat("/dev/null", &null) == 0 && stat("/dev/zero", &zero) == 0)
        #expect(SharedConfigFiles.trustProblem(config, read: null) == nil)
        #expect(SharedConfigFiles.trustProblem(config, read: zero) == "\(config) is a device, not a file")
    }

    /// U+0001 starts the marker that stands for a secret taken out of the
    /// files: written into a value, it named the other file's secret key,
    /// sent as a session token to an endpoint of the writer's choosing.
    @Test func aFileHoldingTheMarkersControlCharacterIsRefused() throws {
        let dir = TempDir()
        let config = dir.write("config", "[default]\naws_session_token = \u{1}kmsfs-secret:0\nendpoint_url = http://127.0.0.1:1\n")
        let credentials = dir.write("credentials", "[default]\naws_access_key_id = AKIA\naws_secret_access_key = SECRET\n")
        let env = Environment(["AWS_CONFIG_FILE": config, "AWS_SHARED_CREDENTIALS_FILE": credentials, "HOME": dir.path])
        #expect { try SharedConfigFiles.load(environment: env) } throws: {
            "\($0)" == "\(config): holds the control character U+0001, which no setting may contain; remove it"
        }
    }

    /// An empty aws_session_token is no token, as for the AWS CLI: the
    /// marker that took its place made an empty token, signed for and then
    /// dropped by curl (a signature failure).
    @Test func anEmptySessionTokenIsNoToken() throws {
        let dir = TempDir()
        let credentials = dir.write("credentials", "[default]\naws_access_key_id = AKIA\naws_secret_access_key = SECRET\naws_session_token =\n")
        let env = Environment(["AWS_CONFIG_FILE": dir.path + "/none", "AWS_SHARED_CREDENTIALS_FILE": credentials, "HOME": dir.path])
        let p = ProfileCredentialProvider(profileName: "default", config: try SharedConfigFiles.load(environment: env), environment: env,
                                          region: "eu-west-1", transport: ScriptedTransport { _, _ in .init(status: 500, body: "") },
                                          imds: nil)
        let c = try p.credentials()
        #expect(c.copyOfSecretAccessKey() == "SECRET" && c.copyOfSessionToken() == nil)
        let empty = dir.write("empty", "[default]\naws_access_key_id = AKIA\naws_secret_access_key =\n")
        let env2 = Environment(["AWS_CONFIG_FILE": dir.path + "/none", "AWS_SHARED_CREDENTIALS_FILE": empty, "HOME": dir.path])
        let p2 = ProfileCredentialProvider(profileName: "default", config: try SharedConfigFiles.load(environment: env2), environment: env2,
                                           region: "eu-west-1", transport: ScriptedTransport { _, _ in .init(status: 500, body: "") },
                                           imds: nil)
        #expect(credentialError { try p2.credentials() }.message == "profile 'default' has aws_access_key_id but no aws_secret_access_key")
    }

    /// Lines are read on scalars, as Python reads them and as the secret
    /// extractor cuts them: '#' and a combining mark after it still start a
    /// comment (it was a continuation of credential_process), and a blank
    /// joined to a prepended mark is not trimmed away with the mark (which
    /// made `region\u{600} ` the key `region`).
    @Test func lineShapesAreReadOnScalars() throws {
        let f = try SharedConfigFiles.parse(config: "[default]\ncredential_process = /bin/true\n #\u{301} --evil\nregion\u{600} = x\n[profile\u{301} p]\nregion = eu-west-1\n",
                                            credentials: nil)
        #expect(f.profile("default")?["credential_process"] == "/bin/true")
        #expect(f.profile("default")?["region"] == nil)
        #expect(f.profile("default")?["region\u{600}"] == "x")
        #expect(f.profile("p")?["region"] == "eu-west-1")   // as botocore: starts with "profile", two words
    }
}
