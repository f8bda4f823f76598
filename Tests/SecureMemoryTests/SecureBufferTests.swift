import Testing
@testable import SecureMemory
#if canImport(Glibc)
import Glibc
#endif

@Suite struct SecureBufferTests {
    @Test func holdsAppendsAndWipes() throws {
        let b = try SecureBuffer(capacity: 10)
        try Array("secret".utf8).withUnsafeBytes { try b.append($0) }
        #expect(b.count == 6)
        Array("secret".utf8).withUnsafeBytes { #expect(b.constantTimeEquals($0)) }
        Array("secreT".utf8).withUnsafeBytes { #expect(!b.constantTimeEquals($0)) }
        #expect(throws: SecureMemoryError.self) { try Array("too long!".utf8).withUnsafeBytes { try b.append($0) } }
        b.wipeContents()
        #expect(b.count == 0)
        b.withUnsafeMutableCapacity { cap in #expect(cap.allSatisfy { $0 == 0 }) }
    }

    /// A reader that raced the shutdown wipe is told so (and answers EIO)
    /// instead of serving zeros as the secret, or trapping the daemon on a
    /// range past the wiped count.
    @Test func aCopyOfWipedContentsSaysSo() throws {
        let b = try SecureBuffer(capacity: 16)
        try b.append(utf8: "hunter2")
        var out = [UInt8](repeating: 0xAA, count: 7)
        #expect(out.withUnsafeMutableBytes { b.copyBytes(from: 0, count: 7, to: $0.baseAddress!) })
        #expect(String(decoding: out, as: UTF8.self) == "hunter2")
        b.wipeContents()
        #expect(!out.withUnsafeMutableBytes { b.copyBytes(from: 0, count: 7, to: $0.baseAddress!) })
        #expect(!out.withUnsafeMutableBytes { b.copyBytes(from: 2, count: 5, to: $0.baseAddress!) })
        #expect(out.withUnsafeMutableBytes { b.copyBytes(from: 0, count: 0, to: $0.baseAddress!) })
    }

    /// A wipe for reuse leaves a buffer usable; a revocation (TTL, stop)
    /// says so, so a reader answers EIO rather than an empty secret.
    @Test func aRevokedBufferSaysSoAndAWipedOneDoesNot() throws {
        let b = try SecureBuffer(capacity: 16)
        try b.append(utf8: "hunter2")
        b.wipeContents()
        #expect(b.count == 0 && !b.isRevoked && b.readableCount == 0)
        try b.append(utf8: "hunter3")
        #expect(b.readableCount == 7)
        b.revoke()
        #expect(b.count == 0 && b.isRevoked && b.readableCount == nil)
    }

    /// A revoked buffer gives its pages back at once, not when the last
    /// open file lets go of it: a handle held open across each TTL kept a
    /// locked copy per period. Read after the revocation, it is zeros.
    @Test func theStopsWipeLeavesABufferInUseToItsOwner() throws {
        // (The stop's wipe of every live buffer cannot run here: it would
        // wipe the other tests' buffers. Its step for one buffer can.)
        let b = try SecureBuffer(capacity: 64, backing: .lockedAnonymous)
        try Array("reply being sent".utf8).withUnsafeBytes { try b.append($0) }
        #expect(b.beginUse())
        b.revokeUnlessInUse()                      // the stop, while a reply is sent from it
        #expect(!b.isRevoked)
        #expect(b.withUnsafeBytes { Array($0) } == Array("reply being sent".utf8))
        b.endUse()                                 // the owner is done: revoked now
        #expect(b.isRevoked && b.count == 0)
        #expect(!b.beginUse())                     // and never used again
        // Idle, it is revoked at once.
        let idle = try SecureBuffer(capacity: 64, backing: .lockedAnonymous)
        idle.revokeUnlessInUse()
        #expect(idle.isRevoked && !idle.beginUse())
        // A scratch pool drops a buffer the wipe took while it waited there.
        let pool = ScratchPool(bufferSize: 64)
        #expect(try pool.withScratch { _ in 0 })
        #expect(try pool.withScratch { buf in
            buf.storeBytes(of: 7, as: UInt8.self)
            return 1
        })
    }

    @Test func aRevokedBufferGivesItsPagesBack() throws {
        var backings: [SecureBacking] = [.lockedAnonymous]
        if SecureMemoryPolicy.secretMemoryAvailable { backings.append(.secretMemory) }
        for backing in backings {
            let size = 1 << 20
            let b = try SecureBuffer(capacity: size, backing: backing)
            let fill = [UInt8](repeating: 0x5A, count: size)
            try fill.withUnsafeBytes { try b.append($0) }
            #expect(residentKiB(at: b.address) >= size / 1024, "\(backing)")
            let before = mappingStart(at: b.address)
            b.revoke(releasingPages: true)
            #expect(residentKiB(at: b.address) == 0, "\(backing)")
            // One mapping now, guard pages and all, where there were three.
            if backing == .lockedAnonymous, let before, let after = mappingStart(at: b.address) {
                #expect(before == UInt(bitPattern: b.address) && after < before)
            }
            var out = [UInt8](repeating: 0xAA, count: 16)
            #expect(!out.withUnsafeMutableBytes { b.copyBytes(from: 0, count: 16, to: $0.baseAddress!) })
            #expect(UnsafeRawBufferPointer(start: b.address, count: size).allSatisfy { $0 == 0 })
            b.wipeContents()   // a later wipe (the shutdown's) writes nothing there
            b.revoke()
            #expect(residentKiB(at: b.address) == 0, "\(backing)")
        }
        // The shutdown's wipe of every live buffer leaves the pages where
        // they are: a thread may still be filling one (a KMS answer).
        let filling = try SecureBuffer(capacity: 4096)
        try filling.append(utf8: "half")
        filling.revoke()
        #expect(throws: SecureMemoryError.self) { try filling.append(utf8: " a reply") }   // a late write: refused, no fault
        #expect(filling.isRevoked && filling.count == 0)
    }

    /// Where the mapping holding `p` begins, from /proc/self/maps.
    func mappingStart(at p: UnsafeRawPointer) -> UInt? {
        var start: UInt? = nil
        forEachMapping { lo, hi, _ in
            if lo <= UInt(bitPattern: p) && UInt(bitPattern: p) < hi { start = lo }
        }
        return start
    }

    /// Calls `body` with each mapping's range and its smaps lines.
    func forEachMapping(_ body: (UInt, UInt, [String]) -> Void) {
        guard let f = fopen("/proc/self/smaps", "r") else { return }
        defer { fclose(f) }
        var current: (UInt, UInt)? = nil
        var fields: [String] = []
        var line = [CChar](repeating: 0, count: 4096)
        while fgets(&line, Int32(line.count), f) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if let dash = text.firstIndex(of: "-"), let space = text.firstIndex(of: " "), dash < space,
               let lo = UInt(text[..<dash], radix: 16), let hi = UInt(text[text.index(after: dash)..<space], radix: 16) {
                if let c = current { body(c.0, c.1, fields) }
                current = (lo, hi)
                fields = []
            } else {
                fields.append(text)
            }
        }
        if let c = current { body(c.0, c.1, fields) }
    }

    /// The Rss of the mapping holding `p`, from /proc/self/smaps.
    func residentKiB(at p: UnsafeRawPointer) -> Int {
        var kib = -1
        forEachMapping { lo, hi, fields in
            guard lo <= UInt(bitPattern: p) && UInt(bitPattern: p) < hi,
                  let rss = fields.first(where: { $0.hasPrefix("Rss:") }) else { return }
            kib = Int(rss.dropFirst(4).split(separator: " ").first ?? "") ?? -1
        }
        return kib
    }

    @Test func descriptionIsRedacted() throws {
        let b = try SecureBuffer(capacity: 16)
        try b.append(utf8: "hunter2")
        #expect(!"\(b)".contains("hunter2"))
        #expect(!String(reflecting: b).contains("hunter2"))
        #expect("\(b)".contains("redacted"))
    }

    @Test func usesSecretMemoryWhereTheKernelOffersIt() throws {
        let b = try SecureBuffer(capacity: 100)
        if SecureMemoryPolicy.secretMemoryAvailable {
            #expect(b.backing == .secretMemory)
        } else {
            #expect(b.backing == .lockedAnonymous || b.backing == .unlockedAnonymous)
        }
        let locked = try SecureBuffer(capacity: 100, backing: .lockedAnonymous)
        #expect(locked.backing != .secretMemory)
    }

    @Test func liveBuffersAreCountedAndReleased() throws {
        // By identity in the registry, not by the global count: tests that
        // run alongside make and free buffers of their own meanwhile.
        func registered(_ id: ObjectIdentifier) -> Bool { SecureMemoryStats.live.withLock { $0.registry[id] != nil } }
        // (After release, by a weak reference: a freed buffer's identity may
        // be a parallel test's new buffer at once.)
        weak var wa: SecureBuffer?
        weak var wb: SecureBuffer?
        do {
            let a = try SecureBuffer(capacity: 1)
            let b = try SecureBuffer(capacity: 5000)
            (wa, wb) = (a, b)
            #expect(registered(ObjectIdentifier(a)) && registered(ObjectIdentifier(b)))
            #expect(SecureMemoryStats.liveBuffers >= 2)
            _ = (a, b)
        }
        #expect(wa == nil && wb == nil)      // released: deinit deregisters and unmaps
    }

    @Test func accumulatorGrowsWithinItsLimit() throws {
        let acc = try SecureAccumulator(initialCapacity: 4, limit: 64)
        for _ in 0..<8 { try Array("abcdefgh".utf8).withUnsafeBytes { try acc.append($0) } }
        #expect(acc.buffer.count == 64)
        #expect(throws: SecureMemoryError.self) { try [UInt8(1)].withUnsafeBytes { try acc.append($0) } }
        acc.buffer.withUnsafeBytes { #expect(String(decoding: $0.prefix(8), as: UTF8.self) == "abcdefgh") }
    }

    /// The stop's wipe revokes an accumulator being filled (an HTTP body,
    /// a credential helper's output): growing must not carry on into a
    /// fresh buffer, nor hand on one the wipe tore.
    @Test func aRevokedAccumulatorStopsFilling() throws {
        let acc = try SecureAccumulator(initialCapacity: 4, limit: 64)
        try Array("abcd".utf8).withUnsafeBytes { try acc.append($0) }
        #expect(acc.buffer.capacity == 4)   // the next append grows it
        acc.buffer.revoke()
        #expect { try Array("efghijkl".utf8).withUnsafeBytes { try acc.append($0) } } throws: {
            if case SecureMemoryError.revoked = $0 { return true } else { return false }
        }
        #expect(acc.buffer.isRevoked)
    }

    /// A revoked plaintext's pages go back at once, replaced by a mapping
    /// that reads as zeros; wiping it again or letting it go is safe.
    @Test func pagesReleasedByARevokeReadAsZeros() throws {
        let b = try SecureBuffer(capacity: 4096)
        try Array("secret".utf8).withUnsafeBytes { try b.append($0) }
        b.revoke(releasingPages: true)
        #expect(b.isRevoked && b.readableCount == nil)
        b.withUnsafeMutableCapacity { #expect($0.prefix(64).allSatisfy { $0 == 0 }) }
        b.wipeContents()
    }

    @Test func scratchIsWipedAfterUse() throws {
        let pool = ScratchPool(bufferSize: 64, maxPooled: 1)
        try pool.withScratch { (buf: UnsafeMutableRawBufferPointer) -> Int in
            for i in 0..<10 { buf[i] = 0x41 }
            return 10
        }
        try pool.withScratch { (buf: UnsafeMutableRawBufferPointer) -> Int in
            #expect(buf.prefix(10).allSatisfy { $0 == 0 })
            return 0
        }
    }
}

@Suite struct SecureAccumulatorReadTests {
    /// `data` written into a pipe, then read from it until it ends, into an
    /// accumulator of `limit`: the accumulator and how the reading ended.
    func drained(_ data: [UInt8], limit: Int) throws -> (SecureAccumulator, SecureAccumulator.ReadOutcome) {
        var fds: [Int32] = [-1, -1]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]) }
        let writer = fds[1]
        #expect(data.withUnsafeBytes { write(writer, $0.baseAddress, $0.count) } == data.count)
        close(writer)
        let acc = try SecureAccumulator(initialCapacity: 16, limit: limit)
        var outcome = acc.read(from: fds[0])
        while case .read = outcome { outcome = acc.read(from: fds[0]) }
        return (acc, outcome)
    }

    /// Bytes read from a descriptor land in the buffer whole, across
    /// growth, and a byte past the limit is refused.
    @Test func readsStraightInGrowingUpToTheLimit() throws {
        let data = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let (whole, end) = try drained(data, limit: 10_000)
        guard case .end = end else { Issue.record("ended with \(end)"); return }
        #expect(whole.buffer.withUnsafeBytes { Array($0) } == data)
        let (cut, over) = try drained(data, limit: 9_999)
        guard case .overLimit = over else { Issue.record("ended with \(over)"); return }
        #expect(cut.buffer.count == 9_999)
    }
}
