import System
import CFuse
import SecretFS
import SecureMemory
import Log
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

public struct FUSEError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A mounted kmsfs: the libfuse low-level session, its multi-threaded loop,
/// and the process's signal handling (SIGHUP reloads; SIGTERM and SIGINT
/// wipe and unmount).
public final class FUSESession: @unchecked Sendable {
    public struct Options: Sendable {
        public var mountpoint: String
        /// Shown as the mount's source in /proc/mounts (SOURCE).
        public var fsname: String
        public var debug = false
        /// Worker threads at most: a worker waiting on KMS must not stall
        /// other opens, so allow many.
        public var maxThreads = 64
        /// Idle workers kept after a burst. Fewer than four makes the loop
        /// start and end a thread for nearly every request of even a single
        /// reader (the kernel sends RELEASE asynchronously, so two requests
        /// overlap); more keeps threads a quiet daemon does not need.
        public var maxIdleThreads = 4
        /// Microseconds the reading worker polls /dev/fuse before blocking
        /// in read(2), while requests are coming (one answered within the
        /// last millisecond): the requests of one open follow each other
        /// within microseconds, and a running reader takes them without a
        /// thread wake-up. 0: never poll. See `kmsfs_fuse_session_loop`.
        public var spinMicroseconds = 50
        /// Microseconds the reader may spend on a request that may wait
        /// (lookup, getattr, readdir: they stat SOURCE) before the standby
        /// worker takes over reading, so a SOURCE disk that hangs holds up
        /// only the requests that need it.
        public var watchMicroseconds = 5000
        /// Opens waiting on KMS at once (`max_inflight=`), answered from
        /// threads of their own so FUSE workers never wait on KMS.
        public var maxInflightOpens = 64
        /// FUSE over io_uring (`kmsfs_uring_start` in CFuse): entries per
        /// CPU queue, used when the kernel offers the transport; 0: only
        /// /dev/fuse.
        public var uringDepth = 0
        /// Largest read served per request.
        public var maxRead = 128 * 1024
        /// Extra mount flags (`noexec` unless `exec` was asked for, ...).
        public var mountFlags: [String] = ["nosuid", "nodev", "noexec"]

        public init(mountpoint: String, fsname: String) {
            self.mountpoint = mountpoint
            self.fsname = fsname
        }
    }

    public let options: Options
    private let context: BridgeContext

    /// Back at rest: keeps two reply scratch buffers of those a burst of
    /// concurrent reads took. Returns how many were released.
    @discardableResult
    public func releaseIdleScratch() -> Int { context.scratch.trim(keeping: 2) }
    private let session: OpaquePointer
    private var ops: fuse_lowlevel_ops
    /// Read by worker and watcher threads (invalidations), written by the
    /// main thread on stop: atomic (ThreadSanitizer found the plain Bool).
    private let mounted = Atomic<Bool>(false)
    private let loopDone = Atomic<Bool>(false)
    /// Set when a queue of FUSE over io_uring broke (`ku_fail` in CFuse).
    private let uringBroke = Atomic<Bool>(false)
    /// The same event for a thread that waits on it (a pthread condition,
    /// which ThreadSanitizer sees, unlike Swift's atomics).
    private let loopEnded = ConditionLock()

    public init(fs: SecretFileSystem, options: Options) throws(FUSEError) {
        self.options = options
        // Under io_uring a parked open holds an entry of its caller's CPU
        // queue until it is answered, and the kernel queues a request for
        // a full queue behind the others on that CPU (no other queue takes
        // it): a local user with ~300 threads opening a cold secret on one
        // CPU stalled every stat and read made there until KMS answered.
        // So once the ring serves, the opens parked at once (waiting on KMS,
        // for a pool thread, or for another open's decryption) stay 32 below one queue's depth, and past that an open
        // answers EIO at once (`BridgeContext.limitParkedOpensToTheRing`).
        let ringParked = options.uringDepth > 0 ? max(1, options.uringDepth - 32) : 0
        self.context = BridgeContext(fs: fs, mountpoint: options.mountpoint, maxRead: options.maxRead, debug: options.debug,
                                     maxInflightOpens: options.maxInflightOpens, ringParkedOpens: ringParked,
                                     ringServing: { kmsfs_uring_serving() != 0 })
        self.ops = makeOperations()

        var mountOpts = ["allow_other", "ro", "fsname=\(FUSESession.escapeOptionValue(options.fsname))", "subtype=kmsfs"]
        mountOpts += options.mountFlags
        var argv = ["kmsfs", "-o", mountOpts.joined(separator: ",")]
        if options.debug { argv.append("-d") }

        // Before the session exists: fuse_session_new itself may complain.
        kmsfs_fuse_route_log()
        var args = kmsfs_fuse_args_empty()
        for a in argv { _ = fuse_opt_add_arg(&args, a) }
        defer { fuse_opt_free_args(&args) }
        let userdata = Unmanaged.passUnretained(context).toOpaque()
        guard let se = kmsfs_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, userdata) else {
            throw FUSEError("cannot create the FUSE session (bad mount options?)")
        }
        self.session = se
        context.session = se
    }

    deinit {
        context.markClosing()
        if mounted.load(ordering: .sequentiallyConsistent) { fuse_session_unmount(session) }
        // Page drops still queued would notify a destroyed session.
        context.pageDrops.stop(waiting: 1.0)
        context.reexpiries.stop(waiting: 1.0)
        fuse_session_destroy(session)
    }

    /// Mounts at the mountpoint (the daemon has detached a stale mount
    /// left there first: `MountTable.recoverStaleMount`).
    public func mount() throws(FUSEError) {
        var st = stat()
        if stat(options.mountpoint, &st) != 0 {
            let e = Errno.current
            throw FUSEError("mountpoint \(options.mountpoint): \(Errno.text(e))" + (e == ENOENT ? "; create it: mkdir -p \(options.mountpoint)" : ""))
        } else if (st.st_mode & S_IFMT) != S_IFDIR {
            throw FUSEError("mountpoint \(options.mountpoint) is not a directory; mount on an empty directory (mkdir one)")
        }
        // fuse_session_mount reports through libfuse's log (stderr); keep
        // its message, then add ours.
        guard fuse_session_mount(session, options.mountpoint) == 0 else {
            // In the background fusermount3's own line goes to /dev/null:
            // name the usual cause for a user other than root here.
            if geteuid() != 0 && !Self.fuseConfAllowsOther() {
                throw FUSEError("cannot mount on \(options.mountpoint): kmsfs always mounts with allow_other, which fusermount3 grants users other than root only when /etc/fuse.conf has a line user_allow_other (it has none); add it, or mount as root (run with -f for fusermount3's own line)")
            }
            throw FUSEError("cannot mount on \(options.mountpoint): is /dev/fuse available and are you root (or is fusermount3 installed)?")
        }
        mounted.store(true, ordering: .sequentiallyConsistent)
    }

    /// Whether /etc/fuse.conf has `user_allow_other` on a line of its own.
    static func fuseConfAllowsOther() -> Bool {
        guard case .success(let bytes) = readSmallFile("/etc/fuse.conf", limit: 64 << 10) else { return false }
        let blank: (UInt8) -> Bool = { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") || $0 == UInt8(ascii: "\r") }
        // As fusermount3 reads it: a '#' starts a comment.
        return bytes.split(separator: UInt8(ascii: "\n")).contains { whole in
            let line = whole.prefix { $0 != UInt8(ascii: "#") }
            return Array(line.drop(while: blank).reversed().drop(while: blank).reversed()) == Array("user_allow_other".utf8)
        }
    }

    /// Starts the request loop (`kmsfs_fuse_session_loop`) on a thread of its own; `willEnd` runs
    /// once, on the worker that first finds the mount gone (it must be
    /// short, and not wait for the loop) or else on the loop's thread once
    /// the loop has ended; either way before `waitForLoopEnd` and
    /// `loopHasEnded` say the loop has ended, and `onEnd` runs after that.
    ///
    /// `onTransportFailure` runs at most once, on a ring queue's thread,
    /// right after `transportHasFailed` turns true: a queue of FUSE over
    /// io_uring broke (said in the log), the session is told to exit, and
    /// the loop goes on until the connection is aborted (it reads
    /// /dev/fuse), while that CPU's callers wait: the daemon must stop.
    public func startLoop(willEnd: @escaping @Sendable () -> Void = {},
                          onTransportFailure: @escaping @Sendable () -> Void = {},
                          onEnd: @escaping @Sendable () -> Void) {
        let maxThreads = UInt32(options.maxThreads)
        let maxIdle = UInt32(options.maxIdleThreads)
        let spin = UInt32(max(0, min(options.spinMicroseconds, 1000)))
        let watch = UInt32(max(100, min(options.watchMicroseconds, 10_000_000)))
        let depth = UInt32(max(0, min(options.uringDepth, 8192)))
        let maxRead = options.maxRead
        let se = SessionRef(session)
        startThread(name: "kmsfs-loop", stackSize: 512 * 1024) { [self] in
            // Called from C with its context; released once the loop has
            // returned (the ring queues' threads have ended then).
            let failed = Unmanaged.passRetained(LoopHook { [self] in
                uringBroke.store(true, ordering: .sequentiallyConsistent)
                onTransportFailure()
            })
            // `willEnd` runs once: as the reader first reads ENODEV (the
            // mount is gone; the workers and the ring's queues end after,
            // which over io_uring took long enough for a unit unmounting
            // SOURCE right after the mount to find it still held), or else
            // once the loop has returned.
            let ran = OnceFlag()
            let context = self.context
            let once: @Sendable () -> Void = { if ran.first() { context.markClosing(); willEnd() } }
            let gone = Unmanaged.passRetained(LoopHook(once))
            let call: @convention(c) (UnsafeMutableRawPointer?) -> Void = { arg in
                guard let arg else { return }
                Unmanaged<LoopHook>.fromOpaque(arg).takeUnretainedValue().run()
            }
            let rc = kmsfs_fuse_session_loop(se.pointer, maxThreads, maxIdle, spin, watch, 512 * 1024, depth, maxRead,
                                             call, failed.toOpaque(), call, gone.toOpaque())
            failed.release()
            gone.release()
            if rc != 0 { Log.debug("FUSE loop ended with \(rc)") }
            // Before the end is published: whoever waits for it (the stop)
            // may detach the mount next.
            once()
            loopEnded.withLock {
                loopDone.store(true, ordering: .sequentiallyConsistent)
                loopEnded.broadcast()
            }
            onEnd()
        }
    }

    /// Whether the loop has ended.
    public var loopHasEnded: Bool { loopEnded.withLock { loopDone.load(ordering: .sequentiallyConsistent) } }

    /// Whether a queue of FUSE over io_uring broke (see `startLoop`).
    public var transportHasFailed: Bool { uringBroke.load(ordering: .sequentiallyConsistent) }

    /// Waits at most `seconds` for the loop to end (requests in flight
    /// finish first); false if it has not.
    @discardableResult
    public func waitForLoopEnd(seconds: Double) -> Bool {
        let deadline = SystemClock.monotonic() + seconds
        return loopEnded.withLock {
            while !loopDone.load(ordering: .sequentiallyConsistent) && SystemClock.monotonic() < deadline {
                loopEnded.wait(seconds: deadline - SystemClock.monotonic())
            }
            return loopDone.load(ordering: .sequentiallyConsistent)
        }
    }

    /// Stops serving without unmounting: queued opens answer EIO, the loop
    /// is told to exit. For a daemon that then aborts the connection,
    /// waits for the loop to end and only then `detach()`es: libfuse's
    /// unmount closes /dev/fuse at once, and a worker still replying would
    /// write to whatever file next took that descriptor's number.
    public func stopServing() {
        context.markClosing()
        context.opens.stop(waiting: 0.2)
        fuse_session_exit(session)
    }

    /// Detaches the mount lazily, keeping /dev/fuse open until the session
    /// is destroyed, so its number is never reused while anything may
    /// still write to it: umount2(MNT_DETACH) as root. Where that is
    /// refused (a daemon that is not root), `unprivileged` runs the argv of
    /// `fusermount3 -u -z` (libfuse's own unmount closes the descriptor
    /// first, and skips an aborted connection's mount, its poll seeing
    /// POLLERR). It runs before the wipe, so it must be bounded: the
    /// daemon's side runs it as it runs operators' programs, with a
    /// deadline.
    ///
    /// `unmount` is root's way: it detaches this mount (true when it did,
    /// or when there was nothing of this mount's to detach) and returns
    /// false only where root's way is refused (EPERM).
    public func detach(unmount: () -> Bool, unprivileged: (_ argv: [String]) -> Void) {
        guard mounted.exchange(false, ordering: .sequentiallyConsistent) else { return }
        if unmount() { return }
        unprivileged(["fusermount3", "-u", "-q", "-z", "--", options.mountpoint])
    }

    /// The kernel already unmounted it (the loop ended on its own): nothing
    /// to unmount, and /dev/fuse stays open until the session is destroyed.
    public func forgetMount() {
        mounted.store(false, ordering: .sequentiallyConsistent)
    }


    // MARK: Kernel cache invalidation (the live mirror)

    /// Tells the kernel a name in a directory changed.
    public func invalidateEntry(parent: UInt64, name: String) {
        guard mounted.load(ordering: .sequentiallyConsistent) else { return }
        _ = name.withCString { fuse_lowlevel_notify_inval_entry(session, parent, $0, strlen($0)) }
    }

    /// Tells the kernel an inode's attributes changed.
    public func invalidateInode(_ ino: UInt64) {
        guard mounted.load(ordering: .sequentiallyConsistent) else { return }
        _ = fuse_lowlevel_notify_inval_inode(session, ino, -1, 0)
    }
}

/// True for the first caller of `first()` only.
final class OnceFlag: Sendable {
    private let done = Atomic<Bool>(false)
    func first() -> Bool { !done.exchange(true, ordering: .sequentiallyConsistent) }
}

/// A closure C calls back with a context pointer.
final class LoopHook: Sendable {
    let run: @Sendable () -> Void
    init(_ run: @escaping @Sendable () -> Void) { self.run = run }
}

struct SessionRef: @unchecked Sendable {
    let pointer: OpaquePointer
    init(_ p: OpaquePointer) { pointer = p }
}

extension FUSESession {
    /// Escapes a value (the SOURCE path, any user's text) for libfuse's
    /// `-o` list. fuse_opt.c splits it on commas and decodes `\X` to `X`
    /// and `\NNN` to the octal byte; fusermount3 splits on unescaped commas
    /// too. Escaping every backslash, then every comma, makes the value
    /// come back byte for byte as one option: a SOURCE named
    /// `/tmp/x\,default_permissions` stays a name, never an option.
    public static func escapeOptionValue(_ s: String) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(s.utf8.count + 4)
        for b in s.utf8 {
            if b == UInt8(ascii: "\\") || b == UInt8(ascii: ",") { out.append(UInt8(ascii: "\\")) }
            out.append(b)
        }
        return String(decoding: out, as: UTF8.self)
    }
}

extension FUSESession: KernelNotifier {}

/// libfuse's messages (see kmsfs_fuse_route_log in CFuse's shim):
/// fuse_log_level follows syslog's severities, as LogLevel does; the more
/// severe ones than `error` are errors here. Called on any thread.
@_cdecl("kmsfs_fuse_log_line")
func fuseLogLine(_ level: Int32, _ line: UnsafePointer<CChar>?) {
    guard let line else { return }
    let severity = LogLevel(rawValue: max(level, LogLevel.error.rawValue)) ?? .debug
    Log.log(severity, "libfuse: " + String(decoding: UnsafeRawBufferPointer(start: line, count: strlen(line)), as: UTF8.self))
}
