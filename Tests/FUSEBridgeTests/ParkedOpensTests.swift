import Testing
@testable import FUSEBridge
import CFuse

/// The limits on parked opens: every open waiting for its answer (queued,
/// decrypting, or joined to another's decryption) holds a place until it
/// is answered, a uid at most `perUid` of them.
@Suite struct ParkedOpensTests {
    func open(_ n: Int, uid: UInt32) -> ParkedOpen {
        ParkedOpen(req: OpaquePointer(bitPattern: 0x1000 * n), fi: fuse_file_info(), pid: 1, uid: uid)
    }

    @Test func placesAreLimitedInAllAndPerUidAndComeBack() {
        let parked = ParkedOpens(limit: 4, perUid: 2)
        let a1 = open(1, uid: 1), a2 = open(2, uid: 1), a3 = open(3, uid: 1)
        let b1 = open(4, uid: 2), b2 = open(5, uid: 2), c1 = open(6, uid: 3)
        #expect(parked.add(a1) && parked.add(a2))
        #expect(!parked.add(a3))                       // uid 1 holds its two
        #expect(parked.add(b1) && parked.add(b2))
        #expect(!parked.add(c1))                       // four in all
        #expect(parked.load.count == 4)
        #expect(parked.find(a2.req) === a2)

        parked.remove(a3)                              // never parked: changes nothing
        #expect(parked.load.count == 4)
        parked.remove(a1)
        parked.remove(a1)                              // twice: still one place back
        #expect(parked.load.count == 3)
        #expect(parked.find(a1.req) == nil)
        #expect(parked.add(a3))                        // uid 1's place came back
        #expect(!parked.add(c1))
        for p in [a2, a3, b1, b2] { parked.remove(p) }
        #expect(parked.load.count == 0)
        #expect(parked.add(c1))

        parked.setLimits(1, perUid: 8)                 // the ring's limit, once it serves
        #expect(parked.load.perUid == 1)
        #expect(!parked.add(a1))
    }
}
