import SecureMemory
import System
#if canImport(Glibc)
import Glibc
#endif

/// Accepts connections on `fd` from a thread of its own until `stopped`
/// says so (checked twice a second), each close-on-exec, and hands each to
/// `handle`, which owns (and closes) it.
/// `onExit` runs on that thread once it takes no more connections.
func acceptConnections(_ fd: Int32, thread: String, until stopped: @escaping @Sendable () -> Bool,
                       onExit: @escaping @Sendable () -> Void = {},
                       _ handle: @escaping @Sendable (Int32) -> Void) {
    let started = startThread(name: thread) {
        defer { onExit() }
        while !stopped() {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 500) > 0 else { continue }
            // Checked again: a connection accepted once the stop began
            // would be nobody's to answer.
            if stopped() { return }
            let c = acceptCloseOnExec(fd)
            guard c >= 0 else { backOffAfterAcceptFailure(); continue }
            handle(c)
        }
    }
    if !started { onExit() }
}
