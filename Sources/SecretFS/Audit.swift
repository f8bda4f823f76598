import Log
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
    static func quote(_ s: String) -> String {
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
}

extension AuditSink {
    public var wantsRecords: Bool { true }
    public func record(batch: [AuditRecord]) { for r in batch { record(r) } }
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
