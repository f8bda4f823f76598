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

/// The process at the other end of a Unix socket, the one that connected.
public enum PeerProcess: Sendable {
    /// Its pidfd (SO_PEERPIDFD, Linux 6.5): unlike the PID SO_PEERCRED
    /// gives, it cannot come to name another process once that one exits.
    case pinned(Int32)
    /// The kernel has no SO_PEERPIDFD: only the PID is known.
    case notSupported
    /// It has already exited (Linux 6.5 to 6.17 refuse its pidfd then).
    case gone

    /// Closes a pinned pidfd.
    public func close() { if case .pinned(let fd) = self { _ = Glibc.close(fd) } }
}

/// Pins the peer of `fd` (take it at accept, before any wait): only a
/// kernel without the option falls back to the PID alone; any other
/// failure means the peer is gone, and it is refused.
public func pinPeer(_ fd: Int32) -> PeerProcess {
    let soPeerPidfd: Int32 = 77   // <asm-generic/socket.h>; glibc's headers may lack it
    var pidfd: Int32 = -1
    var len = socklen_t(MemoryLayout<Int32>.size)
    if getsockopt(fd, SOL_SOCKET, soPeerPidfd, &pidfd, &len) == 0 {
        return pidfd >= 0 ? .pinned(pidfd) : .gone
    }
    let e = Errno.current
    return e == ENOPROTOOPT || e == EOPNOTSUPP ? .notSupported : .gone
}

/// The values of the `Name:\tvalue` lines named `names` in a /proc file
/// (status, fdinfo), in the file's order, blanks taken out; empty when it
/// cannot be read.
func procFields(_ path: String, _ names: [String]) -> [String] {
    guard case .success(let text) = readSmallFile(path, limit: 64 << 10) else { return [] }
    let keys = names.map { Array(($0 + ":").utf8) }
    return text.split(separator: UInt8(ascii: "\n")).compactMap { line in
        guard let key = keys.first(where: { line.starts(with: $0) }) else { return nil }
        return String(decoding: line.dropFirst(key.count).filter { $0 != 9 && $0 != 32 }, as: UTF8.self)
    }
}

/// The PID a pidfd names now (`Pid:` of /proc/self/fdinfo/FD); nil when
/// its process has exited (-1 there) or it cannot be read.
func pid(ofPidfd fd: Int32) -> Int32? {
    guard let p = procFields("/proc/self/fdinfo/\(fd)", ["Pid"]).first.flatMap({ Int32($0) }), p > 0 else { return nil }
    return p
}

/// `whileProcessLives` for a process whose pidfd the caller already holds
/// (`peerPidfd`): `body`'s answer about `pid` counts only if the pidfd
/// names `pid` before and the process is alive after.
public func whileProcessLives<R>(pidfd: Int32, pid expected: Int32, _ body: () -> R?) -> R? {
    guard expected > 0, pid(ofPidfd: pidfd) == expected else { return nil }
    let answer = body()
    guard kmsfs_pidfd_alive(pidfd) == 0 else { return nil }
    return answer
}

/// Runs `body` (which reads about process `pid`, e.g. its /proc files) and
/// returns its answer only if that same process is still alive afterwards:
/// a pidfd taken first pins the process, so a PID reused in between (the
/// caller exited, another process got its number) is detected, and the
/// answer dropped. `pid` may name a thread (FUSE gives the caller's thread).
public func whileProcessLives<R>(_ pid: Int32, _ body: () -> R?) -> R? {
    whileProcessLives(pid, threadPidfds: true, body)
}

/// `threadPidfds`: try `PIDFD_THREAD` (Linux 6.9) for a thread that is
/// not its process's leader; false (tests) goes straight to what older
/// kernels need: a pidfd of the thread's process, and a check afterwards
/// that the thread still belongs to it.
func whileProcessLives<R>(_ pid: Int32, threadPidfds: Bool, _ body: () -> R?) -> R? {
    guard pid > 0 else { return nil }
    var fd = kmsfs_pidfd_open(pid, 0)
    var leader: Int32? = nil
    if fd < 0 && (Errno.current == EINVAL || Errno.current == ENOENT) {
        // Perhaps a thread that is not its process's leader (EINVAL before
        // Linux 6.9, ENOENT since): its own pidfd where the kernel has
        // them, else its process's.
        if threadPidfds { fd = kmsfs_pidfd_open(pid, 1) }
        if fd < 0, let tgid = threadGroup(of: pid), tgid != pid {
            fd = kmsfs_pidfd_open(tgid, 0)
            leader = tgid
        }
    }
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    let answer = body()
    guard kmsfs_pidfd_alive(fd) == 0 else { return nil }
    if let leader, access("/proc/\(leader)/task/\(pid)", F_OK) != 0 { return nil }
    return answer
}

/// Whether thread `tid` has SIGKILL pending, its own or its process's
/// (`SigPnd:`, `ShdPnd:` of /proc/TID/status), as a thread of a process
/// being killed has until it exits. False when that cannot be read.
public func isBeingKilled(_ tid: Int32) -> Bool {
    guard tid > 0 else { return false }
    let kill = UInt64(1) << UInt64(SIGKILL - 1)
    return procFields("/proc/\(tid)/status", ["SigPnd", "ShdPnd"]).contains { UInt64($0, radix: 16).map { $0 & kill != 0 } ?? false }
}

/// The process (thread group) a thread belongs to: `Tgid:` of
/// /proc/TID/status.
func threadGroup(of tid: Int32) -> Int32? {
    procFields("/proc/\(tid)/status", ["Tgid"]).first.flatMap { Int32($0) }
}

/// unshare(CLONE_FS) for the calling thread: from then on its umask, cwd
/// and root are its own. False where refused (a system call filter).
public func unshareFileSystemAttributes() -> Bool { kmsfs_unshare_fs() == 0 }
