import Testing
import Foundation
import SecretFS
import KmsfsKit
import Log
import Synchronization

/// The audit record's byte form (what the audit writer appends for
/// audit=FILE), and the queue that takes writing off the open's path.
@Suite struct AuditTests {
    func record(_ name: String = "cat", path: String = "tls/key.pem", time: Double = 1_764_447_665.123,
                outcome: AuditRecord.Outcome = .cache, latency: Double? = nil, detail: String? = nil) -> AuditRecord {
        AuditRecord(time: time, uid: 33, gid: 4294967294, pid: 123456, processName: name, path: path,
                    outcome: outcome, latency: latency, detail: detail)
    }

    /// `line` escaped is what every sink wrote before; the byte form must
    /// be exactly that, hostile names included.
    func lineBytes(_ r: AuditRecord) -> [UInt8] {
        var clock = AuditClock()
        var out: [UInt8] = []
        r.appendLine(to: &out, clock: &clock)
        return out
    }

    @Test func theByteFormIsTheEscapedLine() {
        let records = [
            record(),
            record(outcome: .kms, latency: 0.0127),
            record(outcome: .denied, detail: "not in the allowed users or groups"),
            record(outcome: .failed, detail: "AccessDeniedException: \"no\"\nsecond line"),
            record("evil\nname", path: "a b/\u{1b}[31m.pem"),
            record("", path: "caf\u{e9}/\u{202e}x"),
            record("back\\slash\"quote", path: "x\ry\tz"),
            record(time: 0), record(time: 1_764_447_665.9999),
        ]
        for r in records {
            #expect(lineBytes(r) == Array((LogEscape.escape(r.line) + "\n").utf8), "\(r.line)")
        }
    }

    @Test func theJournalEntryIsWhatEncodeMakesOfTheRecordsFields() {
        let records = [
            record(), record(outcome: .kms, latency: 0.0127),
            record(outcome: .denied, detail: "not in the allowed users or groups"),
            record("evil\nname", path: "a\nPRIORITY=0", outcome: .failed, detail: "x\ny"),
            record("", path: "caf\u{e9}/\u{202e}x"),
        ]
        for r in records {
            for unit in [nil, "nginx.service", "evil\n.service"] as [String?] {
                let level: LogLevel = r.outcome == .denied || r.outcome == .failed ? .warning : .notice
                var clock = AuditClock()
                var got: [UInt8] = []
                r.appendJournalEntry(level: level, unit: unit, to: &got, clock: &clock)
                let want = Journal.encode([("MESSAGE", r.line), ("PRIORITY", String(level.rawValue)),
                                           ("SYSLOG_FACILITY", "3"), ("SYSLOG_IDENTIFIER", "kmsfs")]
                                          + r.journalFields(unit: unit))
                #expect(got == want, "\(r.line) \(unit ?? "-")")
            }
        }
    }

    @Test func oneClockFormatsEveryRecordOfABurstAcrossSeconds() {
        var clock = AuditClock()
        var out: [UInt8] = []
        let times = [1_764_447_665.001, 1_764_447_665.5, 1_764_447_666.0, 1_764_447_666.25, 1_764_447_601.75]
        for t in times { record(time: t).appendLine(to: &out, clock: &clock) }
        let want = times.map { LogEscape.escape(record(time: $0).line) + "\n" }.joined()
        #expect(out == Array(want.utf8))
    }

    /// A sink that keeps each record's path, slowly when asked (so the
    /// queue fills and openers must wait for room).
    final class RecordingSink: AuditSink, @unchecked Sendable {
        let paths = Mutex<[String]>([])
        let batches = Mutex(0)
        let delay: UInt32
        init(delay: UInt32 = 0) { self.delay = delay }
        func record(_ r: AuditRecord) { paths.withLock { $0.append(r.path) } }
        func record(batch: [AuditRecord]) {
            if delay > 0 { usleep(delay) }
            batches.withLock { $0 += 1 }
            paths.withLock { $0 += batch.map(\.path) }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func everyRecordIsWrittenInOrderUnderConcurrencyAndAFullQueueMakesOpenersWait() {
        let sink = RecordingSink(delay: 2000)
        let queue = QueuedAuditSink(sink, capacity: 8, linger: 0.001)
        let threads = 8, each = 300
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            for i in 0..<each { queue.record(record(path: "t\(t)/\(i)")) }
        }
        queue.flush()
        let paths = sink.paths.withLock { $0 }
        #expect(paths.count == threads * each)              // nothing dropped
        #expect(Set(paths).count == threads * each)         // nothing twice
        for t in 0..<threads {                              // each opener's records in its order
            let mine = paths.filter { $0.hasPrefix("t\(t)/") }.map { Int($0.split(separator: "/")[1])! }
            #expect(mine == Array(0..<each))
        }
        #expect(queue.waits > 0)                            // the queue did fill: openers waited
        #expect(sink.batches.withLock { $0 } < threads * each)   // and records went in batches
    }

    @Test(.timeLimit(.minutes(1)))
    func oneOpenersRecordsKeepTheirOrderThroughAQueueOfOne() {
        let sink = RecordingSink(delay: 500)
        let queue = QueuedAuditSink(sink, capacity: 1, linger: 0.05)
        for i in 0..<200 { queue.record(record(path: "\(i)")) }
        queue.flush()
        #expect(sink.paths.withLock { $0 } == (0..<200).map { "\($0)" })
    }

    @Test(.timeLimit(.minutes(1)))
    func flushReturnsOnlyOnceEveryQueuedRecordIsWritten() {
        let sink = RecordingSink(delay: 20_000)
        let queue = QueuedAuditSink(sink, capacity: 1024, linger: 0.2)
        for i in 0..<50 { queue.record(record(path: "\(i)")) }
        queue.flush()   // as at unmount: the lingering batch is written now, not lost
        #expect(sink.paths.withLock { $0.count } == 50)
        #expect(queue.waits == 0)
    }
}
