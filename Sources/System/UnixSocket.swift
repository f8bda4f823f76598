#if canImport(Glibc)
import Glibc
#endif

/// A Unix socket address (`sockaddr_un`) and its length, built in one
/// place: a path that does not fit is refused (never cut short), and a
/// path starting with `@` names the abstract namespace (as systemd's
/// `NOTIFY_SOCKET` may).
public struct UnixSocketAddress: Sendable {
    private var storage = sockaddr_un()
    public let length: socklen_t

    /// ENAMETOOLONG for a path `sun_path` cannot hold with its NUL.
    public init(_ path: String) throws(Errno) {
        var bytes = Array(path.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: storage.sun_path) else {
            throw Errno("\(path) is too long for a socket address", code: ENAMETOOLONG)
        }
        storage.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &storage.sun_path) { p in for (i, b) in bytes.enumerated() { p[i] = b } }
        // An abstract name is exactly its bytes; a path, its bytes and the NUL.
        length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 0 : 1))
    }

    /// Calls `body` with the address as the `sockaddr` system calls take.
    public func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) rethrows -> R {
        try withUnsafePointer(to: storage) { p in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, length) }
        }
    }
}

/// A Unix socket of `type` (`SOCK_STREAM`, `SOCK_DGRAM`), close-on-exec.
public func unixSocket(_ type: __socket_type) throws(Errno) -> Int32 {
    try syscallRetrying("socket") { socket(AF_UNIX, Int32(type.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
}

/// Binds a listening Unix stream socket at `path` with `mode`, replacing
/// only a socket an earlier daemon left there (never another file). `what`
/// names the socket in errors ("control socket"). A directory on the path
/// that someone other than root or the daemon's user could change is
/// refused (`PathTrust`): whoever may rename the socket may put one of
/// their own in its place, and answer its clients; `because` says what
/// that would let them do.
public func listenUnix(_ path: String, mode: mode_t, backlog: Int32 = 64, what: String, because: String) throws(Errno) -> Int32 {
    let addr: UnixSocketAddress
    do { addr = try UnixSocketAddress(path) } catch { throw Errno("\(what) \(path) is too long", code: ENAMETOOLONG) }
    if let problem = PathTrust.checkDirectories(above: path, because: because) {
        // A directory that is not there fails as the bind would, not as a
        // refusal; the caller names the socket in a refusal.
        if let code = problem.code { throw Errno("bind \(path)", code: code) }
        throw Errno(problem.text, code: EPERM)
    }
    var st = stat()
    if lstat(path, &st) == 0 {
        guard st.st_mode & S_IFMT == S_IFSOCK else { throw Errno("\(what) \(path) exists and is not a socket", code: EEXIST) }
        unlink(path)
    }
    let fd = try unixSocket(SOCK_STREAM)
    let e = bindUnderUmask(fd, addr, umask: ~mode & 0o777)
    guard e == 0 else { close(fd); throw Errno("bind \(path)", code: e) }
    guard listen(fd, backlog) == 0 else { let e = Errno.current; close(fd); throw Errno("listen \(path)", code: e) }
    return fd
}

/// The file a socket this daemon bound made at `path` (its device and
/// inode, read right after the bind), so that the stop unlinks the path
/// only while it is still that file: a daemon whose mount was lazily
/// unmounted (`umount -l`) lives on until its last open file closes, and by
/// then the next daemon on that mountpoint has bound the same paths (the
/// control socket is named after the mountpoint). Unlinked blindly, the
/// newer daemon's remount, credential and metrics sockets vanished.
public struct BoundSocketFile: Sendable {
    public let path: String
    private let device: UInt64
    private let inode: UInt64

    public init?(at path: String) {
        var st = stat()
        guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFSOCK else { return nil }
        self.path = path
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
    }

    /// Unlinks the path if it is still this socket file.
    public func unlinkIfStillOurs() {
        var st = stat()
        guard lstat(path, &st) == 0, UInt64(st.st_dev) == device, UInt64(st.st_ino) == inode else { return }
        unlink(path)
    }
}

/// bind(2) with `mask` as the umask, so the socket is created with its mode
/// (a chmod after bind would leave it open for a moment). The umask is
/// the process's, shared by its threads: the bind runs on a thread of its
/// own that first takes a private copy of it (unshare(CLONE_FS)), so no
/// file another thread creates meanwhile gets the socket's umask. Where
/// that thread cannot be had, the process's umask is set around the bind.
/// Returns 0 or the errno.
private func bindUnderUmask(_ fd: Int32, _ addr: UnixSocketAddress, umask mask: mode_t) -> Int32 {
    final class Outcome: @unchecked Sendable {
        let lock = ConditionLock()
        var errno: Int32?          // guarded by lock
    }
    let outcome = Outcome()
    let started = startThread(name: "kmsfs-bind", stackSize: 64 * 1024) {
        var e: Int32 = -1          // no private umask: the fallback below
        if unshareFileSystemAttributes() {
            umask(mask)
            e = addr.withSockaddr { bind(fd, $0, $1) } == 0 ? 0 : Errno.current
        }
        outcome.lock.withLock { outcome.errno = e; outcome.lock.broadcast() }
    }
    if started {
        let e: Int32 = outcome.lock.withLock {
            while outcome.errno == nil { outcome.lock.wait() }
            return outcome.errno!
        }
        if e >= 0 { return e }
    }
    let old = umask(mask)
    let rc = addr.withSockaddr { bind(fd, $0, $1) }
    let e = rc == 0 ? 0 : Errno.current
    umask(old)
    return e
}
