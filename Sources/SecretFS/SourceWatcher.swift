import System
import Log
import SecureMemory
#if canImport(Glibc)
import Glibc
#endif

/// Follows SOURCE with inotify so the mount is a live mirror: files and
/// directories added, removed, renamed or replaced show up at once, a
/// replaced ciphertext is decrypted anew on its next open, and the kernel's
/// cached names and attributes are invalidated.
public final class SourceWatcher: @unchecked Sendable {
    private let fs: SecretFileSystem
    private let fd: Int32
    private let lock = ConditionLock()
    private var watches: [Int32: String] = [:]    // wd -> directory path in SOURCE
    private var stopped = false
    /// Every directory of SOURCE has a watch. Once one has none (deeper
    /// than `maxDepth`, the inotify limit reached, a directory that could
    /// not be opened, two names for one directory), a change there would go
    /// unseen, so opens stop trusting the cache without a stat
    /// (`SecretFileSystem.sourceIsWatched`) until a full re-read finds
    /// every directory watched again.
    private var complete = true

    /// No IN_DONT_FOLLOW: the watch is taken through /proc/self/fd/N of a
    /// directory opened beneath SOURCE, a link that must be followed.
    static let dirMask: UInt32 = UInt32(IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_CLOSE_WRITE
        | IN_MODIFY | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_EXCL_UNLINK)

    public init(fs: SecretFileSystem) throws(Errno) {
        self.fs = fs
        fd = try syscallRetrying("inotify_init1") { inotify_init1(Int32(IN_CLOEXEC)) }
    }

    deinit { close(fd) }

    /// Watches every directory of SOURCE and starts the event thread.
    public func start() {
        lock.withLock { addTree(".") }
        startThread(name: "kmsfs-watch") { [self] in run() }
    }

    /// True when every directory of SOURCE is watched (see `complete`).
    public var watchesEverything: Bool { lock.withLock { complete } }

    public func stop() {
        lock.withLock { stopped = true }
    }

    public var watchCount: Int { lock.withLock { watches.count } }

    /// Directories more than this many levels below SOURCE are not
    /// watched (one warning each; changes below them are seen within the
    /// entry timeout only). The walk is iterative, so no depth can exhaust
    /// the thread's stack; the cap bounds the watches one moved-in tree costs.
    public static let maxDepth = 128

    /// Levels below SOURCE: `.` is 0, `a` is 1, `a/b` is 2.
    static func depth(_ dir: String) -> Int {
        dir == "." ? 0 : dir.utf8.reduce(1) { $1 == UInt8(ascii: "/") ? $0 + 1 : $0 }
    }

    // Lock held. Watches `top` and every directory below it, walking with
    // an explicit stack (never recursion: SOURCE's depth is not ours).
    // Whatever it cannot watch makes the watch incomplete (`complete`).
    private func addTree(_ top: String) {
        var pending = [top]
        var warnedLimit = false
        defer { if !complete { fs.sourceIsWatched = false } }
        while let dir = pending.popLast() {
            if SourceWatcher.depth(dir) > SourceWatcher.maxDepth {
                complete = false
                Log.warning("source: '\(SourceTree.escapedBytes(Array(dir.utf8.prefix(200))))...' is more than \(SourceWatcher.maxDepth) levels below SOURCE; not watched, changes below it are seen within the entry timeout only")
                continue
            }
            // The watch is taken through a descriptor of the directory
            // opened beneath SOURCE (no symlink followed on the way): a path
            // string would follow a symlink swapped into the middle of it.
            let dirFD: Int32
            if dir == "." {
                dirFD = fs.tree.rootFD
            } else {
                do { dirFD = try openBeneath(fs.tree.rootFD, dir, flags: O_PATH | O_DIRECTORY) } catch {
                    // Gone meanwhile (its parent's watch reports that): nothing
                    // to watch. Anything else leaves a directory unwatched.
                    if error.code != ENOENT && error.code != ENOTDIR { complete = false }
                    continue
                }
            }
            let wd = inotify_add_watch(fd, "/proc/self/fd/\(dirFD)", SourceWatcher.dirMask)
            let e = Errno.current
            if dir != "." { close(dirFD) }
            if wd < 0 {
                complete = false
                if e == ENOSPC, !warnedLimit {
                    warnedLimit = true
                    Log.warning("inotify watch limit reached at \(SourceTree.escapedBytes(Array(dir.utf8))); raise fs.inotify.max_user_watches, changes below it are seen within the entry timeout only")
                }
                continue
            }
            if let other = watches[wd], other != dir, isWatched(other) {
                // One directory under two names (a bind mount): its events
                // can speak for one name only.
                complete = false
                Log.warning("source: '\(SourceTree.escapedBytes(Array(dir.utf8.prefix(200))))' is the directory '\(SourceTree.escapedBytes(Array(other.utf8.prefix(200))))' again; changes are followed under the first name only")
                continue
            }
            watches[wd] = dir
            let entries: [SourceEntry]
            do { entries = try fs.tree.list(dir) } catch {
                if error.code != ENOENT && error.code != ENOTDIR { complete = false }
                continue
            }
            for e in entries.reversed() where e.kind == .directory {
                pending.append(SourceTree.join(dir, e.sourceName))
            }
        }
    }

    // Lock held. Whether `dir` still names a watched directory of SOURCE
    // (a watch left behind by a rename is re-labelled, not a collision).
    private func isWatched(_ dir: String) -> Bool {
        (try? fs.tree.stat(dir))?.isDirectory == true
    }

    private func run() {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            if lock.withLock({ stopped }) { return }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, 500)
            if ready <= 0 { continue }
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { continue }
            var events: [(wd: Int32, mask: UInt32, name: String)] = []
            buffer.withUnsafeBytes { raw in
                var off = 0
                while off + MemoryLayout<inotify_event>.size <= n {
                    let wd = raw.load(fromByteOffset: off, as: Int32.self)
                    let mask = raw.load(fromByteOffset: off + 4, as: UInt32.self)
                    let len = Int(raw.load(fromByteOffset: off + 12, as: UInt32.self))
                    let nameStart = off + MemoryLayout<inotify_event>.size
                    let nameBytes = Array(raw[nameStart..<min(nameStart + len, n)].prefix { $0 != 0 })
                    if let name = String(validating: nameBytes, as: UTF8.self) {
                        events.append((wd, mask, name))
                    } else {
                        // Not shown (see SourceTree.list); reported there once.
                        events.append((wd, mask & UInt32(IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF), ""))
                    }
                    off = nameStart + len
                }
            }
            for e in events { handle(e.wd, e.mask, e.name) }
        }
    }

    private func handle(_ wd: Int32, _ mask: UInt32, _ name: String) {
        if mask & UInt32(IN_Q_OVERFLOW) != 0 {
            Log.warning("inotify queue overflowed; re-reading SOURCE")
            fs.sourceIsWatched = false   // events were lost: stat on every open until re-read
            lock.withLock {
                for w in watches.keys { inotify_rm_watch(fd, w) }
                watches.removeAll()
                complete = true
                addTree(".")
            }
            // What changed while events were lost is invalidated before the
            // cache is trusted without a stat again.
            fs.sourceChangedEverywhere()
            fs.sourceIsWatched = watchesEverything
            return
        }
        if mask & UInt32(IN_IGNORED) != 0 {
            lock.withLock { _ = watches.removeValue(forKey: wd) }
            return
        }
        guard let dir = lock.withLock({ watches[wd] }) else { return }
        if mask & UInt32(IN_DELETE_SELF | IN_MOVE_SELF) != 0 {
            return   // the parent's watch reports the same change by name
        }
        guard !name.isEmpty else { return }
        let isDir = mask & UInt32(IN_ISDIR) != 0
        let removed = mask & UInt32(IN_DELETE | IN_MOVED_FROM) != 0
        let added = mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0
        if isDir {
            let sub = SourceTree.join(dir, name)
            lock.withLock {
                if added { addTree(sub) }
                if removed {
                    let prefix = Array((sub + "/").utf8)
                    for (w, d) in watches where d.utf8.elementsEqual(sub.utf8) || d.utf8.starts(with: prefix) {
                        inotify_rm_watch(fd, w)
                        watches[w] = nil
                    }
                }
            }
        }
        fs.sourceChanged(directory: dir, name: name, isDirectory: isDir, removed: removed)
    }
}
