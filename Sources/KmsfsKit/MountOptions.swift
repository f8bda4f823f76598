import SecretFS
import AWS
import KMS

/// A bad `-o` option: one line that says what is wrong and how to mend it.
public struct OptionError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Where audit records go.
public enum AuditDestination: Sendable, Equatable {
    case stderr
    case syslog
    case file(String)
    case off
}

/// Where log lines go.
public enum LogTarget: Sendable, Equatable {
    case stderr
    case syslog
    case file(String)
}

/// The mount options (`-o a,b=c`), parsed and checked but not yet resolved
/// against the system (names stay names until `resolve`).
public struct MountOptions: Sendable {
    public var allowUsers: [String] = []
    public var allowGroups: [String] = []
    /// systemd units whose processes may open files (`allow_unit=`).
    public var allowUnits: [String] = []
    public var uid: String?
    public var gid: String?
    public var mode: UInt32?
    public var dirMode: UInt32?
    public var policyFile: String?
    public var region: String?
    public var endpoint: String?
    public var profile: String?
    /// Seconds after decryption a plaintext is wiped; nil or 0 keeps it.
    public var ttl: Double?
    public var audit: AuditDestination = .stderr
    public var log: LogTarget?
    public var requiredContext: [(key: String, value: String)] = []
    /// Refuse ciphertexts not bound to their path (`kmsfs:path`): raw KMS
    /// blobs and Encryption SDK messages written without `kmsfs encrypt`.
    public var requireBinding = false
    /// Refuse Encryption SDK messages whose algorithm suite has no key
    /// commitment (message format version 1), as aws-encryption-cli does
    /// by default.
    public var requireCommitment = false
    /// `kms_key=KEY[+KEY...]`: the only KMS keys files may be under
    /// (KMSKeyAllowList); empty allows any key the credentials may use.
    public var kmsKeys = KMSKeyAllowList()
    /// `max_encrypted_data_keys=N`: Encryption SDK messages listing more
    /// encrypted data keys are refused before any KMS call.
    public var maxEncryptedDataKeys = EncryptionSDKMessage.defaultMaxEncryptedDataKeys
    public var maxCiphertextBytes = 64 << 20
    public var cacheMaxBytes = 256 << 20
    public var threads = 64
    /// Opens that may wait on KMS at once (`max_inflight=`); the FUSE
    /// workers (`threads=`) never wait on KMS.
    public var maxInflight = 64
    public var prefetch = false
    /// The refresh-ahead window before `ttl` (at most half of it): opens in
    /// it also re-decrypt in the background, and while KMS is unavailable
    /// the last good plaintext is served (logged) until the ttl.
    public var staleWindow: Double = 300
    public var insecureAllowUnlocked = false
    /// Keep plaintext in mlock'ed anonymous memory even where the kernel
    /// offers memfd_secret (for kernels whose secretmem misbehaves).
    public var noMemfdSecret = false
    /// `io_uring`: talk to the kernel through FUSE over io_uring where it
    /// offers that (Linux 6.14+, the fuse module's enable_uring=Y), with
    /// /dev/fuse as the fallback.
    public var ioUring = false
    public var exec = false
    public var maxAttempts: Int?
    /// Seconds one KMS call may take, retries included.
    public var kmsTimeout: Double?
    /// `kms_rate=N`: KMS requests a second this mount never exceeds (its
    /// share of the account's quota); nil: no ceiling.
    public var kmsRate: Double?
    /// `kms_rate=adaptive` or `kms_rate=N`: requests are paced from KMS's
    /// first throttle on (a fleet sharing a quota). Off by default, and
    /// with `kms_rate=0`: throttles are retried with backoff only.
    public var kmsPacing = false
    /// `kms_rate=` as one value (pacing, ceiling), for the remount check.
    var kmsRateSetting: [Double] { [kmsPacing ? 1 : 0, kmsRate ?? 0] }
    public var caBundle: String?
    /// Where systemd's `LoadCredential=ID:PATH` is served (`credential_socket=`).
    public var credentialSocket: String?
    /// Where Prometheus `/metrics` is served (`metrics=`); nil: off.
    public var metrics: MetricsAddress?
    /// Per-secret series in the metrics (`metrics_per_secret`): off by
    /// default, since a mount may hold many names.
    public var metricsPerSecret = false
    /// Units to `systemctl reload-or-restart` when a secret's ciphertext
    /// changes (`reload=UNIT[+UNIT...]`).
    public var reloadUnits: [String] = []
    /// A program run as `PROGRAM PATH...` when secrets change (`on_change=`).
    public var onChange: String?
    /// Seconds without a new change before changes are told (`settle=`).
    public var settle: Double = 2
    /// fstab and VFS options accepted and dropped.
    public var ignored: [String] = []

    public init() {}

    /// Parses every `-o` argument (each a comma-separated list; `\,` is a
    /// literal comma, and so is one between double quotes, as mount(8)
    /// keeps `opt="a,b"` together).
    public static func parse(_ arguments: [String]) throws(OptionError) -> MountOptions {
        var all: [String] = []
        for arg in arguments {
            all += try splitChecked(arg).filter { !$0.isEmpty }
        }
        try refuseRepeatedLists(all, "nothing was mounted. Give the whole list once (allow_uid=a:b)")
        var o = MountOptions()
        for item in all {
            try o.apply(item)
        }
        return o
    }

    /// A list of who may read is taken only when given once (or the same
    /// each time): mount(8) puts the fstab line's options before the
    /// command line's, so `mount -o allow_uid=alice /etc/secrets` on a line
    /// with `allow_uid=bob` sends both, and adding them up would admit bob
    /// too, silently.
    static func refuseRepeatedLists(_ items: [String], _ then: String) throws(OptionError) {
        for list in ["allow_uid", "allow_gid", "allow_unit"] {
            let given = items.filter { canonicalName($0) == list }
            if Set(given).count > 1 {
                throw OptionError("\(list)= is given more than once (\(given.joined(separator: ", "))): mount(8) puts the fstab line's options before the command line's, and the lists would add up; \(then)")
            }
        }
    }

    /// True when the options ask to change a live mount (`-o remount,...`,
    /// as `mount -o remount` passes it to the helper) rather than mount.
    public static func isRemount(_ arguments: [String]) -> Bool {
        arguments.contains { splitOptions($0).contains("remount") }
    }

    /// The options a remount names, as one `-o` argument: without
    /// `remount` itself and without the FUSE kernel options mount(8) adds
    /// from /proc/self/mountinfo (`user_id=`, `rootmode=`, ...).
    public static func remountChanges(_ arguments: [String]) -> String {
        let kernel: Set<String> = ["rootmode", "user_id", "group_id", "max_read", "blksize", "fd"]
        return arguments.flatMap(splitOptions)
            .filter { !$0.isEmpty && $0 != "remount" && !kernel.contains(canonicalName($0)) }
            .map(escapeOption).joined(separator: ",")
    }

    /// The options of a live mount changed by a remount: every option the
    /// remount names replaces all values it had (`allow_uid=a` replaces the
    /// whole list); the others keep theirs. Options that cannot change
    /// while mounted must keep their values, or nothing changes.
    /// Returns the new raw options (one `-o` argument) and their parse.
    public static func remounted(_ current: [String], with changes: [String]) throws(OptionError) -> (raw: [String], options: MountOptions) {
        // A backslash that escapes nothing or an open quote is refused as
        // at mount, not dropped (the control socket takes raw arguments).
        var items: [String] = []
        for arg in changes { items += try splitChecked(arg).filter { !$0.isEmpty && $0 != "remount" } }
        // `mount -o remount,allow_uid=a` on a line with allow_uid=a:b sends
        // both, and the lists would add up, silently keeping b.
        try refuseRepeatedLists(items, "nothing was changed. Give the whole list once: edit the fstab line, then mount -o remount")
        let named = Set(items.map(canonicalName))
        let kept = current.flatMap(splitOptions).filter { !$0.isEmpty && !named.contains(canonicalName($0)) }
        let raw = [(kept + items).map(escapeOption).joined(separator: ",")]
        let old = try parse(current)
        let new = try parse(raw)
        if let fixed = fixedOptionChanged(from: old, to: new) {
            throw OptionError("option '\(fixed)' cannot change on a live mount (nothing was changed); unmount and mount again to change it")
        }
        return (raw, new)
    }

    /// The first option, by name, whose value differs and that only a
    /// mount sets (`OptionScope.mountOnly` in the table, in its order).
    static func fixedOptionChanged(from a: MountOptions, to b: MountOptions) -> String? {
        table.first { if case .mountOnly = $0.scope { return !$0.same(a, b) }; return false }?.name
    }

    /// An option's name with its aliases folded (`allow_user=x` → `allow_uid`).
    static func canonicalName(_ item: String) -> String {
        let key = item.unicodeScalars.firstIndex(of: "=").map { String(item[..<$0]) } ?? item
        return optionsBySpelling[key]?.name ?? key
    }

    /// The inverse of `splitOptions` for one item.
    // Both on Unicode scalars, never on Characters: ',' or '\\' and a
    // combining mark after it are one Character, and libfuse, which reads
    // the same strings, cuts on bytes.
    static func escapeOption(_ item: String) -> String {
        var out = String.UnicodeScalarView()
        for c in item.unicodeScalars {
            if c == "\\" || c == "," || c == "\"" { out.append("\\") }
            out.append(c)
        }
        return String(out)
    }

    static func splitOptions(_ s: String) -> [String] { splitEscaped(s).items }

    /// The items of one `-o` argument; a backslash that escapes nothing or
    /// a double quote left open is refused.
    static func splitChecked(_ arg: String) throws(OptionError) -> [String] {
        let (items, dangling, openQuote) = splitEscaped(arg)
        if dangling, let last = items.last {
            // Whether the operator meant a backslash or forgot what
            // followed it, guessing would mount something else.
            throw OptionError("option '\(last)\\' ends in a backslash that escapes nothing; write \\\\ for a backslash")
        }
        if openQuote, let last = items.last {
            throw OptionError("option '\(last)' has a double quote that is not closed; close it, or write \\\" for a quote")
        }
        return items
    }

    /// The items of one `-o` argument, whether it ended in a backslash
    /// that escapes nothing, and whether a double quote was left open
    /// (both dropped by `splitOptions`, refused by `parse`). Between
    /// double quotes a comma splits nothing; the quotes themselves are
    /// not part of the value. That is how mount(8) and fstab carry a
    /// comma: libmount splits at every comma outside quotes and reorders
    /// the options before the helper sees them, which a `\,` does not
    /// survive.
    static func splitEscaped(_ s: String) -> (items: [String], dangling: Bool, openQuote: Bool) {
        var out: [String] = []
        var cur = String.UnicodeScalarView()
        var escape = false
        var quoted = false
        for c in s.unicodeScalars {
            if escape { cur.append(c); escape = false; continue }
            if c == "\\" { escape = true; continue }
            if c == "\"" { quoted.toggle(); continue }
            if c == "," && !quoted { out.append(String(cur)); cur = String.UnicodeScalarView(); continue }
            cur.append(c)
        }
        out.append(String(cur))
        return (out, escape, quoted)
    }

    mutating func apply(_ item: String) throws(OptionError) {
        let key: String
        let value: String?
        if let eq = item.unicodeScalars.firstIndex(of: "=") {
            key = String(item[..<eq])
            value = String(item[item.unicodeScalars.index(after: eq)...])
        } else {
            key = item
            value = nil
        }
        let spec = MountOptions.optionsBySpelling[key]
        if case .dropped = spec?.scope, value == nil || key == "comment" { ignored.append(key); return }
        if key.hasPrefix("x-") { ignored.append(key); return }   // x-systemd.*, x-gvfs-*, ...
        guard let spec, spec.isParsed else { throw OptionError("unknown option '\(item)' (see kmsfs --help or man 8 kmsfs)") }
        try spec.apply(&self, OptionValue(key: key, value: value))
    }

    /// The documented range of every numeric option (man 8 kmsfs, "Numeric
    /// options"; the guide's table). A value outside it is refused with one
    /// line, at mount and on a live remount: no later arithmetic (a wait's
    /// deadline, a cache budget) can overflow.
    public enum Limits {
        /// `ttl=`: 1 s to 365 days (0 keeps plaintext until unmount).
        public static let ttl: ClosedRange<Double> = 1...31_536_000
        /// `stale=`: 0 (off) to 365 days.
        public static let stale: ClosedRange<Double> = 0...31_536_000
        /// `timeout=`: 1 s to 1 hour per KMS call, retries included.
        public static let timeout: ClosedRange<Double> = 1...3600
        /// `kms_rate=`: 0.1 to 100,000 KMS requests a second (0: no ceiling).
        public static let kmsRate: ClosedRange<Double> = 0.1...100_000
        /// `max_size=` (and the tools' `--max-size`): 1 byte to 1 GiB.
        public static let maxSize: ClosedRange<Int> = 1...(1 << 30)
        /// `cache_max=`: 1 byte to 64 GiB of locked memory.
        public static let cacheMax: ClosedRange<Int> = 1...(64 << 30)
        public static let threads: ClosedRange<Int> = 1...1024
        public static let retries: ClosedRange<Int> = 1...20
        /// `max_inflight=`: opens waiting on KMS at once.
        public static let maxInflight: ClosedRange<Int> = 1...4096
        /// `settle=`: 0 to 5 minutes between a change and telling.
        public static let settle: ClosedRange<Double> = 0...300
    }

    /// `300`, `300s`, `1.5m`, `1h`, `1d`: decimal digits (at most 12, and
    /// at most 9 after a point) and one optional unit; nothing else (no
    /// sign, exponent, hex, `nan` or `inf`, no spaces). nil otherwise.
    public static func parseDuration(_ s: String) -> Double? {
        var t = Array(s.utf8)
        var scale = 1.0
        if let last = t.last {
            switch last | 0x20 {   // ASCII lower case
            case UInt8(ascii: "s"): scale = 1; t.removeLast()
            case UInt8(ascii: "m"): scale = 60; t.removeLast()
            case UInt8(ascii: "h"): scale = 3600; t.removeLast()
            case UInt8(ascii: "d"): scale = 86400; t.removeLast()
            default: break
            }
        }
        let point = t.firstIndex(of: UInt8(ascii: "."))
        let whole = point.map { Array(t[..<$0]) } ?? t
        let fraction = point.map { Array(t[(t.index(after: $0))...]) } ?? []
        let isDigit: (UInt8) -> Bool = { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }
        guard !whole.isEmpty, whole.count <= 12, whole.allSatisfy(isDigit),
              fraction.count <= 9, fraction.allSatisfy(isDigit),
              point == nil || !fraction.isEmpty else { return nil }
        // At most 12 and 9 digits: both fit an Int, and exactly a Double.
        var w = 0, f = 0, denominator = 1
        for d in whole { w = w * 10 + Int(d - UInt8(ascii: "0")) }
        for d in fraction { f = f * 10 + Int(d - UInt8(ascii: "0")); denominator *= 10 }
        return (Double(w) + Double(f) / Double(denominator)) * scale
    }

    /// `65536`, `64K`, `64M`, `1G`, `1T` (powers of 1024; `KiB` and `KB`
    /// forms too): decimal digits and one optional unit, nothing else. nil
    /// for anything else or a value no Int holds.
    public static func parseSize(_ s: String) -> Int? {
        var t = s.uppercased()
        if t.hasSuffix("IB") { t.removeLast(2) } else if t.hasSuffix("B") { t.removeLast() }
        var scale = 1
        if let last = t.last, !last.isNumber {
            switch last {
            case "K": scale = 1 << 10
            case "M": scale = 1 << 20
            case "G": scale = 1 << 30
            case "T": scale = 1 << 40
            default: return nil
            }
            t.removeLast()
        }
        guard !t.isEmpty, t.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }),
              let v = Int(t) else { return nil }
        let (n, overflow) = v.multipliedReportingOverflow(by: scale)
        return overflow ? nil : n
    }

    /// `300 s`, `1h`, `365d`: a bound as the refusals show it.
    static func showSeconds(_ v: Double) -> String {
        let n = Int(v)
        if n >= 86400, n % 86400 == 0 { return "\(n / 86400)d" }
        if n >= 3600, n % 3600 == 0 { return "\(n / 3600)h" }
        return "\(n)"
    }

    /// `0.1`, `100000`: a rate's bound as the refusals show it.
    static func showRate(_ v: Double) -> String {
        v == v.rounded() ? "\(displaySeconds(v))" : "\(v)"
    }

    /// `1`, `64K`, `1G`: a bound as the refusals show it.
    static func showSize(_ v: Int) -> String {
        for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] where v >= 1 << shift && v % (1 << shift) == 0 {
            return "\(v >> shift)\(unit)"
        }
        return "\(v)"
    }
}
