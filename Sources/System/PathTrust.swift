import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// Whether someone other than root or the daemon's own user could change
/// a file the daemon trusts (a policy, an `on_change=` program, systemctl)
/// or replace a socket it serves (the credential, metrics and control
/// sockets): the file itself, every directory on its path and every
/// symbolic link on the way, each checked where the kernel's own walk
/// would meet it. A sticky directory (as /tmp) passes when root or the
/// daemon's user owns it: nobody else may then remove or rename what the
/// daemon put there (the directory's owner could, and could clear the
/// bit). Paths are walked as bytes, as the kernel walks them (never as
/// Unicode-equivalent Strings: `café` and `cafe\u{301}` are two names).
public enum PathTrust {
    /// Why `st` could be changed by someone other than root or the
    /// daemon's user, or is not of `kind` (`S_IFREG`, `S_IFDIR`); nil when
    /// it cannot. `what` names it; `because` says why it matters.
    public static func unsafeOwnership(_ st: stat, kind: mode_t, what: String, because: String) -> String? {
        if st.st_mode & S_IFMT != kind { return "\(what) is not a \(kind == S_IFDIR ? "directory" : "regular file")" }
        if let problem = unsafeOwner(st, what: what, because: because) { return problem }
        if st.st_mode & 0o022 != 0 {
            return "\(what) may be written by \(st.st_mode & 0o002 != 0 ? "anyone" : "its group") (mode \(String(st.st_mode & 0o7777, radix: 8))); chmod go-w"
        }
        return nil
    }

    private static func unsafeOwner(_ st: stat, what: String, because: String) -> String? {
        unsafeOwner(st.st_uid, what: what, because: because)
    }

    private static func unsafeOwner(_ uid: uid_t, what: String, because: String) -> String? {
        guard uid != 0 && uid != geteuid() else { return nil }
        return "\(what) belongs to uid \(uid); \(because), so it must belong to root\(geteuid() == 0 ? "" : " or to uid \(geteuid())")"
    }

    /// Why a directory or link on the way to `path`'s last component (not
    /// that component itself: a socket about to be bound) could be
    /// changed by someone other than root or the daemon's user; nil when
    /// none can.
    public static func unsafeDirectories(above path: String, because: String) -> String? {
        checkDirectories(above: path, because: because)?.text
    }

    /// The same, as a `Problem` (with the errno of a failed lookup).
    public static func checkDirectories(above path: String, because: String) -> Problem? {
        switch walk(path, followLast: false, because: because) {
        case .failure(let problem): return problem
        case .success: return nil
        }
    }

    /// `path` with every symbolic link on it resolved, when each directory
    /// and link on the way is one only root or the daemon's user may
    /// change (the file it ends at is the caller's to check); otherwise
    /// why not.
    public static func resolve(_ path: String, because: String) -> Result<String, Problem> {
        walk(path, followLast: true, because: because).flatMap { bytes in
            guard let s = String(validating: bytes, as: UTF8.self) else {
                return .failure(Problem(text: "\(display(bytes)) is not valid UTF-8"))
            }
            return .success(s)
        }
    }

    /// `path` with its links resolved, when the regular file it ends at
    /// and every directory and link on its way are ones only root or the
    /// daemon's user may change (`resolve` and `unsafeOwnership` in one:
    /// a program the daemon runs, a file that chooses what it trusts);
    /// otherwise why not.
    public static func checkFile(_ path: String, because: String) -> Result<String, Problem> {
        resolve(path, because: because).flatMap { resolved in
            var st = stat()
            guard lstat(resolved, &st) == 0 else {
                let e = Errno.current
                return .failure(Problem(text: "\(resolved): \(Errno.text(e))", code: e))
            }
            if let problem = unsafeOwnership(st, kind: S_IFREG, what: resolved, because: because) {
                return .failure(Problem(text: problem))
            }
            return .success(resolved)
        }
    }

    /// The first regular file `name` that may be executed in the absolute
    /// directories of `path` (`/usr/bin:/bin` when unset): a relative or
    /// empty entry, the working directory, is skipped, and so is a
    /// directory of that name (which root may "execute"). Nil when none.
    public static func findProgram(_ name: String, searching path: String?) -> String? {
        for dir in (path ?? "/usr/bin:/bin").split(separator: ":", omittingEmptySubsequences: true) where dir.hasPrefix("/") {
            let candidate = (dir.hasSuffix("/") ? String(dir) : dir + "/") + name
            var st = stat()
            if access(candidate, X_OK) == 0, stat(candidate, &st) == 0, st.st_mode & S_IFMT == S_IFREG { return candidate }
        }
        return nil
    }

    public struct Problem: Error, Sendable, CustomStringConvertible {
        public let text: String
        /// The errno when the walk failed on a system call (a directory
        /// that is not there, one that may not be searched), not on trust.
        public var code: Int32? = nil
        public var description: String { text }
    }

    /// Links followed before a walk gives up, as the kernel's MAXSYMLINKS.
    static let maxLinks = 40
    private static let slash = UInt8(ascii: "/")
    private static let fuseMagic: UInt64 = 0x6573_5546
    private static let procMagic: UInt64 = 0x9fa0

    /// The walk the kernel makes of `path`, one component at a time with
    /// lstat(2): each directory it looks a name up in (`.` and `..`
    /// included) must be trusted, and each symbolic link it follows must
    /// be root's or the daemon's user's (its target then walked the same
    /// way; a /proc link, whose text is not where it leads, is refused).
    /// A directory on a FUSE file system counts only when root or the
    /// daemon's user mounted it: another user's FUSE server answers stat
    /// with whatever owner it likes. Returns the resolved path of the last
    /// component, as bytes.
    /// `path` with the links on the way to its last component resolved
    /// (not that component: a file the daemon is about to create), when
    /// every directory on the way belongs to root or the daemon's user and
    /// is not writable by others, though its group may write it (Ubuntu's
    /// /var/log is root:syslog 0775), and every link belongs to them;
    /// otherwise why not. Open the result with no link followed (openat2
    /// RESOLVE_NO_SYMLINKS): a directory that group swaps for a link after
    /// this walk is then refused rather than followed.
    public static func resolveDirectories(above path: String, because: String) -> Result<[UInt8], Problem> {
        walk(path, followLast: false, because: because, groupMayWrite: true)
    }

    /// Why the directory open at `fd` could be changed by someone other
    /// than root or the daemon's user, as the walk judges each directory
    /// it looks a name up in (with `groupMayWrite`, as `resolveDirectories`
    /// does); nil when it cannot. For a caller that opened the directory
    /// after the walk: the one it holds may not be the one walked (its
    /// group may rename a directory away and make one of its own there).
    public static func unsafeDirectory(_ fd: Int32, what: String, because: String, groupMayWrite: Bool = false) -> Problem? {
        var dst = stat()
        guard fstat(fd, &dst) == 0 else { let e = Errno.current; return Problem(text: "\(what): \(Errno.text(e))", code: e) }
        let sticky = dst.st_mode & S_ISVTX != 0 && dst.st_mode & S_IFMT == S_IFDIR
        let problem: String?
        if sticky {
            problem = unsafeOwner(dst, what: what, because: because)
        } else if groupMayWrite && dst.st_mode & 0o002 == 0 && dst.st_mode & S_IFMT == S_IFDIR {
            problem = unsafeOwner(dst, what: what, because: because)
        } else {
            problem = unsafeOwnership(dst, kind: S_IFDIR, what: what, because: because)
        }
        if let problem { return Problem(text: problem) }
        if kmsfs_fs_type(fd) == fuseMagic {
            guard let owner = fuseMountOwner(device: UInt64(dst.st_dev)) else {
                return Problem(text: "\(what) is on a FUSE file system whose owner is not known; \(because)")
            }
            if let problem = unsafeOwner(owner, what: "\(what) is on a FUSE file system that", because: because) {
                return Problem(text: problem)
            }
        }
        return nil
    }

    private static func walk(_ path: String, followLast: Bool, because: String,
                             groupMayWrite: Bool = false) -> Result<[UInt8], Problem> {
        func fail(_ text: String, code: Int32? = nil) -> Result<[UInt8], Problem> { .failure(Problem(text: text, code: code)) }
        func failed(_ what: [UInt8], _ e: Int32 = Errno.current) -> Result<[UInt8], Problem> { fail("\(display(what)): \(Errno.text(e))", code: e) }
        var full = Array(path.utf8)
        guard !full.contains(0) else { return fail("\(display(full)) holds a NUL byte") }
        if full.first != slash {   // from the root, so the directories above the current one count too
            guard let cwd = getcwd(nil, 0) else { let e = Errno.current; return fail("the current directory: \(Errno.text(e))", code: e) }
            full = Array(UnsafeBufferPointer(start: UnsafeRawPointer(cwd).assumingMemoryBound(to: UInt8.self), count: strlen(cwd)))
                + [slash] + full
            free(cwd)
        }
        var pending = full.split(separator: slash, omittingEmptySubsequences: true).map { Array($0) }.reversed() as [[UInt8]]
        var current: [UInt8] = [slash]
        var trusted = Set<[UInt8]>()
        var proc = Set<[UInt8]>()   // trusted directories on /proc
        var links = 0
        while let name = pending.popLast() {
            let last = pending.isEmpty
            if !trusted.contains(current) {
                let what = last ? "its directory \(display(current))" : "\(display(current)), a directory above it,"
                // One descriptor for the directory's owner, mode and file
                // system alike.
                let fd = current.withCString { open($0, O_PATH | O_DIRECTORY | O_CLOEXEC) }
                guard fd >= 0 else { return failed(current) }
                defer { close(fd) }
                if let problem = unsafeDirectory(fd, what: what, because: because, groupMayWrite: groupMayWrite) {
                    return .failure(problem)
                }
                if kmsfs_fs_type(fd) == procMagic { proc.insert(current) }
                trusted.insert(current)
            }
            if name == [UInt8(ascii: ".")] { continue }
            if name == [UInt8(ascii: "."), UInt8(ascii: ".")] { current = parent(of: current); continue }
            let next = current == [slash] ? [slash] + name : current + [slash] + name
            if last && !followLast { return .success(next) }
            var st = stat()
            guard next.withCString({ lstat($0, &st) }) == 0 else { return failed(next) }
            if st.st_mode & S_IFMT == S_IFLNK {
                if let problem = unsafeOwner(st, what: "\(display(next)), a symbolic link on the way,", because: because) { return fail(problem) }
                if proc.contains(current) { return fail("\(display(next)) is a /proc link, which is not followed") }
                links += 1
                guard links <= maxLinks else { return failed(next, ELOOP) }
                guard let target = readLink(next) else { return failed(next) }
                if target.first == slash { current = [slash] }
                pending.append(contentsOf: target.split(separator: slash, omittingEmptySubsequences: true).map { Array($0) }.reversed())
                continue
            }
            if last { return .success(next) }
            guard st.st_mode & S_IFMT == S_IFDIR else { return failed(next, ENOTDIR) }
            current = next
        }
        return .success(current)
    }

    /// Who mounted the FUSE file system of `device` (its `user_id=` in
    /// /proc/self/mountinfo); nil when no such mount is listed.
    static func fuseMountOwner(device: UInt64) -> uid_t? {
        let id = MountInfo.deviceField(device)
        guard let entries = MountInfo.current(where: { $0.device == id }) else { return nil }
        return fuseMountOwner(device: device, entries: entries)
    }

    /// The same, from a mount table's bytes.
    static func fuseMountOwner(device: UInt64, mountinfo: [UInt8]) -> uid_t? {
        fuseMountOwner(device: device, entries: MountInfo.entries(mountinfo))
    }

    /// Every mount of the device must be a FUSE mount of one owner.
    private static func fuseMountOwner(device: UInt64, entries: [MountInfo.Entry]) -> uid_t? {
        let id = MountInfo.deviceField(device)
        var owner: uid_t? = nil
        for entry in entries where entry.device == id {
            guard entry.fstype.starts(with: Array("fuse".utf8)) else { return nil }
            var uid: uid_t? = nil
            for option in entry.superOptions.split(separator: UInt8(ascii: ",")) where option.starts(with: Array("user_id=".utf8)) {
                uid = uid_t(String(decoding: option.dropFirst(8), as: UTF8.self))
            }
            guard let uid, owner == nil || owner == uid else { return nil }
            owner = uid
        }
        return owner
    }

    private static func parent(of dir: [UInt8]) -> [UInt8] {
        guard let i = dir.lastIndex(of: slash), i != 0 else { return [slash] }
        return Array(dir[..<i])
    }

    private static func readLink(_ path: [UInt8]) -> [UInt8]? {
        var buf = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = path.withCString { readlink($0, &buf, buf.count - 1) }
        guard n > 0, n < buf.count - 1 else {
            if n >= 0 { Errno.current = n == 0 ? ENOENT : ENAMETOOLONG }
            return nil
        }
        return Array(buf[0..<n])
    }

    /// A path's bytes for a message (the log escapes what is not text).
    private static func display(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

}

private extension Array where Element == UInt8 {
    /// The bytes as a NUL-terminated C string (they hold no NUL: the walk
    /// refuses a path with one).
    func withCString<R>(_ body: (UnsafePointer<CChar>) -> R) -> R {
        (self + [0]).withUnsafeBufferPointer { p in
            p.withMemoryRebound(to: CChar.self) { body($0.baseAddress!) }
        }
    }
}
