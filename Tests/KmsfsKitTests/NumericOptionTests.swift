import Testing
import KmsfsKit

/// Every numeric option has a documented range (man 8 kmsfs, "Numeric
/// options") and anything outside it, or not a plain decimal number, is
/// refused with one line: at mount and on a live remount. `ttl=1e30` once
/// trapped the expiry thread (`Int(Double)` out of range).
@Suite struct NumericOptionTests {
    /// What no numeric option may accept.
    static let junk = ["1e30", "1e3", "nan", "NaN", "inf", "-inf", "infinity", "-1", "+5", " 5", "5 ", "0x10", "0x1p4",
                       "99999999999999999999999", "1..2", ".5", "5.", "", "5ss", "1h1", "٣", "5\u{0}"]

    static let durations = ["ttl", "stale", "stale_window", "timeout", "kms_timeout"]
    static let sizes = ["max_size", "cache_max", "cache_size"]
    static let counts = ["threads", "max_threads", "retries", "max_attempts"]
    static let modes = ["mode", "file_mode", "dir_mode"]

    static func refusal(_ item: String) -> String? {
        do {
            _ = try MountOptions.parse([item])
            return nil
        } catch {
            return error.message
        }
    }

    @Test(arguments: durations + sizes + counts + modes)
    func junkIsRefusedWithOneLine(_ name: String) {
        for v in NumericOptionTests.junk {
            guard let m = NumericOptionTests.refusal("\(name)=\(v)") else {
                Issue.record("\(name)=\(v) was accepted")
                continue
            }
            #expect(!m.contains("\n") && !m.contains("\r"), "\(m)")
            #expect(m.hasPrefix("option '\(name)"), "\(m)")
        }
    }

    /// (option, lowest accepted, highest accepted, just below, just above)
    @Test(arguments: [
        ("ttl", "1", "365d", "0.5", "31536001"),
        ("stale", "0", "365d", nil, "366d"),
        ("timeout", "1", "1h", "0.999", "3601"),
        ("max_size", "1", "1G", "0", "1025M"),
        ("cache_max", "1", "64G", "0", "65G"),
        ("threads", "1", "1024", "0", "1025"),
        ("retries", "1", "20", "0", "21"),
        ("mode", "0", "0555", nil, "010000"),
        ("dir_mode", "0", "0555", nil, "010000"),
    ] as [(String, String, String, String?, String)])
    func eachRangeIsEnforcedAtBothEnds(_ name: String, _ low: String, _ high: String, _ below: String?, _ above: String) {
        #expect(NumericOptionTests.refusal("\(name)=\(low)") == nil, "\(name)=\(low)")
        #expect(NumericOptionTests.refusal("\(name)=\(high)") == nil, "\(name)=\(high)")
        if let below {
            let m = NumericOptionTests.refusal("\(name)=\(below)")
            #expect(m != nil, "\(name)=\(below) accepted")
        }
        let m = NumericOptionTests.refusal("\(name)=\(above)")
        #expect(m != nil, "\(name)=\(above) accepted")
        if let m { #expect(!m.contains("\n")) }
    }

    @Test func refusalsNameTheRange() {
        #expect(NumericOptionTests.refusal("ttl=1e30") == "option 'ttl=1e30': expected seconds from 1 to 365d (or 0: keep until unmount), such as 300, 5m, 1h")
        #expect(NumericOptionTests.refusal("timeout=2h") == "option 'timeout=2h': expected seconds from 1 to 1h, such as 300, 5m, 1h")
        #expect(NumericOptionTests.refusal("max_size=2G") == "option 'max_size=2G': expected a size in bytes from 1 to 1G, such as 65536, 64K, 64M")
        #expect(NumericOptionTests.refusal("threads=+5") == "option 'threads=+5': expected a whole number from 1 to 1024")
    }

    @Test func ttlZeroMeansNoTtl() throws {
        #expect(try MountOptions.parse(["ttl=0"]).ttl == nil)
        #expect(try MountOptions.parse(["ttl=0s"]).ttl == nil)
        #expect(try MountOptions.parse(["ttl=1.5m"]).ttl == 90)
        #expect(try MountOptions.parse(["ttl=2H"]).ttl == 7200)
        #expect(try MountOptions.parse(["stale=0"]).staleWindow == 0)
        #expect(try MountOptions.parse(["timeout=2.5"]).kmsTimeout == 2.5)
        #expect(try MountOptions.parse(["cache_max=8K"]).cacheMaxBytes == 8192)
        #expect(try MountOptions.parse(["max_size=64MiB"]).maxCiphertextBytes == 64 << 20)
        #expect(try MountOptions.parse(["mode=0440"]).mode == 0o440)
    }

    @Test func strictParsers() {
        #expect(MountOptions.parseDuration("1e30") == nil)
        #expect(MountOptions.parseDuration("0x10") == nil)
        #expect(MountOptions.parseDuration("nan") == nil)
        #expect(MountOptions.parseDuration("inf") == nil)
        #expect((MountOptions.parseDuration("999999999999d") ?? 0) > 8e16)   // finite: the range refuses it
        #expect(MountOptions.parseDuration("9999999999999") == nil)
        #expect(MountOptions.parseDuration("0.000000001") == 0.000000001)
        #expect(MountOptions.parseSize("9223372036854775807") == Int.max)
        #expect(MountOptions.parseSize("9223372036854775807K") == nil)   // overflows: nil, no trap
        #expect(MountOptions.parseSize("8388608T") == nil)
        #expect(MountOptions.parseSize("-1") == nil)
        #expect(MountOptions.parseSize("+1") == nil)
        #expect(MountOptions.parseSize("1T") == 1 << 40)
        #expect(MountOptions.parseSize("K") == nil)
    }

    /// The same ranges hold for `mount -o remount`: a live daemon refuses
    /// the change whole and keeps its options.
    @Test(arguments: ["ttl=1e30", "stale=inf", "cache_max=99999999999999999999", "max_size=0x100", "timeout=nan", "mode=+0440"])
    func aRemountRefusesOutOfRangeValues(_ change: String) {
        #expect(throws: OptionError.self) { try MountOptions.remounted(["allow_uid=0,ttl=5m"], with: ["remount," + change]) }
    }
}
