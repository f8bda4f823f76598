import System
import CLinux
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// journald's native protocol, without libsystemd: one datagram per entry
/// to `/run/systemd/journal/socket`, each field `NAME=value\n`, or, for a
/// value holding a newline, `NAME\n`, its length as a little-endian 64-bit
/// number, the value and `\n` (systemd's "Native Journal Protocol").
///
/// Why: a daemon started by mount(8) inherits mount's stderr, which for an
/// fstab mount is the mount unit's journal stream, and journald tags every
/// line of a stream with the name of the process that opened it (`mount`).
/// A datagram carries its own `SYSLOG_IDENTIFIER=kmsfs`, so
/// `journalctl -t kmsfs` finds the daemon however it was started.
public enum Journal {
    /// journald's socket; `KMSFS_JOURNAL_SOCKET` replaces it (tests bind
    /// their own datagram socket there).
    public static var socketPath: String {
        if let p = getenv("KMSFS_JOURNAL_SOCKET"), p.pointee != 0 { return String(cString: p) }
        return "/run/systemd/journal/socket"
    }

    /// True when a socket exists at `socketPath` (journald runs).
    public static var isAvailable: Bool {
        var st = stat()
        return stat(socketPath, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK
    }

    /// The datagram socket every entry leaves by (-1 until `open`), and the
    /// address it is sent to (no connect(2): a restarted journald binds a
    /// new socket at the same path).
    private static let fd = Atomic<Int32>(-1)
    private static let address = Mutex<UnixSocketAddress?>(nil)

    /// Opens the socket. False (and nothing changes) when the path does not
    /// fit a unix address or no socket can be made.
    @discardableResult
    public static func open() -> Bool {
        guard let path = try? UnixSocketAddress(socketPath) else { return false }
        if fd.load(ordering: .acquiring) >= 0 { return true }
        guard let s = try? unixSocket(SOCK_DGRAM) else { return false }
        // A stuck journald must not hold a FUSE request: after this long
        // a log line is dropped, an audit record goes to syslog(3) (see
        // `deliver`).
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        _ = setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        address.withLock { $0 = path }
        let (swapped, _) = fd.compareExchange(expected: -1, desired: s, ordering: .acquiringAndReleasing)
        if !swapped { close(s) }
        // syslog(3) is the fallback when a datagram cannot be sent.
        openlog(strdup("kmsfs"), LOG_PID | LOG_NDELAY, LOG_DAEMON)
        return true
    }

    /// Sends one entry: `MESSAGE`, `PRIORITY`, `SYSLOG_IDENTIFIER`,
    /// `SYSLOG_FACILITY` (daemon) and `extra` fields. Falls back to syslog(3)
    /// when there is no journal to send to; when journald is stuck, as
    /// `whenStuck` says (`deliver`).
    public static func send(_ level: LogLevel, identifier: String, message: String, extra: [(String, String)] = [],
                            whenStuck: WhenStuck) {
        let entry = encode([("MESSAGE", message), ("PRIORITY", String(level.rawValue)),
                            ("SYSLOG_FACILITY", "3"), ("SYSLOG_IDENTIFIER", identifier)] + extra)
        if deliver(entry, whenStuck) { return }
        kmsfs_syslog(level.rawValue, message)
    }

    /// What an entry journald does not take in time becomes.
    public enum WhenStuck: Sendable {
        /// A log line: dropped and counted (see `deliver`).
        case drop
        /// An audit record, which is never dropped: it goes to syslog(3),
        /// as when there is no journal, and the audit writer waits there
        /// (and opens, once its queue is full), as the guide says.
        case fallBack
    }

    /// One entry in the native format. Field names journald would reject
    /// (not `[A-Z0-9_]`, or starting with `_`, which only journald may set)
    /// are left out.
    public static func encode(_ fields: [(String, String)]) -> [UInt8] {
        var out: [UInt8] = []
        for (name, value) in fields {
            let n = Array(name.utf8)
            guard !n.isEmpty, n.count <= 64, n[0] != UInt8(ascii: "_"),
                  n.allSatisfy({ (0x41...0x5A).contains($0) || (0x30...0x39).contains($0) || $0 == 0x5F })
            else { continue }
            let v = Array(value.utf8)
            out += n
            if v.contains(0x0A) {
                // A newline in the value would end the field: send it sized.
                out.append(0x0A)
                var len = UInt64(v.count).littleEndian
                withUnsafeBytes(of: &len) { out += $0 }
            } else {
                out.append(UInt8(ascii: "="))
            }
            out += v
            out.append(0x0A)
        }
        return out
    }

    /// Appends one field to an entry being built, as `encode` writes it.
    /// `name` must be a name journald accepts (callers pass constants).
    public static func appendField(_ name: StaticString, _ value: UnsafeRawBufferPointer, to out: inout [UInt8]) {
        name.withUTF8Buffer { out.append(contentsOf: $0) }
        if value.contains(0x0A) {
            // A newline in the value would end the field: send it sized.
            out.append(0x0A)
            var len = UInt64(value.count).littleEndian
            withUnsafeBytes(of: &len) { out.append(contentsOf: $0) }
        } else {
            out.append(UInt8(ascii: "="))
        }
        out.append(contentsOf: value)
        out.append(0x0A)
    }

    public static func appendField(_ name: StaticString, _ value: String, to out: inout [UInt8]) {
        var v = value
        v.withUTF8 { appendField(name, UnsafeRawBufferPointer($0), to: &out) }
    }

    /// Sends an entry built with `appendField` (an audit record); false
    /// when the journal did not take it (the caller falls back to syslog(3)).
    public static func send(entry: [UInt8]) -> Bool { deliver(entry, .fallBack) }

    /// Entries dropped because the journal took none in time, not yet
    /// reported; and until when (CLOCK_MONOTONIC seconds) entries are sent
    /// without waiting, after one waited the whole timeout.
    private static let dropped = Atomic<Int>(0)
    private static let hurryUntil = Atomic<Int>(0)

    /// True when the entry was sent, or (a log line) dropped because
    /// journald is stuck; false when the caller must fall back to syslog(3):
    /// there is no journal, or an audit record was not taken. A stuck
    /// journald serves /dev/log too, where syslog(3) would block without a
    /// bound: so a log line the journal did not take within the socket's
    /// timeout is dropped and counted, log lines for the next 10 s are not
    /// waited for at all, and the first entry sent afterwards is followed by
    /// one saying how many were lost.
    private static func deliver(_ entry: [UInt8], _ whenStuck: WhenStuck) -> Bool {
        // Audit records (one an open, under the default audit) never
        // hurry: no clock read for them.
        let hurry = whenStuck == .drop && monotonicSeconds() < hurryUntil.load(ordering: .relaxed)
        switch transmit(entry, wait: !hurry) {
        case .sent:
            let lost = dropped.exchange(0, ordering: .acquiringAndReleasing)
            if lost > 0 {
                let report = encode([("MESSAGE", "\(lost) log entries were dropped: the journal took none within 2 s"),
                                     ("PRIORITY", String(LogLevel.warning.rawValue)), ("SYSLOG_FACILITY", "3"),
                                     ("SYSLOG_IDENTIFIER", "kmsfs")])
                if transmit(report, wait: false) != .sent { dropped.add(lost, ordering: .relaxed) }
            }
            return true
        case .full:
            guard whenStuck == .drop else { return false }
            dropped.add(1, ordering: .relaxed)
            if !hurry { hurryUntil.store(monotonicSeconds() + 10, ordering: .relaxed) }
            return true
        case .unavailable:
            return false
        }
    }

    private static func monotonicSeconds() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int(ts.tv_sec)
    }

    private enum Sent { case sent, full, unavailable }

    /// `full`: journald took nothing within the timeout (or at once, when
    /// `wait` is false).
    private static func transmit(_ entry: [UInt8], wait: Bool) -> Sent {
        let s = fd.load(ordering: .acquiring)
        guard s >= 0 else { return .unavailable }
        guard let addr = address.withLock({ $0 }) else { return .unavailable }
        let flags = Int32(MSG_NOSIGNAL) | (wait ? 0 : Int32(MSG_DONTWAIT))
        do throws(Errno) {
            _ = try syscallRetrying("sendto") {
                entry.withUnsafeBytes { buf in
                    addr.withSockaddr { sendto(s, buf.baseAddress, buf.count, flags, $0, $1) }
                }
            }
            return .sent
        } catch {
            return error.code == EAGAIN || error.code == EWOULDBLOCK ? .full : .unavailable
        }
    }
}
