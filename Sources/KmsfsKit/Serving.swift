import SecureMemory
import AWS
import FUSEBridge
import System
import Log
#if canImport(Glibc)
import Glibc
#endif

// The daemon's side of a mount, which libfuse's adapter does not need to
// know: the signals it waits for, the mount table in /proc/self/mountinfo,
// and the connection aborted so that open files are served no more.

/// The signals the daemon handles synchronously (sigwait in `serve`).
enum DaemonSignals {
    static let handled = [SIGHUP, SIGTERM, SIGINT, SIGUSR1]

    /// Blocks them; call before any thread starts so every thread inherits
    /// the mask. SIGPIPE is ignored: a reader that went away must not kill
    /// the daemon.
    static func block() {
        var set = sigset_t()
        sigemptyset(&set)
        for s in handled { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        // Blocked, then set back to their defaults: a parent may have left
        // one ignored (SIGHUP under nohup), and an ignored signal is
        // discarded, never queued for sigwait.
        ProcessHardening.resetToDefault(handled)
        signal(SIGPIPE, SIG_IGN)
    }

    /// `fusermount3 -u -z` for a daemon that is not root (its umount2 is
    /// refused), run as operators' programs are: no descriptor of the
    /// daemon's, signals at their defaults, its own process group, no
    /// AWS_ or systemd variable. It runs before the wipe: one that hangs is
    /// killed after 5 s rather than holding the wipe back until systemd's
    /// SIGKILL, and it takes no locked memory (all of it may hold
    /// plaintexts then). `environment`: the programs' environment, taken
    /// at start.
    static func fusermount(_ argv: [String], environment: Environment) {
        if case .failure(let f) = ChildProcess.run(argv, environment: environment, timeout: 5) {
            Log.error("cannot detach \(argv.last ?? ""): fusermount3: \(f.message)")
        }
    }

    /// Serves `session` until it is unmounted or told to stop. `onReload`
    /// runs on SIGHUP, on a thread of its own (`Reloader`); `onStop` runs
    /// once, after no new request can be served and before the process
    /// exits, to wipe every plaintext.
    /// Returns the exit status.
    /// `onLoopEnd` runs once, the moment a worker finds the mount gone
    /// (else as the loop ends), before the signal thread (or a stop
    /// waiting for the end) hears of it: what must not outlive the mount
    /// even by the time the loop's threads take to end. It must be short.
    /// `onStopRequested` runs first thing on SIGTERM/SIGINT or an unmount,
    /// before anything is torn down.
    /// 0 after SIGTERM, SIGINT or an unmount; 1 when serving failed (a
    /// queue of FUSE over io_uring broke, or the loop ended with the mount
    /// still there), for the service manager (Restart=on-failure) to start
    /// the daemon again.
    static func serve(_ session: FUSESession, connection: UInt32?, programs: Environment, onServing: () -> Void,
                      onLoopEnd: @escaping @Sendable () -> Void = {}, onStopRequested: () -> Void = {},
                      onReload: @escaping @Sendable () -> Void, onStop: () -> Void) -> Int32 {
        let mainThread = pthread_self()
        let reloader = Reloader(onReload)
        session.startLoop(willEnd: onLoopEnd, onTransportFailure: { pthread_kill(mainThread, SIGUSR1) }) {
            pthread_kill(mainThread, SIGUSR1)
        }
        onServing()

        let mountpoint = session.options.mountpoint
        let detach = {
            session.detach(unmount: { MountTable.detach(connection: connection, at: mountpoint) },
                           unprivileged: { fusermount($0, environment: programs) })
        }
        // Abort first (every request now and later fails, and open files no
        // longer keep the connection), let the loop end, then detach:
        // /dev/fuse stays open until no worker can reply into it. Where the
        // connection cannot be aborted, unmount at once; the loop ends when
        // the last open file closes.
        func stop() {
            reloader.stop()
            onStopRequested()
            session.stopServing()
            if let connection, MountTable.abortConnection(connection) {
                session.waitForLoopEnd(seconds: 5)
                detach()
            } else {
                detach()
                // Bounded: requests in flight finish before onStop
                // wipes what they may be reading.
                session.waitForLoopEnd(seconds: 5)
            }
            onStop()
        }
        var set = sigset_t()
        sigemptyset(&set)
        for s in handled { sigaddset(&set, s) }
        while true {
            var sig: Int32 = 0
            guard sigwait(&set, &sig) == 0 else { continue }
            switch sig {
            case SIGHUP:
                Log.notice("SIGHUP: reloading")
                reloader.request()
            case SIGTERM, SIGINT:
                Log.notice("\(sig == SIGTERM ? "SIGTERM" : "SIGINT"): wiping cached secrets and unmounting \(mountpoint)")
                stop()
                return 0
            case SIGUSR1:
                if session.transportHasFailed {
                    // A ring queue broke (its line is above): requests made
                    // on its CPU would wait for ever on a daemon that looks
                    // healthy. Stopped as on SIGTERM, the abort failing them.
                    Log.error("FUSE over io_uring failed: wiping cached secrets, unmounting \(mountpoint) and exiting with status 1")
                    stop()
                    return 1
                }
                if session.loopHasEnded {
                    // Gone already, as a rule (umount, fusermount3 -u): then
                    // nothing to unmount, and /dev/fuse stays open to the
                    // end. Still there, the loop ended on an error (reading
                    // /dev/fuse failed, the connection was aborted from
                    // outside): detach, and exit with a failure status.
                    let failed = connection != nil && MountTable.connection(of: mountpoint) == connection
                    if failed {
                        Log.error("the FUSE loop ended with \(mountpoint) still mounted; wiping cached secrets, unmounting and exiting with status 1")
                    } else {
                        Log.notice("\(mountpoint) was unmounted; wiping cached secrets and exiting")
                    }
                    reloader.stop()
                    onStopRequested()
                    // Parked opens answer now, into a connection that is gone.
                    session.stopServing()
                    onStop()
                    if failed {
                        detach()
                        return 1
                    }
                    session.forgetMount()
                    return 0
                }
            default:
                break
            }
        }
    }
}

/// /proc/self/mountinfo, and the FUSE connections in /sys/fs/fuse.
enum MountTable {
    /// A FUSE mount left at the mountpoint by a crashed instance answers
    /// ENOTCONN ("Transport endpoint is not connected"): detach it, so a
    /// restart (systemd Restart=on-failure) mounts again. A live mount there
    /// is an error. (stat() is no test: the kernel may answer it from cache.)
    /// Where the mount table cannot be read, nothing is detached (a dead
    /// network mount answers ENOTCONN too): the mount itself then fails
    /// and says why.
    static func recoverStaleMount(at mountpoint: String) throws(FUSEError) {
        guard let table = MountInfo.current(where: { $0.mountpoint == Array(mountpoint.utf8) }),
              let fstype = table.last?.fstypeName, fstype.hasPrefix("fuse") else { return }
        let fd = open(mountpoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 {
            close(fd)
            throw FUSEError("\(mountpoint) is already mounted (\(fstype)); unmount it first (fusermount3 -u \(mountpoint))")
        }
        let e = Errno.current
        guard e == ENOTCONN || e == ECONNABORTED else {
            throw FUSEError("mountpoint \(mountpoint): \(Errno.text(e))")
        }
        Log.notice("\(mountpoint): stale FUSE mount from a previous instance; detaching it")
        if umount2(mountpoint, Int32(MNT_DETACH) | Int32(UMOUNT_NOFOLLOW)) != 0 {
            throw FUSEError("mountpoint \(mountpoint) holds a stale FUSE mount that cannot be detached (\(Errno("umount2"))); run: fusermount3 -uz \(mountpoint)")
        }
    }

    /// The path the kernel will mount on for `mountpoint` (its links
    /// resolved), so that the daemon finds its mount by the path mountinfo
    /// shows. A directory or link on the way that a user other than root
    /// (or the daemon's user) may change is worth a warning: that user
    /// could move the mount away and put another in its place (the stop
    /// unmounts only this daemon's mount, wherever it went).
    static func resolvedMountpoint(_ mountpoint: String) -> String {
        switch PathTrust.resolve(mountpoint, because: "whoever may change it may move the mount and put another mount in its place") {
        case .success(let resolved):
            return resolved
        case .failure(let problem):
            if problem.code == nil { Log.warning("mountpoint \(mountpoint): \(problem)") }
            guard let r = realpath(mountpoint, nil) else { return ControlSocket.canonical(mountpoint) }
            defer { free(r) }
            return String(cString: r)
        }
    }

    /// The filesystem type mounted at `path` (the last mount there wins).
    static func fstype(at path: String) -> String? {
        entry(at: path)?.fstypeName
    }

    /// The uid a FUSE mount belongs to (`user_id=` in its super options).
    static func fuseOwner(_ m: MountInfo.Entry) -> UInt32? {
        for opt in m.superOptions.split(separator: UInt8(ascii: ",")) where opt.starts(with: Array("user_id=".utf8)) {
            return UInt32(String(decoding: opt.dropFirst(8), as: UTF8.self))
        }
        return nil
    }

    /// The last mount at `path` (the one on top).
    static func entry(at path: String) -> MountInfo.Entry? {
        let bytes = Array(path.utf8)
        return MountInfo.current(where: { $0.mountpoint == bytes })?.last
    }

    /// The minor device number of the mount at `path` (the FUSE connection
    /// number in /sys/fs/fuse/connections). Read right after mounting: not
    /// stat(), since nothing answers on the mount until the loop runs.
    static func connection(of path: String) -> UInt32? {
        guard let m = entry(at: path) else { return nil }
        let mm = m.device.split(separator: UInt8(ascii: ":"))
        return mm.count == 2 ? UInt32(String(decoding: mm[1], as: UTF8.self)) : nil
    }

    /// Detaches this daemon's mount, FUSE connection `connection`, as root,
    /// and nothing else: not by `path` as given at start, which a user who
    /// may move a directory on the way could by now have pointed at
    /// another mount (umount2 would detach that one), but where mountinfo
    /// says the connection is mounted now, opened without following a
    /// link and checked to be that mount (its mount ID) before the
    /// descriptor itself is detached. True when it was detached or no
    /// mount of this connection is left; false when root's way is refused
    /// (not root: fusermount3 then).
    static func detach(connection: UInt32?, at path: String) -> Bool {
        func result(_ rc: Int32) -> Bool {
            if rc == 0 { return true }
            let e = Errno.current
            if e == EPERM { return false }
            if e != EINVAL { Log.warning("cannot unmount \(path): \(Errno.text(e))") }
            return true
        }
        guard let connection else {
            return result(umount2(path, Int32(MNT_DETACH) | Int32(UMOUNT_NOFOLLOW)))
        }
        // Its FUSE device (anonymous: major 0, the connection's number as
        // minor), and a kmsfs mount: a number freed by an unmount someone
        // else made is soon another file system's.
        let device = Array("0:\(connection)".utf8)
        guard let mounts = MountInfo.current(where: {
            $0.device == device && $0.fstype == Array("fuse.kmsfs".utf8) && $0.mountID != nil && !$0.mountpoint.isEmpty
        }) else {
            // No table to find it in: nothing is detached by path (another
            // mount may be there by now); the loop's end or fusectl ends it.
            Log.warning("cannot read the mount table to find \(path)'s mount; leaving it (fusermount3 -uz \(path) detaches it)")
            return true
        }
        // The mount at its own path, else the first listed (bind mounts of
        // it, which only root can make, are listed after it).
        guard let mine = mounts.first(where: { $0.mountpoint == Array(path.utf8) }) ?? mounts.first else { return true }
        let fd = (mine.mountpoint + [0]).withUnsafeBufferPointer {
            open(UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        }
        guard fd >= 0 else {
            Log.warning("cannot unmount \(mine.mountpointPath): \(Errno.text(Errno.current))")
            return true
        }
        defer { close(fd) }
        guard MountInfo.mountID(of: fd) == mine.mountID else {
            Log.warning("not unmounting \(mine.mountpointPath): the path no longer leads to this daemon's mount (a directory on the way was moved, or another mount covers it); its connection is ended, and it answers nothing")
            return true
        }
        return result(umount2("/proc/self/fd/\(fd)", Int32(MNT_DETACH)))
    }

    /// Aborts FUSE connection `id`: every request, now and later, fails.
    /// False if it could not (no fusectl, not root).
    @discardableResult
    static func abortConnection(_ id: UInt32) -> Bool {
        let path = "/sys/fs/fuse/connections/\(id)/abort"
        var fd = open(path, O_WRONLY | O_CLOEXEC)
        if fd < 0 && errno == ENOENT && mountFuseControl() {
            fd = open(path, O_WRONLY | O_CLOEXEC)
        }
        if fd >= 0 {
            let ok = write(fd, "1", 1) == 1
            close(fd)
            return ok
        } else {
            // Nothing to abort with: the loop ends when the last open file
            // closes, and the stop waits for it (bounded) before wiping.
            Log.notice("cannot abort FUSE connection \(id) (\(path): \(Errno.text(Errno.current))); open files keep it until closed")
            return false
        }
    }

    /// /sys/fs/fuse/connections, where each FUSE connection can be
    /// aborted, is the fusectl filesystem, which systemd mounts at boot
    /// (sys-fs-fuse-connections.mount); where nothing did, the daemon (root)
    /// mounts it as systemd would. False if it cannot.
    private static func mountFuseControl() -> Bool {
        let dir = "/sys/fs/fuse/connections"
        guard fstype(at: dir) == nil else { return false }
        return mount("fusectl", dir, "fusectl", 0, nil) == 0
    }
}

/// SIGHUP's work, off the signal thread: a reload may wait on what it
/// flushes and re-reads (an audit sink behind a full disk, a remount that
/// holds the options while it looks users up in a slow directory), and the
/// signal thread must stay free to act on SIGTERM at once. One reload at a
/// time; SIGHUPs during one make one more after it. None starts once the
/// stop began.
final class Reloader: @unchecked Sendable {
    private let lock = ConditionLock()
    private var requested = false
    private var running = false
    private var stopped = false
    private let work: @Sendable () -> Void

    init(_ work: @escaping @Sendable () -> Void) { self.work = work }

    func request() {
        let start: Bool = lock.withLock {
            guard !stopped else { return false }
            requested = true
            guard !running else { return false }
            running = true
            return true
        }
        guard start else { return }
        // Without a thread to spare, on this one, as before.
        if !startThread(name: "kmsfs-reload", { [self] in run() }) { run() }
    }

    private func run() {
        while lock.withLock({ () -> Bool in
            guard requested, !stopped else {
                running = false
                lock.broadcast()
                return false
            }
            requested = false
            return true
        }) {
            work()
        }
    }

    /// No reload starts from now on; one under way gets up to `seconds`
    /// to end, so the stop does not tear down what it is reopening.
    func stop(waiting seconds: Double = 5) {
        let deadline = SystemClock.monotonic() + seconds
        lock.withLock {
            stopped = true
            while running {
                let left = deadline - SystemClock.monotonic()
                if left <= 0 { break }
                lock.wait(seconds: min(left, 0.1))
            }
        }
    }
}
