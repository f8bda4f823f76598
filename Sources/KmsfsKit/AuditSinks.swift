import SecretFS
import Log
import SecureMemory
import Synchronization
import Threading
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

/// Audit records to syslog, facility authpriv (where sshd and sudo log).
public struct SyslogAuditSink: AuditSink {
    public init() {}
    public func record(_ r: AuditRecord) {
        Log.syslog(r.outcome == .denied || r.outcome == .failed ? .warning : .notice, facility: LOG_AUTHPRIV, r.line)
    }
}

/// Audit records appended to a file (mode 0600), one line each, with
/// O_APPEND so concurrent writers never interleave within a line. SIGHUP
/// reopens it (after logrotate).
public final class FileAuditSink: AuditSink, @unchecked Sendable {
    private let fd: Atomic<Int32>
    public let path: String

    public init(path: String) throws(SystemError) {
        self.path = path
        fd = Atomic(try FileAuditSink.openFile(path))
    }

    static func openFile(_ path: String) throws(SystemError) -> Int32 {
        try syscallRetrying("open \(path)") { open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600) }
    }

    deinit { close(fd.load(ordering: .relaxed)) }

    public func record(_ r: AuditRecord) {
        Log.writeAll(fd.load(ordering: .acquiring), r.line + "\n")
    }

    /// One write(2) for the lot (O_APPEND keeps it whole).
    public func record(batch: [AuditRecord]) {
        var text = ""
        for r in batch { text += r.line; text += "\n" }
        Log.writeAll(fd.load(ordering: .acquiring), text)
    }

    /// Opens the path anew (it may have been rotated away); keeps the old
    /// file on failure.
    public func reopen() {
        do {
            let new = try FileAuditSink.openFile(path)
            let old = fd.exchange(new, ordering: .acquiringAndReleasing)
            // A writer may still hold the old number for a moment: let it
            // finish into the rotated file before closing.
            usleep(100_000)
            close(old)
        } catch {
            Log.error("audit=\(path): cannot reopen (\(error)); still writing to the previous file")
        }
    }
}

public struct NoAuditSink: AuditSink {
    public init() {}
    public func record(_ r: AuditRecord) {}
    public var wantsRecords: Bool { false }
}

/// Takes the writing of audit records off the open's path: the record is
/// built while the caller waits (its process name must be read while the
/// process is surely alive), then formatted and written by one thread, in
/// order. When the queue is full the caller writes itself (nothing is
/// dropped); `flush` drains it (SIGHUP, shutdown).
public final class QueuedAuditSink: AuditSink, @unchecked Sendable {
    public let inner: AuditSink
    private let lock = ConditionLock()
    private var queue: [AuditRecord] = []
    private var writing = false
    private let capacity: Int

    public init(_ inner: AuditSink, capacity: Int = 4096) {
        self.inner = inner
        self.capacity = capacity
        startThread(name: "kmsfs-audit") { [self] in run() }
    }

    public var wantsRecords: Bool { inner.wantsRecords }

    public func record(_ r: AuditRecord) {
        let queued = lock.withLock { () -> Bool in
            guard queue.count < capacity else { return false }
            queue.append(r)
            if queue.count == 1 { lock.signal() }
            return true
        }
        if !queued { inner.record(r) }
    }

    /// Records wait at most this long to be written with the ones that
    /// follow (one wake-up and one write for a burst of opens).
    static let linger = 0.02

    private func run() {
        while true {
            let batch: [AuditRecord] = lock.withLock {
                while queue.isEmpty { lock.wait() }
                lock.wait(seconds: QueuedAuditSink.linger)
                let b = queue
                queue.removeAll(keepingCapacity: true)
                writing = true
                return b
            }
            inner.record(batch: batch)
            lock.withLock { writing = false; lock.broadcast() }
        }
    }

    /// Returns once every record queued so far is written.
    public func flush() {
        lock.withLock {
            while !queue.isEmpty || writing { lock.wait(seconds: 0.1) }
        }
    }
}
