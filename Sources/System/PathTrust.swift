#if canImport(Glibc)
import Glibc
#endif

/// Whether someone other than root or the daemon's own user could change
/// a file the daemon trusts (a policy, an `on_change=` program, systemctl)
/// or replace a socket it serves (the credential, metrics and control
/// sockets): the file itself, and every directory on its path. A sticky
/// directory (as /tmp) passes: nobody else may remove or rename what the
/// daemon put there.
public enum PathTrust {
    /// Why `st` could be changed by someone other than root or the
    /// daemon's user, or is not of `kind` (`S_IFREG`, `S_IFDIR`); nil when
    /// it cannot. `what` names it; `because` says why it matters.
    public static func unsafeOwnership(_ st: stat, kind: mode_t, what: String, because: String) -> String? {
        if st.st_mode & S_IFMT != kind { return "\(what) is not a \(kind == S_IFDIR ? "directory" : "regular file")" }
        if st.st_uid != 0 && st.st_uid != geteuid() {
            return "\(what) belongs to uid \(st.st_uid); \(because), so it must belong to root"
        }
        if st.st_mode & 0o022 != 0 {
            return "\(what) may be written by \(st.st_mode & 0o002 != 0 ? "anyone" : "its group") (mode \(String(st.st_mode & 0o7777, radix: 8))); chmod go-w"
        }
        return nil
    }

    /// Why a directory above `path` (each one, up to `/` or the first
    /// component of a relative path) could be changed by someone other
    /// than root or the daemon's user; nil when none can. Where a
    /// directory on the path is a symbolic link, the directories above
    /// where it leads are checked too: whoever may rename those may move
    /// the file as well.
    public static func unsafeDirectories(above path: String, because: String) -> String? {
        if let problem = unsafeDirectoriesAsWritten(above: path, because: because) { return problem }
        guard let slash = path.utf8.lastIndex(of: UInt8(ascii: "/")) else { return nil }
        let parent = slash == path.utf8.startIndex ? "/" : String(path[..<slash])
        guard let resolved = realpath(parent, nil) else { return "\(parent): \(Errno.text(Errno.current))" }
        defer { free(resolved) }
        let canonical = String(cString: resolved)
        if canonical == parent { return nil }
        return unsafeDirectoriesAsWritten(above: canonical == "/" ? "/." : canonical + "/.", because: because)
    }

    private static func unsafeDirectoriesAsWritten(above path: String, because: String) -> String? {
        var dir = path
        var first = true
        while let i = dir.utf8.lastIndex(of: UInt8(ascii: "/")) {
            dir = i == dir.utf8.startIndex ? "/" : String(dir[..<i])
            var dst = stat()
            guard stat(dir, &dst) == 0 else { return "\(dir): \(Errno.text(Errno.current))" }
            let what = first ? "its directory" : "\(dir), a directory above it,"
            first = false
            if dst.st_mode & S_ISVTX == 0,
               let problem = unsafeOwnership(dst, kind: S_IFDIR, what: what, because: because) {
                return problem
            }
            if dir == "/" { break }
        }
        return nil
    }
}
