import Testing
@testable import FUSEBridge
import CFuse

/// The adapter's rule for fi->fh: an open stores one retained object, every
/// read borrows it without changing its count, and release drops it once.
@Suite struct FileHandleTests {
    final class Probe {}

    @Test func fhHoldsExactlyOneRetainFromOpenToRelease() {
        let fi = UnsafeMutablePointer<fuse_file_info>.allocate(capacity: 1)
        fi.initialize(to: fuse_file_info())
        defer { fi.deallocate() }
        #expect(fi.handle(Probe.self) == nil)   // nothing stored: read answers EBADF
        fi.releaseHandle(Probe.self)             // and release has nothing to drop

        weak var watched: Probe?
        do {
            let probe = Probe()
            watched = probe
            _ = fi.storeHandle(probe)
        }
        #expect(watched != nil)                  // the open's retain keeps it
        for _ in 0..<3 { #expect(fi.handle(Probe.self) === watched) }
        #expect(watched != nil)                  // borrowing takes no retain of its own
        fi.releaseHandle(Probe.self)
        #expect(watched == nil)                  // release drops the only one
    }

    @Test func anUnansweredOpenGivesItsRetainBack() {
        let fi = UnsafeMutablePointer<fuse_file_info>.allocate(capacity: 1)
        fi.initialize(to: fuse_file_info())
        defer { fi.deallocate() }
        weak var watched: Probe?
        do {
            let probe = Probe()
            watched = probe
            fi.storeHandle(probe).release()      // fuse_reply_open failed: the kernel sends no release
        }
        #expect(watched == nil)
    }

    @Test func sourceNamesStayOneOptionForLibfuse() {
        #expect(FUSESession.escapeOptionValue("/srv/a,b\\c") == "/srv/a\\,b\\\\c")
        #expect(FUSESession.escapeOptionValue("plain") == "plain")
    }
}

/// The loop's reader arms its watchdog for every request except those whose
/// handlers never wait; anything that may touch SOURCE (lookup, getattr,
/// readdir, ...) is watched, so a hung disk hands the reading to another
/// worker.
@Suite struct LoopInlineTests {
    func request(_ opcode: UInt32) -> [UInt8] {
        var header = [UInt8](repeating: 0, count: 40)        // struct fuse_in_header
        withUnsafeBytes(of: UInt32(40).littleEndian) { header.replaceSubrange(0..<4, with: $0) }
        withUnsafeBytes(of: opcode.littleEndian) { header.replaceSubrange(4..<8, with: $0) }
        return header
    }

    func inline(_ bytes: [UInt8], flags: fuse_buf_flags = fuse_buf_flags(rawValue: 0)) -> Bool {
        var copy = bytes
        return copy.withUnsafeMutableBytes { raw in
            var buf = fuse_buf()
            buf.size = raw.count
            buf.flags = flags
            buf.mem = raw.baseAddress
            return kmsfs_loop_never_waits(&buf) != 0
        }
    }

    @Test func everyRequestThatMayWaitIsWatched() {
        // FORGET, OPEN, READ, RELEASE, FLUSH, INTERRUPT, BATCH_FORGET
        for op: UInt32 in [2, 14, 15, 18, 25, 36, 42] { #expect(inline(request(op)), "opcode \(op)") }
        // LOOKUP, GETATTR, STATFS, OPENDIR, READDIR, RELEASEDIR, ACCESS, INIT, DESTROY, READDIRPLUS, and unknown ones
        for op: UInt32 in [1, 3, 17, 27, 28, 29, 34, 26, 38, 44, 0, 9999] { #expect(!inline(request(op)), "opcode \(op)") }
        // Too short to hold an opcode, no memory, or data left in a pipe: a worker of its own.
        #expect(!inline(Array(request(15).prefix(7))))
        #expect(!inline(request(15), flags: FUSE_BUF_IS_FD))
        var empty = fuse_buf()
        #expect(kmsfs_loop_never_waits(&empty) == 0)
    }
}
