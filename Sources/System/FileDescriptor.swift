import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// An open file descriptor this value owns: closed exactly once, when the
/// value ends (or handed on with `release()`). Not copyable, so no second
/// owner can close it twice. Reads and writes retry EINTR; `close` never
/// does (Linux closes the descriptor even when close is interrupted).
public struct FileDescriptor: ~Copyable {
    public let rawValue: Int32

    /// Takes ownership of `rawValue`.
    public init(owning rawValue: Int32) { self.rawValue = rawValue }

    deinit { Glibc.close(rawValue) }

    /// Gives up ownership: the caller closes the descriptor.
    public consuming func release() -> Int32 {
        let fd = rawValue
        discard self
        return fd
    }

    /// open(2) with `O_CLOEXEC` added, EINTR retried.
    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0) throws(Errno) -> FileDescriptor {
        FileDescriptor(owning: try syscallRetrying("open \(path)") { Glibc.open(path, flags | O_CLOEXEC, mode) })
    }

    /// Opens `path` relative to `directory` with openat2(2), refusing to
    /// leave the directory (`RESOLVE_BENEATH`) or to follow any symlink or
    /// magic link on the way: how kmsfs reads SOURCE, so a symlink there
    /// never leads out. `O_CLOEXEC | O_NOFOLLOW` are added.
    public static func openBeneath(_ directory: Int32, _ path: String, flags: Int32) throws(Errno) -> FileDescriptor {
        FileDescriptor(owning: try System.openBeneath(directory, path, flags: flags))
    }

    /// fstat(2).
    public func stat() throws(Errno) -> Glibc.stat {
        var st = Glibc.stat()
        _ = try syscallRetrying("fstat") { fstat(rawValue, &st) }
        return st
    }

    /// Reads until `buffer` is full or the end of the file; the count read.
    public func read(filling buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        try FileDescriptor.read(rawValue, filling: buffer)
    }

    /// Writes all of `bytes`.
    public func writeAll(_ bytes: UnsafeRawBufferPointer) throws(Errno) {
        try FileDescriptor.writeAll(rawValue, bytes)
    }

    /// One read(2), EINTR retried: the count read, 0 at the end.
    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        try syscallRetrying("read") { Glibc.read(fd, buffer.baseAddress, buffer.count) }
    }

    /// Reads `fd` (not owned) until `buffer` is full or the end; the count read.
    public static func read(_ fd: Int32, filling buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        guard let base = buffer.baseAddress else { return 0 }
        var got = 0
        while got < buffer.count {
            let n = try syscallRetrying("read") { Glibc.read(fd, base + got, buffer.count - got) }
            if n == 0 { break }
            got += n
        }
        return got
    }

    /// Writes all of `bytes` to `fd` (not owned), EINTR retried.
    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws(Errno) {
        guard let base = bytes.baseAddress else { return }
        var off = 0
        while off < bytes.count {
            off += try syscallRetrying("write") { Glibc.write(fd, base + off, bytes.count - off) }
        }
    }
}

extension FileDescriptor {
    /// Writes `bytes` to the socket `fd` (not owned) within `seconds` in
    /// all: a peer that reads a few bytes at a time, each write inside any
    /// per-write timeout, cannot hold the writer longer. The socket is made
    /// non-blocking. False when the time ran out or a write failed.
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8], within seconds: Double) -> Bool {
        let flags = fcntl(fd, F_GETFL)
        if flags >= 0 { _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
        let deadline = SystemClock.monotonic() + seconds
        return bytes.withUnsafeBytes { b -> Bool in
            guard let base = b.baseAddress else { return true }
            var off = 0
            while off < b.count {
                let n = Glibc.write(fd, base + off, b.count - off)
                if n > 0 { off += n; continue }
                let e = Errno.current
                guard n < 0, e == EAGAIN || e == EWOULDBLOCK || e == EINTR else { return false }
                let left = deadline - SystemClock.monotonic()
                guard left > 0 else { return false }
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&p, 1, Int32(min(left, 1) * 1000) + 1)
            }
            return true
        }
    }
}

/// After accept(2) failed for want of descriptors or memory (EMFILE,
/// ENFILE, ENOBUFS, ENOMEM), the listener stays readable and a poll loop
/// would spin: the caller waits this long before trying again.
public func backOffAfterAcceptFailure(_ e: Int32 = Errno.current) {
    if e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM { SystemClock.sleep(0.1) }
}

// The same for arrays (whose withUnsafe...Bytes do not carry a typed error).
extension FileDescriptor {
    /// Reads until `bytes` is full or the end; the count read.
    public func read(filling bytes: inout [UInt8]) throws(Errno) -> Int {
        try FileDescriptor.read(rawValue, filling: &bytes)
    }

    /// Reads `fd` (not owned) until `bytes` is full or the end; the count read.
    public static func read(_ fd: Int32, filling bytes: inout [UInt8]) throws(Errno) -> Int {
        try bytes.withUnsafeMutableBytes { b in Result { () throws(Errno) in try read(fd, filling: b) } }.get()
    }

    /// One read(2) of `fd` (not owned) into `bytes`, EINTR retried: the count read, 0 at the end.
    public static func read(_ fd: Int32, into bytes: inout [UInt8]) throws(Errno) -> Int {
        try bytes.withUnsafeMutableBytes { b in Result { () throws(Errno) in try read(fd, into: b) } }.get()
    }

    /// Writes all of `bytes` to `fd` (not owned).
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws(Errno) {
        try bytes.withUnsafeBytes { b in Result { () throws(Errno) in try writeAll(fd, b) } }.get()
    }
}

/// openat2(2) beneath `directory` (see `FileDescriptor.openBeneath`); the
/// caller owns the descriptor returned.
///
/// Where openat2 answers ENOSYS it walks the path one component at a time
/// instead (`openBeneathByComponents`), with the same refusals. systemd
/// makes openat2 fail with ENOSYS in every unit with `RestrictSUIDSGID=`
/// (seccomp cannot see its flags), the shipped kmsfs.service among them:
/// without the walk SOURCE looked empty there (found by the boot test).
public func openBeneath(_ directory: Int32, _ path: String, flags: Int32) throws(Errno) -> Int32 {
    let resolve = KMSFS_RESOLVE_BENEATH | KMSFS_RESOLVE_NO_SYMLINKS | KMSFS_RESOLVE_NO_MAGICLINKS
    do {
        return try syscallRetrying("openat2 \(path)") {
            kmsfs_openat2(directory, path, UInt64(UInt32(bitPattern: flags | O_CLOEXEC | O_NOFOLLOW)), 0, resolve)
        }
    } catch where error.code == ENOSYS {
        return try openBeneathByComponents(directory, path, flags: flags)
    }
}

/// `openBeneath` without openat2, with its answers: an absolute path, or a
/// `..` that would climb above `directory`, fails with EXDEV (a `..` that
/// stays beneath is followed, as RESOLVE_BENEATH does); each component is
/// opened from the one before with O_NOFOLLOW, so a symlink (or magic link)
/// on the way fails with ELOOP, and one at the end fails with ELOOP, or with
/// O_PATH opens as the link itself, as openat2 with O_NOFOLLOW answers (the
/// caller's fstat sees a link, never what it points to). The caller owns
/// the descriptor returned.
public func openBeneathByComponents(_ directory: Int32, _ path: String, flags: Int32) throws(Errno) -> Int32 {
    try openBeneathByComponents(directory, Array(path.utf8), flags: flags)
}

/// The same for a path as bytes (one `PathTrust` resolved: a link's text
/// on the way need not be UTF-8, and a String would change it).
public func openBeneathByComponents(_ directory: Int32, _ bytes: [UInt8], flags: Int32) throws(Errno) -> Int32 {
    var path: String { String(decoding: bytes, as: UTF8.self) }   // for messages only, made when one is
    guard bytes.first != UInt8(ascii: "/") else { throw Errno("open \(path)", code: EXDEV) }
    let dot: [UInt8] = [UInt8(ascii: ".")]
    let dotdot: [UInt8] = [UInt8(ascii: "."), UInt8(ascii: ".")]
    let parts = bytes.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true)
    // The directories opened so far below `directory`, each owned here.
    var stack: [Int32] = []
    defer { for fd in stack { Glibc.close(fd) } }
    for (i, part) in parts.enumerated() {
        let last = i == parts.count - 1
        if part.elementsEqual(dot) || part.elementsEqual(dotdot) {
            if part.elementsEqual(dotdot) {
                guard let top = stack.popLast() else { throw Errno("open \(path)", code: EXDEV) }
                Glibc.close(top)
            }
            if last { break }
            continue
        }
        let at = stack.last ?? directory
        let name = Array(part) + [0]
        if last {
            let fd = try syscallRetrying("open \(path)") {
                name.withUnsafeBufferPointer { p in
                    p.withMemoryRebound(to: CChar.self) { openat(at, $0.baseAddress!, flags | O_CLOEXEC | O_NOFOLLOW) }
                }
            }
            return fd
        }
        let fd = try syscallRetrying("open \(path)") {
            name.withUnsafeBufferPointer { p in
                p.withMemoryRebound(to: CChar.self) { openat(at, $0.baseAddress!, O_PATH | O_NOFOLLOW | O_CLOEXEC) }
            }
        }
        var st = Glibc.stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
            let code = st.st_mode & S_IFMT == S_IFLNK ? ELOOP : ENOTDIR
            Glibc.close(fd)
            throw Errno("open \(path)", code: code)
        }
        stack.append(fd)
    }
    // The path named a directory already walked (".", "d/..", "d/."):
    // open it again with the caller's flags.
    let at = stack.last ?? directory
    return try syscallRetrying("open \(path)") { openat(at, ".", flags | O_CLOEXEC | O_NOFOLLOW) }
}

/// `O_PATH` (glibc declares it only under `_GNU_SOURCE`, which CLinux's
/// C file defines and Swift's Glibc module must not).
public let O_PATH: Int32 = kmsfs_o_path

/// The next connection on listening socket `fd`, close-on-exec from the
/// start (accept4): no program spawned meanwhile can inherit it. -1 with
/// errno set when there is none.
public func acceptCloseOnExec(_ fd: Int32) -> Int32 {
    kmsfs_accept_cloexec(fd)
}

/// What readdir(3) returned, read field by field. A record is only as long
/// as its name needs (`d_reclen`), and the last one may end where libc's
/// buffer ends: loading the whole `dirent` (`ent.pointee.d_name`, 256 bytes)
/// reads past it, which AddressSanitizer reports as a heap overflow.
public enum DirectoryEntry {
    /// The name's bytes, up to its NUL.
    public static func name(_ ent: UnsafePointer<dirent>) -> [UInt8] {
        let base = UnsafeRawPointer(ent) + MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        let n = strnlen(base.assumingMemoryBound(to: CChar.self), 256)
        return Array(UnsafeRawBufferPointer(start: base, count: n))
    }

    /// `d_type` (DT_REG, DT_DIR, DT_UNKNOWN...).
    public static func type(_ ent: UnsafePointer<dirent>) -> UInt8 {
        (UnsafeRawPointer(ent) + MemoryLayout<dirent>.offset(of: \dirent.d_type)!).load(as: UInt8.self)
    }
}
