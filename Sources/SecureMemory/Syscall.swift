import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// A failed system call: the operation and its errno, nothing else (never a
/// buffer's contents).
public struct SystemError: Error, CustomStringConvertible, Equatable, Sendable {
    public let operation: String
    public let errno: Int32

    public init(_ operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno
    }

    public var description: String {
        "\(operation): \(String(cString: strerror(errno)))"
    }
}

/// The one door for system calls that return -1 and set errno: EINTR is
/// retried, anything else becomes a `SystemError`. Never use it for `close`
/// (Linux closes the descriptor even when close is interrupted).
@inline(__always)
public func syscallRetrying<T: BinaryInteger>(_ operation: @autoclosure () -> String,
                                              _ body: () -> T) throws(SystemError) -> T {
    while true {
        let rc = body()
        if rc != -1 { return rc }
        let e = kmsfs_errno()
        if e == EINTR { continue }
        throw SystemError(operation(), errno: e)
    }
}

/// The current thread's errno.
@inline(__always)
public var currentErrno: Int32 { kmsfs_errno() }

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

/// Opens `path` relative to `dirfd` with openat2(2), refusing to leave the
/// directory (`RESOLVE_BENEATH`) or to follow any symlink or magic link on
/// the way: how kmsfs reads SOURCE, so a symlink there never leads out.
///
/// Where openat2 answers ENOSYS it walks the path one component at a time
/// instead (`openBeneathByComponents`), with the same refusals. systemd
/// makes openat2 fail with ENOSYS in every unit with `RestrictSUIDSGID=`
/// (seccomp cannot see its flags), the shipped kmsfs.service among them:
/// without the walk SOURCE looked empty there (found by the boot test).
public func openBeneath(_ dirfd: Int32, _ path: String, flags: Int32) throws(SystemError) -> Int32 {
    let resolve = KMSFS_RESOLVE_BENEATH | KMSFS_RESOLVE_NO_SYMLINKS | KMSFS_RESOLVE_NO_MAGICLINKS
    do {
        return try syscallRetrying("openat2 \(path)") {
            kmsfs_openat2(dirfd, path, UInt64(UInt32(bitPattern: flags | O_CLOEXEC | O_NOFOLLOW)), 0, resolve)
        }
    } catch where error.errno == ENOSYS {
        return try openBeneathByComponents(dirfd, path, flags: flags)
    }
}

/// `openBeneath` without openat2: an absolute path or a `..` component is
/// refused (EXDEV, as RESOLVE_BENEATH answers), and each component is
/// opened from the one before with O_NOFOLLOW, so a symlink anywhere on the
/// way fails (ELOOP or ENOTDIR) and one at the end is refused with ELOOP
/// (with O_PATH, O_NOFOLLOW would open the link itself). Magic links are
/// symlinks to lstat, so they are refused too.
public func openBeneathByComponents(_ dirfd: Int32, _ path: String, flags: Int32) throws(SystemError) -> Int32 {
    let bytes = Array(path.utf8)
    guard bytes.first != UInt8(ascii: "/") else { throw SystemError("open \(path)", errno: EXDEV) }
    let parts = bytes.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true)
        .filter { !$0.elementsEqual([UInt8(ascii: ".")]) }
    guard !parts.contains(where: { $0.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) }) else {
        throw SystemError("open \(path)", errno: EXDEV)
    }
    let final = flags | O_CLOEXEC | O_NOFOLLOW
    if parts.isEmpty {
        return try syscallRetrying("open \(path)") { openat(dirfd, ".", final) }
    }
    var current = dirfd
    for (i, part) in parts.enumerated() {
        let last = i == parts.count - 1
        let name = Array(part) + [0]
        let next: Int32
        do {
            next = try syscallRetrying("open \(path)") {
                name.withUnsafeBufferPointer { p in
                    p.withMemoryRebound(to: CChar.self) {
                        openat(current, $0.baseAddress!, last ? final : (O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC))
                    }
                }
            }
        } catch {
            if current != dirfd { close(current) }
            throw error
        }
        if current != dirfd { close(current) }
        current = next
    }
    var st = stat()
    guard fstat(current, &st) == 0, st.st_mode & S_IFMT != S_IFLNK else {
        close(current)
        throw SystemError("open \(path)", errno: ELOOP)
    }
    return current
}

/// `O_PATH` (glibc hides it without `_GNU_SOURCE`).
public let O_PATH: Int32 = KMSFS_O_PATH

/// The credentials of the process at the other end of a Unix socket
/// (SO_PEERCRED), as the kernel recorded them at connect.
public func peerCredentials(_ fd: Int32) -> (uid: UInt32, gid: UInt32, pid: Int32)? {
    var c = kmsfs_ucred()
    guard kmsfs_peer_credentials(fd, &c) == 0 else { return nil }
    return (c.uid, c.gid, c.pid)
}

/// Reads a small file whole (token files, shared config files).
/// Returns nil with `errno`'s text when it cannot be read.
public func readSmallFile(_ path: String, limit: Int = 1 << 20) -> Result<[UInt8], FileReadError> {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 { return .failure(FileReadError(path: path, errno: errno)) }
    defer { close(fd) }
    switch readMessage(fd, limit: limit) {
    case .success(let out): return .success(out)
    case .failure(let e): return .failure(FileReadError(path: path, errno: e.errno))
    }
}

/// Reads `fd` to its end (or through the first newline, with
/// `throughNewline`), failing with the errno, or EFBIG past `limit` bytes.
/// Not for plaintext: the bytes land in an ordinary array.
public func readMessage(_ fd: Int32, limit: Int, throughNewline: Bool = false) -> Result<[UInt8], ReadFailure> {
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 16 * 1024)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            return .failure(ReadFailure(errno: errno))
        }
        if n == 0 { break }
        out += chunk[0..<n]
        if out.count > limit { return .failure(ReadFailure(errno: EFBIG)) }
        if throughNewline && chunk[0..<n].contains(UInt8(ascii: "\n")) { break }
    }
    return .success(out)
}

public struct ReadFailure: Error, Sendable {
    public let errno: Int32
}

public struct FileReadError: Error, Sendable, CustomStringConvertible {
    public let path: String
    public let errno: Int32
    public var description: String { "\(path): \(String(cString: strerror(errno)))" }
    public var isMissing: Bool { errno == ENOENT || errno == ENOTDIR }
}

/// Runs `body` (which reads about process `pid`, e.g. its /proc files) and
/// returns its answer only if that same process is still alive afterwards:
/// a pidfd taken first pins the process, so a PID reused in between (the
/// caller exited, another process got its number) is detected, and the
/// answer dropped. `pid` may name a thread (FUSE gives the caller's thread).
public func whileProcessLives<R>(_ pid: Int32, _ body: () -> R?) -> R? {
    guard pid > 0 else { return nil }
    var fd = kmsfs_pidfd_open(pid, 0)
    if fd < 0 && kmsfs_errno() == EINVAL { fd = kmsfs_pidfd_open(pid, 1) }   // a thread, not a leader
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    let answer = body()
    guard kmsfs_pidfd_alive(fd) == 0 else { return nil }
    return answer
}

/// Reads a small file that holds secrets (the shared credentials file)
/// whole into secure memory; the read chunk is wiped. EFBIG past `limit`.
public func readSmallFileSecurely(_ path: String, limit: Int = 1 << 20) -> Result<SecureBuffer, FileReadError> {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 { return .failure(FileReadError(path: path, errno: errno)) }
    defer { close(fd) }
    let out: SecureAccumulator
    do { out = try SecureAccumulator(initialCapacity: 4096, limit: limit) } catch {
        return .failure(FileReadError(path: path, errno: ENOMEM))
    }
    var chunk = [UInt8](repeating: 0, count: 4096)
    defer { secureWipe(&chunk) }
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            return .failure(FileReadError(path: path, errno: errno))
        }
        if n == 0 { return .success(out.buffer) }
        let ok = chunk.withUnsafeBytes { b -> Bool in
            do { try out.append(UnsafeRawBufferPointer(rebasing: b[0..<n])); return true } catch { return false }
        }
        if !ok { return .failure(FileReadError(path: path, errno: EFBIG)) }
    }
}
