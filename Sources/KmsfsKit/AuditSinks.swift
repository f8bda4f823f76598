import SecretFS
import Log
import SecureMemory
#if canImport(Glibc)
import Glibc
#endif

/// Audit records as log lines (stderr under journald, or syslog), notice
/// level for allowed opens and warning level for denials and failures.
public struct LogAuditSink: AuditSink {
    public init() {}
    public func record(_ r: AuditRecord) {
        Log.log(r.outcome == .denied || r.outcome == .failed ? .warning : .notice, r.line)
    }
}

/// Audit records appended to a file, one line each, with O_APPEND so
/// concurrent writers never interleave within a line.
public final class FileAuditSink: AuditSink, @unchecked Sendable {
    private let fd: Int32
    public let path: String

    public init(path: String) throws(SystemError) {
        self.path = path
        fd = try syscallRetrying("open \(path)") { open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600) }
    }

    deinit { close(fd) }

    public func record(_ r: AuditRecord) {
        Log.writeAll(fd, r.line + "\n")
    }
}

public struct NoAuditSink: AuditSink {
    public init() {}
    public func record(_ r: AuditRecord) {}
}
