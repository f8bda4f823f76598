import System
import Log
import SecureMemory
import Synchronization
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
    /// wd -> the directory's path in SOURCE, and the directory itself (a
    /// watch follows its directory through renames; its path is what we
    /// last knew, checked against `id` before it is trusted).
    private var watches: [Int32: (path: String, id: DirectoryID)] = [:]
    /// The same, by directory: whether a directory is watched already.
    private var byID: [DirectoryID: Int32] = [:]
    private typealias DirectoryID = InodeID

    /// Each cached ciphertext's own watch (`watchFile`), by wd: the inode
    /// and its paths in SOURCE (one inode may be cached under two names).
    /// A directory's watch sees writes through the names it holds; only
    /// the file's own sees one through a hard link elsewhere (a staging
    /// tree), also one made after the plaintext was cached. Under
    /// `fileLock`, never `lock`: an open must not wait for a walk of SOURCE.
    private struct FileWatches {
        var byWD: [Int32: (id: InodeID, paths: Set<PathKey>)] = [:]
        var byPath: [PathKey: Int32] = [:]
        var lastSweep = SystemClock.monotonic()
        /// `stopped`, kept here too: `watchFile` never takes `lock`.
        var stopped = false
    }
    private let fileLock = Mutex(FileWatches())
    /// Most cached ciphertexts watched: at most a quarter of the system's
    /// watches (`fs.inotify.max_user_watches`, 8,192 on older kernels), so
    /// that directories, which every open depends on, still get theirs.
    /// Past it, a plaintext is served after a look at its ciphertext.
    let fileWatchLimit: Int
    /// Writes only. A new name, a chmod or a touch leave the bytes as they
    /// were, and a write through any name is still a write here; waking on
    /// IN_ATTRIB made every hard-link snapshot of SOURCE (rsnapshot,
    /// `cp -al`) cost a Decrypt per cached secret when made and again
    /// when removed.
    static let fileMask: UInt32 = UInt32(IN_MODIFY | IN_CLOSE_WRITE)

    // Lock held. One directory has one wd: another wd known for the same
    // device and inode is of a directory deleted since, whose inode number
    // the file system gave again (its IN_IGNORED not read yet, or lost in
    // an overflow), and goes.
    private func setWatch(_ wd: Int32, _ path: String, _ id: DirectoryID) {
        if let old = byID[id], old != wd { watches[old] = nil }
        watches[wd] = (path, id)
        byID[id] = wd
    }

    // Lock held.
    private func dropWatch(_ wd: Int32) {
        guard let e = watches.removeValue(forKey: wd) else { return }
        if byID[e.id] == wd { byID[e.id] = nil }
    }
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

    public init(fs: SecretFileSystem, fileWatchLimit: Int? = nil) throws(Errno) {
        self.fs = fs
        fd = try syscallRetrying("inotify_init1") { inotify_init1(Int32(IN_CLOEXEC)) }
        self.fileWatchLimit = fileWatchLimit ?? min(SourceWatcher.maxWatches, SourceWatcher.systemWatchLimit() / 4)
    }

    /// `fs.inotify.max_user_watches`; 8,192 (the old default) if unread.
    static func systemWatchLimit() -> Int {
        guard let bytes = try? readSmallFile("/proc/sys/fs/inotify/max_user_watches", limit: 64).get(),
              let n = Int(String(decoding: bytes.prefix { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }, as: UTF8.self)),
              n > 0 else { return 8192 }
        return n
    }

    deinit {
        _ = fs.watchFD.compareExchange(expected: fd, desired: -1, ordering: .acquiringAndReleasing)
        close(fd)
    }

    /// Watches every directory of SOURCE and starts the event thread.
    public func start() {
        lock.withLock { addTree(".") }
        fs.watchFD.store(fd, ordering: .releasing)
        fs.onCiphertextRead { [weak self] path in self?.watchFile(path) }
        startThread(name: "kmsfs-watch") { [self] in run() }
    }

    /// Watches the ciphertext at `path` itself, before it is read to be
    /// cached; the inode watched, or nil (not a regular file, the limit,
    /// stopped). From any thread.
    func watchFile(_ path: String) -> InodeID? {
        let key = PathKey(path)
        // All under the lock, the path resolved too: a caller that resolved
        // it before a rotation and took the lock after another caller
        // watched the new file would have given that watch back (the path
        // "led to" the old inode), leaving the new plaintext unwatched.
        return fileLock.withLock { w -> InodeID? in
            guard !w.stopped else { return nil }
            // Opened beneath SOURCE, never through a link, and watched
            // through that descriptor: a path string would follow a link
            // swapped in.
            guard let f = try? openBeneath(fs.tree.rootFD, path, flags: O_PATH) else { return nil }
            defer { close(f) }
            var st = stat()
            guard fstat(f, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
            let id = InodeID(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
            // The inode this path was read from before (a rotation replaced
            // it) gives its watch back first: at the cap, it would hold a
            // slot for as long as the path is cached.
            if let old = w.byPath[key], w.byWD[old]?.id != id { forgetFile(&w, key, old) }
            guard w.byPath[key] != nil || w.byWD.count < fileWatchLimit else { return nil }
            let wd = inotify_add_watch(fd, "/proc/self/fd/\(f)", SourceWatcher.fileMask)
            guard wd >= 0 else { return nil }
            if let old = w.byPath[key], old != wd { forgetFile(&w, key, old) }
            if let other = w.byWD[wd], other.id != id {
                // A wd the kernel gave again (its IN_IGNORED not read yet):
                // the old inode's paths are no longer watched by it.
                for k in other.paths where w.byPath[k] == wd { w.byPath[k] = nil }
                w.byWD[wd] = nil
            }
            w.byWD[wd, default: (id, [])].paths.insert(key)
            w.byPath[key] = wd
            return id
        }
    }

    // fileLock held. `key` no longer watched through `wd`; the watch goes
    // with its last path.
    private func forgetFile(_ w: inout FileWatches, _ key: PathKey, _ wd: Int32) {
        if w.byPath[key] == wd { w.byPath[key] = nil }
        guard var e = w.byWD[wd] else { return }
        e.paths.remove(key)
        if e.paths.isEmpty {
            w.byWD[wd] = nil
            inotify_rm_watch(fd, wd)
        } else {
            w.byWD[wd] = e
        }
    }

    /// Cached ciphertexts watched (for tests and status).
    var fileWatchCount: Int { fileLock.withLock { $0.byWD.count } }

    /// Drops the watches of ciphertexts the cache no longer holds (evicted,
    /// wiped, past their TTL); at most every `every` seconds.
    func sweepFileWatches(every: Double = 30) {
        let now = SystemClock.monotonic()
        fileLock.withLock { w in
            guard now - w.lastSweep >= every else { return }
            w.lastSweep = now
            for (key, wd) in w.byPath where !fs.cache.holds(key.path) { forgetFile(&w, key, wd) }
        }
    }

    /// An event on a cached ciphertext's own watch: each of its paths
    /// changed (as a write seen in its directory would: wiped, told as a
    /// possible rotation). Also a path that leads elsewhere when the event
    /// is applied: it may lead back by the time its own events are (a
    /// file renamed away and back), and a wipe costs one Decrypt at most.
    /// False when `wd` is not a file's watch (a directory's).
    private func fileChanged(_ wd: Int32, _ mask: UInt32) -> Bool {
        if mask & UInt32(IN_IGNORED) != 0 {
            return fileLock.withLock { w in
                guard let e = w.byWD.removeValue(forKey: wd) else { return false }
                for k in e.paths where w.byPath[k] == wd { w.byPath[k] = nil }
                return true
            }
        }
        guard let e = fileLock.withLock({ $0.byWD[wd] }) else { return false }
        for key in e.paths {
            let slash = key.path.utf8.lastIndex(of: UInt8(ascii: "/"))
            let dir = slash.map { String(key.path[..<$0]) } ?? "."
            let name = slash.map { String(key.path[key.path.utf8.index(after: $0)...]) } ?? key.path
            fs.sourceChanged(directory: dir, name: name, isDirectory: false, removed: false)
        }
        return true
    }

    /// True when every directory of SOURCE is watched (see `complete`).
    public var watchesEverything: Bool { lock.withLock { complete } }

    public func stop() {
        lock.withLock { stopped = true }
        fileLock.withLock { $0.stopped = true }
        fs.onCiphertextRead(nil)
    }

    public var watchCount: Int { lock.withLock { watches.count } }

    /// Seconds between tries to watch everything again once something was
    /// left unwatched (a tree too deep, the watch limit, a bind mount):
    /// the cause may have gone, and until then every open looks at its
    /// ciphertext. A try walks SOURCE once.
    public var retryInterval: Double {
        get { lock.withLock { retryBase } }
        set { lock.withLock { retryBase = newValue; retryEvery = newValue } }
    }
    private var retryBase = 60.0
    /// Doubled after each try that still finds something unwatched (a
    /// cause that stays, such as a bind mount), up to ten minutes.
    private var retryEvery = 60.0
    private var lastTry = SystemClock.monotonic()

    /// Most directories watched. Watches are charged to the daemon's user
    /// (root), across the machine: whoever may make directories in SOURCE
    /// must not use up root's (systemd's path units, journald's). Past
    /// this, opens look at the ciphertext instead (`complete`).
    public static let maxWatches = 65_536
    /// `maxWatches`, lower in tests.
    var watchLimit = SourceWatcher.maxWatches

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
    // A directory hidden by an `X.encrypted` beside it is watched too: it
    // shows once the file goes, with no event of its own.
    private func addTree(_ top: String, quiet: Bool = false) {
        var pending = [top]
        var warnedLimit = quiet
        defer { if !complete { fs.sourceIsWatched = false } }
        while let dir = pending.popLast() {
            if SourceWatcher.depth(dir) > SourceWatcher.maxDepth {
                complete = false
                if !quiet { Log.warning("source: '\(SourceTree.escapedBytes(Array(dir.utf8.prefix(200))))...' is more than \(SourceWatcher.maxDepth) levels below SOURCE; not watched, changes below it are seen within the entry timeout only") }
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
            var st = stat()
            let statted = fstat(dirFD, &st) == 0
            let id = DirectoryID(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
            var wd: Int32 = -1
            var e: Int32 = Errno.current
            if statted {
                // At the cap, only a directory that may be watched already
                // (moved) is asked for: the kernel answers its wd, using no
                // new watch. Whether it is, only the kernel knows (byID may
                // name a deleted directory whose inode number came back).
                // Adding and removing others would queue an IN_IGNORED each.
                if watches.count < watchLimit || byID[id] != nil {
                    wd = inotify_add_watch(fd, "/proc/self/fd/\(dirFD)", SourceWatcher.dirMask)
                    e = Errno.current
                    if wd >= 0, watches[wd] == nil, watches.count >= watchLimit {
                        inotify_rm_watch(fd, wd)   // a new watch after all: not past the cap
                        wd = -1
                        e = ENOSPC
                    }
                } else {
                    e = ENOSPC
                }
            }
            if dir != "." { close(dirFD) }
            if wd < 0 {
                complete = false
                if e == ENOSPC, !warnedLimit {
                    warnedLimit = true
                    Log.warning("inotify watch limit (fs.inotify.max_user_watches, or kmsfs's own \(SourceWatcher.maxWatches)) reached at \(SourceTree.escapedBytes(Array(dir.utf8))); opens look at the ciphertext instead, and changes below it are seen within the entry timeout only")
                }
                continue
            }
            if let other = watches[wd]?.path, other != dir {
                if nameStill(other, is: id) {
                    // One directory under two names (a bind mount): its
                    // events can speak for one name only.
                    complete = false
                    if !quiet { Log.warning("source: '\(SourceTree.escapedBytes(Array(dir.utf8.prefix(200))))' is the directory '\(SourceTree.escapedBytes(Array(other.utf8.prefix(200))))' again; changes are followed under the first name only") }
                    continue
                }
                // Else it moved (a rename, or two directories exchanged):
                // the watch takes its new name, and the walk below it
                // renames the watches of what it holds.
            }
            setWatch(wd, dir, id)
            let entries: [SourceEntry]
            do { entries = try fs.tree.list(dir, hidden: true) } catch {
                if error.code != ENOENT && error.code != ENOTDIR { complete = false }
                continue
            }
            for e in entries.reversed() where e.kind == .directory {
                pending.append(SourceTree.join(dir, e.sourceName))
            }
        }
    }

    // Lock held. Whether `path` in SOURCE names the directory `id` now.
    private func nameStill(_ path: String, is id: DirectoryID) -> Bool {
        guard let st = try? fs.tree.stat(path), st.isDirectory else { return false }
        return st.fingerprint.device == id.device && st.fingerprint.inode == id.inode
    }

    // Lock held. Brings the watches at and below `sub` in line with what
    // is there now, whatever the event said: the directory there (if
    // any) and all below it watched under their names, and every watch
    // whose name no longer leads to its directory dropped. Events name
    // paths, and a path may stand for two directories in turn: after
    // `mv --exchange a b`, dropping the watches "under b" by name dropped
    // the one just taken for the directory that had come to b.
    private func resync(_ sub: String, nameWentAway: Bool) {
        if (try? fs.tree.stat(sub))?.isDirectory == true { addTree(sub) }
        // Only a name that went away leaves watches under it to drop (a
        // name that comes had its former directory's going reported
        // first): a create need not look at every watch.
        guard nameWentAway else { return }
        let prefix = Array((sub + "/").utf8)
        for (w, d) in watches where d.path.utf8.elementsEqual(sub.utf8) || d.path.utf8.starts(with: prefix) {
            if !nameStill(d.path, is: d.id) {
                inotify_rm_watch(fd, w)
                dropWatch(w)
            }
        }
    }

    private func run() {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            if lock.withLock({ stopped }) { return }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            // Waiting: nothing left to apply. With events to read, opens
            // look at the ciphertext until they are applied (a batch can
            // take seconds: every directory moved in is walked).
            let busy = fs.sourceChangesPending
            let ready = poll(&pfd, 1, busy ? 0 : 500)
            // Every pass, not only when quiet: a file written more often
            // than twice a second would keep it from ever running.
            sweepFileWatches()
            if ready <= 0 {
                if busy { fs.sourceChangesPending = false; continue }
                retryIfIncomplete()
                continue
            }
            fs.sourceChangesPending = true
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { continue }
            let events = buffer.withUnsafeBytes { SourceWatcher.events(in: UnsafeRawBufferPointer(rebasing: $0[..<n])) }
            for e in events { handle(e.wd, e.mask, e.name) }
        }
    }

    /// The events of one read(2) of the inotify descriptor. The names are
    /// SOURCE's (anyone who may write there chose them): one that is not
    /// UTF-8 keeps only the bits about the watch itself (it is not shown;
    /// SourceTree.list reports it once). Under the `sourcenames` fuzz
    /// target; a short or cut record ends the walk.
    public static func events(in raw: UnsafeRawBufferPointer) -> [(wd: Int32, mask: UInt32, name: String)] {
        var events: [(wd: Int32, mask: UInt32, name: String)] = []
        let header = MemoryLayout<inotify_event>.size
        var off = 0
        while raw.count - off >= header {
            let wd = raw.loadUnaligned(fromByteOffset: off, as: Int32.self)
            let mask = raw.loadUnaligned(fromByteOffset: off + 4, as: UInt32.self)
            let len = Int(raw.loadUnaligned(fromByteOffset: off + 12, as: UInt32.self))
            let nameStart = off + header
            let nameEnd = nameStart + min(len, raw.count - nameStart)
            let nameBytes = Array(raw[nameStart..<nameEnd].prefix { $0 != 0 })
            if let name = String(validating: nameBytes, as: UTF8.self) {
                events.append((wd, mask, name))
            } else {
                events.append((wd, mask & UInt32(IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF), ""))
            }
            off = nameEnd
        }
        return events
    }

    /// Once in `retryInterval` while not everything is watched: walks
    /// SOURCE again, and if everything is watched now, drops every cached
    /// plaintext whose ciphertext changed meanwhile (as a change seen now:
    /// a rotation there was told to nobody) before hits skip the stat again.
    private func retryIfIncomplete() {
        let now = SystemClock.monotonic()
        let whole: Bool? = lock.withLock {
            guard !complete, !stopped, now - lastTry >= retryEvery else { return nil }
            lastTry = now
            complete = true
            addTree(".", quiet: true)   // the causes were logged when first met
            retryEvery = complete ? retryBase : min(retryEvery * 2, 600)
            return complete
        }
        guard whole == true else { return }
        fs.revalidateCache()
        // Not after a stop (which cleared the flag before stopping this).
        let on = lock.withLock { !stopped && complete }
        fs.sourceIsWatched = on
        if on { Log.notice("source: every directory of SOURCE is watched again") }
    }

    private func handle(_ wd: Int32, _ mask: UInt32, _ name: String) {
        if mask & UInt32(IN_Q_OVERFLOW) != 0 {
            Log.warning("inotify queue overflowed; re-reading SOURCE")
            fs.sourceIsWatched = false   // events were lost: stat on every open until re-read
            // Walked again with the watches kept: removing them all would
            // queue an IN_IGNORED each, and past the queue's 16,384 events
            // overflow it again, for ever. Those whose names no longer lead
            // to their directories go.
            lock.withLock {
                complete = true
                addTree(".")
                for (w, d) in watches where !nameStill(d.path, is: d.id) {
                    inotify_rm_watch(fd, w)
                    dropWatch(w)
                }
            }
            // What changed while events were lost is invalidated before the
            // cache is trusted without a stat again.
            fs.sourceChangedEverywhere()
            fs.sourceIsWatched = lock.withLock { !stopped && complete }
            return
        }
        if fileChanged(wd, mask) { return }
        if mask & UInt32(IN_IGNORED) != 0 {
            lock.withLock { dropWatch(wd) }
            return
        }
        guard let dir = lock.withLock({ watches[wd]?.path }) else { return }
        if mask & UInt32(IN_DELETE_SELF | IN_MOVE_SELF) != 0 {
            // The parent's watch reports the same change by name; SOURCE
            // itself has none of ours.
            if dir == "." {
                Log.warning("source: SOURCE itself was \(mask & UInt32(IN_MOVE_SELF) != 0 ? "moved or renamed" : "deleted"); the mount goes on serving the directory it was given (wherever it is now); remount to serve what is at SOURCE's path now")
            }
            return
        }
        guard !name.isEmpty else { return }
        let isDir = mask & UInt32(IN_ISDIR) != 0
        let removed = mask & UInt32(IN_DELETE | IN_MOVED_FROM) != 0
        let added = mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0
        if isDir {
            // Only a name's coming or going moves directories; a chmod
            // or touch of one (IN_ATTRIB) changes nothing below it.
            guard added || removed else { return }
            let sub = SourceTree.join(dir, name)
            lock.withLock { resync(sub, nameWentAway: removed) }
        }
        fs.sourceChanged(directory: dir, name: name, isDirectory: isDir, removed: removed)
    }
}
