import SecureMemory
import Threading
#if canImport(Glibc)
import Glibc
#endif

/// Binds a listening Unix stream socket at `path` with `mode`, replacing
/// only a socket an earlier daemon left there (never another file).
func listenUnix(_ path: String, mode: mode_t, what: String) throws(SystemError) -> Int32 {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
        throw SystemError("\(what) \(path) is too long", errno: ENAMETOOLONG)
    }
    withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in bytes.enumerated() { p[i] = b } }
    var st = stat()
    if lstat(path, &st) == 0 {
        guard st.st_mode & S_IFMT == S_IFSOCK else { throw SystemError("\(what) \(path) exists and is not a socket", errno: EEXIST) }
        unlink(path)
    }
    let fd = try syscallRetrying("socket") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
    let old = umask(~mode & 0o777)
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    umask(old)
    guard rc == 0 else { let e = currentErrno; close(fd); throw SystemError("bind \(path)", errno: e) }
    guard listen(fd, 64) == 0 else { let e = currentErrno; close(fd); throw SystemError("listen \(path)", errno: e) }
    return fd
}

/// Accepts connections on `fd` from a thread of its own until `stopped`
/// says so (checked twice a second), each close-on-exec, and hands each to
/// `handle`, which owns (and closes) it.
func acceptConnections(_ fd: Int32, thread: String, until stopped: @escaping @Sendable () -> Bool,
                       _ handle: @escaping @Sendable (Int32) -> Void) {
    _ = startThread(name: thread) {
        while !stopped() {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 500) > 0 else { continue }
            let c = accept(fd, nil, nil)
            guard c >= 0 else { continue }
            _ = fcntl(c, F_SETFD, FD_CLOEXEC)
            handle(c)
        }
    }
}
