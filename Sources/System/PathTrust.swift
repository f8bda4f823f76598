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
/// bit).
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
        guard st.st_uid != 0 && st.st_uid != geteuid() else { return nil }
        return "\(what) belongs to uid \(st.st_uid); \(because), so it must belong to root"
    }

    /// Why a directory or link on the way to `path`'s last component (not
    /// that component itself: a socket about to be bound, a file checked
    /// through its descriptor) could be changed by someone other than
    /// root or the daemon's user; nil when none can.
    public static func unsafeDirectories(above path: String, because: String) -> String? {
        switch walk(path, followLast: false, because: because) {
        case .failure(let problem): return problem.text
        case .success: return nil
        }
    }

    /// `path` with every symbolic link on it resolved, when each directory
    /// and link on the way is one only root or the daemon's user may
    /// change (the file it ends at is the caller's to check); otherwise
    /// why not.
    public static func resolve(_ path: String, because: String) -> Result<String, Problem> {
        walk(path, followLast: true, because: because)
    }

    public struct Problem: Error, Sendable, CustomStringConvertible {
        public let text: String
        public var description: String { text }
    }

    /// Links followed before a walk gives up, as the kernel's MAXSYMLINKS.
    static let maxLinks = 40

    /// The walk the kernel makes of `path`, one component at a time with
    /// lstat(2): each directory it looks a name up in must be trusted, and
    /// each symbolic link it follows must be root's or the daemon's user's
    /// (its target then walked the same way). Names stay as the caller
    /// wrote them in messages (`its directory`, `DIR, a directory above
    /// it,`). Returns the resolved path of the last component.
    private static func walk(_ path: String, followLast: Bool, because: String) -> Result<String, Problem> {
        func fail(_ text: String) -> Result<String, Problem> { .failure(Problem(text: text)) }
        var full = path
        if !path.hasPrefix("/") {   // from the root, so the directories above the current one count too
            guard let cwd = getcwd(nil, 0) else { return fail("the current directory: \(Errno.text(Errno.current))") }
            full = String(cString: cwd) + "/" + path
            free(cwd)
        }
        var pending: [Substring] = full.split(separator: "/", omittingEmptySubsequences: true).reversed()   // the next one last
        var current = "/"
        var trusted = Set<String>()
        var links = 0
        while let name = pending.popLast() {
            if name == "." { continue }
            if name == ".." { current = parent(of: current); continue }
            let last = pending.isEmpty
            if !trusted.contains(current) {
                var dst = stat()
                guard stat(current, &dst) == 0 else { return fail("\(current): \(Errno.text(Errno.current))") }
                let what = last ? "its directory" : "\(current), a directory above it,"
                let sticky = dst.st_mode & S_ISVTX != 0 && dst.st_mode & S_IFMT == S_IFDIR
                if let problem = sticky ? unsafeOwner(dst, what: what, because: because)
                                        : unsafeOwnership(dst, kind: S_IFDIR, what: what, because: because) {
                    return fail(problem)
                }
                trusted.insert(current)
            }
            let next = current == "/" ? "/" + name : current + "/" + name
            if last && !followLast { return .success(next) }
            var st = stat()
            guard lstat(next, &st) == 0 else { return fail("\(next): \(Errno.text(Errno.current))") }
            if st.st_mode & S_IFMT == S_IFLNK {
                if let problem = unsafeOwner(st, what: "\(next), a symbolic link on the way,", because: because) { return fail(problem) }
                links += 1
                guard links <= maxLinks, let target = readLink(next) else {
                    return fail("\(next): \(Errno.text(links > maxLinks ? ELOOP : Errno.current))")
                }
                if target.hasPrefix("/") { current = "/" }
                pending.append(contentsOf: target.split(separator: "/", omittingEmptySubsequences: true).reversed())
                continue
            }
            if last { return .success(next) }
            guard st.st_mode & S_IFMT == S_IFDIR else { return fail("\(next): \(Errno.text(ENOTDIR))") }
            current = next
        }
        return .success(current)
    }

    private static func parent(of dir: String) -> String {
        guard let slash = dir.utf8.lastIndex(of: UInt8(ascii: "/")), slash != dir.utf8.startIndex else { return "/" }
        return String(dir[..<slash])
    }

    private static func readLink(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink(path, &buf, buf.count - 1)
        guard n > 0, n < buf.count - 1 else {
            if n >= 0 { Errno.current = n == 0 ? ENOENT : ENAMETOOLONG }
            return nil
        }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
