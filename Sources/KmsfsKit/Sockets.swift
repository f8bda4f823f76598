import SecureMemory
import System
#if canImport(Glibc)
import Glibc
#endif

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
