import System
import AWS
import SecretFS
import SecureMemory
import Log
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The root-only control channel of a live mount: a Unix socket that
/// answers `kmsfs status` with the cache and counters (never plaintext),
/// and takes the new options of `mount -o remount`.
///
/// The socket lives at `/run/kmsfs/<hash of the mountpoint>.sock` (a 0700
/// directory, a 0600 socket), and the daemon also checks each peer's
/// credentials (SO_PEERCRED): only root, or the daemon's own user, is served.
public enum ControlSocket {
    /// The directory for sockets of daemons run by this effective user.
    public static var directory: String {
        if geteuid() == 0 { return "/run/kmsfs" }
        if let x = getenv("XDG_RUNTIME_DIR").map({ String(cString: $0) }), !x.isEmpty { return x + "/kmsfs" }
        return "/tmp/kmsfs-\(geteuid())"
    }

    /// The socket path for a mountpoint (made absolute and canonical first).
    public static func path(for mountpoint: String) -> String {
        path(forCanonical: canonical(mountpoint))
    }

    /// Where a daemon of an earlier version, which named its socket after
    /// a symbolic link it was given, listens for the same link; nil where
    /// the last component is no link.
    public static func pathBeforeLinksWereResolved(for mountpoint: String) -> String? {
        let now = canonical(mountpoint)
        let before = canonical(mountpoint, resolvingLink: false)
        return before == now ? nil : path(forCanonical: before)
    }

    static func path(forCanonical c: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325   // FNV-1a 64
        for b in c.utf8 {
            hash ^= UInt64(b)
            hash = hash &* 0x100_0000_01b3
        }
        let hex = String(hash, radix: 16)
        return directory + "/" + String(repeating: "0", count: 16 - hex.count) + hex + ".sock"
    }

    /// Makes the socket directory (0700), or checks the one that is there:
    /// it must be a real directory (not a symlink) owned by this effective
    /// user. A non-root daemon's directory is in /tmp or XDG_RUNTIME_DIR,
    /// where another local user could make it first and then replace or
    /// read the sockets in it; such a directory is refused (and its mode
    /// set back to 0700 when it is ours). Throws a one-line reason.
    public static func prepareDirectory(_ dir: String) throws(Errno) {
        if mkdir(dir, 0o700) != 0 {
            let e = Errno.current
            guard e == EEXIST else { throw Errno("mkdir \(dir)", code: e) }
        }
        // Checked through a descriptor, so the directory checked is the
        // one whose mode is set.
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else {
            let e = Errno.current
            if e == ELOOP || e == ENOTDIR {
                throw Errno("control directory \(dir) is not a directory of this user's (a symlink or a file); remove it", code: e)
            }
            throw Errno("open \(dir)", code: e)
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw Errno("fstat \(dir)") }
        guard st.st_uid == geteuid() else {
            throw Errno("control directory \(dir) belongs to uid \(st.st_uid), not to this daemon's uid \(geteuid()); remove it (another user may have made it first)", code: EPERM)
        }
        if st.st_mode & 0o7777 != 0o700 {
            guard fchmod(fd, 0o700) == 0 else { throw Errno("chmod 0700 \(dir)") }
        }
    }

    /// realpath(3) of the parent joined with the last component (the
    /// mountpoint itself may be a dead mount that cannot be resolved), or,
    /// when the last component is a symbolic link, realpath(3) of the
    /// whole: the daemon names its socket after the path it mounted on.
    public static func canonical(_ p: String, resolvingLink: Bool = true) -> String {
        var path = p
        while path.count > 1 && path.hasSuffix("/") { path.removeLast() }
        // readlink, not lstat: the daemon itself names its socket once the
        // mount is made and before it serves, and a stat of the mount's
        // root would wait for that serving (readlink of a directory fails
        // without asking the filesystem).
        var one: CChar = 0
        if resolvingLink, readlink(path, &one, 1) >= 0, let r = realpath(path, nil) {
            defer { free(r) }
            return String(cString: r)
        }
        // Cut on the byte: "/" and a combining mark after it are one
        // Character, which a Character search would not find.
        let slash = path.utf8.lastIndex(of: UInt8(ascii: "/"))
        let parent = slash.map { path[..<$0].isEmpty ? "/" : String(path[..<$0]) } ?? "."
        let last = slash.map { String(path[path.utf8.index(after: $0)...]) } ?? path
        // `kmsfs status .` from inside the mount: the whole path, resolved.
        if last == "." || last == "..", let r = realpath(path, nil) {
            defer { free(r) }
            return String(cString: r)
        }
        guard let r = realpath(parent, nil) else { return path }
        defer { free(r) }
        let base = String(cString: r)
        return base == "/" ? "/" + last : base + "/" + last
    }
}

/// Serves the control socket from one thread. A request is one line:
/// `status`, or `remount OPTIONS` (answered `{"ok":...}` or `{"error":...}`).
public final class ControlServer: @unchecked Sendable {
    public let path: String
    private let fd: Int32
    private let status: @Sendable () -> JSONValue
    private let remount: @Sendable (String) -> Result<String, OptionError>
    private let stopped = Atomic<Bool>(false)

    public init(mountpoint: String, status: @escaping @Sendable () -> JSONValue,
                remount: @escaping @Sendable (String) -> Result<String, OptionError>) throws(Errno) {
        self.status = status
        self.remount = remount
        path = ControlSocket.path(for: mountpoint)
        try ControlSocket.prepareDirectory(ControlSocket.directory)
        unlink(path)   // whatever a crashed instance left (the directory is this daemon's, 0700)
        fd = try listenUnix(path, mode: 0o600, backlog: 8, what: "control socket path",
                            because: "a socket put in its place would take the options of `mount -o remount`")
        socketFile = BoundSocketFile(at: path)
    }
    private let socketFile: BoundSocketFile?

    public func start() {
        acceptConnections(fd, thread: "kmsfs-control", until: { [self] in stopped.load(ordering: .relaxed) }) { [self] c in
            serve(c)
            close(c)
        }
    }

    private func serve(_ c: Int32) {
        guard let cred = peerCredentials(c) else { return }
        guard cred.uid == 0 || cred.uid == geteuid() else {
            Log.warning("control: refused uid \(cred.uid) (pid \(cred.pid)): the control channel is for root only")
            Log.writeAll(c, "{\"error\":\"permission denied: kmsfs status and remount are for root\"}\n")
            return
        }
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        // One line, up to 64 KiB (a remount carries a whole option string).
        guard case .success(var line) = readMessage(c, limit: 65536, throughNewline: true) else {
            Log.writeAll(c, "{\"error\":\"the request was not one line of at most 64 KiB\"}\n")
            return
        }
        if let nl = line.firstIndex(of: UInt8(ascii: "\n")) { line.removeSubrange(nl...) }
        let request = String(decoding: line, as: UTF8.self)
        if request.hasPrefix("remount ") {
            let answer: JSONValue
            switch remount(String(request.dropFirst("remount ".count))) {
            case .success(let m): answer = .object([("ok", .string(m))])
            case .failure(let e): answer = .object([("error", .string(e.message))])
            }
            Log.writeAll(c, answer.serialized + "\n")
            return
        }
        switch request.trimmingCharacters(in: " \r\t") {
        case "status", "":
            Log.writeAll(c, status().serialized + "\n")
        default:
            Log.writeAll(c, "{\"error\":\"unknown request\"}\n")
        }
    }

    public func stop() {
        stopped.store(true, ordering: .relaxed)
        socketFile?.unlinkIfStillOurs()
    }

    deinit { close(fd) }
}

/// Asks a mount's control socket for its status.
public enum ControlClient {
    public enum Failure: Error, CustomStringConvertible {
        case notRunning(String)
        case denied(String)
        case bad(String)
        public var description: String {
            switch self {
            case .notRunning(let m), .denied(let m), .bad(let m): return m
            }
        }
    }

    public static func status(mountpoint: String) throws(Failure) -> JSONValue {
        let doc = try request("status", mountpoint: mountpoint)
        if let e = doc["error"]?.stringValue { throw .denied(e) }
        return doc
    }

    /// Hands a live mount new options (`mount -o remount`); returns the
    /// daemon's one-line summary, or throws its one-line refusal.
    public static func remount(mountpoint: String, options: [String]) throws(Failure) -> String {
        let joined = options.joined(separator: ",")
        guard !joined.contains("\n") else { throw .bad("options cannot contain a newline") }
        let doc = try request("remount " + joined, mountpoint: mountpoint)
        if let e = doc["error"]?.stringValue { throw .bad(e) }
        return doc["ok"]?.stringValue ?? ""
    }

    static func request(_ line: String, mountpoint: String) throws(Failure) -> JSONValue {
        var path = ControlSocket.path(for: mountpoint)
        // A daemon started before links were resolved, still running.
        if access(path, F_OK) != 0, let before = ControlSocket.pathBeforeLinksWereResolved(for: mountpoint),
           access(before, F_OK) == 0, MountTable.fstype(at: ControlSocket.canonical(mountpoint)) == "fuse.kmsfs" {
            path = before
        }
        // Talk only to a socket in a directory root or this user owns: in
        // /tmp another user may have made it first and listen there.
        var dirStat = stat()
        let dir = ControlSocket.directory
        if lstat(dir, &dirStat) == 0, (dirStat.st_mode & S_IFMT) != S_IFDIR || (dirStat.st_uid != 0 && dirStat.st_uid != geteuid()) {
            throw .bad("\(dir) is not a directory of this user's (uid \(dirStat.st_uid)); not asking a daemon through it")
        }
        let fd: Int32
        do { fd = try unixSocket(SOCK_STREAM) } catch { throw .bad("socket: \(error.text)") }
        defer { close(fd) }
        let rc: Int32
        do { rc = try UnixSocketAddress(path).withSockaddr { connect(fd, $0, $1) } } catch {
            throw .notRunning("no kmsfs daemon answers for \(mountpoint) (\(path): \(error.text))")
        }
        if rc != 0 {
            let e = Errno.current
            if e == EACCES || e == EPERM { throw .denied("\(path): permission denied; kmsfs status is for root") }
            // A user other than root asking about root's mount looked in
            // their own directory and found nothing: say whose it is.
            if geteuid() != 0, let m = MountTable.entry(at: ControlSocket.canonical(mountpoint)), m.fstypeName == "fuse.kmsfs",
               let owner = MountTable.fuseOwner(m), owner != geteuid() {
                throw .denied("\(mountpoint) is a kmsfs mount whose daemon this user does not run; kmsfs status is for root (or the user who mounted it)")
            }
            throw .notRunning("no kmsfs daemon answers for \(mountpoint) (\(path): \(Errno.text(e)))")
        }
        // And only to a daemon of root or this user: the directory check
        // above races with another user who replaces it in /tmp.
        guard let peer = peerCredentials(fd), peer.uid == 0 || peer.uid == geteuid() else {
            throw .bad("\(path) is answered by another user's process; not asking a daemon through it")
        }
        Log.writeAll(fd, line + "\n")
        let data: [UInt8]
        switch readMessage(fd, limit: 64 << 20) {
        case .success(let d): data = d
        case .failure(let e): throw .bad("the daemon's answer could not be read: \(Errno.text(e.code))")
        }
        guard let doc = data.withUnsafeBytes({ JSONValue.parse($0) }) else { throw .bad("the daemon sent an answer that is not JSON") }
        return doc
    }
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        let chars = Set(set)
        var s = Substring(self)
        while let f = s.first, chars.contains(f) { s = s.dropFirst() }
        while let l = s.last, chars.contains(l) { s = s.dropLast() }
        return String(s)
    }
}
