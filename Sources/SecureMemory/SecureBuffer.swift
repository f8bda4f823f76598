import System
import CLinux
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where a `SecureBuffer`'s pages come from.
public enum SecureBacking: String, Sendable {
    /// `memfd_secret(2)` pages: locked, out of the kernel's direct map, so
    /// not even root's `/proc/PID/mem` or ptrace can read them; never in a
    /// core dump; not usable by system calls that pin pages.
    case secretMemory = "memfd_secret"
    /// Anonymous pages, `mlock`ed, `MADV_DONTDUMP`, `MADV_WIPEONFORK`, with a
    /// `PROT_NONE` guard page on each side.
    case lockedAnonymous = "mlock"
    /// Like `lockedAnonymous`, but the lock failed and the operator allowed
    /// it (`insecure_allow_unlocked`). Still undumpable and wiped.
    case unlockedAnonymous = "unlocked"
}

public enum SecureMemoryError: Error, CustomStringConvertible, Sendable {
    case allocationFailed(Errno)
    case lockFailed(Errno)
    case capacityExceeded(requested: Int, limit: Int)
    /// Written after `revoke` (the daemon stops while a KMS answer arrives).
    case revoked

    public var description: String {
        switch self {
        case .allocationFailed(let e): return "cannot allocate secure memory (\(e))"
        case .lockFailed(let e):
            return "cannot lock secure memory (\(e)); raise RLIMIT_MEMLOCK (LimitMEMLOCK=infinity) or grant CAP_IPC_LOCK"
        case .capacityExceeded(let r, let l): return "secure buffer of \(r) bytes exceeds the limit of \(l) bytes"
        case .revoked: return "the secure buffer was wiped for good (the daemon is stopping)"
        }
    }
}

/// Process-wide policy for secure allocations, set once at start-up.
public enum SecureMemoryPolicy {
    struct State {
        var preferSecretMemory = true
        var allowUnlocked = false
        var unlockedWarning: String? = nil
        var unlockedWarned = false
        var secretMemoryProbed: Bool? = nil
    }
    static let state = Mutex(State())
    typealias FallbackReporter = @Sendable (_ failure: Errno, _ fallbacksSinceStart: Int) -> Void
    static let reporter = Mutex<FallbackReporter?>(nil)

    /// Whether `memfd_secret` may be used when the kernel offers it.
    public static var preferSecretMemory: Bool {
        get { state.withLock { $0.preferSecretMemory } }
        set { state.withLock { $0.preferSecretMemory = newValue } }
    }

    /// Whether an allocation whose `mlock` fails may continue unlocked.
    public static var allowUnlocked: Bool {
        get { state.withLock { $0.allowUnlocked } }
        set { state.withLock { $0.allowUnlocked = newValue } }
    }

    /// With `allowUnlocked`: a line written to stderr the first time an
    /// allocation goes on unlocked (the tools say so rather than swap
    /// plaintext silently; the daemon warns once at start instead).
    public static var unlockedWarning: String? {
        get { state.withLock { $0.unlockedWarning } }
        set { state.withLock { $0.unlockedWarning = newValue } }
    }

    /// Told when an allocation that asked for `memfd_secret` pages got
    /// locked anonymous memory instead: at the first such allocation and
    /// then at the 2nd, 4th, 8th, … (a failure that lasts is said again,
    /// ever less often), with why the call failed and how many have fallen
    /// back since start. The daemon logs it: the fallback happens at the
    /// moment the mount is short of descriptors or memory, which is when an
    /// operator needs to hear that plaintext sits in the direct map.
    public static var fallbackReporter: (@Sendable (_ failure: Errno, _ fallbacksSinceStart: Int) -> Void)? {
        get { reporter.withLock { $0 } }
        set { reporter.withLock { $0 = newValue } }
    }

    static func noteSecretMemoryFallback(_ e: Errno) {
        let n = SecureMemoryStats.fallbacks.add(1, ordering: .relaxed).newValue
        guard n & (n - 1) == 0, let report = fallbackReporter else { return }
        report(e, n)
    }

    /// Writes the warning at the first fallback.
    static func noteUnlockedFallback(_ e: Errno) {
        let warning: String? = state.withLock { s in
            defer { s.unlockedWarned = true }
            return s.unlockedWarned ? nil : s.unlockedWarning
        }
        if let warning {
            let line = Array("\(warning) (\(e))\n".utf8)
            _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        }
    }

    /// True when this kernel offers `memfd_secret` (probed once).
    public static var secretMemoryAvailable: Bool {
        state.withLock { s in
            if let known = s.secretMemoryProbed { return known }
            let fd = kmsfs_memfd_secret(UInt32(O_CLOEXEC))
            let ok = fd >= 0
            if ok { close(fd) }
            s.secretMemoryProbed = ok
            return ok
        }
    }

    /// The backing new buffers get by default.
    public static var defaultBacking: SecureBacking {
        (preferSecretMemory && secretMemoryAvailable) ? .secretMemory : .lockedAnonymous
    }
}

/// Live-buffer accounting, for `kmsfs status`, the tests and the wipe at
/// shutdown.
public enum SecureMemoryStats {
    static let live = Mutex<(count: Int, bytes: Int, registry: [ObjectIdentifier: Unmanaged<SecureBuffer>])>((0, 0, [:]))

    public static var liveBuffers: Int { live.withLock { $0.count } }

    /// Allocations since start that asked for `memfd_secret` pages and got
    /// locked anonymous memory instead (the call failed for them: out of
    /// descriptors, of memory): their contents were in the kernel's direct
    /// map. Shown in `kmsfs status` (`memory_fallbacks`), since the policy
    /// alone says `memfd_secret`.
    public static var secretMemoryFallbacks: Int { fallbacks.load(ordering: .relaxed) }
    static let fallbacks = Atomic<Int>(0)
    public static var liveBytes: Int { live.withLock { $0.bytes } }

    /// Wipes the contents of every live buffer for good (shutdown, fatal
    /// paths). The buffers stay mapped, empty and revoked: a read racing
    /// the wipe answers EIO, never an empty file. A scratch buffer a
    /// reply is being sent from (`ScratchPool.withScratch`) is left to its
    /// owner, which wipes it as soon as the call returns and revokes it
    /// then: wiped under the call, the reply carried zeros where the
    /// connection could not be aborted first.
    public static func wipeAllLive() {
        live.withLock { state in
            for (_, ref) in state.registry {
                ref._withUnsafeGuaranteedRef { $0.revokeUnlessInUse() }
            }
        }
    }
}

/// The one type that holds plaintext. Pages are locked, excluded from core
/// dumps and wiped before they are released; where the kernel offers
/// `memfd_secret` they are also removed from the kernel's direct map.
///
/// Thread-safety: a buffer is filled by one thread, then published (through
/// a lock, such as the secret cache's) and only read afterwards. Reads from
/// many threads at once are safe; writes after publication are not.
///
/// Never printed: `description` is redacted.
public final class SecureBuffer: @unchecked Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    public let backing: SecureBacking
    /// Usable bytes.
    public let capacity: Int
    /// Bytes in use (`<= capacity`). Atomic: the wipe at shutdown
    /// (`SecureMemoryStats.wipeAllLive`) sets it to 0 from another thread
    /// while an owner may read it or wipe too.
    public var count: Int { storedCount.load(ordering: .acquiring) }
    private let storedCount = Atomic<Int>(0)

    private let base: UnsafeMutableRawPointer      // first usable byte
    /// Where the bytes live (tests read the mapping's residency).
    var address: UnsafeRawPointer { UnsafeRawPointer(base) }
    private let mapping: UnsafeMutableRawPointer   // whole mapping, guards included
    private let mappingLength: Int

    /// Allocates `capacity` bytes (rounded up to whole pages internally).
    public init(capacity: Int, backing requested: SecureBacking? = nil) throws(SecureMemoryError) {
        let want = requested ?? SecureMemoryPolicy.defaultBacking
        let length = roundUpToPage(capacity)
        var secret: Result<UnsafeMutableRawPointer, Errno>? = nil
        if want == .secretMemory { secret = SecureBuffer.mapSecret(length) }
        if case .success(let m) = secret {
            self.backing = .secretMemory
            self.mapping = m
            self.mappingLength = length
            self.base = m
        } else {
            if case .failure(let e) = secret { SecureMemoryPolicy.noteSecretMemoryFallback(e) }
            let (m, total, locked) = try SecureBuffer.mapAnonymous(length)
            self.backing = locked ? .lockedAnonymous : .unlockedAnonymous
            self.mapping = m
            self.mappingLength = total
            self.base = m + systemPageSize
        }
        self.capacity = capacity
        let me = Unmanaged.passUnretained(self)
        SecureMemoryStats.live.withLock {
            $0.count += 1
            $0.bytes += length
            $0.registry[ObjectIdentifier(self)] = me
        }
    }

    /// A buffer holding a copy of `bytes` (which the caller wipes).
    public convenience init(copying bytes: UnsafeRawBufferPointer, backing: SecureBacking? = nil) throws(SecureMemoryError) {
        try self.init(capacity: bytes.count, backing: backing)
        try append(bytes)
    }

    /// A buffer of `capacity` bytes that `body` fills in place, returning
    /// how many it wrote (as swift-crypto's `SecureBytes` and `Array` are
    /// made), or nil when it failed: then whatever it wrote is wiped and
    /// the initializer returns nil. Throws only when no memory can be had.
    public convenience init?(unsafeUninitializedCapacity capacity: Int, backing: SecureBacking? = nil,
                             initializingWith body: (UnsafeMutableRawBufferPointer) -> Int?) throws(SecureMemoryError) {
        try self.init(capacity: capacity, backing: backing)
        guard let n = body(UnsafeMutableRawBufferPointer(start: base, count: capacity)) else {
            secureWipe(base, capacity)
            return nil
        }
        setCount(n)
    }

    deinit {
        // Leave the registry first, so `wipeAllLive` never touches pages
        // that are about to be unmapped.
        let length = backing == .secretMemory ? mappingLength : mappingLength - 2 * systemPageSize
        SecureMemoryStats.live.withLock {
            $0.count -= 1
            $0.bytes -= length
            $0.registry[ObjectIdentifier(self)] = nil
        }
        if !released.withLock({ $0 }) { secureWipe(base, capacity) }
        if !lost.load(ordering: .sequentiallyConsistent) { munmap(mapping, mappingLength) }
    }

    private static func mapSecret(_ length: Int) -> Result<UnsafeMutableRawPointer, Errno> {
        let fd = kmsfs_memfd_secret(UInt32(O_CLOEXEC))
        guard fd >= 0 else { return .failure(Errno("memfd_secret")) }
        defer { close(fd) }   // the mapping keeps the pages
        guard ftruncate(fd, off_t(length)) == 0 else { return .failure(Errno("ftruncate of memfd_secret")) }
        let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else { return .failure(Errno("mmap of memfd_secret")) }
        return .success(p)
    }

    private static func mapAnonymous(_ length: Int) throws(SecureMemoryError) -> (UnsafeMutableRawPointer, Int, Bool) {
        let page = systemPageSize
        let total = length + 2 * page
        let p = mmap(nil, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let p, p != MAP_FAILED else {
            throw .allocationFailed(Errno("mmap"))
        }
        let body = p + page
        guard mprotect(body, length, PROT_READ | PROT_WRITE) == 0 else {
            let e = Errno.current
            munmap(p, total)
            throw .allocationFailed(Errno("mprotect", code: e))
        }
        _ = madvise(body, length, MADV_DONTDUMP)
        _ = madvise(body, length, MADV_WIPEONFORK)
        var locked = true
        if mlock(body, length) != 0 {
            let e = Errno.current
            if !SecureMemoryPolicy.allowUnlocked {
                munmap(p, total)
                throw .lockFailed(Errno("mlock", code: e))
            }
            SecureMemoryPolicy.noteUnlockedFallback(Errno("mlock", code: e))
            locked = false
        }
        return (p, total, locked)
    }

    // MARK: Access

    /// Read access to the bytes in use.
    @inline(__always)
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeRawBufferPointer(start: base, count: count))
    }

    /// Write access to the whole capacity; the caller sets `count` with
    /// `setCount` afterwards.
    @inline(__always)
    public func withUnsafeMutableCapacity<R, E: Error>(_ body: (UnsafeMutableRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeMutableRawBufferPointer(start: base, count: capacity))
    }

    /// Sets the number of bytes in use; bytes beyond it are wiped.
    public func setCount(_ n: Int) {
        precondition(n >= 0 && n <= capacity, "SecureBuffer count out of range")
        let was = count
        if n < was { secureWipe(base + n, was - n) }
        storedCount.store(n, ordering: .releasing)
    }

    /// Appends bytes; throws when they do not fit.
    public func append(_ bytes: UnsafeRawBufferPointer) throws(SecureMemoryError) {
        // A revoked buffer takes nothing more: once its pages were given
        // back, bytes written there would be in ordinary memory.
        guard !isRevoked else { throw .revoked }
        guard bytes.count <= capacity - count else {
            throw .capacityExceeded(requested: count + bytes.count, limit: capacity)
        }
        if let src = bytes.baseAddress, bytes.count > 0 {
            (base + count).copyMemory(from: src, byteCount: bytes.count)
        }
        storedCount.store(count + bytes.count, ordering: .releasing)
    }

    /// Appends the UTF-8 of a non-secret string (JSON punctuation, names).
    public func append(utf8 text: String) throws(SecureMemoryError) {
        guard !isRevoked else { throw .revoked }
        var t = text
        let n = t.utf8.count
        guard n <= capacity - count else {
            throw .capacityExceeded(requested: count + n, limit: capacity)
        }
        t.withUTF8 { (p: UnsafeBufferPointer<UInt8>) in
            if let src = p.baseAddress, n > 0 { (base + count).copyMemory(from: src, byteCount: n) }
        }
        storedCount.store(count + n, ordering: .releasing)
    }

    /// Copies `length` bytes starting at `offset` into `destination`; false
    /// (and the copy is not to be used) when the contents were wiped before
    /// or during the copy: a reader racing the shutdown wipe answers EIO,
    /// never zeros as the secret, and never traps the daemon.
    public func copyBytes(from offset: Int, count length: Int, to destination: UnsafeMutableRawPointer) -> Bool {
        precondition(offset >= 0 && length >= 0 && offset <= capacity && length <= capacity - offset)
        guard offset + length <= count else { return false }
        if length > 0 { destination.copyMemory(from: base + offset, byteCount: length) }
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return offset + length <= count
    }

    /// True once `revoke` ran: the buffer was wiped for good, and a reader
    /// that finds `count` 0 is to fail, not take it for an empty secret.
    /// Read `count` first, then this (`readableCount` does both).
    public var isRevoked: Bool { revoked.load(ordering: .sequentiallyConsistent) }

    /// The length a reader may serve, or nil once the buffer was revoked:
    /// `count`, then `isRevoked`, in the order that makes a `count` of 0
    /// from the wipe an error rather than an empty secret.
    public var readableCount: Int? {
        let n = count
        return isRevoked ? nil : n
    }
    private let revoked = Atomic<Bool>(false)

    /// A scratch buffer's use, between `beginUse` and `endUse`: idle, in
    /// use, in use with the stop's wipe waiting for its end, or taken by
    /// that wipe (never used again).
    private let use = Atomic<UInt8>(Use.idle)
    private enum Use {
        static let idle: UInt8 = 0, inUse: UInt8 = 1, revokeAtEnd: UInt8 = 2, revokedByWipe: UInt8 = 3
    }

    /// Marks the buffer in use (a system call is about to read it); false
    /// once the stop's wipe took it.
    func beginUse() -> Bool {
        use.compareExchange(expected: Use.idle, desired: Use.inUse, ordering: .sequentiallyConsistent).exchanged
    }

    /// Ends the use; revokes the buffer now if the stop's wipe came
    /// meanwhile (its owner has wiped what it used).
    func endUse() {
        if use.compareExchange(expected: Use.inUse, desired: Use.idle, ordering: .sequentiallyConsistent).exchanged { return }
        use.store(Use.revokedByWipe, ordering: .sequentiallyConsistent)
        revoke()
    }

    /// The stop's wipe of one buffer: now, unless a use is under way, whose
    /// end revokes it instead.
    func revokeUnlessInUse() {
        while true {
            let state = use.load(ordering: .sequentiallyConsistent)
            switch state {
            case Use.idle:
                if use.compareExchange(expected: Use.idle, desired: Use.revokedByWipe, ordering: .sequentiallyConsistent).exchanged {
                    revoke()
                    return
                }
            case Use.inUse:
                if use.compareExchange(expected: Use.inUse, desired: Use.revokeAtEnd, ordering: .sequentiallyConsistent).exchanged {
                    return
                }
            default:
                return
            }
        }
    }

    /// Wipes the contents for good (the TTL passed, the daemon stops):
    /// `isRevoked` is set before `count` drops, so whoever reads a `count`
    /// of 0 from the wipe sees it.
    ///
    /// `releasingPages`, for a finished plaintext nothing writes to any
    /// more (the cache's, at its TTL): the wiped pages are also given back
    /// at once, not when the last holder lets go. An open file may hold a
    /// revoked plaintext for days, and one held open across each TTL would
    /// otherwise keep a locked copy per period. In their place is an
    /// unlocked anonymous mapping that nothing populates: a reader that
    /// began its copy before the wipe reads zeros (which `copyBytes`
    /// reports as a failed copy), and never faults. Not for the shutdown's
    /// wipe of every live buffer, some of which a thread may still be
    /// filling.
    public func revoke(releasingPages: Bool = false) {
        revoked.store(true, ordering: .sequentiallyConsistent)
        released.withLock { released in
            guard !released else { return }
            wipeLocked()
            guard releasingPages else { return }
            // Unlocked first, so the new mapping's accounting never meets
            // RLIMIT_MEMLOCK. Read-only: nothing writes to a finished,
            // revoked plaintext, and a private mapping that cannot be
            // written is not charged against the commit limit, which
            // before Linux 6.12 was checked after MAP_FIXED had unmapped
            // the old pages (under vm.overcommit_memory=2, a failure there
            // left a hole that the next wipe wrote into). Nothing is
            // populated until read. The guard pages go into it too: one
            // mapping where there were three (a handle may hold a revoked
            // buffer for days, and the kernel allows a process about
            // 65,000 mappings).
            _ = munlock(mapping, mappingLength)
            let p = mmap(mapping, mappingLength, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
            if p == mapping {
                _ = madvise(mapping, mappingLength, MADV_DONTDUMP)
            } else {
                // It may have failed after unmapping anyway, and another
                // thread's mapping may already sit in the hole: the range
                // is never wiped or unmapped again (at worst wiped,
                // unlocked pages stay mapped until the process ends).
                lost.store(true, ordering: .sequentiallyConsistent)
            }
            released = true
        }
    }

    /// Wipes the contents in place and sets `count` to zero (first, so a
    /// copy that overlaps the wipe sees it: `copyBytes`). Nothing to do
    /// once `revoke` gave the pages back.
    public func wipeContents() {
        released.withLock { released in
            if !released { wipeLocked() }
        }
    }

    private func wipeLocked() {
        storedCount.store(0, ordering: .sequentiallyConsistent)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        secureWipe(base, capacity)
    }

    /// True once `revoke` replaced the wiped pages (no wipe is needed
    /// there any more); guards the wipe against the replacement.
    private let released = Mutex<Bool>(false)
    /// The replacement failed after the kernel had unmapped the pages: the
    /// range is not this buffer's any more (see `revoke`).
    private let lost = Atomic<Bool>(false)

    /// Constant-time comparison of contents.
    public func constantTimeEquals(_ other: UnsafeRawBufferPointer) -> Bool {
        withUnsafeBytes { constantTimeEqual($0, other) }
    }

    public var description: String { "SecureBuffer(<redacted>, \(count) bytes, \(backing.rawValue))" }
    public var debugDescription: String { description }
}

/// Whether `a` and `b` hold the same bytes, in time that depends only on
/// their lengths (never on where they differ): for secrets, MACs and
/// commitments. The one such comparison in kmsfs.
public func constantTimeEqual(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
    guard a.count == b.count else { return false }
    var diff: UInt8 = 0
    for i in 0..<a.count { diff |= a[i] ^ b[i] }
    return diff == 0
}

/// `constantTimeEqual` of two arrays.
public func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    a.withUnsafeBytes { x in b.withUnsafeBytes { y in constantTimeEqual(x, y) } }
}

/// A growable sink for bytes arriving in pieces (an HTTP body): grows by
/// moving into a larger `SecureBuffer` and wiping the old one.
public final class SecureAccumulator: @unchecked Sendable {
    public private(set) var buffer: SecureBuffer
    public let limit: Int

    /// `backing`: nil for the policy's default; transient buffers (an HTTP
    /// response, wiped once decoded) may ask for `.lockedAnonymous`, which
    /// costs no change to the kernel's direct map.
    public init(initialCapacity: Int = 4096, limit: Int, backing: SecureBacking? = nil) throws(SecureMemoryError) {
        self.limit = limit
        self.buffer = try SecureBuffer(capacity: min(max(initialCapacity, 1), limit), backing: backing)
    }

    public func append(_ bytes: UnsafeRawBufferPointer) throws(SecureMemoryError) {
        let needed = buffer.count + bytes.count
        if needed > buffer.capacity {
            guard needed <= limit else { throw .capacityExceeded(requested: needed, limit: limit) }
            try grow(to: min(max(needed, buffer.capacity * 2), limit))
        }
        try buffer.append(bytes)
    }

    /// Moves the bytes into a buffer of `capacity`; the old one wipes
    /// itself in deinit.
    /// A buffer the stop's wipe revoked stays revoked: growing it would
    /// carry on filling a fresh buffer (or hand on one torn by the wipe).
    private func grow(to capacity: Int) throws(SecureMemoryError) {
        let old = buffer
        guard !old.isRevoked else { throw .revoked }
        let grown = try SecureBuffer(unsafeUninitializedCapacity: capacity,
                                     backing: old.backing == .secretMemory ? nil : old.backing) { dst in
            old.withUnsafeBytes { src in dst.copyMemory(from: src) }
            return old.count
        }
        guard !old.isRevoked else { throw .revoked }   // `grown` wipes itself as it goes
        buffer = grown!   // never nil: the copy cannot fail
    }

    public enum ReadOutcome: Sendable {
        /// Bytes read and held.
        case read(Int)
        /// The end: the descriptor has nothing more.
        case end
        /// More arrived than `limit` (what came past it is wiped).
        case overLimit
        case failed(Errno)
        case noMemory(SecureMemoryError)
    }

    /// One read(2) of `fd` straight into the buffer's spare capacity,
    /// growing it as `append` does: the bytes (a credential helper's
    /// output, a shared credentials file) never pass through ordinary
    /// memory on their way in.
    public func read(from fd: Int32, chunk: Int = 4096) -> ReadOutcome {
        if buffer.count == buffer.capacity {
            if buffer.capacity >= limit {
                // Full: one byte more is too many.
                var probe: UInt8 = 0
                let n: Int
                do { n = try syscallRetrying("read") { Glibc.read(fd, &probe, 1) } } catch { return .failed(error) }
                secureWipe(&probe, 1)
                return n == 0 ? .end : .overLimit
            }
            do { try grow(to: min(max(buffer.capacity * 2, buffer.count + max(chunk, 1)), limit)) } catch { return .noMemory(error) }
        }
        let b = buffer
        guard !b.isRevoked else { return .noMemory(.revoked) }
        let start = b.count
        let room = min(b.capacity - start, max(chunk, 1))
        let n: Int
        do {
            n = try b.withUnsafeMutableCapacity { (cap: UnsafeMutableRawBufferPointer) throws(Errno) -> Int in
                try syscallRetrying("read") { Glibc.read(fd, cap.baseAddress! + start, room) }
            }
        } catch {
            return .failed(error)
        }
        if n == 0 { return .end }
        b.setCount(start + n)
        return .read(n)
    }
}
