import AWS
import System
#if canImport(Glibc)
import Glibc
#endif

/// sd_notify(3) without libsystemd: one datagram to `NOTIFY_SOCKET`.
public enum SystemdNotify {
    /// What systemd hands the process it starts (a notify socket, passed
    /// descriptors, a watchdog): that process's own, never to be passed on
    /// to a daemon that outlives it or to a program it runs.
    public static func isHandoffVariable(_ name: String) -> Bool {
        name == "NOTIFY_SOCKET" || name.hasPrefix("LISTEN_") || name.hasPrefix("WATCHDOG_")
    }

    public static func send(_ state: String) {
        guard let path = getenv("NOTIFY_SOCKET").map({ String(cString: $0) }), !path.isEmpty else { return }
        guard let addr = try? UnixSocketAddress(path), let fd = try? unixSocket(SOCK_DGRAM) else { return }
        defer { close(fd) }
        _ = state.withCString { msg in addr.withSockaddr { sendto(fd, msg, strlen(msg), 0, $0, $1) } }
    }

    /// True when systemd connected stderr to the journal (`JOURNAL_STREAM`
    /// names fd 2's device and inode).
    public static var stderrIsJournal: Bool {
        guard let v = getenv("JOURNAL_STREAM").map({ String(cString: $0) }) else { return false }
        let parts = v.split(separator: ":")
        guard parts.count == 2, let dev = UInt64(parts[0]), let ino = UInt64(parts[1]) else { return false }
        var st = stat()
        guard fstat(2, &st) == 0 else { return false }
        return UInt64(st.st_dev) == dev && UInt64(st.st_ino) == ino
    }
}

extension Environment {
    /// What a program the daemon runs (`on_change=`, systemctl,
    /// fusermount3) gets of its environment: the daemon's AWS credentials
    /// and settings and what systemd handed the daemon (its notify socket,
    /// passed descriptors, watchdog) are not the program's business.
    /// `plain` holds no secret variable (those live in secure memory and
    /// are never made Strings here).
    var forPrograms: Environment {
        Environment(plain.filter { k, _ in !k.hasPrefix("AWS_") && !SystemdNotify.isHandoffVariable(k) })
    }
}
