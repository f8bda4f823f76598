import System
import CLinux
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Syslog severities (RFC 5424), which journald also reads as `<N>` prefixes.
public enum LogLevel: Int32, Comparable, Sendable, CaseIterable {
    case error = 3, warning = 4, notice = 5, info = 6, debug = 7

    /// Less severe is smaller: debug < info < notice < warning < error.
    public static func < (a: LogLevel, b: LogLevel) -> Bool { a.rawValue > b.rawValue }

    var word: String {
        switch self {
        case .error: "error"
        case .warning: "warning"
        case .notice: "notice"
        case .info: "info"
        case .debug: "debug"
        }
    }
}

public enum LogDestination: Sendable, Equatable {
    /// One line per message on standard error. With `journal` each line
    /// starts with `<N>` (sd-daemon(3)) so journald records its priority.
    case stderr(journal: Bool)
    /// syslog(3), facility daemon.
    case syslog
    /// journald's native socket (Journal.swift), each entry tagged with the
    /// ident whoever started the daemon; syslog(3) when it is not taken.
    case journal
    /// Nowhere (tests of code that logs).
    case none
}

/// Process-wide logging. Messages are operator text: they name files, keys,
/// error codes and users, and never carry plaintext, key material or
/// credentials (callers build them from those only).
public enum Log {
    struct Config {
        var destination: LogDestination = .stderr(journal: false)
        var level: LogLevel = .info
        var ident = "kmsfs"
    }
    private static let config = Mutex(Config())

    public static func configure(destination: LogDestination? = nil, level: LogLevel? = nil, ident: String? = nil) {
        config.withLock { c in
            if let destination { c.destination = destination }
            if let level { c.level = level }
            if let ident { c.ident = ident }
            if case .syslog = c.destination {
                // openlog keeps the pointer: hand it a string that lives forever.
                let id = strdup(c.ident)
                openlog(id, LOG_PID | LOG_NDELAY, LOG_DAEMON)
            }
        }
    }

    public static var level: LogLevel { config.withLock { $0.level } }

    public static var destination: LogDestination { config.withLock { $0.destination } }

    public static func error(_ message: @autoclosure () -> String) { emit(.error, message) }
    public static func warning(_ message: @autoclosure () -> String) { emit(.warning, message) }
    public static func notice(_ message: @autoclosure () -> String) { emit(.notice, message) }
    public static func info(_ message: @autoclosure () -> String) { emit(.info, message) }
    public static func debug(_ message: @autoclosure () -> String) { emit(.debug, message) }

    public static func log(_ level: LogLevel, _ message: @autoclosure () -> String) { emit(level, message) }

    /// Keys of the warnings already given by `warningOnce`.
    private static let warned = Mutex(Set<String>())

    /// A warning given once per process for `key`, for conditions that are
    /// looked at again on every refresh (an endpoint resolved anew each
    /// hour) but whose advice does not change. Returns whether it was
    /// given now. Keys come from the operator's configuration; past 1,024
    /// of them the warning is given every time rather than remembered.
    @discardableResult
    public static func warningOnce(key: String, _ message: @autoclosure () -> String) -> Bool {
        let first = warned.withLock { keys in
            if keys.contains(key) { return false }
            if keys.count < 1024 { keys.insert(key) }
            return true
        }
        if first { emit(.warning, message) }
        return first
    }

    private static func emit(_ level: LogLevel, _ message: () -> String) {
        let c = config.withLock { $0 }
        guard level >= c.level else { return }
        // One line per message, escaped byte by byte: a CR or LF inside a
        // message would let a file name forge a second log line.
        let text = LogEscape.escape(message())
        switch c.destination {
        case .none:
            return
        case .syslog:
            kmsfs_syslog(level.rawValue, text)
        case .journal:
            Journal.send(level, identifier: c.ident, message: text, whenStuck: .drop)
        case .stderr(let journal):
            let line = journal ? "<\(level.rawValue)>\(c.ident): \(text)\n"
                               : "\(c.ident): \(level.word): \(text)\n"
            writeAll(2, line)
        }
    }

    /// Sends one message to syslog(3) with an explicit facility (audit
    /// records go to LOG_AUTHPRIV, whatever the log destination is).
    public static func syslog(_ level: LogLevel, facility: Int32, _ message: String) {
        kmsfs_syslog(facility | level.rawValue, LogEscape.escape(message))
    }

    /// Writes a line with one write(2) where possible, so lines from many
    /// threads do not interleave.
    public static func writeAll(_ fd: Int32, _ text: String) {
        var bytes = Array(text.utf8)
        bytes.withUnsafeBytes { writeAll(fd, $0) }
        bytes.removeAll()
    }

    public static func writeAll(_ fd: Int32, _ buf: UnsafeRawBufferPointer) {
        try? FileDescriptor.writeAll(fd, buf)   // a log line that cannot be written is dropped
    }
}

/// Why `log=FILE` or `audit=FILE` cannot be written: one line.
public struct LogFileError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension Log {
    /// Opens `log=FILE` or `audit=FILE` for appending (created 0600). A
    /// symlink is refused (O_NOFOLLOW: whoever may write its directory must
    /// not point the daemon's lines into another file), and so is a file
    /// another user owns (root writing into a file a user prepared would
    /// hand that user the daemon's records, or let it grow a file it uses).
    /// Opened non-blocking, then made blocking: a FIFO nobody reads would
    /// otherwise block the open (the mount at start, the signal thread at
    /// SIGHUP); it is refused, and one with a reader is written like a
    /// pipe. A regular file must have one link: a hard link would point
    /// the lines into another file of the daemon's user.
    ///
    /// O_NOFOLLOW guards the last component only: a directory or link on
    /// the way that another user may change (their directory, a link of
    /// theirs to someone else's) would choose where root creates and
    /// appends. So the directories on the way must be root's (or the
    /// daemon's user's), writable by no one else but their group, the
    /// links on the way theirs too. That group may still swap a directory
    /// on the way for a link after the check, or rename the directory
    /// away and make one of its own in its place: so the file's directory
    /// is opened with no link followed at all (openat2, or one component
    /// at a time where openat2 is refused, as under the shipped unit),
    /// judged again on that descriptor, and the file opened from it.
    public static func openAppendFile(_ path: String) throws(LogFileError) -> Int32 {
        try openAppendFile(path, walking: false)
    }

    /// `walking`: reach the directory one component at a time, as where
    /// openat2 answers ENOSYS (tests take that way on any kernel);
    /// `afterCheck` runs between the check and the open (where tests swap
    /// a directory).
    static func openAppendFile(_ path: String, walking: Bool, afterCheck: () -> Void = {}) throws(LogFileError) -> Int32 {
        let because = "the daemon creates and appends to its file there"
        let target: [UInt8]
        switch PathTrust.resolveDirectories(above: path, because: because) {
        case .success(let resolved): target = resolved
        case .failure(let problem):
            // A directory that is not there, or may not be searched: said
            // as the open would say it. Nothing is opened on a path the
            // walk could not judge.
            if let code = problem.code { throw LogFileError("\(LogEscape.escape(path)): \(Errno.text(code))") }
            throw LogFileError("\(LogEscape.escape(path)): \(problem)")
        }
        afterCheck()
        // Absolute, with no `.`, `..` or link: the walk resolved them.
        let slash = target.lastIndex(of: UInt8(ascii: "/")) ?? 0
        let directory = slash == 0 ? [UInt8(ascii: "/")] : Array(target[..<slash])
        var name = Array(target[(slash + 1)...])
        if name.isEmpty { name = [UInt8(ascii: ".")] }   // "/" itself: the open says it is a directory
        let dir: Int32
        do { dir = try openDirectoryFollowingNoLink(directory, walking: walking) } catch {
            if error.code == ELOOP {
                throw LogFileError("a directory on the way to \(LogEscape.escape(path)) became a symbolic link; refusing to follow it")
            }
            throw LogFileError("\(LogEscape.escape(path)): \(Errno.text(error.code))")
        }
        defer { close(dir) }
        // The directory held may not be the one walked: its group renamed
        // that away and made one of its own. A directory that checks out
        // is enough: one of the group's own on the way could hold it only
        // if moved there, and moving a directory to another parent needs
        // write access to it, which that group then had anyway.
        if let problem = PathTrust.unsafeDirectory(dir, what: "its directory \(String(decoding: directory, as: UTF8.self))",
                                                   because: because, groupMayWrite: true) {
            throw LogFileError("\(LogEscape.escape(path)): \(problem)")
        }
        let openFlags = O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK
        let fd: Int32
        do {
            fd = try syscallRetrying("open") {
                (name + [0]).withUnsafeBufferPointer { p in
                    p.withMemoryRebound(to: CChar.self) { openat(dir, $0.baseAddress!, openFlags, 0o600) }
                }
            }
        } catch {
            let e = error.code
            if e == ELOOP {
                throw LogFileError("\(LogEscape.escape(path)) is a symbolic link; refusing to follow it (give the file itself)")
            }
            if e == ENXIO {   // a FIFO with no reader, opened non-blocking for writing
                throw LogFileError("\(LogEscape.escape(path)) is a FIFO nobody reads; refusing to wait for a reader")
            }
            throw LogFileError("\(LogEscape.escape(path)): \(Errno.text(e))")
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = Errno.current
            close(fd)
            throw LogFileError("\(LogEscape.escape(path)): fstat: \(Errno.text(e))")
        }
        let kind = st.st_mode & S_IFMT
        guard kind == S_IFREG || kind == S_IFIFO else {
            close(fd)
            throw LogFileError("\(LogEscape.escape(path)) is neither a regular file nor a FIFO; refusing to write to it")
        }
        guard st.st_uid == geteuid() else {
            close(fd)
            throw LogFileError("\(LogEscape.escape(path)) belongs to uid \(st.st_uid), not to the daemon's user (uid \(geteuid())); refusing to write to it (remove it, or chown it to uid \(geteuid()))")
        }
        guard kind != S_IFREG || st.st_nlink == 1 else {
            close(fd)
            throw LogFileError("\(LogEscape.escape(path)) has \(st.st_nlink) hard links; refusing to write to it (give a file of its own)")
        }
        let flags = fcntl(fd, F_GETFL)
        if flags >= 0 { _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) }
        return fd
    }

    /// `directory` (absolute, with no `.`, `..` or link on it) opened
    /// O_PATH with no link followed: a link anywhere on it, the directory
    /// itself included, fails with ELOOP. openat2 does it in one call;
    /// where it answers ENOSYS (systemd's RestrictSUIDSGID=, which the
    /// shipped kmsfs.service sets), a plain open would follow a link on
    /// the way, so each component is opened from the one before with
    /// O_NOFOLLOW (`openBeneathByComponents` from "/"). The caller closes
    /// the descriptor.
    static func openDirectoryFollowingNoLink(_ directory: [UInt8], walking: Bool) throws(Errno) -> Int32 {
        if !walking {
            do {
                return try syscallRetrying("open") {
                    (directory + [0]).withUnsafeBufferPointer { p in
                        p.withMemoryRebound(to: CChar.self) {
                            kmsfs_openat2(AT_FDCWD, $0.baseAddress!, UInt64(O_PATH | O_DIRECTORY | O_CLOEXEC), 0,
                                          KMSFS_RESOLVE_NO_SYMLINKS | KMSFS_RESOLVE_NO_MAGICLINKS)
                        }
                    }
                }
            } catch where error.code == ENOSYS {}
        }
        let root = try syscallRetrying("open /") { open("/", O_PATH | O_DIRECTORY | O_CLOEXEC) }
        defer { close(root) }
        // "d/." rather than "d": the walk opens each component but the
        // last with O_NOFOLLOW and refuses a link there with ELOOP, so the
        // directory itself is checked so too ("." is then itself, again).
        let relative = Array(directory.drop { $0 == UInt8(ascii: "/") })
        return try openBeneathByComponents(root, relative.isEmpty ? [UInt8(ascii: ".")] : relative + Array("/.".utf8),
                                           flags: O_PATH | O_DIRECTORY)
    }

    /// Opens `path` anew (logrotate moved it) onto descriptor `fd`, in one
    /// step (dup2): a write in flight on `fd` finishes into the old file, a
    /// later one goes to the new file, and `fd` is never a closed number
    /// another open could take meanwhile. On failure `fd` keeps the old
    /// file.
    public static func reopenAppendFile(_ path: String, onto fd: Int32) throws(LogFileError) {
        let new = try openAppendFile(path)
        defer { close(new) }
        guard dup2(new, fd) == fd else { throw LogFileError("dup2: \(Errno.text(Errno.current))") }
        // dup2 clears close-on-exec; set it again, but for the standard
        // descriptors (log= is reopened onto stderr).
        if fd > 2 { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    }
}

/// Makes untrusted text safe to show on one line: a file name from SOURCE,
/// a name an unprivileged caller looked up, a process name, a KMS error.
///
/// It works on bytes, not Characters (Swift treats "\r\n" as one
/// Character). Out come printable ASCII and valid UTF-8 only; escaped are:
///
/// - C0 control bytes and DEL: `\n`, `\r`, `\t`, else `\xNN`;
/// - bytes that are not valid UTF-8 (a stray continuation byte, an overlong
///   form, a surrogate, a truncated sequence): each as `\xNN`;
/// - C1 controls (U+0080 to U+009F, which some terminals obey like ESC) and
///   the Unicode line and paragraph separators and directional overrides
///   (U+2028, U+2029, U+202A to U+202E, U+2066 to U+2069): their bytes as
///   `\xNN`;
/// - the bytes in `quoting` (for a quoted field: `\` and `"`), as `\` then
///   the byte.
///
/// Without `quoting` a backslash is kept, so escaping escaped text changes
/// nothing: a message may hold names escaped already and is escaped whole
/// again on its way out.
public enum LogEscape {
    public static func escape<C: Collection>(_ bytes: C, quoting: [UInt8] = []) -> String where C.Element == UInt8 {
        let input = Array(bytes)
        var out: [UInt8] = []
        out.reserveCapacity(input.count + 8)
        let hex = Array("0123456789abcdef".utf8)
        func escapeByte(_ b: UInt8) {
            switch b {
            case 0x0A: out += [0x5C, UInt8(ascii: "n")]
            case 0x0D: out += [0x5C, UInt8(ascii: "r")]
            case 0x09: out += [0x5C, UInt8(ascii: "t")]
            default: out += [0x5C, UInt8(ascii: "x"), hex[Int(b >> 4)], hex[Int(b & 0xF)]]
            }
        }
        var i = 0
        let n = input.count
        while i < n {
            let b = input[i]
            if b < 0x80 {
                if b < 0x20 || b == 0x7F {
                    escapeByte(b)
                } else if quoting.contains(b) {
                    out += [0x5C, b]
                } else {
                    out.append(b)
                }
                i += 1
                continue
            }
            let len = validSequenceLength(input, at: i)
            guard len > 0 else {
                escapeByte(b)   // not UTF-8: this byte alone, then resync
                i += 1
                continue
            }
            let seq = input[i..<(i + len)]
            if isHidden(seq) {
                for x in seq { escapeByte(x) }
            } else {
                out += seq
            }
            i += len
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func escape(_ s: String, quoting: [UInt8] = []) -> String {
        // Most text (log messages made of ASCII words and numbers) needs nothing.
        if s.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F && !quoting.contains($0) }) { return s }
        return escape(s.utf8, quoting: quoting)
    }

    /// Escapes a NUL-terminated C string (a name as the kernel passed it).
    public static func escape(cString p: UnsafePointer<CChar>) -> String {
        escape(UnsafeRawBufferPointer(start: p, count: strlen(p)))
    }

    /// The length of the well-formed UTF-8 sequence (RFC 3629, Unicode
    /// table 3-7) starting at `i`, or 0 when there is none.
    static func validSequenceLength(_ a: [UInt8], at i: Int) -> Int {
        let b0 = a[i]
        let need: Int
        var lo: UInt8 = 0x80, hi: UInt8 = 0xBF   // bounds of the second byte
        switch b0 {
        case 0xC2...0xDF: need = 1
        case 0xE0: need = 2; lo = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: need = 2
        case 0xED: need = 2; hi = 0x9F        // no UTF-16 surrogates
        case 0xF0: need = 3; lo = 0x90
        case 0xF1...0xF3: need = 3
        case 0xF4: need = 3; hi = 0x8F        // nothing above U+10FFFF
        default: return 0                      // continuation, C0/C1 overlong, F5...FF
        }
        guard a.count - i > need else { return 0 }
        guard (lo...hi).contains(a[i + 1]) else { return 0 }
        var k = 2
        while k <= need {
            guard (0x80...0xBF).contains(a[i + k]) else { return 0 }
            k += 1
        }
        return need + 1
    }

    /// A valid sequence that still must not reach a terminal as itself.
    static func isHidden(_ seq: ArraySlice<UInt8>) -> Bool {
        let s = Array(seq)
        if s.count == 2, s[0] == 0xC2, s[1] < 0xA0 { return true }        // C1 controls U+0080...U+009F
        if s.count == 3, s[0] == 0xE2, s[1] == 0x80, (0xA8...0xAE).contains(s[2]) { return true }   // U+2028...U+202E
        if s.count == 3, s[0] == 0xE2, s[1] == 0x81, (0xA6...0xA9).contains(s[2]) { return true }   // U+2066...U+2069
        return false
    }
}

