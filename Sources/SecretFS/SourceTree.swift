import System
import CLinux
import SecureMemory
import Log
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The suffix that marks a ciphertext in SOURCE.
public let ciphertextSuffix = ".encrypted"

/// What identifies one version of a ciphertext file: when any of it changes
/// the file was replaced or rewritten, and a cached plaintext is stale.
public struct Fingerprint: Hashable, Sendable {
    public var device: UInt64
    public var inode: UInt64
    public var size: Int64
    public var mtimeNanos: Int64
    public var ctimeNanos: Int64
    /// Names the file has. More than one: it may be written through a
    /// name outside SOURCE (a hard link from a staging tree), which no
    /// watch of SOURCE's directories sees.
    public var links: UInt64

    public init(device: UInt64, inode: UInt64, size: Int64, mtimeNanos: Int64, ctimeNanos: Int64, links: UInt64 = 1) {
        self.device = device
        self.inode = inode
        self.size = size
        self.mtimeNanos = mtimeNanos
        self.ctimeNanos = ctimeNanos
        self.links = links
    }

    init(_ st: stat) {
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        size = Int64(st.st_size)
        mtimeNanos = Fingerprint.nanoseconds(st.st_mtim)
        ctimeNanos = Fingerprint.nanoseconds(st.st_ctim)
        links = UInt64(st.st_nlink)
    }

    /// A file time in nanoseconds since the epoch, saturated: whoever
    /// writes SOURCE sets mtime at will (`touch -d 2300-01-01`), past what
    /// 64 bits of nanoseconds hold (year 2262), and a trap there would stop
    /// the daemon at the next `ls -l`. Two such times look alike here; the
    /// ctime, which the kernel sets, still tells a change.
    public static func nanoseconds(_ t: timespec) -> Int64 {
        let (ns, overflow) = Int64(t.tv_sec).multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return t.tv_sec < 0 ? .min : .max }
        let (sum, over) = ns.addingReportingOverflow(Int64(t.tv_nsec))
        return over ? (ns < 0 ? .min : .max) : sum
    }
}

/// A file's identity on its file system.
public struct InodeID: Hashable, Sendable {
    public var device: UInt64
    public var inode: UInt64
    public init(device: UInt64, inode: UInt64) {
        self.device = device
        self.inode = inode
    }
}

/// Times and size of a SOURCE object, for the attributes the mount shows.
public struct SourceStat: Sendable {
    public var size: Int64
    public var atime: timespec
    public var mtime: timespec
    public var ctime: timespec
    public var fingerprint: Fingerprint
    public var isDirectory: Bool
    public var isRegular: Bool

    init(_ st: stat) {
        size = Int64(st.st_size)
        atime = st.st_atim
        mtime = st.st_mtim
        ctime = st.st_ctim
        fingerprint = Fingerprint(st)
        isDirectory = (st.st_mode & S_IFMT) == S_IFDIR
        isRegular = (st.st_mode & S_IFMT) == S_IFREG
    }
}

public enum NodeKind: Sendable, Equatable {
    case directory
    case secret
}

/// One entry of a mirrored directory.
public struct SourceEntry: Sendable, Equatable {
    /// The name in the mount (`ssl.pem`).
    public var name: String
    /// The name in SOURCE (`ssl.pem.encrypted`, or the directory's name).
    public var sourceName: String
    public var kind: NodeKind
}

/// How many directory entries the listings users' opendir builds hold
/// together, at most. Whoever can write SOURCE decides how large a
/// directory is, and every local user may open it, each opendir on a FUSE
/// worker of its own: a million names listed by 64 workers at once was tens
/// of GB of locked memory. A listing past the budget fails (ENFILE)
/// instead; one that alone is larger is never listed for a user, and says
/// so once.
public final class ListingBudget: Sendable {
    public static let shared = ListingBudget(limit: 1 << 18)
    public let limit: Int
    private let used = Atomic<Int>(0)

    public init(limit: Int) { self.limit = max(1, limit) }

    /// Entries held by listings now.
    public var inUse: Int { used.load(ordering: .relaxed) }

    /// What one listing holds; given back when it goes (keep it alive, with
    /// `withExtendedLifetime`, as long as the entries listed are).
    public final class Hold: @unchecked Sendable {
        let budget: ListingBudget
        fileprivate(set) var held = 0
        public init(_ budget: ListingBudget) { self.budget = budget }
        deinit { if held > 0 { budget.used.subtract(held, ordering: .relaxed) } }

        /// Room for `count` entries in all; false (nothing more taken) when
        /// the budget has none.
        fileprivate func cover(_ count: Int) -> Bool {
            guard count > held else { return true }
            let more = max(1024, count - held)
            if budget.used.add(more, ordering: .relaxed).newValue > budget.limit {
                budget.used.subtract(more, ordering: .relaxed)
                return false
            }
            held += more
            return true
        }
    }
}

/// Read-only access to SOURCE. Every path is resolved beneath SOURCE's
/// root descriptor with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), so a
/// symlink anywhere in SOURCE is never followed; only directories and
/// regular `*.encrypted` files are mirrored.
public final class SourceTree: Sendable {
    public let path: String
    public let rootFD: Int32
    /// Set by `release`: calls that use the root descriptor itself (not
    /// beneath it) answer as if SOURCE were gone, not with /dev/null's.
    private let released = Atomic<Bool>(false)

    /// Whether `rootFD` is a private copy of SOURCE's mount (see `init`).
    public let holdsPrivateCopy: Bool

    /// What every listing of this tree is charged to (tests give a small one).
    public let listingBudget: ListingBudget

    /// Opens SOURCE. As root, through a private, detached copy of its mount
    /// (open_tree(OPEN_TREE_CLONE), with the mounts below it): everything
    /// this daemon opens then keeps only that copy busy, never the mount
    /// itself, so SOURCE's own file system (NFS, EFS, a second disk) can be
    /// unmounted whatever this daemon still holds: at shutdown, systemd
    /// unmounts it the moment the kmsfs mount is gone, before this daemon
    /// has noticed. The file system then stays in use until the daemon lets
    /// go of it, as after `umount -l`. The copy is private: mounts made or
    /// unmounted below SOURCE later do not reach it (nor are held up by
    /// it). Without the privilege (or before Linux 5.12), a plain
    /// descriptor.
    public init(path: String, listingBudget: ListingBudget = .shared) throws(Errno) {
        self.path = path
        self.listingBudget = listingBudget
        let copy = kmsfs_open_tree_clone(path)
        var st = Glibc.stat()
        if copy >= 0, fstat(copy, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR {
            rootFD = copy
            holdsPrivateCopy = true
            return
        }
        if copy >= 0 { close(copy) }
        rootFD = try syscallRetrying("open \(path)") { open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        holdsPrivateCopy = false
    }

    deinit { close(rootFD) }

    /// Lets go of SOURCE once the mount is gone, so that SOURCE's own file
    /// system is freed while this daemon still wipes (without the private
    /// copy, so that it can be unmounted at all; systemd unmounts it as
    /// soon as the kmsfs mount is gone, at shutdown). The descriptor's
    /// number stays taken, by /dev/null: a call
    /// still in flight fails with ENOTDIR rather than resolving beneath
    /// whatever directory would next get that number.
    public func release() {
        released.store(true, ordering: .releasing)
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        guard null >= 0 else { return }
        if dup2(null, rootFD) == rootFD { _ = fcntl(rootFD, F_SETFD, FD_CLOEXEC) }
        close(null)
    }

    /// `dir/name`, with `.` for the root.
    public static func join(_ dir: String, _ name: String) -> String {
        dir == "." ? name : dir + "/" + name
    }

    /// Stat of a path relative to SOURCE, never following symlinks.
    public func stat(_ relPath: String) throws(Errno) -> SourceStat {
        var st = Glibc.stat()
        if relPath == "." {
            if released.load(ordering: .acquiring) { throw Errno("fstat \(path)", code: ENOTDIR) }
            _ = try syscallRetrying("fstat \(path)") { fstat(rootFD, &st) }
            return SourceStat(st)
        }
        let fd = try openBeneath(rootFD, relPath, flags: O_PATH)
        defer { close(fd) }
        _ = try syscallRetrying("fstat \(relPath)") { fstat(fd, &st) }
        return SourceStat(st)
    }

    /// Finds `name` (a name in the mount) in directory `dir`: the regular
    /// file `name.encrypted` if there is one, else the directory `name`.
    public func lookup(in dir: String, name: String) -> (SourceEntry, SourceStat)? {
        guard SourceTree.isValidName(name) else { return nil }
        let secretPath = SourceTree.join(dir, name + ciphertextSuffix)
        if let st = try? stat(secretPath), st.isRegular {
            return (SourceEntry(name: name, sourceName: name + ciphertextSuffix, kind: .secret), st)
        }
        let dirPath = SourceTree.join(dir, name)
        if let st = try? stat(dirPath), st.isDirectory {
            return (SourceEntry(name: name, sourceName: name, kind: .directory), st)
        }
        return nil
    }

    /// One path component, never "." or "..", not empty.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name != "." && name != ".." && !name.utf8.contains(UInt8(ascii: "/"))
    }

    /// The mirrored entries of directory `dir`. A regular `X.encrypted`
    /// file hides a directory `X` beside it, unless `hidden` (the watcher
    /// follows such a directory too: it shows once the file goes).
    /// With `hold` (a user's opendir), its entries are charged to it;
    /// without, nothing is (the daemon's own walks, one directory at a
    /// time: the watcher, prefetch, rotation must see every directory).
    public func list(_ dir: String, hidden: Bool = false, hold: ListingBudget.Hold? = nil) throws(Errno) -> [SourceEntry] {
        let fd = try openBeneath(rootFD, dir, flags: O_RDONLY | O_DIRECTORY)
        guard let d = fdopendir(fd) else {
            let e = Errno.current
            close(fd)
            throw Errno("fdopendir \(dir)", code: e)
        }
        defer { closedir(d) }
        // By bytes: `café` and `cafe\u{301}` are two entries (see PathKey).
        var secrets: [PathKey: SourceEntry] = [:]
        var dirs: [PathKey: SourceEntry] = [:]
        while let ent = readdir(d) {
            let nameBytes = DirectoryEntry.name(ent)
            // A name that is not UTF-8 cannot be shown (the mount's names
            // are Strings): said once, escaped, rather than vanishing.
            guard let sourceName = String(validating: nameBytes, as: UTF8.self) else {
                SourceTree.reportNotUTF8(dir: dir, name: nameBytes)
                continue
            }
            if sourceName == "." || sourceName == ".." { continue }
            var type = DirectoryEntry.type(ent)
            if type == UInt8(DT_UNKNOWN) {
                var st = Glibc.stat()
                guard fstatat(fd, sourceName, &st, AT_SYMLINK_NOFOLLOW) == 0 else { continue }
                type = (st.st_mode & S_IFMT) == S_IFDIR ? UInt8(DT_DIR) : ((st.st_mode & S_IFMT) == S_IFREG ? UInt8(DT_REG) : 0)
            }
            if type == UInt8(DT_REG), let name = SourceTree.shownName(ofCiphertext: sourceName) {
                if SourceTree.isValidName(name) {
                    secrets[PathKey(name)] = SourceEntry(name: name, sourceName: sourceName, kind: .secret)
                }
            } else if type == UInt8(DT_DIR) {
                dirs[PathKey(sourceName)] = SourceEntry(name: sourceName, sourceName: sourceName, kind: .directory)
            }
            if let hold, !hold.cover(secrets.count + dirs.count) {
                if secrets.count + dirs.count > hold.budget.limit { SourceTree.reportTooLarge(dir: dir, limit: hold.budget.limit) }
                throw Errno("list \(dir)", code: ENFILE)
            }
        }
        var out = Array(secrets.values)
        for (name, entry) in dirs where hidden || secrets[name] == nil { out.append(entry) }
        out.sort { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) }
        return out
    }

    /// `NAME` for a SOURCE name (or path) `NAME.encrypted`, else nil. By
    /// bytes: Swift's `hasSuffix` works on grapheme clusters, and a name
    /// such as `\u{600}.encrypted` (a prepended mark joins the dot) would
    /// not end in `.encrypted` for it.
    public static func shownName(ofCiphertext sourceName: String) -> String? {
        let b = Array(sourceName.utf8)
        guard b.count > ciphertextSuffix.utf8.count, hasCiphertextSuffix(sourceName) else { return nil }
        return String(validating: b.dropLast(ciphertextSuffix.utf8.count), as: UTF8.self)
    }

    /// Whether `name` ends in `.encrypted`, by bytes (see `shownName`).
    public static func hasCiphertextSuffix(_ name: String) -> Bool {
        name.utf8.reversed().starts(with: ciphertextSuffix.utf8.reversed())
    }

    /// The path the mount serves for a SOURCE path: `tls/ssl.pem.encrypted`
    /// -> `tls/ssl.pem`, by bytes like the listing; any other path as it is.
    public static func mountPath(ofSource path: String) -> String {
        shownName(ofCiphertext: path) ?? path
    }

    /// Directories already reported as too large to list (bounded as the
    /// names below).
    private static let reportedDirectories = Mutex(Set<String>())

    static func reportTooLarge(dir: String, limit: Int) {
        let first = reportedDirectories.withLock { seen in
            seen.count < maxReported && seen.insert(dir).inserted
        }
        if first {
            Log.warning("source: '\(escapedBytes(Array(dir.utf8)))' has more than \(limit) entries; it cannot be listed (ENFILE): split it into subdirectories")
        }
    }

    /// Names already reported as not UTF-8 (bounded: after `maxReported`
    /// one more line says the rest are not reported).
    private static let reportedNames = Mutex(Set<[UInt8]>())
    static let maxReported = 1024

    static func reportNotUTF8(dir: String, name: [UInt8]) {
        let key = Array(dir.utf8) + [0] + name
        let first = reportedNames.withLock { seen -> Int in
            if seen.contains(key) { return 0 }
            if seen.count > maxReported { return 0 }
            seen.insert(key)
            return seen.count > maxReported ? 2 : 1
        }
        if first == 1 {
            Log.warning("source: '\(escapedBytes(Array(SourceTree.join(dir, "").utf8)))\(escapedBytes(name))' is not UTF-8 and is not shown; rename it")
        } else if first == 2 {
            Log.warning("source: more than \(maxReported) names are not UTF-8; no more are reported")
        }
    }

    /// Bytes as printable ASCII: `\xNN` for control bytes, `\`, `'` and
    /// everything outside ASCII (nothing a terminal or log reader interprets).
    public static func escapedBytes(_ bytes: [UInt8]) -> String {
        var out = ""
        for b in bytes {
            if b >= 0x20, b < 0x7F, b != UInt8(ascii: "\\"), b != UInt8(ascii: "'") {
                out.unicodeScalars.append(Unicode.Scalar(b))
            } else {
                let hex = Array("0123456789abcdef".utf8)
                out += "\\x" + String(decoding: [hex[Int(b >> 4)], hex[Int(b & 15)]], as: UTF8.self)
            }
        }
        return out
    }

    /// Why a ciphertext could not be read.
    public typealias ReadError = CappedReadError

    /// `list`, with each entry's stat taken through the same directory
    /// descriptor (fstatat of one name, never following a symlink): what
    /// readdirplus answers with, one system call per entry.
    public func listWithStats(_ dir: String, hold: ListingBudget.Hold? = nil) throws(Errno) -> [(SourceEntry, SourceStat?)] {
        let entries = try list(dir, hold: hold)
        let fd = try openBeneath(rootFD, dir, flags: O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        return entries.map { e in
            var st = Glibc.stat()
            guard fstatat(fd, e.sourceName, &st, AT_SYMLINK_NOFOLLOW) == 0 else { return (e, nil) }
            let s = SourceStat(st)
            let ok = e.kind == .directory ? s.isDirectory : s.isRegular
            return (e, ok ? s : nil)
        }
    }

    /// Reads a whole ciphertext, refusing before reading when it is larger
    /// than `limit`. Returns its bytes and the fingerprint of exactly the
    /// version read.
    public func readCiphertext(_ relPath: String, limit: Int) throws(ReadError) -> ([UInt8], Fingerprint) {
        let fd = try openRegularFile(beneath: rootFD, relPath)
        // A file that grew while being read is read to the size it had and
        // no further: its fingerprint changes, and the next open reads it again.
        do {
            let (bytes, st) = try readRegularFile(fd, limit: limit)
            return (bytes, Fingerprint(st))
        } catch {
            guard case .system(let e) = error else { throw error }
            throw .system(Errno("\(e.operation) \(relPath)", code: e.code))   // "read tls/key.pem.encrypted: ..."
        }
    }

    /// Filesystem statistics of SOURCE.
    public func statfs() -> statvfs? {
        var s = statvfs()
        return !released.load(ordering: .acquiring) && fstatvfs(rootFD, &s) == 0 ? s : nil
    }

    /// The name of SOURCE's file system when it matches names without
    /// regard to case (then `DB/PASSWORD` opens `db/password.encrypted`
    /// but misses a `policy=` rule for `db/*`), else nil.
    public var caseInsensitiveFileSystem: String? {
        SourceTree.caseInsensitiveFileSystem(type: UInt64(kmsfs_fs_type(rootFD)))
    }

    /// File systems that fold case for every name (by `statfs` magic).
    public static func caseInsensitiveFileSystem(type: UInt64) -> String? {
        switch type & 0xFFFF_FFFF {
        case 0x4d44: return "vfat"
        case 0x2011_BAB0: return "exfat"
        case 0x5346_544e, 0x7366_746e: return "ntfs"
        case 0xFF53_4D42, 0xFE53_4D42: return "cifs/smb"
        case 0x482b: return "hfsplus"
        default: return nil
        }
    }
}

/// Bytes waiting to be read on `fd` (FIONREAD); -1 on error.
@inline(__always)
func queuedBytes(_ fd: Int32) -> Int32 { kmsfs_queued_bytes(fd) }
