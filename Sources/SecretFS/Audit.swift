import Log
import System
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One open decision. Never carries plaintext.
public struct AuditRecord: Sendable {
    public enum Outcome: String, Sendable {
        case cache      // allowed, served from the cache
        case kms        // allowed, decrypted through KMS now
        case shared     // allowed, waited for another open's KMS call
        case denied     // not allowed (EACCES)
        case failed     // allowed, but decryption failed (EIO)
        case notified = "notify"             // a rotation was told to a unit or program
        case notifyFailed = "notify-failed"  // telling it failed
    }

    public var time: Double            // seconds since the epoch
    public var uid: UInt32
    public var gid: UInt32
    public var pid: Int32
    public var processName: String
    public var path: String
    public var outcome: Outcome
    public var latency: Double?        // seconds, for KMS calls
    public var detail: String?         // the reason for denied/failed

    public init(time: Double, uid: UInt32, gid: UInt32, pid: Int32, processName: String, path: String,
                outcome: Outcome, latency: Double? = nil, detail: String? = nil) {
        self.time = time
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.processName = processName
        self.path = path
        self.outcome = outcome
        self.latency = latency
        self.detail = detail
    }

    public var allowed: Bool { outcome != .denied }

    /// `allowed`/`denied` for opens; `notified`/`failed` for rotation
    /// notifications (whose `comm` is the target).
    public var result: String {
        switch outcome {
        case .notified: return "notified"
        case .notifyFailed: return "failed"
        case .denied: return "denied"
        default: return "allowed"
        }
    }

    /// The record as one line of `key=value` pairs.
    public var line: String {
        var s = "audit time=\(AuditRecord.iso(time)) uid=\(uid) gid=\(gid) pid=\(pid) comm=\(AuditRecord.quote(processName)) path=\(AuditRecord.quote(path)) result=\(result) source=\(outcome.rawValue)"
        if let latency { s += " kms_ms=\(Int((latency * 1000).rounded()))" }
        if let detail { s += " reason=\(AuditRecord.quote(detail))" }
        return s
    }

    /// A field as is when it is plain printable ASCII, else in double
    /// quotes with `"` and `\` backslash-escaped and every control byte,
    /// invalid UTF-8 byte and invisible separator as `\xNN` (`\r`, `\n`,
    /// `\t`): a SOURCE name or a process name can never end the record
    /// or start a forged one.
    public static func quote(_ s: String) -> String {
        let plain = !s.isEmpty && s.utf8.allSatisfy { $0 > 32 && $0 < 127 && $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "\\") }
        if plain { return s }
        return "\"" + LogEscape.escape(s, quoting: [UInt8(ascii: "\\"), UInt8(ascii: "\"")]) + "\""
    }

    static func iso(_ t: Double) -> String {
        var secs = time_t(t)
        var tmv = tm()
        gmtime_r(&secs, &tmv)
        func p(_ v: Int32, _ w: Int) -> String { let s = String(v); return String(repeating: "0", count: max(0, w - s.count)) + s }
        let ms = Int32((t - Double(secs)) * 1000)
        return "\(p(tmv.tm_year + 1900, 4))-\(p(tmv.tm_mon + 1, 2))-\(p(tmv.tm_mday, 2))T\(p(tmv.tm_hour, 2)):\(p(tmv.tm_min, 2)):\(p(tmv.tm_sec, 2)).\(p(ms, 3))Z"
    }
}

/// Where audit records go.
public protocol AuditSink: Sendable {
    func record(_ r: AuditRecord)
    /// Several records at once, in order (a sink may write them together).
    func record(batch: [AuditRecord])
    /// False for a sink that drops everything, so no record is built.
    var wantsRecords: Bool { get }
    /// Records `r` unless that would make the caller wait (a queue full
    /// behind a slow writer): then records nothing and answers false. The
    /// FUSE reader, which must never wait, records this way and leaves a
    /// record that does not fit to the open pool.
    func tryRecord(_ r: AuditRecord) -> Bool
}

extension AuditSink {
    public var wantsRecords: Bool { true }
    public func tryRecord(_ r: AuditRecord) -> Bool { record(r); return true }
    public func record(batch: [AuditRecord]) { for r in batch { record(r) } }
}

extension AuditRecord {
    /// Appends `line` and a newline as bytes (what `LogEscape.escape(line)`
    /// gives, since every field is quoted or plain ASCII already), without
    /// building the intermediate strings: the audit writer's cost per record.
    /// `clock` keeps the time's text for the current second.
    public func appendLine(to out: inout [UInt8], clock: inout AuditClock, newline: Bool = true) {
        func ascii(_ s: StaticString) {
            s.withUTF8Buffer { out.append(contentsOf: $0) }
        }
        func number<T: BinaryInteger>(_ v: T) {
            if v == 0 { out.append(UInt8(ascii: "0")); return }
            var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                         UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
                (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
            var n = v.magnitude
            var count = 0
            withUnsafeMutableBytes(of: &digits) { d in
                while n > 0 {
                    d[count] = UInt8(ascii: "0") + UInt8(truncatingIfNeeded: n % 10)
                    n /= 10
                    count += 1
                }
                if v < 0 { out.append(UInt8(ascii: "-")) }
                for i in stride(from: count - 1, through: 0, by: -1) { out.append(d[i]) }
            }
        }
        func field(_ s: String) {
            var plain = !s.isEmpty
            if plain {
                for b in s.utf8 where !(b > 32 && b < 127 && b != UInt8(ascii: "\"") && b != UInt8(ascii: "\\")) {
                    plain = false
                    break
                }
            }
            if plain {
                out.append(contentsOf: s.utf8)
            } else {
                out.append(contentsOf: AuditRecord.quote(s).utf8)
            }
        }
        ascii("audit time=")
        clock.append(time, to: &out)
        ascii(" uid="); number(uid)
        ascii(" gid="); number(gid)
        ascii(" pid="); number(pid)
        ascii(" comm="); field(processName)
        ascii(" path="); field(path)
        ascii(" result="); out.append(contentsOf: result.utf8)
        ascii(" source="); out.append(contentsOf: outcome.rawValue.utf8)
        if let latency { ascii(" kms_ms="); number(Int((latency * 1000).rounded())) }
        if let detail { ascii(" reason="); field(detail) }
        if newline { out.append(UInt8(ascii: "\n")) }
    }
}

/// The text of an audit record's time (`2026-11-29T20:21:05.123Z`),
/// formatted once per second: records come in bursts.
public struct AuditClock {
    private var second: Int = .min
    private var prefix: [UInt8] = []

    public init() {}

    mutating func append(_ t: Double, to out: inout [UInt8]) {
        let secs = Int(t.rounded(.down))
        if secs != second {
            second = secs
            prefix = Array(AuditRecord.iso(Double(secs)).utf8.dropLast(5))   // without ".000Z"
        }
        out.append(contentsOf: prefix)
        let ms = Int((t - Double(secs)) * 1000)
        out.append(UInt8(ascii: "."))
        out.append(UInt8(ascii: "0") + UInt8(ms / 100 % 10))
        out.append(UInt8(ascii: "0") + UInt8(ms / 10 % 10))
        out.append(UInt8(ascii: "0") + UInt8(ms % 10))
        out.append(UInt8(ascii: "Z"))
    }
}

/// The names of the processes that open files, each kept for `lifetime`
/// seconds: reading /proc/PID/comm costs an open, a read and a close
/// (about 10 µs here), on the opener's path, and a busy reader opens
/// thousands of times a second. A name is reused only for the same pid,
/// uid and gid within the lifetime; so a process that renames itself
/// (prctl, or exec) may appear under its former name for up to that long.
/// (`comm` is whatever a process calls itself: the pid and ids are what
/// identify it.) A gone process ("?") is never remembered.
public final class ProcessNameCache: @unchecked Sendable {
    private struct Slot {
        var pid: Int32 = 0
        var uid: UInt32 = 0
        var gid: UInt32 = 0
        var at: Double = 0
        var name: String? = nil
    }
    private let slots: Mutex<[Slot]>
    public let lifetime: Double
    private let now: @Sendable () -> Double
    private let read: @Sendable (Int32) -> String

    public init(lifetime: Double = 1, slots: Int = 64, now: @escaping @Sendable () -> Double = { SystemClock.monotonic() },
                read: @escaping @Sendable (Int32) -> String = { processName(pid: $0) }) {
        self.lifetime = lifetime
        self.slots = Mutex([Slot](repeating: Slot(), count: max(1, slots)))
        self.now = now
        self.read = read
    }

    public func name(pid: Int32, uid: UInt32, gid: UInt32) -> String {
        let t = now()
        let cached: String? = slots.withLock { s in
            let e = s[Int(UInt32(bitPattern: pid) % UInt32(s.count))]
            guard let name = e.name, e.pid == pid, e.uid == uid, e.gid == gid, t >= e.at, t - e.at < lifetime
            else { return nil }
            return name
        }
        if let cached { return cached }
        let name = read(pid)
        if name != "?" {
            slots.withLock { s in
                s[Int(UInt32(bitPattern: pid) % UInt32(s.count))] = Slot(pid: pid, uid: uid, gid: gid, at: t, name: name)
            }
        }
        return name
    }
}

/// Reads a process's name from /proc/PID/comm ("?" when it is gone).
public func processName(pid: Int32) -> String {
    let fd = open("/proc/\(pid)/comm", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return "?" }
    defer { close(fd) }
    var buf = [UInt8](repeating: 0, count: 64)
    let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    guard n > 0 else { return "?" }
    var s = String(decoding: buf[0..<n], as: UTF8.self)
    while s.hasSuffix("\n") { s.removeLast() }
    return s
}

/// How many refusals a second each user gets recorded one by one. Anyone
/// may try to open any secret and be refused; a user looping on `open`
/// would otherwise write records as fast as the daemon refuses (filling
/// an `audit=FILE` disk, and delaying admitted opens' records behind
/// theirs). Past the budget a refusal is still refused and counted
/// (`kmsfs status`), and the next one recorded says how many went
/// unrecorded before it. Admitted opens are never limited.
struct RefusalBudget {
    static let perSecond = 20.0
    static let burst = 100.0
    /// Users remembered at most; past it, those whose budget is full again
    /// (quiet for burst ÷ perSecond seconds) are forgotten.
    static let users = 4096

    enum Decision: Equatable {
        /// Record it; `unrecorded` refusals of this user came before it
        /// (of users past `users`, who share one budget, when `shared`).
        case record(unrecorded: Int, shared: Bool)
        /// Count it only; `warn`: whose budget ran out, when this is the
        /// first refusal left unrecorded for that reason in a minute
        /// (worth a log line), else nil.
        case countOnly(warn: Exhausted?)
    }

    /// Whose budget left a refusal unrecorded.
    enum Exhausted: Equatable {
        /// This user's own (more than `perSecond`).
        case user
        /// The one the users past `users` share.
        case sharedByUsersPastTheRemembered
        /// All users' together (more than `totalPerSecond`), while this
        /// user's own had room.
        case everyone
    }

    private struct Bucket {
        var tokens: Double
        var at: Double
        var unrecorded: Int
        var lastWarning: Double
    }
    private var buckets: [UInt32: Bucket] = [:]
    /// All users together: with allow_other, requests come from every user
    /// namespace, and a user with 65,536 subordinate uids is as many users
    /// here. Ten users' worth.
    static let totalPerSecond = perSecond * 10
    static let totalBurst = burst * 10
    private var total = (tokens: RefusalBudget.totalBurst, at: -Double.infinity, lastWarning: -Double.infinity)
    /// Users past `users` share one budget (the key no real uid has:
    /// 4294967295 is (uid_t)-1). The table is pruned at most once a second,
    /// never per refusal: each pruning walks it.
    static let overflowKey = UInt32.max
    private var lastPrune = -Double.infinity

    /// A token bucket's refill: `perSecond` since `at`, up to `burst`.
    private static func refill(_ tokens: inout Double, since at: inout Double, now: Double, perSecond: Double, burst: Double) {
        tokens = min(burst, tokens + max(0, now - at) * perSecond)
        at = now
    }

    mutating func take(uid: UInt32, now: Double) -> Decision {
        var key = uid
        if buckets[uid] == nil && buckets.count >= RefusalBudget.users {
            if now - lastPrune >= 1 {
                lastPrune = now
                buckets = buckets.filter { now - $0.value.at < RefusalBudget.burst / RefusalBudget.perSecond || $0.value.unrecorded > 0 }
            }
            if buckets.count >= RefusalBudget.users { key = RefusalBudget.overflowKey }
        }
        var b = buckets[key] ?? Bucket(tokens: RefusalBudget.burst, at: now, unrecorded: 0, lastWarning: -.infinity)
        RefusalBudget.refill(&b.tokens, since: &b.at, now: now, perSecond: RefusalBudget.perSecond, burst: RefusalBudget.burst)
        RefusalBudget.refill(&total.tokens, since: &total.at, now: now, perSecond: RefusalBudget.totalPerSecond,
                             burst: RefusalBudget.totalBurst)
        let decision: Decision
        if b.tokens >= 1 && total.tokens >= 1 {
            b.tokens -= 1
            total.tokens -= 1
            decision = .record(unrecorded: b.unrecorded, shared: key == RefusalBudget.overflowKey)
            b.unrecorded = 0
        } else {
            b.unrecorded += 1
            if b.tokens < 1 {
                let warn = now - b.lastWarning >= 60
                if warn { b.lastWarning = now }
                decision = .countOnly(warn: !warn ? nil : key == RefusalBudget.overflowKey ? .sharedByUsersPastTheRemembered : .user)
            } else {
                // The user's own budget had room: not theirs to be named
                // for (one line a minute for all, not one per user).
                let warn = now - total.lastWarning >= 60
                if warn { total.lastWarning = now }
                decision = .countOnly(warn: warn ? .everyone : nil)
            }
        }
        buckets[key] = b
        return decision
    }
}
