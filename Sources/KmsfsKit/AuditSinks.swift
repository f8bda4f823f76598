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
            Journal.send(level, identifier: "kmsfs", message: r.line, extra: r.journalFields, whenStuck: .fallBack)
            return
        }
        Log.log(level, r.line)
    }

    /// A batch from the audit writer: in the journal, each process's unit
    /// is read from /proc/PID/cgroup once per batch, not once per record
    /// (a busy reader's records share its pid).
    public func record(batch: [AuditRecord]) {
        guard Log.destination == .journal else {
            for r in batch { record(r) }
            return
        }
        var units: [Int32: String?] = [:]
        let threshold = Log.level
        var entry: [UInt8] = []
        var clock = AuditClock()
        for r in batch {
            let level: LogLevel = r.outcome == .denied || r.outcome == .failed ? .warning : .notice
            guard level >= threshold else { continue }
            var unit: String? = nil
            if r.outcome != .notified && r.outcome != .notifyFailed {
                if let known = units[r.pid] {
                    unit = known
                } else {
                    unit = systemdUnit(pid: r.pid)
                    units[r.pid] = .some(unit)
                }
            }
            entry.removeAll(keepingCapacity: true)
            r.appendJournalEntry(level: level, unit: unit, to: &entry, clock: &clock)
            if !Journal.send(entry: entry) {
                Log.syslog(level, facility: 0, r.line)   // as Journal.send falls back
            }
        }
    }
}

extension AuditRecord {
    /// The record as one native journal entry, the same bytes as
    /// `Journal.encode` of `MESSAGE` (the line), `PRIORITY`,
    /// `SYSLOG_FACILITY`, `SYSLOG_IDENTIFIER` and `journalFields(unit:)`,
    /// built without the intermediate strings and arrays (the audit
    /// writer's cost per record, on the daemon's own CPUs).
    public func appendJournalEntry(level: LogLevel, unit: String?, to out: inout [UInt8], clock: inout AuditClock) {
        var line: [UInt8] = []
        line.reserveCapacity(160)
        appendLine(to: &line, clock: &clock, newline: false)
        line.withUnsafeBytes { Journal.appendField("MESSAGE", $0, to: &out) }
        Journal.appendField("PRIORITY", String(level.rawValue), to: &out)
        Journal.appendField("SYSLOG_FACILITY", "3", to: &out)
        Journal.appendField("SYSLOG_IDENTIFIER", "kmsfs", to: &out)
        Journal.appendField("MESSAGE_ID", AuditRecord.journalMessageID, to: &out)
        Journal.appendField("KMSFS_PATH", path, to: &out)
        Journal.appendField("KMSFS_UID", String(uid), to: &out)
        Journal.appendField("KMSFS_GID", String(gid), to: &out)
        Journal.appendField("KMSFS_PID", String(pid), to: &out)
        Journal.appendField("KMSFS_COMM", processName, to: &out)
        Journal.appendField("KMSFS_RESULT", result, to: &out)
        Journal.appendField("KMSFS_SOURCE", outcome.rawValue, to: &out)
        if let unit { Journal.appendField("KMSFS_UNIT", unit, to: &out) }
        if let latency { Journal.appendField("KMSFS_KMS_MS", String(Int((latency * 1000).rounded())), to: &out) }
        if let detail { Journal.appendField("KMSFS_REASON", detail, to: &out) }
    }
}

extension AuditRecord {
    /// The MESSAGE_ID of every kmsfs audit record (`journalctl
    /// MESSAGE_ID=b67d0b4cdae54961a38b202bea9a2ce6`).
    public static let journalMessageID = "b67d0b4cdae54961a38b202bea9a2ce6"

    /// The record as journal fields. Values go as they are (the native
    /// protocol sizes a value holding a newline, so none can forge a field).
    public var journalFields: [(String, String)] {
        // The caller's systemd unit, read here on the audit writer's thread
        // (off the open's path); absent once the process is gone.
        journalFields(unit: outcome != .notified && outcome != .notifyFailed ? systemdUnit(pid: pid) : nil)
    }

    /// The fields with the caller's unit already looked up.
    public func journalFields(unit: String?) -> [(String, String)] {
        var f = [("MESSAGE_ID", AuditRecord.journalMessageID), ("KMSFS_PATH", path), ("KMSFS_UID", String(uid)),
                 ("KMSFS_GID", String(gid)), ("KMSFS_PID", String(pid)), ("KMSFS_COMM", processName),
                 ("KMSFS_RESULT", result), ("KMSFS_SOURCE", outcome.rawValue)]
        if let unit { f.append(("KMSFS_UNIT", unit)) }
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
    /// One number for the sink's life: `reopen` puts the new file under it.
    private let fd: Int32
    public let path: String

    public init(path: String) throws(LogFileError) {
        self.path = path
        fd = try Log.openAppendFile(path)
    }

    deinit { close(fd) }

    public func record(_ r: AuditRecord) {
        var bytes = Array((LogEscape.escape(r.line) + "\n").utf8)
        bytes.withUnsafeBytes { writeRetrying($0) }
        bytes.removeAll()
    }

    /// Held by a write (all of its bytes) and by `reopen`.
    private let writing = ConditionLock()
    /// When a write last failed and was logged (monotonic seconds).
    private let lastFailureLog = Mutex(-Double.infinity)
    /// Pause after a failed write, doubled up to `maximumPause`.
    static let firstPause = 0.05
    static let maximumPause = 1.0

    /// Writes all of `bytes`, however long it takes: a full disk (ENOSPC,
    /// EDQUOT) or a failing one (EIO) is tried again after a pause that
    /// grows to a second, and said in the log at most once a minute. No
    /// record is dropped (the guide's promise): while this waits, the
    /// queue fills and opens wait for room. A partial write is finished
    /// from where it stopped, so the next line never starts inside an
    /// unfinished one.
    func writeRetrying(_ bytes: UnsafeRawBufferPointer) {
        // A reopen waits for the write under way: a line begun in the old
        // file is finished there, never continued at the new file's start.
        writing.lock()
        defer { writing.unlock() }
        guard let base = bytes.baseAddress else { return }
        var off = 0
        var pause = FileAuditSink.firstPause
        var failures = 0
        while off < bytes.count {
            let n = write(fd, base + off, bytes.count - off)
            if n > 0 {
                off += n
                continue
            }
            let e = n < 0 ? Errno.current : EIO
            if e == EINTR { continue }
            failures += 1
            let now = SystemClock.monotonic()
            let say = lastFailureLog.withLock { last -> Bool in
                guard now - last >= 60 else { return false }
                last = now
                return true
            }
            if say {
                Log.error("audit=\(LogEscape.escape(path)): cannot write (\(Errno.text(e))); audit records wait and opens wait for them until it can be written")
            }
            SystemClock.sleep(pause)
            pause = min(pause * 2, FileAuditSink.maximumPause)
        }
        if failures > 0 {
            Log.notice("audit=\(LogEscape.escape(path)): writing again after \(failures) failed tries; no record was lost")
            lastFailureLog.withLock { $0 = -Double.infinity }
        }
    }

    /// Reused by `record(batch:)`, which only the queue's one writer calls.
    private var batchBytes: [UInt8] = []
    private var clock = AuditClock()

    /// One write(2) for the lot (O_APPEND keeps it whole), formatted into a
    /// buffer kept from batch to batch: the daemon's memory is locked, so
    /// heap a burst takes stays resident, and a fresh buffer per batch
    /// would take more of it. Each line is appended as bytes, the same
    /// bytes as the escaped `line` (AuditRecord.appendLine).
    public func record(batch: [AuditRecord]) {
        batchBytes.removeAll(keepingCapacity: true)
        for r in batch { r.appendLine(to: &batchBytes, clock: &clock) }
        batchBytes.withUnsafeBytes { writeRetrying($0) }
    }

    /// Opens the path anew (it may have been rotated away) under the same
    /// number (`Log.reopenAppendFile`); keeps the old file on failure.
    public func reopen() {
        writing.lock()
        defer { writing.unlock() }
        do { try Log.reopenAppendFile(path, onto: fd) } catch {
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
/// order, in batches (one wake-up and one write for a burst of opens).
/// Nothing is ever dropped: when `capacity` records already wait, the
/// opener waits for the writer to make room (so records stay in order),
/// and each such wait is counted (`waits`) and logged at most once a
/// minute. `flush` drains the queue (SIGHUP, unmount, SIGTERM).
public final class QueuedAuditSink: AuditSink, @unchecked Sendable {
    public let inner: AuditSink
    private let lock = ConditionLock()
    private var queue: [AuditRecord] = []
    /// The batch being written; swapped with `queue`, so neither array is
    /// ever reallocated (see FileAuditSink.record(batch:)).
    private var spare: [AuditRecord] = []
    private var writing = false
    private let capacity: Int
    private let linger: Double
    private var waitCount = 0
    private var lastWaitLog = -Double.infinity

    public init(_ inner: AuditSink, capacity: Int = 1024, linger: Double = QueuedAuditSink.linger) {
        self.inner = inner
        self.capacity = max(1, capacity)
        self.linger = linger
        queue.reserveCapacity(self.capacity)
        spare.reserveCapacity(self.capacity)
        startThread(name: "kmsfs-audit") { [self] in run() }
    }

    public var wantsRecords: Bool { inner.wantsRecords }

    /// How many times an opener waited for room in the queue.
    public var waits: Int { lock.withLock { waitCount } }

    public func tryRecord(_ r: AuditRecord) -> Bool {
        lock.withLock {
            guard queue.count < capacity else {
                lock.broadcast()   // the writer may be lingering: write now
                return false
            }
            append(r)
            return true
        }
    }

    /// With the lock held and room in the queue.
    private func append(_ r: AuditRecord) {
        queue.append(r)
        if queue.count == 1 { lock.broadcast() }   // the writer waits for a first record
    }

    public func record(_ r: AuditRecord) {
        var logWait = false
        lock.withLock {
            if queue.count >= capacity {
                waitCount += 1
                let t = SystemClock.monotonic()
                if t - lastWaitLog >= 60 {
                    lastWaitLog = t
                    logWait = true
                }
                lock.broadcast()   // the writer may be lingering: write now
                while queue.count >= capacity { lock.wait() }
            }
            append(r)
        }
        if logWait {
            Log.warning("audit: the audit writer fell behind; opens waited for it (\(waits) times so far)")
        }
    }

    /// Records wait at most this long to be written with the ones that
    /// follow (one wake-up and one write for a burst of opens).
    public static let linger = 0.02

    private func run() {
        while true {
            lock.withLock {
                while queue.isEmpty { lock.wait() }
                if queue.count < capacity { lock.wait(seconds: linger) }
                swap(&queue, &spare)
                writing = true
                lock.broadcast()   // openers waiting for room
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

    /// Waits at most `seconds` for every record queued so far to be
    /// written; returns how many are still waiting then (0: all written).
    /// For the reload and the stop, which must not wait for ever on a
    /// stuck sink (a full disk, a FIFO nobody reads): the stop would
    /// otherwise end in systemd's SIGKILL with those records lost unsaid.
    public func flush(within seconds: Double) -> Int {
        let deadline = SystemClock.monotonic() + max(0, seconds)
        return lock.withLock {
            while !queue.isEmpty || writing {
                let left = deadline - SystemClock.monotonic()
                if left <= 0 { return queue.count + (writing ? spare.count : 0) }
                lock.wait(seconds: min(left, 0.1))
            }
            return 0
        }
    }
}
