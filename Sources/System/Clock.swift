#if canImport(Glibc)
import Glibc
#endif

/// The system's clocks, read in one place: monotonic seconds for
/// durations and deadlines, the wall clock for timestamps, and a sleep.
public enum SystemClock {
    /// Seconds on `CLOCK_MONOTONIC` (never jumps; an arbitrary origin).
    @inline(__always)
    public static func monotonic() -> Double { seconds(CLOCK_MONOTONIC) }

    /// Seconds since the Unix epoch on `CLOCK_REALTIME`.
    @inline(__always)
    public static func wall() -> Double { seconds(CLOCK_REALTIME) }

    /// The monotonic clock as a `timespec` (for `pthread_cond_timedwait`).
    public static func monotonicTimespec() -> timespec {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return ts
    }

    /// Sleeps `seconds`, the whole of it (EINTR resumes with what is
    /// left). Negative or NaN sleeps not at all; at most a day per call
    /// (`Int(Double)` traps out of range).
    public static func sleep(_ seconds: Double) {
        guard seconds > 0 else { return }
        let s = min(seconds, 86_400)
        var ts = timespec(tv_sec: Int(s), tv_nsec: Int((s - Double(Int(s))) * 1e9))
        var rem = timespec()
        while nanosleep(&ts, &rem) == -1 && Errno.current == EINTR { ts = rem }
    }

    @inline(__always)
    private static func seconds(_ clock: clockid_t) -> Double {
        var ts = timespec()
        clock_gettime(clock, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
