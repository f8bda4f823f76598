import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Locked, undumpable scratch memory for handing plaintext to system calls
/// that pin pages (a FUSE reply), which `memfd_secret` pages refuse: copy in,
/// make the call, wipe. Buffers are pooled so the hot path allocates nothing.
public final class ScratchPool: @unchecked Sendable {
    public let bufferSize: Int
    private let free = Mutex<[SecureBuffer]>([])
    private let maxPooled: Int

    public init(bufferSize: Int, maxPooled: Int = 64) {
        self.bufferSize = bufferSize
        self.maxPooled = maxPooled
    }

    /// The hot path (every FUSE read): `body` fills and sends from a locked
    /// buffer and returns how many bytes it used, which are then wiped.
    /// Not generic, so no caller pays for type metadata per call. The
    /// stop's wipe never zeroes the buffer while `body` runs (the wipe
    /// leaves it to this, which wipes it right after): what `body` sent
    /// is what it copied. Returns false when the buffer was revoked while
    /// `body` ran anyway (kept for callers that refuse such a send).
    @discardableResult
    public func withScratch(_ body: (UnsafeMutableRawBufferPointer) -> Int) throws(SecureMemoryError) -> Bool {
        var buffer: SecureBuffer
        if let b = free.withLock({ $0.popLast() }) {
            buffer = b
        } else {
            buffer = try SecureBuffer(capacity: bufferSize, backing: .lockedAnonymous)
        }
        // One the stop's wipe took while it waited in the pool is dropped.
        while !buffer.beginUse() {
            buffer = try SecureBuffer(capacity: bufferSize, backing: .lockedAnonymous)
        }
        var intact = true
        buffer.withUnsafeMutableCapacity { cap in
            let used = body(cap)
            intact = !buffer.isRevoked
            secureWipe(cap.baseAddress, min(max(used, 0), cap.count))
        }
        buffer.endUse()
        if buffer.isRevoked { return intact }
        free.withLock { pool in
            if pool.count < maxPooled { pool.append(buffer) }
        }
        return true
    }

    /// Releases pooled buffers beyond `keeping` (they were taken by a burst
    /// of concurrent reads; locked memory stays resident until released).
    /// Returns how many were released.
    @discardableResult
    public func trim(keeping: Int) -> Int {
        let extra: [SecureBuffer] = free.withLock { pool in
            guard pool.count > keeping else { return [] }
            let e = Array(pool[keeping...])
            pool.removeSubrange(keeping...)
            return e
        }
        return extra.count   // released (wiped, unmapped) as `extra` goes
    }
}
