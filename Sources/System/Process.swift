import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// The credentials of the process at the other end of a Unix socket
/// (SO_PEERCRED), as the kernel recorded them at connect.
public func peerCredentials(_ fd: Int32) -> (uid: UInt32, gid: UInt32, pid: Int32)? {
    var c = kmsfs_ucred()
    guard kmsfs_peer_credentials(fd, &c) == 0 else { return nil }
    return (c.uid, c.gid, c.pid)
}

/// Runs `body` (which reads about process `pid`, e.g. its /proc files) and
/// returns its answer only if that same process is still alive afterwards:
/// a pidfd taken first pins the process, so a PID reused in between (the
/// caller exited, another process got its number) is detected, and the
/// answer dropped. `pid` may name a thread (FUSE gives the caller's thread).
public func whileProcessLives<R>(_ pid: Int32, _ body: () -> R?) -> R? {
    guard pid > 0 else { return nil }
    var fd = kmsfs_pidfd_open(pid, 0)
    if fd < 0 && Errno.current == EINVAL { fd = kmsfs_pidfd_open(pid, 1) }   // a thread, not a leader
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    let answer = body()
    guard kmsfs_pidfd_alive(fd) == 0 else { return nil }
    return answer
}
