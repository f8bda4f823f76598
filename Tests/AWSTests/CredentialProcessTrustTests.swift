import System
import Testing
import AWS
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
        var cwd = [CChar](repeating: 0, count: 4096)
        _ = getcwd(&cwd, cwd.count)
        let depth = String(cString: cwd).split(separator: "/").count
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
}
