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

    /// Runs `body` with a locked buffer of `bufferSize` bytes, wiping the
    /// first `used` bytes the body reports before the buffer returns to the
    /// pool.
    public func withScratch<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> (result: R, used: Int)) throws -> R {
        let buffer: SecureBuffer
        if let b = free.withLock({ $0.popLast() }) {
            buffer = b
        } else {
            buffer = try SecureBuffer(capacity: bufferSize, backing: .lockedAnonymous)
        }
        var used = bufferSize
        defer {
            buffer.withUnsafeMutableCapacity { secureWipe($0.baseAddress, min(used, $0.count)) }
            free.withLock { pool in
                if pool.count < maxPooled { pool.append(buffer) }
            }
        }
        let out = try buffer.withUnsafeMutableCapacity { try body($0) }
        used = out.used
        return out.result
    }
}
