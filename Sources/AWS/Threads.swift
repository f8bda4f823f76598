#if canImport(Glibc)
import Glibc
#endif

/// A mutex with a condition variable, for the waits `Mutex` cannot express
/// (readers waiting for an in-flight credential refresh).
final class AWSConditionLock: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()

    init() {
        pthread_mutex_init(&mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(&cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(&cond)
        pthread_mutex_destroy(&mutex)
    }

    func lock() { pthread_mutex_lock(&mutex) }
    func unlock() { pthread_mutex_unlock(&mutex) }

    /// Waits (lock held) at most `seconds`; false on timeout.
    @discardableResult
    func wait(seconds: Double) -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let total = Double(now.tv_sec) + Double(now.tv_nsec) / 1e9 + max(0, seconds)
        var deadline = timespec(tv_sec: Int(total), tv_nsec: Int((total - Double(Int(total))) * 1e9))
        return pthread_cond_timedwait(&cond, &mutex, &deadline) == 0
    }

    func broadcast() { pthread_cond_broadcast(&cond) }
}

/// Runs work off the caller's thread. Injected so tests can run background
/// refreshes when they choose.
public struct BackgroundRunner: Sendable {
    public var run: @Sendable (_ name: String, _ body: @escaping @Sendable () -> Void) -> Void

    public init(run: @escaping @Sendable (_ name: String, _ body: @escaping @Sendable () -> Void) -> Void) {
        self.run = run
    }

    /// A detached pthread per job (refreshes are rare: one per credential
    /// lifetime). No Foundation, no Dispatch: the daemon owns its threads.
    public static let thread = BackgroundRunner { name, body in
        let arg = Unmanaged.passRetained(AWSThreadBody(body, name: name)).toOpaque()
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        pthread_attr_setstacksize(&attr, 512 * 1024)
        pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
        var tid = pthread_t()
        let rc = pthread_create(&tid, &attr, { arg in
            Unmanaged<AWSThreadBody>.fromOpaque(arg!).takeRetainedValue().run()
            return nil
        }, arg)
        pthread_attr_destroy(&attr)
        if rc != 0 {
            // No thread: run it here rather than never.
            Unmanaged<AWSThreadBody>.fromOpaque(arg).takeRetainedValue().run()
        }
    }
}

final class AWSThreadBody {
    let body: @Sendable () -> Void
    let name: String
    init(_ body: @escaping @Sendable () -> Void, name: String) { self.body = body; self.name = name }
    func run() {
        let fd = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
        if fd >= 0 {
            _ = String(name.prefix(15)).withCString { write(fd, $0, strlen($0)) }
            close(fd)
        }
        body()
    }
}

/// Reads a small file whole (token files, shared config files).
/// Returns nil with `errno`'s text when it cannot be read.
public func readSmallFile(_ path: String, limit: Int = 1 << 20) -> Result<[UInt8], FileReadError> {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 { return .failure(FileReadError(path: path, errno: errno)) }
    defer { close(fd) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 16 * 1024)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            return .failure(FileReadError(path: path, errno: errno))
        }
        if n == 0 { break }
        out += chunk[0..<n]
        if out.count > limit { return .failure(FileReadError(path: path, errno: EFBIG)) }
    }
    return .success(out)
}

public struct FileReadError: Error, Sendable, CustomStringConvertible {
    public let path: String
    public let errno: Int32
    public var description: String { "\(path): \(String(cString: strerror(errno)))" }
    public var isMissing: Bool { errno == ENOENT || errno == ENOTDIR }
}
