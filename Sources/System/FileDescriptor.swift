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
public func openBeneath(_ directory: Int32, _ path: String, flags: Int32) throws(Errno) -> Int32 {
    let resolve = KMSFS_RESOLVE_BENEATH | KMSFS_RESOLVE_NO_SYMLINKS | KMSFS_RESOLVE_NO_MAGICLINKS
    return try syscallRetrying("openat2 \(path)") {
        kmsfs_openat2(directory, path, UInt64(UInt32(bitPattern: flags | O_CLOEXEC | O_NOFOLLOW)), 0, resolve)
    }
}

/// `O_PATH` (glibc declares it only under `_GNU_SOURCE`, which CLinux's
/// C file defines and Swift's Glibc module must not).
public let O_PATH: Int32 = kmsfs_o_path
