import CLinux
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Syslog severities (RFC 5424), which journald also reads as `<N>` prefixes.
public enum LogLevel: Int32, Comparable, Sendable, CaseIterable {
    case error = 3, warning = 4, notice = 5, info = 6, debug = 7

    /// Less severe is smaller: debug < info < notice < warning < error.
    public static func < (a: LogLevel, b: LogLevel) -> Bool { a.rawValue > b.rawValue }

    var word: String {
        switch self {
        case .error: "error"
        case .warning: "warning"
        case .notice: "notice"
        case .info: "info"
        case .debug: "debug"
        }
    }
}

public enum LogDestination: Sendable, Equatable {
    /// One line per message on standard error. With `journal` each line
    /// starts with `<N>` (sd-daemon(3)) so journald records its priority.
    case stderr(journal: Bool)
    /// syslog(3), facility daemon.
    case syslog
    /// journald's native socket (Journal.swift), each entry tagged with the
    /// ident whoever started the daemon; syslog(3) when it is not taken.
    case journal
    /// Nowhere (tests of code that logs).
    case none
}

/// Process-wide logging. Messages are operator text: they name files, keys,
/// error codes and users, and never carry plaintext, key material or
/// credentials (callers build them from those only).
public enum Log {
    struct Config {
        var destination: LogDestination = .stderr(journal: false)
        var level: LogLevel = .info
        var ident = "kmsfs"
    }
    private static let config = Mutex(Config())

    /// stderr with journald prefixes when `JOURNAL_STREAM` says stderr is the
    /// journal (systemd sets it), plain stderr otherwise.
    public static var defaultStderr: LogDestination {
        .stderr(journal: getenv("JOURNAL_STREAM") != nil)
    }

    public static func configure(destination: LogDestination? = nil, level: LogLevel? = nil, ident: String? = nil) {
        config.withLock { c in
            if let destination { c.destination = destination }
            if let level { c.level = level }
            if let ident { c.ident = ident }
            if case .syslog = c.destination {
                // openlog keeps the pointer: hand it a string that lives forever.
                let id = strdup(c.ident)
                openlog(id, LOG_PID | LOG_NDELAY, LOG_DAEMON)
            }
        }
    }

    public static var level: LogLevel { config.withLock { $0.level } }

    public static var destination: LogDestination { config.withLock { $0.destination } }

    public static func isEnabled(_ level: LogLevel) -> Bool { level >= self.level }

    public static func error(_ message: @autoclosure () -> String) { emit(.error, message) }
    public static func warning(_ message: @autoclosure () -> String) { emit(.warning, message) }
    public static func notice(_ message: @autoclosure () -> String) { emit(.notice, message) }
    public static func info(_ message: @autoclosure () -> String) { emit(.info, message) }
    public static func debug(_ message: @autoclosure () -> String) { emit(.debug, message) }

    public static func log(_ level: LogLevel, _ message: @autoclosure () -> String) { emit(level, message) }

    private static func emit(_ level: LogLevel, _ message: () -> String) {
        let c = config.withLock { $0 }
        guard level >= c.level else { return }
        // One line per message: a newline inside a message would let a file
        // name forge a second log line.
        let text = message().replacingNewlines()
        switch c.destination {
        case .none:
            return
        case .syslog:
            kmsfs_syslog(level.rawValue, text)
        case .journal:
            Journal.send(level, identifier: c.ident, message: text)
        case .stderr(let journal):
            let line = journal ? "<\(level.rawValue)>\(c.ident): \(text)\n"
                               : "\(c.ident): \(level.word): \(text)\n"
            writeAll(2, line)
        }
    }

    /// Sends one message to syslog(3) with an explicit facility (audit
    /// records go to LOG_AUTHPRIV, whatever the log destination is).
    public static func syslog(_ level: LogLevel, facility: Int32, _ message: String) {
        kmsfs_syslog(facility | level.rawValue, message.replacingNewlines())
    }

    /// Writes a line with one write(2) where possible, so lines from many
    /// threads do not interleave.
    public static func writeAll(_ fd: Int32, _ text: String) {
        var bytes = Array(text.utf8)
        bytes.withUnsafeBytes { writeAll(fd, $0) }
        bytes.removeAll()
    }

    public static func writeAll(_ fd: Int32, _ buf: UnsafeRawBufferPointer) {
        guard let base = buf.baseAddress else { return }
        var off = 0
        while off < buf.count {
            let n = write(fd, base + off, buf.count - off)
            if n < 0 { if kmsfs_errno() == EINTR { continue }; return }
            off += n
        }
    }
}

extension String {
    func replacingNewlines() -> String {
        guard self.utf8.contains(where: { $0 == 10 || $0 == 13 }) else { return self }
        return String(self.map { $0 == "\n" || $0 == "\r" ? " " : $0 })
    }
}
