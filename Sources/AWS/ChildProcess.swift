import CCurl
#if canImport(Glibc)
import Glibc
#endif

/// Runs a program the daemon starts for the operator (`on_change=`,
/// `reload=` through systemctl, fusermount3 for a daemon that is not root)
/// the way `credential_process` runs: no shell, stdin from /dev/null, no
/// descriptor of the daemon's, signals at their defaults, killed when it
/// outlives `timeout`. Its output goes to /dev/null, and no locked memory
/// is taken when `environment` holds no secret: these run while the
/// daemon's locked memory holds the plaintexts (fusermount3 before the
/// wipe).
public enum ChildProcess {
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public let message: String
        public var description: String { message }
        public init(message: String) { self.message = message }
    }

    /// Adds "close every descriptor from `fd` up" to `actions`: what a
    /// library or the caller left without close-on-exec never reaches
    /// the child. Returns 0 or an errno.
    public static func closeDescriptors(from fd: Int32, in actions: inout posix_spawn_file_actions_t) -> Int32 {
        kmsfs_spawn_add_closefrom(&actions, fd)
    }

    public static func run(_ argv: [String], environment: Environment, timeout: Double) -> Result<Void, Failure> {
        guard !argv.isEmpty else { return .failure(Failure(message: "no program")) }
        do {
            try ProcessRunner.runDiscardingOutput(argv, environment: environment, timeout: timeout)
            return .success(())
        } catch {
            return .failure(Failure(message: error.message))
        }
    }
}
