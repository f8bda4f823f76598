import System
import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// Process-wide measures that keep a daemon holding secrets from leaking
/// them through swap, core dumps, ptrace or crash reports.
public enum ProcessHardening {
    /// What `lockAllMemory` found.
    public enum LockResult: Sendable, Equatable {
        case locked
        case failed(Errno)
    }

    /// Resets the fatal-signal handlers Swift's runtime installs for its
    /// crash backtracer (which prints memory around registers to stderr) to
    /// the kernel default, so a crash prints nothing and, with RLIMIT_CORE
    /// at 0, leaves nothing. Call first thing in `main`.
    public static func disableCrashReporter() {
        for sig in [SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGSYS, SIGQUIT] {
            _ = kmsfs_signal_default(sig)
        }
    }

    /// Sets SIGCHLD back to its default, which a parent may have left
    /// ignored (an ignored disposition survives exec): the kernel then
    /// reaps every child itself and each `waitpid` fails, so a
    /// `credential_process`, `on_change=` program or fusermount3 that
    /// succeeded counted as failed. Call first thing, while the process is
    /// one thread. (The daemon's own signals are set back where it blocks
    /// them: `DaemonSignals.block`.)
    public static func resetInheritedSignals() {
        _ = kmsfs_signal_default(SIGCHLD)
    }

    /// Opens /dev/null onto whichever of descriptors 0, 1 and 2 a parent
    /// left closed (`kmsfs ... <&- >&-`, a careless supervisor). Otherwise
    /// the next descriptor opened takes that number: the mount's ready
    /// pipe became stdout and was pointed at /dev/null in the daemon, so
    /// the mount command waited forever, and `kmsfs decrypt` wrote the
    /// plaintext into whatever socket curl had opened as descriptor 1.
    /// Call first thing, before anything opens a descriptor.
    public static func openClosedStandardDescriptors() {
        for fd: Int32 in 0...2 where fcntl(fd, F_GETFD) < 0 && errno == EBADF {
            let null = open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY)
            // Lower than fd only if a lower one was closed too, which the
            // loop already filled: it lands on fd itself.
            if null >= 0 && null != fd {
                _ = dup2(null, fd)
                close(null)
            }
        }
    }

    /// Sets `signals` back to their defaults: an ignored signal is
    /// discarded even while blocked, so one a parent left ignored (SIGHUP
    /// under `nohup`) never reaches `sigwait`. Block them first.
    public static func resetToDefault(_ signals: [Int32]) {
        for sig in signals { _ = kmsfs_signal_default(sig) }
    }

    /// Not dumpable (no core, no ptrace attach by other users, /proc/PID/mem
    /// root-only), no core files, and a coredump filter that leaves
    /// anonymous and shared memory out should a core be forced anyway.
    public static func forbidCoreDumps() {
        _ = kmsfs_prctl(PR_SET_DUMPABLE, 0)
        var zero = rlimit(rlim_cur: 0, rlim_max: 0)
        _ = setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &zero)
        // Bits: 0 anon private, 1 anon shared, 2 file private, 3 file shared,
        // 4 ELF headers, 5/6 huge pages, 8 DAX. Keep only ELF headers.
        let fd = open("/proc/self/coredump_filter", O_WRONLY | O_CLOEXEC)
        if fd >= 0 {
            let value = "0x10\n"
            _ = value.withCString { write(fd, $0, strlen($0)) }
            close(fd)
        }
    }

    /// `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`: every page the
    /// process has or will have is locked once touched, so thread stacks
    /// cost only what they use.
    public static func lockAllMemory() -> LockResult {
        let flags = MCL_CURRENT | MCL_FUTURE | KMSFS_MCL_ONFAULT
        if mlockall(flags) == 0 { return .locked }
        return .failed(Errno("mlockall"))
    }

    /// At most `arenas` malloc arenas (glibc otherwise makes up to eight per
    /// core for a daemon with many threads, and every arena's pages are
    /// locked by mlockall). Call before threads start.
    public static func limitMallocArenas(_ arenas: Int32) {
        kmsfs_malloc_arena_max(arenas)
    }

    /// Gives freed heap memory back to the kernel (after a burst of work).
    public static func returnFreeMemory() {
        _ = kmsfs_malloc_trim()
    }

    /// The process's RLIMIT_MEMLOCK soft limit, in bytes (nil = unlimited).
    public static var memlockLimit: UInt64? {
        var r = rlimit()
        guard getrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &r) == 0 else { return 0 }
        return r.rlim_cur == rlim_t.max ? nil : UInt64(r.rlim_cur)
    }
}
