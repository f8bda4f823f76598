import Testing
import KmsfsKit
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The option table drives the parser, the remount check and the mount
/// helper's list of options it drops; these hold the last two to it.
@Suite struct MountOptionTableTests {
    /// The repository's root, from this file's path.
    static let root: String = {
        var p = #filePath
        for _ in 0..<3 { p = String(p[..<p.lastIndex(of: "/")!]) }
        return p
    }()

    @Test func theMountHelperDropsExactlyTheTablesFstabOptions() throws {
        let helper = try String(contentsOfFile: MountOptionTableTests.root + "/mount-helper/mount.kmsfs", encoding: .utf8)
        // keep_option's first case: the options it drops.
        let body = helper[helper.range(of: "keep_option() {")!.upperBound...]
        let line = body.split(separator: "\n").first { $0.contains("_netdev") }!
        let pattern = line.split(separator: ")").first!
        let dropped = Set(pattern.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) })
        // '' (an empty item) and the x-* and comment=VALUE forms are the helper's own patterns.
        let expected = Set(MountOptions.helperDroppedOptions.filter { $0 != "comment" }) .union(["''", "comment=*", "x-*"])
        #expect(dropped == expected)
        // And kmsfs itself drops each of them when given directly.
        for name in MountOptions.helperDroppedOptions {
            #expect(try MountOptions.parse([name]).ignored == [name])
        }
    }

    @Test func everySpellingParsesOrIsRefusedWithOneLineNotAsUnknown() {
        for name in MountOptions.optionSpellings {
            do { _ = try MountOptions.parse([name]) } catch {
                #expect(!error.message.hasPrefix("unknown option"), "\(name): \(error.message)")
                #expect(!error.message.contains("\n"))
            }
        }
        #expect { _ = try MountOptions.parse(["no_such_option"]) } throws: { "\($0)".hasPrefix("unknown option 'no_such_option'") }
        #expect { _ = try MountOptions.parse(["ro=1"]) } throws: { "\($0)".hasPrefix("unknown option 'ro=1'") }
    }

    @Test func aRemountMayChangeLiveOptionsButNotMountOnlyOnes() throws {
        let (_, live) = try MountOptions.remounted(["allow_uid=1,ttl=5m"], with: ["allow_user=2,ttl=1h"])
        #expect(live.allowUsers == ["2"] && live.ttl == 3600)
        for (from, to, name) in [("region=eu-west-1", "region=us-east-1", "region"),
                                 ("max_attempts=3", "retries=4", "retries"),
                                 ("exec", "noexec", "exec"),
                                 ("kms_context=a=b", "context=a=c", "context"),
                                 ("audit=syslog", "audit=off", "audit")] {
            #expect { _ = try MountOptions.remounted([from], with: [to]) } throws: {
                "\($0)" == "option '\(name)' cannot change on a live mount (nothing was changed); unmount and mount again to change it"
            }
        }
    }
}
