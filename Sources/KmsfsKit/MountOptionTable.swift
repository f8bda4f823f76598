import SecretFS
import AWS
import KMS

// Every mount option, declared once (as libfuse's example/passthrough_ll.c
// declares lo_opts[]): its name and the other spellings accepted, how it
// takes effect, and how its value is parsed. The table drives the parser
// (MountOptions.apply), canonicalName, the remount check
// (fixedOptionChanged), the man page test (every spelling is documented)
// and the mount helper's list of dropped options (checked against it).

/// How an option takes effect.
enum OptionScope: Sendable {
    /// Changes on a live mount (`mount -o remount`).
    case live
    /// Only a mount sets it: a remount that changes it is refused.
    case mountOnly
    /// mount(8)'s, fstab's or the VFS's own: accepted without a value and
    /// dropped. `helper` ones the mount helper drops before kmsfs sees them.
    case dropped(helper: Bool)
}

/// One option's value as given, with the parsers its entries use. `key`
/// is the spelling given (`file_mode`), which the refusals name.
struct OptionValue {
    let key: String
    let value: String?

    func need() throws(OptionError) -> String {
        guard let v = value, !v.isEmpty else { throw OptionError("option '\(key)' needs a value (\(key)=...)") }
        return v
    }

    func noValue() throws(OptionError) {
        if value != nil { throw OptionError("option '\(key)' takes no value") }
    }

    func list() throws(OptionError) -> [String] {
        let parts = try need().scalarSplit(":")
        if parts.contains(where: \.isEmpty) { throw OptionError("option '\(key)=\(value!)' has an empty entry; separate names with ':'") }
        return parts
    }

    func seconds(_ range: ClosedRange<Double>, orZero: String? = nil) throws(OptionError) -> Double {
        let v = try need()
        guard let d = MountOptions.parseDuration(v), range.contains(d) || (orZero != nil && d == 0) else {
            let zero = orZero.map { " (or 0: \($0))" } ?? ""
            throw OptionError("option '\(key)=\(v)': expected seconds from \(MountOptions.showSeconds(range.lowerBound)) to \(MountOptions.showSeconds(range.upperBound))\(zero), such as 300, 5m, 1h")
        }
        return d
    }

    func bytes(_ range: ClosedRange<Int>) throws(OptionError) -> Int {
        let v = try need()
        guard let n = MountOptions.parseSize(v), range.contains(n) else {
            throw OptionError("option '\(key)=\(v)': expected a size in bytes from \(MountOptions.showSize(range.lowerBound)) to \(MountOptions.showSize(range.upperBound)), such as 65536, 64K, 64M")
        }
        return n
    }

    func octal() throws(OptionError) -> UInt32 {
        let v = try need()
        guard v.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "7")).contains($0) }),
              let m = UInt32(v, radix: 8), m <= 0o7777 else {
            throw OptionError("option '\(key)=\(v)': expected an octal mode such as 0440")
        }
        if m & 0o222 != 0 { throw OptionError("option '\(key)=\(v)': the tree is read-only; a mode has no write bits (try \(String(m & 0o555, radix: 8)))") }
        if m & 0o7000 != 0 { throw OptionError("option '\(key)=\(v)': setuid, setgid and sticky bits are not allowed (try \(String(m & 0o777, radix: 8)))") }
        return m
    }

    /// Requests a second: decimal digits with an optional fraction (no
    /// unit), within `range`, or 0 for none (nil).
    func rate(_ range: ClosedRange<Double>) throws(OptionError) -> Double? {
        let v = try need()
        guard !v.contains(where: \.isLetter), let r = MountOptions.parseDuration(v), range.contains(r) || r == 0 else {
            throw OptionError("option '\(key)=\(v)': expected KMS requests a second from \(MountOptions.showRate(range.lowerBound)) to \(MountOptions.showRate(range.upperBound)) (or 0: no pacing), such as 5 or 0.5, or adaptive (paced from KMS's first throttle, no ceiling)")
        }
        return r == 0 ? nil : r
    }

    func positiveInt(_ range: ClosedRange<Int>) throws(OptionError) -> Int {
        let v = try need()
        guard v.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }),
              let n = Int(v), range.contains(n) else {
            throw OptionError("option '\(key)=\(v)': expected a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return n
    }

    /// An absolute path, or the refusal `hint` explains.
    func absolutePath(_ hint: String) throws(OptionError) -> String {
        let v = try need()
        guard v.hasPrefix("/") else { throw OptionError("option '\(key)=\(v)': \(hint)") }
        return v
    }
}

/// One row of the table.
struct MountOptionSpec: Sendable {
    /// The canonical name (what remount and the refusals call it).
    let name: String
    /// Every other spelling accepted for it.
    let aliases: [String]
    let scope: OptionScope
    /// Parses the value into the options.
    let apply: @Sendable (inout MountOptions, OptionValue) throws(OptionError) -> Void
    /// For a mount-only option: whether two option sets agree on it.
    let same: @Sendable (MountOptions, MountOptions) -> Bool

    var spellings: [String] { [name] + aliases }

    /// Whether it takes a value here (a dropped option with one is unknown).
    var isParsed: Bool { if case .dropped = scope { return false }; return true }

    static func option(_ name: String, _ aliases: [String] = [], _ scope: OptionScope = .live,
                       same: @escaping @Sendable (MountOptions, MountOptions) -> Bool = { _, _ in true },
                       _ apply: @escaping @Sendable (inout MountOptions, OptionValue) throws(OptionError) -> Void) -> MountOptionSpec {
        MountOptionSpec(name: name, aliases: aliases, scope: scope, apply: apply, same: same)
    }

    /// A mount-only option whose value lives at `field`.
    static func fixed<T: Equatable & Sendable>(_ name: String, _ aliases: [String] = [], at field: KeyPath<MountOptions, T> & Sendable,
                                               _ apply: @escaping @Sendable (inout MountOptions, OptionValue) throws(OptionError) -> Void) -> MountOptionSpec {
        MountOptionSpec(name: name, aliases: aliases, scope: .mountOnly, apply: apply, same: { $0[keyPath: field] == $1[keyPath: field] })
    }

    static func dropped(_ names: [String], helper: Bool) -> [MountOptionSpec] {
        names.map { MountOptionSpec(name: $0, aliases: [], scope: .dropped(helper: helper), apply: { _, _ in }, same: { _, _ in true }) }
    }
}

extension MountOptions {
    /// Every option kmsfs accepts. Mount-only options are checked in this
    /// order on a remount (the first that differs is named).
    static let table: [MountOptionSpec] = accessOptions + mountOnlyOptions + contextOption + cacheOptions + droppedOptions

    /// Who may read, and how the tree looks: live.
    private static let accessOptions: [MountOptionSpec] = [
        .option("allow_uid", ["allow_user", "allow_users"]) { o, v throws(OptionError) in o.allowUsers += try v.list() },
        .option("allow_gid", ["allow_group", "allow_groups"]) { o, v throws(OptionError) in o.allowGroups += try v.list() },
        .option("allow_unit", ["allow_units"]) { o, v throws(OptionError) in
            for u in try v.list() {
                guard SystemdUnitName.isValid(u) else {
                    throw OptionError("option 'allow_unit=\(v.value!)': '\(u)' is not a systemd unit name (such as nginx.service); separate units with ':'")
                }
                o.allowUnits.append(SystemdUnitName.normalized(u))
            }
        },
        .option("uid") { o, v throws(OptionError) in o.uid = try v.need() },
        .option("gid") { o, v throws(OptionError) in o.gid = try v.need() },
        .option("mode", ["file_mode"]) { o, v throws(OptionError) in o.mode = try v.octal() },
        .option("dir_mode") { o, v throws(OptionError) in o.dirMode = try v.octal() },
        .option("policy") { o, v throws(OptionError) in o.policyFile = try v.absolutePath("give the policy file's absolute path") },
    ]

    /// Only a mount sets these: the KMS client, memory, the FUSE session,
    /// log and audit targets, and what a ciphertext must carry (plaintexts
    /// already cached were checked against the old rule).
    private static let mountOnlyOptions: [MountOptionSpec] = [
        .fixed("region", at: \.region) { o, v throws(OptionError) in
            let r = try v.need()
            guard r.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" }) else {
                throw OptionError("option 'region=\(r)': not a region name (such as eu-west-1)")
            }
            o.region = r
        },
        .fixed("endpoint", ["endpoint_url"], at: \.endpoint) { o, v throws(OptionError) in
            let e = try v.need()
            guard URLParts(e) != nil else {
                throw OptionError("option 'endpoint=\(e)': expected a URL such as https://kms.eu-west-1.amazonaws.com")
            }
            o.endpoint = e
        },
        .fixed("profile", at: \.profile) { o, v throws(OptionError) in o.profile = try v.need() },
        .fixed("ca_bundle", at: \.caBundle) { o, v throws(OptionError) in o.caBundle = try v.absolutePath("give an absolute path") },
        .fixed("retries", ["max_attempts"], at: \.maxAttempts) { o, v throws(OptionError) in o.maxAttempts = try v.positiveInt(Limits.retries) },
        .fixed("timeout", ["kms_timeout"], at: \.kmsTimeout) { o, v throws(OptionError) in o.kmsTimeout = try v.seconds(Limits.timeout) },
        .fixed("kms_rate", at: \.kmsRateSetting) { o, v throws(OptionError) in
            if v.value == "adaptive" {
                o.kmsRate = nil
                o.kmsPacing = true
            } else {
                o.kmsRate = try v.rate(Limits.kmsRate)
                o.kmsPacing = o.kmsRate != nil
            }
        },
        .fixed("threads", ["max_threads"], at: \.threads) { o, v throws(OptionError) in o.threads = try v.positiveInt(Limits.threads) },
        .fixed("max_inflight", at: \.maxInflight) { o, v throws(OptionError) in o.maxInflight = try v.positiveInt(Limits.maxInflight) },
        .fixed("insecure_allow_unlocked", ["insecure_unlocked_memory"], at: \.insecureAllowUnlocked) { o, v throws(OptionError) in
            try v.noValue(); o.insecureAllowUnlocked = true
        },
        .fixed("no_memfd_secret", at: \.noMemfdSecret) { o, v throws(OptionError) in try v.noValue(); o.noMemfdSecret = true },
        .fixed("io_uring", at: \.ioUring) { o, v throws(OptionError) in try v.noValue(); o.ioUring = true },
        .fixed("exec", ["noexec"], at: \.exec) { o, v throws(OptionError) in try v.noValue(); o.exec = v.key == "exec" },
        .fixed("audit", at: \.audit) { o, v throws(OptionError) in
            let a = try v.need()
            switch a {
            case "stderr": o.audit = .stderr
            case "syslog": o.audit = .syslog
            case "off", "none": o.audit = .off
            default:
                let path = a.hasPrefix("file:") ? String(a.dropFirst(5)) : a
                guard path.hasPrefix("/") else {
                    throw OptionError("option 'audit=\(a)': expected stderr, syslog, off or an absolute file path")
                }
                o.audit = .file(path)
            }
        },
        .fixed("log", at: \.log) { o, v throws(OptionError) in
            let l = try v.need()
            switch l {
            case "stderr": o.log = .stderr
            case "syslog": o.log = .syslog
            default: o.log = .file(try v.absolutePath("expected stderr, syslog or an absolute file path"))
            }
        },
        .fixed("require_binding", at: \.requireBinding) { o, v throws(OptionError) in try v.noValue(); o.requireBinding = true },
        .fixed("require_commitment", at: \.requireCommitment) { o, v throws(OptionError) in try v.noValue(); o.requireCommitment = true },
        .fixed("kms_key", at: \.kmsKeys) { o, v throws(OptionError) in
            let k = try v.need()
            do throws(KMSKeyListError) { o.kmsKeys = try o.kmsKeys.adding(k) } catch {
                throw OptionError("option 'kms_key=\(k)': \(error.message)")
            }
        },
        .fixed("max_encrypted_data_keys", at: \.maxEncryptedDataKeys) { o, v throws(OptionError) in
            o.maxEncryptedDataKeys = try v.positiveInt(EncryptionSDKMessage.maxEncryptedDataKeysRange)
        },
        .fixed("metrics", at: \.metrics) { o, v throws(OptionError) in
            switch MetricsAddress.parse(try v.need()) {
            case .success(let a): o.metrics = a
            case .failure(let e): throw e
            }
        },
        .fixed("credential_socket", at: \.credentialSocket) { o, v throws(OptionError) in
            let s = try v.need()
            guard s.hasPrefix("/"), s.utf8.count < 108 else {
                throw OptionError("option 'credential_socket=\(s)': give the socket's absolute path (at most 107 bytes), such as /run/kmsfs/credentials.sock")
            }
            o.credentialSocket = s
        },
        .fixed("settle", at: \.settle) { o, v throws(OptionError) in o.settle = try v.seconds(Limits.settle) },
    ]

    private static let contextOption: [MountOptionSpec] = [
        // mount(8) keeps context= for SELinux: fstab says kms_context=.
        .option("context", ["kms_context"], .mountOnly,
                same: { $0.requiredContext.elementsEqual($1.requiredContext, by: { $0.key == $1.key && $0.value == $1.value }) }) { o, v throws(OptionError) in
            let c = try v.need()
            guard let eq = c.unicodeScalars.firstIndex(of: "="), eq != c.startIndex else {
                throw OptionError("option 'context=\(c)': expected context=KEY=VALUE")
            }
            o.requiredContext.append((String(c[..<eq]), String(c[c.unicodeScalars.index(after: eq)...])))
        },
    ]

    /// The cache, and what a change tells: live.
    private static let cacheOptions: [MountOptionSpec] = [
        .option("ttl") { o, v throws(OptionError) in
            let s = try v.seconds(Limits.ttl, orZero: "keep until unmount")
            o.ttl = s == 0 ? nil : s
        },
        .option("max_size") { o, v throws(OptionError) in o.maxCiphertextBytes = try v.bytes(Limits.maxSize) },
        .option("cache_max", ["cache_size"]) { o, v throws(OptionError) in o.cacheMaxBytes = try v.bytes(Limits.cacheMax) },
        .option("prefetch") { o, v throws(OptionError) in try v.noValue(); o.prefetch = true },
        .option("stale", ["stale_window"]) { o, v throws(OptionError) in o.staleWindow = try v.seconds(Limits.stale) },
        .option("metrics_per_secret") { o, v throws(OptionError) in try v.noValue(); o.metricsPerSecret = true },
        .option("reload") { o, v throws(OptionError) in
            let r = try v.need()
            let units = r.scalarSplit("+")
            for u in units where !ChangeTargets.validUnit(u) {
                throw OptionError("option 'reload=\(r)': '\(u)' is not a systemd unit name (such as nginx.service); separate units with '+'")
            }
            o.reloadUnits = units
        },
        .option("on_change") { o, v throws(OptionError) in
            o.onChange = try v.absolutePath("give the program's absolute path (it is run without a shell)")
        },
        .option("default_permissions") { _, _ throws(OptionError) in
            throw OptionError("option 'default_permissions' is not supported: kmsfs decides access itself in every open (see allow_uid=, allow_gid=, policy=)")
        },
    ]

    /// What fstab, mount(8) and systemd pass that means nothing here: the
    /// helper drops the first list; kmsfs drops both (given directly).
    private static let droppedOptions: [MountOptionSpec] = MountOptionSpec.dropped(["_netdev", "nofail", "auto", "noauto", "user", "users", "nouser", "owner", "group",
                               "defaults", "comment"], helper: true)
    + MountOptionSpec.dropped(["rw", "ro", "dev", "nodev", "suid", "nosuid", "atime", "noatime", "relatime",
                               "norelatime", "strictatime", "nostrictatime", "diratime", "nodiratime", "async",
                               "sync", "dirsync", "lazytime", "nolazytime", "silent", "loud", "allow_other",
                               "remount"], helper: false)

    /// The table by every spelling.
    static let optionsBySpelling: [String: MountOptionSpec] = {
        var d: [String: MountOptionSpec] = [:]
        for spec in table { for s in spec.spellings { precondition(d.updateValue(spec, forKey: s) == nil, "option \(s) declared twice") } }
        return d
    }()

    /// Every spelling, and the ones the mount helper drops (for the man
    /// page and helper checks).
    public static var optionSpellings: [String] { table.flatMap(\.spellings) }
    public static var helperDroppedOptions: [String] {
        table.filter { if case .dropped(helper: true) = $0.scope { return true }; return false }.map(\.name)
    }
}

extension StringProtocol {
    /// `split(separator:omittingEmptySubsequences: false)` on Unicode
    /// scalars: an ASCII separator and a combining mark after it are one
    /// Character, which a split on Characters does not cut.
    func scalarSplit(_ separator: Unicode.Scalar) -> [String] {
        unicodeScalars.split(separator: separator, omittingEmptySubsequences: false).map { String(String.UnicodeScalarView($0)) }
    }
}
