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
