import SecretFS
import Log
import SecureMemory
import Synchronization
import System
#if canImport(Glibc)
import Glibc
#endif

/// Audit records as log lines (stderr under journald, the journal, or
/// syslog), notice level for allowed opens and warning level for denials
/// and failures. In the journal each record also carries its fields, so
/// `journalctl KMSFS_RESULT=denied` finds the denials.
public struct LogAuditSink: AuditSink {
    public init() {}
    public func record(_ r: AuditRecord) {
        let level: LogLevel = r.outcome == .denied || r.outcome == .failed ? .warning : .notice
        if Log.destination == .journal {
            guard level >= Log.level else { return }
            Journal.send(level, identifier: "kmsfs", message: r.line, extra: r.journalFields)
            return
        }
        Log.log(level, r.line)
    }
}

extension AuditRecord {
    /// The MESSAGE_ID of every kmsfs audit record (`journalctl
    /// MESSAGE_ID=b67d0b4cdae54961a38b202bea9a2ce6`).
    public static let journalMessageID = "b67d0b4cdae54961a38b202bea9a2ce6"

    /// The record as journal fields. Values go as they are (the native
    /// protocol sizes a value holding a newline, so none can forge a field).
    public var journalFields: [(String, String)] {
        var f = [("MESSAGE_ID", AuditRecord.journalMessageID), ("KMSFS_PATH", path), ("KMSFS_UID", String(uid)),
                 ("KMSFS_GID", String(gid)), ("KMSFS_PID", String(pid)), ("KMSFS_COMM", processName),
                 ("KMSFS_RESULT", result), ("KMSFS_SOURCE", outcome.rawValue)]
        // The caller's systemd unit, read here on the audit writer's thread
        // (off the open's path); absent once the process is gone.
        if outcome != .notified && outcome != .notifyFailed, let unit = systemdUnit(pid: pid) { f.append(("KMSFS_UNIT", unit)) }
        if let latency { f.append(("KMSFS_KMS_MS", String(Int((latency * 1000).rounded())))) }
        if let detail { f.append(("KMSFS_REASON", detail)) }
        return f
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
/// reopens it (after logrotate). A symlink, or a file another user owns,
/// is refused (see `Log.openAppendFile`).
public final class FileAuditSink: AuditSink, @unchecked Sendable {
    private let fd: Atomic<Int32>
    public let path: String

    public init(path: String) throws(LogFileError) {
        self.path = path
        fd = Atomic(try Log.openAppendFile(path))
    }

    deinit { close(fd.load(ordering: .relaxed)) }

    public func record(_ r: AuditRecord) {
        Log.writeAll(fd.load(ordering: .acquiring), LogEscape.escape(r.line) + "\n")
    }

    /// Reused by `record(batch:)`, which only the queue's one writer calls.
    private var batchBytes: [UInt8] = []

    /// One write(2) for the lot (O_APPEND keeps it whole), formatted into a
    /// buffer kept from batch to batch: the daemon's memory is locked, so
    /// heap a burst takes stays resident, and a fresh buffer per batch
    /// would take more of it.
    public func record(batch: [AuditRecord]) {
        batchBytes.removeAll(keepingCapacity: true)
        for r in batch {
            // The fields are quoted already; escaping the whole line again
            // changes nothing unless a field was not, and keeps it one line.
            batchBytes.append(contentsOf: LogEscape.escape(r.line).utf8)
            batchBytes.append(UInt8(ascii: "\n"))
        }
        batchBytes.withUnsafeBytes { Log.writeAll(fd.load(ordering: .acquiring), $0) }
    }

    /// Opens the path anew (it may have been rotated away); keeps the old
    /// file on failure.
    public func reopen() {
        do {
            let new = try Log.openAppendFile(path)
            let old = fd.exchange(new, ordering: .acquiringAndReleasing)
            // A writer may still hold the old number for a moment: let it
            // finish into the rotated file before closing.
            SystemClock.sleep(0.1)
            close(old)
        } catch {
            Log.error("audit=: cannot reopen (\(error)); still writing to the previous file")
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
    /// The batch being written; swapped with `queue`, so neither array is
    /// ever reallocated (see FileAuditSink.record(batch:)).
    private var spare: [AuditRecord] = []
    private var writing = false
    private let capacity: Int

    public init(_ inner: AuditSink, capacity: Int = 1024) {
        self.inner = inner
        self.capacity = capacity
        queue.reserveCapacity(self.capacity)
        spare.reserveCapacity(self.capacity)
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
            lock.withLock {
                while queue.isEmpty { lock.wait() }
                lock.wait(seconds: QueuedAuditSink.linger)
                swap(&queue, &spare)
                writing = true
            }
            inner.record(batch: spare)
            lock.withLock {
                spare.removeAll(keepingCapacity: true)
                writing = false
                lock.broadcast()
            }
        }
    }

    /// Returns once every record queued so far is written.
    public func flush() {
        lock.withLock {
            while !queue.isEmpty || writing { lock.wait(seconds: 0.1) }
        }
    }
}
