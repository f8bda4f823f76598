/// Runs a program the operator named (`on_change=`, `reload=` through
/// systemctl) the way `credential_process` runs: no shell, stdin from
/// /dev/null, no descriptor of the daemon's, signals at their defaults,
/// killed when it outlives `timeout`. Its output (at most 1 MiB) is read
/// into locked memory and dropped.
public enum ChildProcess {
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public let message: String
        public var description: String { message }
        public init(message: String) { self.message = message }
    }

    public static func run(_ argv: [String], environment: Environment, timeout: Double) -> Result<Void, Failure> {
        guard !argv.isEmpty else { return .failure(Failure(message: "no program")) }
        do {
            _ = try ProcessRunner.run(argv, environment: environment, timeout: timeout, limit: 1 << 20)
            return .success(())
        } catch {
            return .failure(Failure(message: error.message))
        }
    }

    /// The same, with its output not read (/dev/null) and no locked memory
    /// taken when `environment` holds no secret: for fusermount3, which runs
    /// before the wipe, while the locked memory the daemon may use is full.
    public static func runDiscardingOutput(_ argv: [String], environment: Environment, timeout: Double) -> Result<Void, Failure> {
        guard !argv.isEmpty else { return .failure(Failure(message: "no program")) }
        do {
            try ProcessRunner.runDiscardingOutput(argv, environment: environment, timeout: timeout)
            return .success(())
        } catch {
            return .failure(Failure(message: error.message))
        }
    }
}
