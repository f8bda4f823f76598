import CLinux
import System
#if canImport(Glibc)
import Glibc
#endif

// What locked memory needs from the system beyond System's calls: the
// wipe, the page size, and a small file read straight into secure memory.

/// Wipes `count` bytes at `pointer` with explicit_bzero (never elided).
@inline(__always)
public func secureWipe(_ pointer: UnsafeMutableRawPointer?, _ count: Int) {
    guard let pointer, count > 0 else { return }
    kmsfs_wipe(pointer, count)
}

/// Wipes a byte array in place (for non-secret-memory scratch that briefly
/// held key material, such as a derived key on the stack).
public func secureWipe(_ bytes: inout [UInt8]) {
    bytes.withUnsafeMutableBytes { secureWipe($0.baseAddress, $0.count) }
}

public let systemPageSize: Int = Int(sysconf(Int32(_SC_PAGESIZE)))

@inline(__always)
func roundUpToPage(_ n: Int) -> Int {
    let p = systemPageSize
    return (max(n, 1) + p - 1) / p * p
}

/// Reads a small file that holds secrets (the shared credentials file)
/// whole into secure memory; the read chunk is wiped. EFBIG past `limit`.
/// The failure names the path.
public func readSmallFileSecurely(_ path: String, limit: Int = 1 << 20) -> Result<SecureBuffer, Errno> {
    readSmallFileSecurelyWithStatus(path, limit: limit).map(\.0)
}

/// `readSmallFileSecurely`, with the status of the very file read (the
/// descriptor's, not a later look at the path, which another user may have
/// pointed elsewhere by then).
public func readSmallFileSecurelyWithStatus(_ path: String, limit: Int = 1 << 20) -> Result<(SecureBuffer, stat), Errno> {
    let fd: FileDescriptor
    do { fd = try openSmallFile(path) } catch { return .failure(error) }
    let st: stat
    do { st = try fd.stat() } catch { return .failure(Errno(path, code: error.code)) }
    return readSecurely(fd, limit: limit).mapError { Errno(path, code: $0.code) }.map { ($0, st) }
}

private func readSecurely(_ fd: borrowing FileDescriptor, limit: Int) -> Result<SecureBuffer, Errno> {
    let out: SecureAccumulator
    do { out = try SecureAccumulator(initialCapacity: 4096, limit: limit) } catch { return .failure(Errno("", code: ENOMEM)) }
    while true {
        switch out.read(from: fd.rawValue) {
        case .read: continue
        case .end: return .success(out.buffer)
        case .failed(let e): return .failure(e)
        case .overLimit, .noMemory: return .failure(Errno("", code: EFBIG))
        }
    }
}
