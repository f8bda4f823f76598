#if canImport(Glibc)
import Glibc
#endif

/// Why a capped read of a regular file failed.
public enum CappedReadError: Error, Sendable, Equatable {
    case system(Errno)
    case tooLarge(size: Int64, limit: Int)
    case notRegular
}

/// The one capped read of a regular file: `fd`'s status, refusing (before
/// anything is read) what is not a regular file or is larger than `limit`.
/// Read the size it gives with `FileDescriptor.read(filling:)`.
public func regularFileStatus(_ fd: borrowing FileDescriptor, limit: Int) throws(CappedReadError) -> stat {
    let st: stat
    do { st = try fd.stat() } catch { throw .system(error) }
    guard (st.st_mode & S_IFMT) == S_IFREG else { throw .notRegular }
    guard st.st_size <= limit else { throw .tooLarge(size: Int64(st.st_size), limit: limit) }
    // A server that sends an unsigned 64-bit size (CIFS, 9p) can make it
    // negative here; every caller sizes a buffer from it.
    guard st.st_size >= 0 else { throw .system(Errno("fstat gave a negative size (\(st.st_size))", code: EIO)) }
    return st
}

/// Opens `path` beneath `directory` for reading only if it is a regular
/// file, without ever opening anything else: the name is opened with
/// O_PATH first (no driver's open runs), its status checked, and that same
/// inode opened for reading through /proc/self/fd. A device node swapped in
/// for the file after the caller looked is never opened: a terminal would
/// become the daemon's controlling terminal, a watchdog would arm, a tape
/// would rewind. Where /proc is not mounted, the file is opened directly
/// (O_NOCTTY, O_NONBLOCK) and checked after.
public func openRegularFile(beneath directory: Int32, _ path: String) throws(CappedReadError) -> FileDescriptor {
    let flags = O_RDONLY | O_NONBLOCK | O_NOCTTY
    let handle: FileDescriptor
    do { handle = try FileDescriptor.openBeneath(directory, path, flags: O_PATH) } catch { throw .system(error) }
    let st: stat
    do { st = try handle.stat() } catch { throw .system(error) }
    guard (st.st_mode & S_IFMT) == S_IFREG else { throw .notRegular }
    let fd = open("/proc/self/fd/\(handle.rawValue)", flags | O_CLOEXEC)
    if fd >= 0 { return FileDescriptor(owning: fd) }
    let e = Errno.current
    guard e == ENOENT else { throw .system(Errno("open \(path)", code: e)) }
    do { return try FileDescriptor.openBeneath(directory, path, flags: flags) } catch { throw .system(error) }
}

/// Reads the regular file open at `fd` whole into an array, refusing one
/// over `limit` before reading; a file that grows meanwhile is read to the
/// size it had, one that shrinks to its end. Not for plaintext: the bytes
/// land in an ordinary array.
public func readRegularFile(_ fd: borrowing FileDescriptor, limit: Int) throws(CappedReadError) -> ([UInt8], stat) {
    let st = try regularFileStatus(fd, limit: limit)
    var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
    let got: Int
    do { got = try fd.read(filling: &bytes) } catch {
        throw .system(error)
    }
    bytes.removeLast(bytes.count - got)
    return (bytes, st)
}

/// Reads a small file whole (token files, shared config files, policy
/// files); the error names the path. EFBIG past `limit` bytes.
public func readSmallFile(_ path: String, limit: Int = 1 << 20) -> Result<[UInt8], Errno> {
    let fd: FileDescriptor
    do { fd = try openSmallFile(path) } catch { return .failure(error) }
    return readMessage(fd, limit: limit).mapError { Errno(path, code: $0.code) }
}

/// Opens a file to be read whole without ever blocking: a FIFO or a
/// terminal put where a token file was expected would otherwise hold the
/// reading thread forever (in open(2), then in read(2)). Regular files
/// and character devices (`AWS_CONFIG_FILE=/dev/null`, as people tell the
/// SDKs to read no shared file) are read; a FIFO, socket or directory is
/// refused with one line.
public func openSmallFile(_ path: String) throws(Errno) -> FileDescriptor {
    let fd: FileDescriptor
    do { fd = try FileDescriptor.open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY) } catch { throw Errno(path, code: error.code) }
    let st: stat
    do { st = try fd.stat() } catch { throw Errno(path, code: error.code) }
    let kind = st.st_mode & S_IFMT
    guard kind == S_IFREG || kind == S_IFCHR else { throw Errno("\(path) is not a regular file", code: EINVAL) }
    return fd
}

/// `readMessage` of a descriptor this code owns.
public func readMessage(_ fd: borrowing FileDescriptor, limit: Int, throughNewline: Bool = false) -> Result<[UInt8], Errno> {
    readMessage(fd.rawValue, limit: limit, throughNewline: throughNewline)
}

/// Reads `fd` to its end (or through the first newline, with
/// `throughNewline`), failing with the errno, or EFBIG past `limit` bytes.
/// Not for plaintext: the bytes land in an ordinary array.
public func readMessage(_ fd: Int32, limit: Int, throughNewline: Bool = false) -> Result<[UInt8], Errno> {
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 16 * 1024)
    while true {
        let n: Int
        do { n = try FileDescriptor.read(fd, into: &chunk) } catch {
            return .failure(error)
        }
        if n == 0 { break }
        out += chunk[0..<n]
        if out.count > limit { return .failure(Errno("read", code: EFBIG)) }
        if throughNewline && chunk[0..<n].contains(UInt8(ascii: "\n")) { break }
    }
    return .success(out)
}
