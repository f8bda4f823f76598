import Testing
@testable import KmsfsKit
import AWS

@Suite struct MountOptionsTests {
    /// ',', '=' and ':' are found as scalars, as libfuse finds them in the
    /// same strings (on bytes): with a combining mark after it, each is one
    /// Character, which a Character search passes over.
    @Test func separatorsAreScalarsNotCharacters() throws {
        #expect { try MountOptions.parse(["ttl=5,\u{301}x"]) } throws: { error in
            "\(error)" == "unknown option '\u{301}x' (see kmsfs --help or man 8 kmsfs)"
        }
        let o = try MountOptions.parse(["context=a=\u{301}b=c,allow_uid=0:\u{301}1"])
        #expect(o.requiredContext.map(\.key) == ["a"])
        #expect(o.requiredContext.map(\.value) == ["\u{301}b=c"])
        #expect(o.allowUsers == ["0", "\u{301}1"])
    }

    /// A mount with no access list admits root alone: the daemon says so
    /// at mount (and when a remount empties the list), and any one of the
    /// four ways to admit someone silences it.
    @Test func aMountThatAdmitsRootAloneSaysSo() throws {
        let none = try #require(Daemon.rootOnlyNotice(try MountOptions.parse(["ttl=5"])))
        #expect(none.hasPrefix("no allow_uid=, allow_gid=, allow_unit= or policy=: only root may open these files"))
        for admitting in ["allow_uid=0", "allow_gid=0", "allow_unit=nginx.service"] {
            #expect(Daemon.rootOnlyNotice(try MountOptions.parse([admitting])) == nil, "\(admitting)")
            #expect(Daemon.rootOnlyNotice(try MountOptions.parse([admitting, "policy=/etc/kmsfs/policy"])) == nil, "\(admitting)")
        }
        // A policy alone: the paths none of its rules match admit root
        // alone, which the guide's "root needs to be named" would not say.
        let unmatched = try #require(Daemon.rootOnlyNotice(try MountOptions.parse(["policy=/etc/kmsfs/policy"])))
        #expect(unmatched.hasPrefix("policy= and no allow_uid=, allow_gid= or allow_unit=: a path no policy rule matches may be opened by root only"))
    }

    /// A backslash at the end of an argument escapes nothing: it was
    /// dropped, so `context=dir=C:\` required `C:`. Now refused, and an
    /// escaped one (or one inside a value) still reads.
    @Test func aBackslashThatEscapesNothingIsRefused() throws {
        #expect { try MountOptions.parse(["allow_uid=0", "context=dir=C:\\"]) } throws: { error in
            "\(error)" == "option 'context=dir=C:\\' ends in a backslash that escapes nothing; write \\\\ for a backslash"
        }
        #expect(throws: (any Error).self) { try MountOptions.parse(["context=a=b\\\\\\"]) }
        let o = try MountOptions.parse(["context=dir=C:\\\\,context=b=x\\y\\,z"])
        #expect(o.requiredContext.map(\.value) == ["C:\\", "xy,z"])
    }

    /// mount(8) keeps `opt="a,b"` together (libmount splits only outside
    /// quotes, and reorders options, which a `\,` does not survive): a
    /// comma between double quotes is part of the value, the quotes are
    /// not, `\"` is a quote, and one left open is refused.
    @Test func aCommaBetweenDoubleQuotesIsPartOfTheValue() throws {
        let o = try MountOptions.parse(["allow_uid=0,context=\"k=v,ro\",require_binding,context=q=a\\\"b"])
        #expect(o.requiredContext.map(\.value) == ["v,ro", "a\"b"])
        #expect(o.requireBinding)
        #expect { try MountOptions.parse(["allow_uid=0,context=\"k=v,ro"]) } throws: { error in
            "\(error)" == "option 'context=k=v,ro' has a double quote that is not closed; close it, or write \\\" for a quote"
        }
        // A remount sent straight to the control socket is held to the same.
        #expect(throws: (any Error).self) { try MountOptions.remounted(["allow_uid=0"], with: ["allow_uid=\"alice"]) }
        // What a remount writes back parses to the same.
        let item = "context=k=\"a,b\"\\"
        #expect(MountOptions.splitOptions(MountOptions.escapeOption(item)) == [item])
    }

    @Test func parsesTheDocumentedOptions() throws {
        let o = try MountOptions.parse(["allow_uid=www-data:1001,allow_gid=ssl-cert,mode=0440,ttl=5m",
                                        "region=eu-west-1,endpoint=http://127.0.0.1:4566,context=env=prod,audit=/var/log/kmsfs.audit"])
        #expect(o.allowUsers == ["www-data", "1001"])
        #expect(o.allowGroups == ["ssl-cert"])
        #expect(o.mode == 0o440)
        #expect(o.ttl == 300)
        #expect(o.region == "eu-west-1")
        #expect(o.endpoint == "http://127.0.0.1:4566")
        #expect(o.requiredContext.count == 1 && o.requiredContext[0].key == "env" && o.requiredContext[0].value == "prod")
        #expect(o.audit == .file("/var/log/kmsfs.audit"))
    }

    @Test func aListOfWhoMayReadIsTakenOnlyWhenGivenOnce() throws {
        // fstab's allow_uid=bob, then `mount -o allow_uid=alice`: mount(8)
        // sends both; adding them up would admit bob as well, unasked.
        #expect {
            try MountOptions.parse(["allow_uid=bob,ttl=5m", "allow_uid=alice"])
        } throws: { error in
            "\(error)".hasPrefix("allow_uid= is given more than once (allow_uid=bob, allow_uid=alice): ") && "\(error)".contains("nothing was mounted")
        }
        #expect(throws: OptionError.self) { try MountOptions.parse(["allow_group=3,allow_gid=4"]) }
        #expect(throws: OptionError.self) { try MountOptions.parse(["allow_unit=a.service,allow_units=b.service"]) }
        // The same list twice is one list; one list of several is the way.
        #expect(try MountOptions.parse(["allow_uid=1:2", "allow_uid=1:2"]).allowUsers == ["1", "2", "1", "2"])
        #expect(try MountOptions.parse(["allow_uid=bob:alice"]).allowUsers == ["bob", "alice"])
    }

    @Test func aRemountReplacesTheOptionsItNamesAndKeepsTheOthers() throws {
        #expect(MountOptions.isRemount(["rw,remount,allow_uid=1"]))
        #expect(!MountOptions.isRemount(["allow_uid=1"]))
        // mount(8) adds the FUSE kernel options from mountinfo: not ours.
        #expect(MountOptions.remountChanges(["rw,remount,user_id=0,group_id=0,rootmode=40000,allow_other,ttl=1", "context=a=b\\,c"])
                == "rw,allow_other,ttl=1,context=a=b\\,c")
        let current = ["allow_uid=1:2,allow_gid=3,ttl=5m,region=eu-west-1,context=app=a\\,b"]
        let (raw, o) = try MountOptions.remounted(current, with: ["remount,allow_user=4,mode=0400,rw"])
        #expect(o.allowUsers == ["4"])
        #expect(o.allowGroups == ["3"])
        #expect(o.ttl == 300 && o.mode == 0o400 && o.region == "eu-west-1")
        #expect(o.requiredContext.map { "\($0.key)=\($0.value)" } == ["app=a,b"])
        // What it returns parses back to the same (commas stay escaped).
        let again = try MountOptions.remounted(raw, with: [])
        #expect(again.options.allowUsers == ["4"] && again.options.requiredContext.first?.value == "a,b")
        // The same value for a fixed option is accepted (mount(8) passes all of fstab's).
        #expect(try MountOptions.remounted(current, with: ["remount,region=eu-west-1,ttl=1h"]).options.ttl == 3600)
        // mount(8) sends the fstab line's options, then the command line's:
        // two lists of who may read would add up (keeping 2). Refused; the
        // same list twice is one list.
        #expect(throws: OptionError.self) { try MountOptions.remounted(current, with: ["remount,allow_uid=1:2,ttl=5m,allow_uid=1"]) }
        #expect(throws: OptionError.self) { try MountOptions.remounted(current, with: ["remount,allow_group=3,allow_gid=4"]) }
        #expect(try MountOptions.remounted(current, with: ["remount,allow_uid=1,allow_uid=1"]).options.allowUsers == ["1", "1"])
    }

    @Test(arguments: [
        ("region=us-east-1", "region"), ("endpoint=http://127.0.0.1:1", "endpoint"), ("threads=3", "threads"),
        ("audit=off", "audit"), ("kms_context=app=b", "context"), ("require_binding", "require_binding"),
        ("require_commitment", "require_commitment"),
        ("no_memfd_secret", "no_memfd_secret"), ("retries=5", "retries"), ("kms_rate=5", "kms_rate"),
        ("io_uring", "io_uring"),
    ])
    func aRemountRefusesToChangeWhatOnlyAMountSets(change: String, name: String) {
        #expect(throws: OptionError.self) { try MountOptions.remounted(["region=eu-west-1,context=app=a"], with: ["remount," + change]) }
        do {
            _ = try MountOptions.remounted(["region=eu-west-1,context=app=a"], with: ["remount," + change])
        } catch {
            #expect(error.message.hasPrefix("option '\(name)' cannot change on a live mount"))
        }
    }

    @Test func kmsRateIsACeilingInRequestsASecond() throws {
        #expect(try MountOptions.parse(["kms_rate=2.5"]).kmsRate == 2.5)
        #expect(try MountOptions.parse(["kms_rate=100000"]).kmsRate == 100_000)
        #expect(try MountOptions.parse(["kms_rate=0"]).kmsRate == nil)
        // Pacing is opt-in: a number or adaptive turns it on, 0 or nothing leaves it off.
        #expect(try MountOptions.parse([]).kmsPacing == false)
        #expect(try MountOptions.parse(["kms_rate=0"]).kmsPacing == false)
        #expect(try MountOptions.parse(["kms_rate=2.5"]).kmsPacing == true)
        let adaptive = try MountOptions.parse(["kms_rate=adaptive"])
        #expect(adaptive.kmsPacing == true && adaptive.kmsRate == nil)
        #expect(try MountOptions.parse(["allow_uid=1"]).kmsRate == nil)
    }

    @Test func ioUringIsAFlagAndOffByDefault() throws {
        #expect(try MountOptions.parse([]).ioUring == false)
        #expect(try MountOptions.parse(["io_uring"]).ioUring == true)
        #expect(throws: OptionError.self) { try MountOptions.parse(["io_uring=1"]) }
    }

    @Test func kmsContextIsTheFstabSpellingOfContext() throws {
        let o = try MountOptions.parse(["kms_context=app=web,context=env=prod"])
        #expect(o.requiredContext.map { "\($0.key)=\($0.value)" } == ["app=web", "env=prod"])
    }

    @Test func dropsFstabOnlyOptions() throws {
        let o = try MountOptions.parse(["rw,_netdev,nofail,auto,noauto,user,users,x-systemd.requires=network-online.target,defaults"])
        #expect(o.ignored.count == 9)
    }

    @Test(arguments: [
        ("ttl=soon", "ttl=soon"),
        ("mode=0644", "no write bits"),
        ("mode=9", "octal"),
        ("bogus", "unknown option 'bogus'"),
        ("region", "needs a value"),
        ("allow_uid=a::b", "empty entry"),
        ("prefetch=yes", "takes no value"),
        ("max_size=lots", "size in bytes"),
        ("endpoint=not a url", "expected a URL"),
        ("kms_rate=fast", "KMS requests a second from 0.1 to 100000"),
        ("kms_rate=5m", "KMS requests a second"),
        ("kms_rate=0.05", "KMS requests a second"),
        ("kms_rate=100001", "KMS requests a second"),
        ("kms_rate=-1", "KMS requests a second"),
        ("kms_rate=1e3", "KMS requests a second"),
    ])
    func rejectsBadOptionsWithOneLine(_ raw: String, _ needle: String) {
        do {
            _ = try MountOptions.parse([raw])
            Issue.record("\(raw) should be rejected")
        } catch {
            #expect(error.message.contains(needle), "\(error.message)")
            #expect(!error.message.contains("\n"))
        }
    }

    @Test func sizesAndDurations() {
        #expect(MountOptions.parseSize("64M") == 64 << 20)
        #expect(MountOptions.parseSize("1GiB") == 1 << 30)
        #expect(MountOptions.parseSize("4096") == 4096)
        #expect(MountOptions.parseDuration("1h") == 3600)
        #expect(MountOptions.parseDuration("0") == 0)
        #expect(MountOptions.parseDuration("-1") == nil)
    }

    @Test func regionAndEndpointPrecedence() throws {
        let env = Environment(["AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-east-1",
                               "AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_KMS": "http://b:2"])
        let s = try AWSSettings.resolve(region: nil, endpoint: nil, profile: nil, caBundle: nil, maxAttempts: nil, timeout: nil, environment: env)
        #expect(s.region == "eu-west-1")
        #expect(s.endpoint.hostHeader == "b:2")
        let o = try AWSSettings.resolve(region: "ap-south-1", endpoint: "http://c:3", profile: nil, caBundle: nil, maxAttempts: nil, timeout: nil, environment: env)
        #expect(o.region == "ap-south-1" && o.endpoint.hostHeader == "c:3")
        let d = try AWSSettings.resolve(region: "eu-central-1", endpoint: nil, profile: nil, caBundle: nil, maxAttempts: nil, timeout: nil, environment: Environment([:]))
        #expect(d.endpoint.description == "https://kms.eu-central-1.amazonaws.com/")
    }
}
