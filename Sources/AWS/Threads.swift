import System

/// Runs work off the caller's thread. Injected so tests can run background
/// refreshes when they choose.
public struct BackgroundRunner: Sendable {
    public var run: @Sendable (_ name: String, _ body: @escaping @Sendable () -> Void) -> Void

    public init(run: @escaping @Sendable (_ name: String, _ body: @escaping @Sendable () -> Void) -> Void) {
        self.run = run
    }

    /// A detached pthread per job (refreshes are rare: one per credential
    /// lifetime); with no thread to be had, the job runs here rather than never.
    public static let thread = BackgroundRunner { name, body in
        if !startThread(name: name, stackSize: 512 * 1024, body) { body() }
    }
}
