import System
import SecureMemory
import Log
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// An Errno.current to answer a request with.
public struct FSError: Error, Equatable, Sendable {
    public let code: Int32
    public init(_ code: Int32) { self.code = code }
    public static let notFound = FSError(ENOENT)
    public static let accessDenied = FSError(EACCES)
    public static let io = FSError(EIO)
    public static let readOnly = FSError(EROFS)
    public static let notDirectory = FSError(ENOTDIR)
    public static let isDirectory = FSError(EISDIR)
}

/// The attributes `stat` shows.
public struct Attributes: Sendable {
    public var ino: UInt64
    public var kind: NodeKind
    public var mode: UInt32          // file type and permission bits
    public var nlink: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var size: Int64
    public var atime: timespec
    public var mtime: timespec
    public var ctime: timespec
    /// These attributes are for the caller only: the kernel must hand them
    /// to it without storing them in its inode (see `FUSEBridge` getattr),
    /// because their size depends on who asked.
    public var forCallerOnly: Bool = false
}

/// The answer to a lookup: attributes plus how long the kernel may cache them.
public struct EntryReply: Sendable {
    public var attributes: Attributes
    public var entryTimeout: Double
    public var attributeTimeout: Double
}

/// A mirrored node the kernel knows by inode number.
final class Node: @unchecked Sendable {
    let ino: UInt64
    let kind: NodeKind
    /// Path in SOURCE (`tls/ssl.pem.encrypted`, `tls`, `.`).
    let sourcePath: String
    /// Path in the mount (`tls/ssl.pem`, `tls`, ``).
    let mountPath: String
    /// Kernel lookup count (guarded by the table's lock).
    var lookups: UInt64 = 0

    init(ino: UInt64, kind: NodeKind, sourcePath: String, mountPath: String) {
        self.ino = ino
        self.kind = kind
        self.sourcePath = sourcePath
        self.mountPath = mountPath
    }
}

/// An open file: the plaintext it opened, kept until release. While it
/// lives it is listed in the mount's handle table with the version it
/// opened (`kmsfs status`, `--wait-rotated`).
public final class OpenSecret: @unchecked Sendable {
    public let secret: CachedSecret
    private let table: HandleTable?
    private let id: UInt64

    public init(secret: CachedSecret) {
        self.secret = secret
        self.table = nil
        self.id = 0
    }

    init(secret: CachedSecret, table: HandleTable, handle: HeldHandle) {
        self.secret = secret
        self.table = table
        self.id = table.add(handle)
    }

    deinit { table?.remove(id) }

    public var plaintext: SecureBuffer { secret.plaintext }

    /// Set once the kernel read this handle through its page cache (a
    /// private mmap(2)): only then can pages of plaintext be left there
    /// when the handle is released.
    private let pageCacheRead = Atomic<Bool>(false)

    public func notePageCacheRead() { pageCacheRead.store(true, ordering: .relaxed) }

    public var wasReadThroughPageCache: Bool { pageCacheRead.load(ordering: .relaxed) }
}

/// An open directory: its entries as they were at opendir, so offsets stay
/// stable while it is read.
public final class OpenDirectory: @unchecked Sendable {
    public struct Item: Sendable {
        public var name: String
        public var kind: NodeKind
        /// The entry as SOURCE showed it at opendir (for readdirplus).
        var entry: SourceEntry
        var stat: SourceStat?
    }
    public let ino: UInt64
    public let items: [Item]
    /// The listing shared with other handles, and whose handle this is
    /// (`DirectoryLedger`).
    private let listing: DirectoryListing?
    private let holder: (ledger: DirectoryLedger, uid: UInt32)?
    init(ino: UInt64, items: [Item]) {
        self.ino = ino
        self.items = items
        self.listing = nil
        self.holder = nil
    }
    /// A handle on `listing`, already attached for `holder`'s uid.
    init(ino: UInt64, listing: DirectoryListing, holder: (ledger: DirectoryLedger, uid: UInt32)?) {
        self.ino = ino
        self.items = listing.items   // the same storage, not a copy
        self.listing = listing
        self.holder = holder
    }
    deinit { if let holder, let listing { listing.detach(holder.uid, holder.ledger) } }
}

/// One listing of a directory, shared by every handle opened on the
/// directory while SOURCE shows it the same (each opendir lists anew and
/// keeps the shared one when the two are equal): thousands of opendirs of
/// the root hold one copy, not thousands. A user's first handle on a
/// listing is charged its entries (`DirectoryLedger`), each further one a
/// single entry, for the handle itself.
final class DirectoryListing: @unchecked Sendable {
    let items: [OpenDirectory.Item]
    private let handles = Mutex<[UInt32: Int]>([:])
    init(items: [OpenDirectory.Item]) { self.items = items }

    /// One more handle of `uid`, if `ledger` lets it have one (`named`:
    /// see `DirectoryLedger.take`).
    func attach(_ uid: UInt32, named: Bool, _ ledger: DirectoryLedger) -> Bool {
        handles.withLock { h in
            let n = h[uid] ?? 0
            guard ledger.take(uid, n == 0 ? items.count : 1, named: named) else { return false }
            h[uid] = n + 1
            return true
        }
    }

    func detach(_ uid: UInt32, _ ledger: DirectoryLedger) {
        handles.withLock { h in
            let n = (h[uid] ?? 1) - 1
            h[uid] = n > 0 ? n : nil
            ledger.give(uid, n > 0 ? 1 : items.count)
        }
    }

    /// The same entries, by bytes (café in NFC and in NFD are two names),
    /// with the same stats.
    static func same(_ a: [OpenDirectory.Item], _ b: [OpenDirectory.Item]) -> Bool {
        guard a.count == b.count else { return false }
        for (x, y) in zip(a, b) {
            guard x.kind == y.kind, x.name.utf8.elementsEqual(y.name.utf8),
                  x.entry.sourceName.utf8.elementsEqual(y.entry.sourceName.utf8) else { return false }
            switch (x.stat, y.stat) {
            case (nil, nil): continue
            case let (s?, t?):
                guard s.fingerprint == t.fingerprint, s.isDirectory == t.isDirectory,
                      s.isRegular == t.isRegular, s.atime.tv_sec == t.atime.tv_sec, s.atime.tv_nsec == t.atime.tv_nsec,
                      s.mtime.tv_sec == t.mtime.tv_sec, s.mtime.tv_nsec == t.mtime.tv_nsec,
                      s.ctime.tv_sec == t.ctime.tv_sec, s.ctime.tv_nsec == t.ctime.tv_nsec else { return false }
            default: return false
            }
        }
        return true
    }
}

/// The directory entries each user's open directory handles hold. `opendir`
/// needs no permission, and each handle keeps its own copy of the listing
/// (in memory the daemon locks), so a user opening the mount's root
/// thousands of times over could make the daemon the one the OOM killer
/// picks. A user holding `limit` entries gets EMFILE until some are closed;
/// one directory larger than that alone still opens. Every handle costs at
/// least one entry (an empty directory too). All users together hold at
/// most `totalLimit` (16 users' worth): with allow_other, requests come from
/// every user namespace, and a user with 65,536 subordinate uids is 65,536
/// users here. Root and the uids the access lists name are held to their
/// own share only: sixteen strangers filling the total must not deny the
/// services the mount is for their `ls` or glob (their entries count
/// towards the total all the same).
final class DirectoryLedger: Sendable {
    let limit: Int
    let totalLimit: Int
    private let held = Mutex<(byUid: [UInt32: Int], total: Int)>(([:], 0))
    private let lastWarning = Mutex(-Double.infinity)
    init(limit: Int) {
        self.limit = limit
        let (sixteen, overflow) = limit.multipliedReportingOverflow(by: 16)
        self.totalLimit = overflow ? Int.max : sixteen
    }

    /// `named`: the caller is root or named by uid (`AccessPolicy.namesUid`),
    /// and the total does not bind it.
    func take(_ uid: UInt32, _ entries: Int, named: Bool) -> Bool {
        let n = max(entries, 1)
        let ok = held.withLock { h in
            let now = h.byUid[uid] ?? 0
            guard now == 0 || n <= limit - now else { return false }
            guard named || h.total == 0 || n <= totalLimit - h.total else { return false }
            h.byUid[uid] = now + n
            h.total += n
            return true
        }
        if !ok {
            let t = SystemClock.monotonic()
            let due = lastWarning.withLock { last -> Bool in
                guard t - last >= 60 else { return false }
                last = t
                return true
            }
            if due {
                Log.warning("uid \(uid): its open directories, or all users' together, hold as many entries as allowed (\(limit) a user, \(totalLimit) in all for users no allow_uid= or policy rule names); opendir gets EMFILE until some are closed (logged at most once a minute)")
            }
        }
        return ok
    }

    func give(_ uid: UInt32, _ entries: Int) {
        let n = max(entries, 1)
        held.withLock { h in
            let had = h.byUid[uid] ?? 0
            let given = min(had, n)
            h.byUid[uid] = had - given > 0 ? had - given : nil
            h.total -= given
        }
    }
}

/// Configuration of the filesystem's meaning (from mount options).
public struct FSConfiguration: Sendable {
    public var policy: AccessPolicy
    public var cache: SecretCache.Configuration
    /// Largest ciphertext read (checked before reading).
    public var maxCiphertextBytes: Int = 64 << 20
    /// Seconds the kernel may cache names and directory attributes.
    public var entryTimeout: Double = 1.0
    /// Seconds the kernel may cache a secret's attributes: 0, because the
    /// size a secret shows depends on who asks (see `AttributeView`).
    public var secretAttributeTimeout: Double = 0
    /// Directory permission bits.
    public var directoryMode: UInt32 = 0o555
    /// Directory entries one user's open directory handles may hold
    /// (`DirectoryLedger`; fixed at mount).
    public var directoryEntriesPerUser: Int = 65536

    public init(policy: AccessPolicy, cache: SecretCache.Configuration = .init()) {
        self.policy = policy
        self.cache = cache
    }
}

/// Counters for `kmsfs status`.
public struct FSCounters: Sendable {
    public var opens = 0
    public var cacheHits = 0
    public var decrypts = 0
    public var shared = 0
    public var refreshes = 0
    public var denials = 0
    public var failures = 0
}

/// The filesystem's meaning, testable without a mount: a read-only mirror
/// of SOURCE in which `NAME.encrypted` appears as `NAME`, each file's
/// plaintext is decrypted on its first allowed open and cached, and every
/// open is decided by the access policy and audited.
public final class SecretFileSystem: @unchecked Sendable {
    public static let rootInode: UInt64 = 1

    public let tree: SourceTree
    public let cache: SecretCache
    private let decryptor: SecretDecrypting
    private let audit: AuditSink
    private let config: Mutex<FSConfiguration>
    private let wallClock: @Sendable () -> Double
    private let monotonic: @Sendable () -> Double
    private let versionOf: @Sendable ([UInt8]) -> String
    /// Every open handle and the version it opened.
    public let handles = HandleTable()
    /// Openers' names for audit records, read once a second per process.
    private let processNames = ProcessNameCache()
    /// Boxed: a bare closure read out of a `Mutex` (a generic inout) comes
    /// back wrapped in one more reabstraction thunk each time, and the
    /// watcher's calls went deeper with every change until its stack
    /// overflowed (swiftlang/swift#91348; `SourceChangeHookTests`).
    private let changeHook = Mutex<Hook<@Sendable (String, String?) -> Void>?>(nil)
    private let rescanHook = Mutex<Hook<@Sendable () -> Void>?>(nil)
    private let fileWatchHook = Mutex<Hook<@Sendable (String) -> InodeID?>?>(nil)

    private struct Table {
        var byIno: [UInt64: Node] = [:]
        var byPath: [PathKey: UInt64] = [:]   // source path (its bytes) -> ino; pruned by forget
        var next: UInt64 = 2
    }
    private let table = Mutex(Table())
    private let counters = Mutex(FSCounters())
    /// Refusals recorded one by one, per user (see `RefusalBudget`).
    private let refusals = Mutex(RefusalBudget())
    private let directoryLedger: DirectoryLedger
    /// The listing handles share, per directory (weak: it lives as long as
    /// a handle holds it).
    private let listings = Mutex(WeakValues<UInt64, DirectoryListing>())
    /// Versions of ciphertexts not in the cache, by path and fingerprint
    /// (`currentVersion`).
    private let versionMemo = Mutex<[PathKey: (fingerprint: Fingerprint, version: String)]>([:])
    private let notifierBox = Mutex<KernelNotifier?>(nil)
    private let watchedFlag = Atomic<Bool>(false)

    /// True while a `SourceWatcher` follows SOURCE: a cached plaintext is
    /// then served without re-checking its ciphertext on every open (the
    /// watcher marks changed files).
    public var sourceIsWatched: Bool {
        get { watchedFlag.load(ordering: .acquiring) }
        set { watchedFlag.store(newValue, ordering: .releasing) }
    }

    /// True while the watcher has change events it has read and not yet
    /// applied (a rename storm can keep it busy for seconds): opens look at
    /// the ciphertext meanwhile instead of trusting the cache.
    public var sourceChangesPending: Bool {
        get { pendingFlag.load(ordering: .acquiring) }
        set { pendingFlag.store(newValue, ordering: .releasing) }
    }
    private let pendingFlag = Atomic<Bool>(false)
    /// The watcher's inotify descriptor (-1: none), for `changesMayBeUnseen`.
    let watchFD = Atomic<Int32>(-1)

    /// Whether a change in SOURCE may not have reached the cache yet: an
    /// event the kernel queued (during the rename(2) itself) that the
    /// watcher has not read, or one it read and has not applied. Asked in
    /// that order: the watcher marks events pending before it reads them,
    /// so an event is always one or the other until it is applied. (Only
    /// the flag left a window, until the watcher's thread woke, in which
    /// a hit gave the replaced plaintext: 7 in 200 opens right after a
    /// rename on a loaded machine.)
    private var changesMayBeUnseen: Bool {
        let fd = watchFD.load(ordering: .acquiring)
        if fd >= 0 && queuedBytes(fd) != 0 { return true }
        return sourceChangesPending
    }

    /// Where kernel cache invalidations go (the FUSE session), once mounted.
    public var notifier: KernelNotifier? {
        get { notifierBox.withLock { $0 } }
        set { notifierBox.withLock { $0 = newValue } }
    }

    public init(tree: SourceTree, configuration: FSConfiguration, decryptor: SecretDecrypting,
                audit: AuditSink, wallClock: @escaping @Sendable () -> Double = { SystemClock.wall() },
                monotonic: @escaping @Sendable () -> Double = { SystemClock.monotonic() },
                versionOf: @escaping @Sendable ([UInt8]) -> String = { fnvVersion($0) }) {
        self.tree = tree
        self.versionOf = versionOf
        self.decryptor = decryptor
        self.audit = audit
        self.config = Mutex(configuration)
        self.cache = SecretCache(configuration: configuration.cache, now: monotonic)
        self.directoryLedger = DirectoryLedger(limit: max(1, configuration.directoryEntriesPerUser))
        self.wallClock = wallClock
        self.monotonic = monotonic
        let root = Node(ino: SecretFileSystem.rootInode, kind: .directory, sourcePath: ".", mountPath: "")
        root.lookups = 1
        table.withLock {
            $0.byIno[root.ino] = root
            $0.byPath[PathKey(".")] = root.ino
        }
    }

    public var configuration: FSConfiguration { config.withLock { $0 } }

    /// Replaces the configuration (SIGHUP): policy and cache settings.
    public func reconfigure(_ c: FSConfiguration) {
        config.withLock { $0 = c }
        cache.reconfigure(c.cache)
        // Owners and modes may have changed: the kernel asks again for
        // every inode it holds (never call this from a FUSE request).
        guard let notifier else { return }
        let known = table.withLock { t in Array(t.byIno.keys) }
        for ino in known { notifier.invalidateInode(ino) }
    }

    public var counterSnapshot: FSCounters { counters.withLock { $0 } }

    private func node(_ ino: UInt64) -> Node? {
        table.withLock { $0.byIno[ino] }
    }

    /// The directory and name the kernel looked `ino` up by: invalidating
    /// that entry makes the next lookup store the bound (`.entry` view) in
    /// the inode again, after a reply that had to leave the exact size there
    /// (see `AttributeView.handle`). Nil for the root and unknown inodes.
    public func kernelEntry(of ino: UInt64) -> (parent: UInt64, name: String)? {
        guard ino != Self.rootInode, let n = node(ino) else { return nil }
        // Split on bytes: a "/" followed by a combining mark is one
        // Character, and a name may start with one.
        let slash = UInt8(ascii: "/")
        let name = n.mountPath.utf8.lastIndex(of: slash).map { String(n.mountPath[n.mountPath.utf8.index(after: $0)...]) } ?? n.mountPath
        let directory = n.sourcePath.utf8.lastIndex(of: slash).map { String(n.sourcePath[..<$0]) } ?? "."
        guard let parent = table.withLock({ $0.byPath[PathKey(directory)] }) else { return nil }
        return (parent, name)
    }

    /// `ino`'s path below the mountpoint, as the kernel walks it (no
    /// leading "/"); nil for the root and unknown inodes.
    public func mountPath(of ino: UInt64) -> String? {
        guard ino != Self.rootInode, let n = node(ino) else { return nil }
        return n.mountPath
    }

    // MARK: Names

    /// Entries (lookup, readdirplus) go into the kernel's inode, which any
    /// user can read back (`statx` with `AT_STATX_DONT_SYNC`): a secret's
    /// size there is the same bound for every file (see `AttributeView`).
    public func lookup(parent: UInt64, name: String) -> Result<EntryReply, FSError> {
        guard let dir = node(parent) else { return .failure(.notFound) }
        guard dir.kind == .directory else { return .failure(.notDirectory) }
        guard let (entry, st) = tree.lookup(in: dir.sourcePath, name: name) else { return .failure(.notFound) }
        let n = remember(entry, in: dir)
        return .success(reply(for: n, stat: st, view: .entry))
    }

    /// Finds or creates the node for an entry and counts a kernel lookup.
    private func remember(_ entry: SourceEntry, in dir: Node) -> Node {
        let sourcePath = SourceTree.join(dir.sourcePath, entry.sourceName)
        let mountPath = dir.mountPath.isEmpty ? entry.name : dir.mountPath + "/" + entry.name
        return table.withLock { t in
            // Only a node for this very entry: SOURCE may have replaced a
            // directory `a.encrypted` with the file `a.encrypted` (secret
            // `a`), or the reverse, while someone keeps the old node alive
            // (an O_PATH descriptor, a cwd). Reused, it answered the new
            // entry as the old kind (ENOTDIR on `a` for everyone). The old
            // node lives on until the kernel forgets it; byPath now names
            // the new one (`forget` prunes only its own inode's entry).
            if let ino = t.byPath[PathKey(sourcePath)], let n = t.byIno[ino],
               n.kind == entry.kind, n.mountPath.utf8.elementsEqual(mountPath.utf8) {
                n.lookups += 1
                return n
            }
            let n = Node(ino: t.next, kind: entry.kind, sourcePath: sourcePath, mountPath: mountPath)
            t.next += 1
            n.lookups = 1
            t.byIno[n.ino] = n
            t.byPath[PathKey(sourcePath)] = n.ino
            return n
        }
    }

    public func forget(_ ino: UInt64, count: UInt64) {
        guard ino != SecretFileSystem.rootInode else { return }
        table.withLock { t in
            guard let n = t.byIno[ino] else { return }
            n.lookups = n.lookups > count ? n.lookups - count : 0
            if n.lookups == 0 {
                t.byIno[ino] = nil
                if t.byPath[PathKey(n.sourcePath)] == ino { t.byPath[PathKey(n.sourcePath)] = nil }
            }
        }
    }

    /// Number of inodes the kernel holds (tests, status).
    public var inodeCount: Int { table.withLock { $0.byIno.count } }

    // MARK: Attributes

    /// Who a secret's size is shown to, and so which size.
    ///
    /// The kernel keeps one set of attributes per inode and any user can
    /// read them back without asking the daemon (`statx` with
    /// `AT_STATX_DONT_SYNC`, `stat --cached=always`), so:
    /// - `.entry` (lookup, readdirplus: stored in the inode): the mount's
    ///   `max_size=`, the same for every secret and never below a plaintext
    ///   (a private `mmap` of the whole file stays within it);
    /// - `.caller` (stat and fstat, which reach getattr without a handle):
    ///   a caller the policy admits sees the ciphertext's size before the
    ///   first decryption and the exact plaintext size after it; anyone
    ///   else sees 0. Either answer is for that caller only
    ///   (`forCallerOnly`: the bridge keeps it out of the inode);
    /// - `.handle` (getattr on an open file, as `lseek(SEEK_END)` sends):
    ///   the exact size, stored, as `lseek` reads it from the inode. Any
    ///   user can read it back there until the next lookup stores the bound
    ///   again, so the bridge invalidates the entry a second later
    ///   (`kernelEntry(of:)`), as it does after reads through the page cache,
    ///   which leave the exact size there too.
    /// nil caller: the administrator's view (tests, tools), exact.
    public enum AttributeView: Sendable {
        case entry
        case caller(Caller?)
        case handle
    }

    public func getattr(_ ino: UInt64, caller: Caller? = nil) -> Result<(Attributes, Double), FSError> {
        getattr(ino, view: .caller(caller))
    }

    public func getattr(_ ino: UInt64, view: AttributeView) -> Result<(Attributes, Double), FSError> {
        guard let n = node(ino) else { return .failure(.notFound) }
        let st: SourceStat
        do { st = try tree.stat(n.sourcePath) } catch { return .failure(FSError(error.code == ELOOP ? ENOENT : error.code)) }
        guard (n.kind == .directory && st.isDirectory) || (n.kind == .secret && st.isRegular) else {
            return .failure(.notFound)
        }
        let r = reply(for: n, stat: st, view: view)
        return .success((r.attributes, r.attributeTimeout))
    }

    /// The plaintext's exact size when it is decrypted now (in the cache,
    /// for the ciphertext SOURCE holds), else nil: never the ciphertext's.
    public func decryptedSize(of ino: UInt64) -> Int64? {
        guard let n = node(ino), n.kind == .secret, let st = try? tree.stat(n.sourcePath), st.isRegular,
              let cached = cache.peek(n.sourcePath, fingerprint: st.fingerprint) else { return nil }
        return Int64(cached.size)
    }

    private func reply(for n: Node, stat st: SourceStat, view: AttributeView) -> EntryReply {
        let c = configuration
        var size = st.size
        var forCallerOnly = false
        let mode: UInt32
        let owner: Presentation
        if n.kind == .secret {
            var exact: Bool
            switch view {
            case .entry:
                size = Int64(c.maxCiphertextBytes)
                exact = false
            case .handle, .caller(nil):
                exact = true
            case .caller(let caller?):
                forCallerOnly = true
                // Nothing but the name, owner and mode for a caller who may
                // not open it: neither the plaintext's size nor the
                // ciphertext's (which tracks it).
                exact = c.policy.admits(caller, path: n.mountPath)
                if !exact { size = 0 }
            }
            // Once decrypted, the exact plaintext size; before, the
            // ciphertext's size (an upper bound).
            if exact, let cached = cache.peek(n.sourcePath, fingerprint: st.fingerprint) { size = Int64(cached.size) }
            owner = c.policy.presentation(for: n.mountPath)
            mode = UInt32(S_IFREG) | owner.mode
        } else {
            // Directories belong to whoever mounted (root at boot).
            owner = Presentation(uid: getuid(), gid: getgid(), mode: c.directoryMode)
            mode = UInt32(S_IFDIR) | (c.directoryMode & 0o555)
            size = 4096
        }
        let attrs = Attributes(ino: n.ino, kind: n.kind, mode: mode, nlink: n.kind == .directory ? 2 : 1,
                               uid: owner.uid, gid: owner.gid, size: size,
                               atime: st.atime, mtime: st.mtime, ctime: st.ctime, forCallerOnly: forCallerOnly)
        return EntryReply(attributes: attrs, entryTimeout: c.entryTimeout,
                          attributeTimeout: n.kind == .secret ? c.secretAttributeTimeout : c.entryTimeout)
    }

    // MARK: Directories

    /// A directory's listing, taken now, for one handle. With a caller, its
    /// entries count against the caller's share (`DirectoryLedger`) until
    /// the handle goes.
    public func openDirectory(_ ino: UInt64, caller: Caller? = nil) -> Result<OpenDirectory, FSError> {
        guard let n = node(ino) else { return .failure(.notFound) }
        guard n.kind == .directory else { return .failure(.notDirectory) }
        // The entries count against the listing budget until the listing
        // is shared (then the directory ledger counts what handles keep).
        let hold = ListingBudget.Hold(tree.listingBudget)
        do {
            return try withExtendedLifetime(hold) { () throws(Errno) -> Result<OpenDirectory, FSError> in
                let items = try tree.listWithStats(n.sourcePath, hold: hold).map {
                    OpenDirectory.Item(name: $0.0.name, kind: $0.0.kind, entry: $0.0, stat: $0.1)
                }
                guard let caller else { return .success(OpenDirectory(ino: ino, items: items)) }
                let listing = sharedListing(ino, items)
                let named = configuration.policy.namesUid(caller.uid)
                guard listing.attach(caller.uid, named: named, directoryLedger) else { return .failure(FSError(EMFILE)) }
                return .success(OpenDirectory(ino: ino, listing: listing, holder: (directoryLedger, caller.uid)))
            }
        } catch {
            return .failure(FSError(error.code == ELOOP ? ENOENT : error.code))
        }
    }

    /// The listing of `ino` handles share when `items` (just listed) is the
    /// same; otherwise `items` becomes it.
    private func sharedListing(_ ino: UInt64, _ items: [OpenDirectory.Item]) -> DirectoryListing {
        // Compared outside the lock (a listing may be 65,536 entries long,
        // and every user's opendir takes the lock). One installed meanwhile
        // by another opendir is replaced: sharing is lost, never correctness.
        if let shared = listings.withLock({ $0[ino] }), DirectoryListing.same(shared.items, items) {
            return shared
        }
        let fresh = DirectoryListing(items: items)
        listings.withLock { $0[ino] = fresh }
        return fresh
    }

    /// For readdirplus: the entry of a listed item (counting a kernel
    /// lookup), from the stat taken when the directory was listed.
    public func lookupForListing(_ dir: OpenDirectory, item: OpenDirectory.Item) -> EntryReply? {
        guard let st = item.stat, let parent = node(dir.ino) else {
            return try? lookup(parent: dir.ino, name: item.name).get()
        }
        let n = remember(item.entry, in: parent)
        return reply(for: n, stat: st, view: .entry)
    }

    // MARK: Files

    /// Decides and performs an open. Every call is decided anew; a refusal
    /// is EACCES and audited; nothing is decrypted for a refused caller.
    public func open(_ ino: UInt64, flags: Int32, caller: Caller) -> Result<OpenSecret, FSError> {
        switch beginOpen(ino, flags: flags, caller: caller) {
        case .done(let r): return r
        case .slow(let finish): return OpenContinuation.wait(for: finish)
        }
    }

    /// How an open goes on: answered at once (a cache hit, a refusal, a
    /// missing file), or with work that may wait on KMS, for the caller to
    /// run off the FUSE worker threads.
    public enum OpenStart {
        case done(Result<OpenSecret, FSError>)
        /// Run it off the FUSE workers; it answers through the
        /// continuation, perhaps later, from another thread.
        case slow(SlowOpen)
    }

    public typealias SlowOpen = @Sendable (OpenContinuation) -> Void

    /// The part of an open that never waits on KMS: access, the cache when
    /// SOURCE is watched. The rest (stat, single-flight decryption) is
    /// returned as `.slow`.
    public func beginOpen(_ ino: UInt64, flags: Int32, caller: Caller) -> OpenStart {
        guard let n = node(ino) else { return .done(.failure(.notFound)) }
        guard n.kind == .secret else { return .done(.failure(.isDirectory)) }
        let config = configuration
        // This runs on the FUSE reader (see kmsfs_fuse_session_loop), or on
        // an io_uring queue's thread (CFuse/include/uring.h), which must never
        // wait: a record the audit queue has no room for is made from the
        // open pool, and the open answered from there.
        guard config.policy.admits(caller, path: n.mountPath) else {
            counters.withLock { $0.opens += 1; $0.denials += 1 }
            let denied: Result<OpenSecret, FSError> = .failure(.accessDenied)
            var detail = "not in the allowed users or groups"
            switch refusals.withLock({ $0.take(uid: caller.uid, now: monotonic()) }) {
            case .countOnly(let warn):
                guard let warn else { return .done(denied) }
                let what: String
                switch warn {
                case .user: what = "uid \(caller.uid) is refused more than \(Int(RefusalBudget.perSecond)) opens a second"
                case .sharedByUsersPastTheRemembered:
                    what = "users past the \(RefusalBudget.users) remembered (uid \(caller.uid) among them) are refused more than \(Int(RefusalBudget.perSecond)) opens a second together"
                case .everyone: what = "all users together are refused more than \(Int(RefusalBudget.totalPerSecond)) opens a second"
                }
                // Logged from the open pool: a log write may wait (journald).
                return .slow { k in
                    Log.warning("audit: \(what); the refusals are counted (kmsfs status) and each recorded one says how many were not")
                    k.answer(denied)
                }
            case .record(let unrecorded, let shared):
                // Users past the ones remembered share one budget: what it
                // left unrecorded was theirs, not this user's alone.
                let whose = shared ? "of users past the \(RefusalBudget.users) remembered" : "of this user"
                if unrecorded > 0 { detail += "; \(unrecorded) refusals \(whose) before this one were counted, not recorded" }
            }
            if let pending = recordWithoutWaiting(caller, n.mountPath, .denied, detail: detail) {
                return .slow { [audit] k in audit.record(pending); k.answer(denied) }
            }
            return .done(denied)
        }
        // Access first: a refused caller gets EACCES and a record whatever
        // the flags; an admitted one who asks to write gets EROFS.
        if flags & O_ACCMODE != O_RDONLY || flags & O_TRUNC != 0 { return .done(.failure(.readOnly)) }
        let maxBytes = config.maxCiphertextBytes
        if sourceIsWatched, !changesMayBeUnseen, let hit = cache.hit(n.sourcePath) {
            counters.withLock { $0.opens += 1; $0.cacheHits += 1 }
            if hit.refreshDue { refreshInBackground(hit.secret, n, maxBytes: maxBytes) }
            let handle = opened(hit.secret, n, caller)
            if let pending = recordWithoutWaiting(caller, n.mountPath, .cache) {
                return .slow { [self] k in
                    audit.record(pending)   // may wait behind a full queue: ask the policy again after
                    k.answer(stillAdmitted(caller, n) ? .success(handle) : .failure(.accessDenied))
                }
            }
            return .done(.success(handle))
        }
        return .slow { [self] k in finishOpen(n, caller: caller, maxBytes: maxBytes, attempt: 1, k) }
    }

    /// The rest of an open that missed the cache, answered through `k`:
    /// from this thread, or, when it joins a decryption another open
    /// began, from the thread that runs that decryption, which then holds
    /// no thread of this open's while it waits.
    private func finishOpen(_ n: Node, caller: Caller, maxBytes: Int, attempt: Int, _ k: OpenContinuation) {
        let joined: @Sendable (Fetched, Bool) -> Void = { [self] fetched, onAnOpensThread in
            if onAnOpensThread {
                conclude(fetched, n, caller: caller, maxBytes: maxBytes, attempt: attempt, k)
            } else {
                // Another caller's thread (a prefetch, a credential
                // request, a rotation check): not to be held up by opens.
                k.later { [self] in conclude(fetched, n, caller: caller, maxBytes: maxBytes, attempt: attempt, k) }
            }
        }
        guard let (fetched, joiners) = fetch(n, maxBytes: maxBytes, joined: joined) else { return }
        conclude(fetched, n, caller: caller, maxBytes: maxBytes, attempt: attempt, k)
        joiners.answer()   // after this open: the one that waited longest
    }

    private func conclude(_ fetched: Fetched, _ n: Node, caller: Caller, maxBytes: Int, attempt: Int,
                          _ k: OpenContinuation) {
        // Answered already (its caller was killed while it waited): no
        // handle, no open counted, no record; the request may be gone.
        // A decryption it made still counts (its joiners are `shared`).
        guard !k.isAnswered() else { return countDecryptionOnly(fetched) }
        let secret: CachedSecret
        switch fetched.result {
        case .success(let s): secret = s
        case .failure(let e):
            account(fetched, n, caller: caller, detail: nil)
            return k.answer(.failure(e))
        }
        // A decryption can take seconds: a policy reloaded meanwhile
        // that no longer admits the caller has the last word.
        // One record, the refusal: an `allowed source=kms` before it read as
        // if the caller had been handed the plaintext. The decryption
        // still counts (it was made).
        guard configuration.policy.admits(caller, path: n.mountPath) else {
            countDecryptionOnly(fetched)
            counters.withLock { $0.opens += 1 }
            noteNoLongerAdmitted(caller, n)
            return k.answer(.failure(.accessDenied))
        }
        // And a rotation meanwhile: the handle is registered first and
        // the ciphertext looked at after, so `kmsfs status
        // --wait-rotated`, which sees no handle of an open still
        // parked, never returns while an open is about to hand out
        // the version it replaced. That open decrypts the new one
        // instead (twice at most: a file rewritten without pause is
        // served as it was at the last look).
        let handle = opened(secret, n, caller)
        if attempt < 3, let now = try? tree.stat(n.sourcePath), now.isRegular, now.fingerprint != secret.fingerprint {
            Log.info("\(n.mountPath) was replaced while it was decrypted; decrypting it again for the open")
            // The decryption happened; the open is counted and audited
            // once, by the attempt that answers it.
            countDecryptionOnly(fetched)
            // Again from the open pool: this thread may be another open's,
            // answering the opens that joined its decryption, and must
            // not wait on KMS for this one. (`handle` goes, and leaves
            // the table.)
            return k.later { [self] in finishOpen(n, caller: caller, maxBytes: maxBytes, attempt: attempt + 1, k) }
        }
        account(fetched, n, caller: caller, detail: nil)
        k.answer(.success(handle))
    }

    /// A KMS call made for an open that is not answered with it (its caller
    /// gone, or a retry after a rotation): counted, not audited.
    private func countDecryptionOnly(_ fetched: Fetched) {
        if case .loaded = fetched.source { counters.withLock { $0.decrypts += 1 } }
    }

    /// For an open that waited (on KMS, on the audit queue): whether the
    /// policy in effect now still admits the caller; a refusal is counted
    /// and recorded.
    private func stillAdmitted(_ caller: Caller, _ n: Node) -> Bool {
        if configuration.policy.admits(caller, path: n.mountPath) { return true }
        noteNoLongerAdmitted(caller, n)
        return false
    }

    private func noteNoLongerAdmitted(_ caller: Caller, _ n: Node) {
        counters.withLock { $0.denials += 1 }
        record(caller, n.mountPath, .denied, detail: "no longer in the allowed users or groups (the policy was reloaded during the open)")
    }

    /// The slow part of an open (also of a systemd credential): stat the
    /// ciphertext, take its plaintext from the cache or decrypt it once for
    /// all concurrent callers, count and audit the outcome (`detail` is
    /// added to the record).
    private func acquire(_ n: Node, caller: Caller, maxBytes: Int, detail: String?) -> Result<CachedSecret, FSError> {
        let fetched = fetch(n, maxBytes: maxBytes, joined: nil)!.0
        account(fetched, n, caller: caller, detail: detail)
        return fetched.result
    }

    /// What `fetch` found: the plaintext or why not, and where it came from.
    private struct Fetched: Sendable {
        var result: Result<CachedSecret, FSError>
        var source: SecretCache.Source? = nil
        var failure: DecryptFailure? = nil
    }

    /// Stats the ciphertext and takes its plaintext from the cache, or
    /// decrypts it once for all concurrent callers. Counts and audits
    /// nothing (`account` does, once per open). With `joined`, a caller
    /// who would wait for another caller's decryption returns nil instead,
    /// and `joined` is called with what it found (see
    /// `SecretCache.acquire(joined:)`); what this returns then carries the
    /// joiners of a decryption it ran, to answer after this open. Without,
    /// this waits and never returns nil, and hands joiners off itself.
    private func fetch(_ n: Node, maxBytes: Int,
                       joined: (@Sendable (Fetched, Bool) -> Void)?) -> (Fetched, SecretCache.Joined)? {
        let current: SourceStat
        do { current = try tree.stat(n.sourcePath) } catch {
            cache.invalidate(n.sourcePath)
            return (Fetched(result: .failure(.notFound)), SecretCache.Joined())
        }
        guard current.isRegular else { return (Fetched(result: .failure(.notFound)), SecretCache.Joined()) }

        @Sendable func fetched(_ o: SecretCache.Outcome) -> Fetched {
            switch o.result {
            case .success(let secret):
                if o.refreshDue { refreshInBackground(secret, n, maxBytes: maxBytes) }
                return Fetched(result: .success(secret), source: o.source)
            case .failure(let failure):
                return Fetched(result: .failure(.io), source: o.source, failure: failure)
            }
        }
        guard let joined else {
            // Waits; joiners of its decryption are handed off by the cache.
            let outcome = cache.acquire(path: n.sourcePath, current: current.fingerprint) { self.load(n, maxBytes: maxBytes) }
            return (fetched(outcome), SecretCache.Joined())
        }
        guard let (outcome, joiners) = cache.acquire(path: n.sourcePath, current: current.fingerprint, load: {
            self.load(n, maxBytes: maxBytes)
        }, joined: { outcome, onAnOpensThread in joined(fetched(outcome), onAnOpensThread) }) else { return nil }
        return (fetched(outcome), joiners)
    }

    /// Counts and audits the outcome of one open (or credential request).
    private func account(_ f: Fetched, _ n: Node, caller: Caller, detail: String?) {
        if let failure = f.failure {
            counters.withLock { $0.opens += 1; $0.failures += 1 }
            record(caller, n.mountPath, .failed, detail: (detail.map { $0 + ": " } ?? "") + failure.message)
            return
        }
        guard let source = f.source else { return }   // not found: nothing to count
        switch source {
        case .cache:
            counters.withLock { $0.opens += 1; $0.cacheHits += 1 }
            record(caller, n.mountPath, .cache, detail: detail)
        case .loaded(let latency):
            counters.withLock { $0.opens += 1; $0.decrypts += 1 }
            record(caller, n.mountPath, .kms, latency: latency, detail: detail)
        case .shared:
            counters.withLock { $0.opens += 1; $0.shared += 1 }
            record(caller, n.mountPath, .shared, detail: detail)
        }
    }

    private func opened(_ secret: CachedSecret, _ n: Node, _ caller: Caller) -> OpenSecret {
        OpenSecret(secret: secret, table: handles,
                   handle: HeldHandle(sourcePath: n.sourcePath, mountPath: n.mountPath, version: secret.version,
                                      pid: caller.pid, uid: caller.uid, openedAt: wallClock()))
    }

    /// Re-decrypts a secret in its refresh-ahead window without making the
    /// opener wait (see `SecretCache`).
    private func refreshInBackground(_ secret: CachedSecret, _ n: Node, maxBytes: Int) {
        counters.withLock { $0.refreshes += 1 }
        startThread(name: "kmsfs-refresh") { [self] in
            cache.refresh(secret) { self.load(n, maxBytes: maxBytes) }
        }
    }

    private func load(_ n: Node, maxBytes: Int) -> Result<CachedSecret, DecryptFailure> {
        let bytes: [UInt8]
        let fingerprint: Fingerprint
        // Watched before it is read: a write after this point is an event.
        let watch = fileWatchHook.withLock({ $0 })
        let watched = watch?.call(n.sourcePath)
        do {
            (bytes, fingerprint) = try tree.readCiphertext(n.sourcePath, limit: maxBytes)
        } catch {
            let failure: DecryptFailure
            switch error {
            case .tooLarge(let size, let limit):
                failure = DecryptFailure(.badInput, "\(size) bytes is over the \(limit)-byte ciphertext limit (max_size=)")
            case .notRegular:
                failure = DecryptFailure(.badInput, "not a regular file")
            case .system(let e):
                failure = DecryptFailure(.badInput, "cannot read the ciphertext: \(e)")
            }
            Log.error("\(n.mountPath): \(failure.message)")
            return .failure(failure)
        }
        switch decryptor.decrypt(ciphertext: bytes, path: n.mountPath) {
        case .success(let secret):
            let fileWatched = watch == nil || watched == InodeID(device: fingerprint.device, inode: fingerprint.inode)
            return .success(CachedSecret(path: n.sourcePath, secret: secret, fingerprint: fingerprint, at: monotonic(),
                                         version: versionOf(bytes), fileWatched: fileWatched))
        case .failure(let failure):
            Log.error("\(n.mountPath): \(failure.message)")
            return .failure(failure)
        }
    }

    private func record(_ caller: Caller, _ path: String, _ outcome: AuditRecord.Outcome,
                        latency: Double? = nil, detail: String? = nil) {
        guard audit.wantsRecords else { return }   // audit=off: not even the process name
        audit.record(auditRecord(caller, path, outcome, latency: latency, detail: detail))
    }

    /// Records without waiting; the record when the sink has no room for
    /// it now (the caller records it where waiting is harmless).
    private func recordWithoutWaiting(_ caller: Caller, _ path: String, _ outcome: AuditRecord.Outcome,
                                      detail: String? = nil) -> AuditRecord? {
        guard audit.wantsRecords else { return nil }
        let r = auditRecord(caller, path, outcome, latency: nil, detail: detail)
        return audit.tryRecord(r) ? nil : r
    }

    private func auditRecord(_ caller: Caller, _ path: String, _ outcome: AuditRecord.Outcome,
                             latency: Double?, detail: String?) -> AuditRecord {
        // The process name is read now, while the caller is surely alive.
        AuditRecord(time: wallClock(), uid: caller.uid, gid: caller.gid, pid: caller.pid,
                    processName: processNames.name(pid: caller.pid, uid: caller.uid, gid: caller.gid), path: path, outcome: outcome,
                    latency: latency, detail: detail)
    }

    // MARK: The live mirror

    /// A name in a SOURCE directory changed (from the watcher). Tells the
    /// kernel to forget what it cached, and wipes the plaintext of a file
    /// that changed or is gone (open handles keep the bytes they opened);
    /// the next open decrypts the new version.
    public func sourceChanged(directory: String, name: String, isDirectory: Bool, removed: Bool) {
        let shown: String
        if isDirectory {
            shown = name
        } else if let n = SourceTree.shownName(ofCiphertext: name), SourceTree.isValidName(n) {
            shown = n
        } else {
            return   // not something the mount shows (`..encrypted` is no secret named `.`)
        }
        let sourcePath = SourceTree.join(directory, name)
        if removed {
            // The notifier hears of it too, to forget the secret's baseline
            // once the batch finds it gone (or to compare it, if a new file
            // is renamed into its place meanwhile); a directory moved out
            // sends no event per secret, so the next batch walks SOURCE.
            if isDirectory {
                cache.invalidateAll(prefix: sourcePath + "/")
                if let hook = rescanHook.withLock({ $0 }) { hook.call() }
            } else {
                let was = cache.invalidateReturningEntry(sourcePath)
                if let hook = changeHook.withLock({ $0 }) { hook.call(sourcePath, was?.version) }
            }
        } else if isDirectory {
            // Moved (or made) into place whole: the secrets inside changed
            // with no event of their own.
            cache.invalidateAll(prefix: sourcePath + "/")
            if let hook = rescanHook.withLock({ $0 }) { hook.call() }
        } else {
            // A rotated secret: wipe now, decrypt the new one on open. The
            // hook learns the version that was cached before the change, to
            // tell a new ciphertext from a touch. A version decrypted from
            // the file SOURCE holds now is not that: an open while the event
            // waited (the watcher busy) decrypted the new ciphertext, which
            // says nothing of what the applications held before; passed as
            // "before", the rotation was taken for a touch and nobody was
            // told. Nor is it wiped: it is the new plaintext, and wiping it
            // made the next stat show the ciphertext's size again and the
            // next open call KMS again for the same bytes. The file is
            // looked at first; a change after that sends its own event.
            let now = try? tree.stat(sourcePath)
            let was = cache.invalidate(sourcePath, unlessDecryptedFrom: now?.fingerprint)
            if let hook = changeHook.withLock({ $0 }) { hook.call(sourcePath, was?.version) }
        }
        let (parent, child) = table.withLock { t -> (UInt64?, UInt64?) in
            (t.byPath[PathKey(directory)], t.byPath[PathKey(sourcePath)])
        }
        guard let notifier else { return }
        if let parent { notifier.invalidateEntry(parent: parent, name: shown) }
        if let child { notifier.invalidateInode(child) }
        Log.debug("source: \(sourcePath) \(removed ? "removed" : "changed")")
    }

    /// After a spell in which part of SOURCE was not watched, once it is
    /// all watched again: a cached plaintext whose ciphertext is no longer
    /// the one it was decrypted from is wiped, a decryption under way is
    /// not cached (it may have read a ciphertext replaced since), and every
    /// secret is compared with what the applications were last told (the
    /// rescan hook), as after an overflow of the change events.
    public func revalidateCache() {
        cache.invalidateFlights()
        for (path, fingerprint) in cache.fingerprints {
            let now = try? tree.stat(path)
            if now?.fingerprint != fingerprint { cache.invalidate(path) }
        }
        if let hook = rescanHook.withLock({ $0 }) { hook.call() }
    }

    /// SOURCE may have changed anywhere (inotify overflowed).
    public func sourceChangedEverywhere() {
        cache.invalidateAll()
        if let hook = rescanHook.withLock({ $0 }) { hook.call() }
        let known = table.withLock { t in t.byIno.values.map { ($0.ino, $0.sourcePath, $0.kind) } }
        guard let notifier else { return }
        for (ino, _, _) in known { notifier.invalidateInode(ino) }
        for (ino, path, kind) in known where kind == .directory {
            if let items = try? tree.list(path) {
                for i in items { notifier.invalidateEntry(parent: ino, name: i.name) }
            }
        }
    }

    // MARK: Versions and rotation

    /// Called (on the watcher's thread) with the SOURCE path of every
    /// `*.encrypted` file written, renamed into place or removed; keep it
    /// short.
    public func onCiphertextChange(_ hook: (@Sendable (_ sourcePath: String, _ cachedVersion: String?) -> Void)?) {
        changeHook.withLock { $0 = hook.map(Hook.init) }
    }

    /// Called before a ciphertext is read to be decrypted and cached, on
    /// the reading thread: watches the file at that SOURCE path itself, and
    /// answers the inode watched (nil: none). A plaintext is served from
    /// the cache without a look at its ciphertext only if the inode it was
    /// read from is that one. Without a hook (no watcher), every plaintext
    /// counts as watched: opens look at the ciphertext anyway.
    public func onCiphertextRead(_ hook: (@Sendable (_ sourcePath: String) -> InodeID?)?) {
        fileWatchHook.withLock { $0 = hook.map(Hook.init) }
    }

    /// Called (on the watcher's thread) when changes may have happened that
    /// no per-file event names: the events overflowed, or a directory was
    /// moved, created or removed (an atomic `mv new tls` deploy names only
    /// `tls`).
    public func onChangesUnnamed(_ hook: (@Sendable () -> Void)?) {
        rescanHook.withLock { $0 = hook.map(Hook.init) }
    }

    /// Decrypts the ciphertext now at `sourcePath` into the cache (unless
    /// the cache already holds that version), as an open would, but for
    /// nobody: rotation decrypts the new version before anyone is told.
    public func decryptNow(sourcePath: String) -> Result<CachedSecret, DecryptFailure> {
        let node = Node(ino: 0, kind: .secret, sourcePath: sourcePath, mountPath: SourceTree.mountPath(ofSource: sourcePath))
        let current: SourceStat
        do { current = try tree.stat(sourcePath) } catch {
            return .failure(DecryptFailure(.gone, "gone from SOURCE"))
        }
        guard current.isRegular else { return .failure(DecryptFailure(.badInput, "not a regular file")) }
        let maxBytes = configuration.maxCiphertextBytes
        return cache.acquire(path: sourcePath, current: current.fingerprint) { self.load(node, maxBytes: maxBytes) }.result
    }

    /// A systemd credential (`credential_socket=`): the secret at mount
    /// path `path` for the process of `unit`, decided by the units listed
    /// for that path only (`allow_unit=`; the connecting peer is root, so
    /// user lists say nothing), decrypted as an open would and audited
    /// like one (`detail` names the unit).
    public func openCredential(path: String, unit: String, caller: Caller) -> Result<CachedSecret, FSError> {
        // On bytes: "/" and a combining mark after it are one Character.
        let parts = path.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        guard !path.isEmpty, !parts.contains(where: { $0.isEmpty || $0.elementsEqual(".".utf8) || $0.elementsEqual("..".utf8) }) else {
            return .failure(.notFound)
        }
        let why = "systemd credential for \(unit)"
        guard configuration.policy.principals(for: path).units.contains(unit) else {
            counters.withLock { $0.opens += 1; $0.denials += 1 }
            record(caller, path, .denied, detail: why + ": the unit is not in allow_unit=")
            return .failure(.accessDenied)
        }
        let node = Node(ino: 0, kind: .secret, sourcePath: path + ciphertextSuffix, mountPath: path)
        return acquire(node, caller: caller, maxBytes: configuration.maxCiphertextBytes, detail: why)
    }

    /// A credential request refused before any access decision (its peer
    /// is not root, or runs in another unit than its address names): a
    /// denied open of the credential's path, counted and audited as one.
    public func refuseCredential(path: String, caller: Caller, detail: String) {
        counters.withLock { $0.opens += 1; $0.denials += 1 }
        record(caller, path, .denied, detail: detail)
    }

    /// The version of the ciphertext SOURCE holds now at `sourcePath` (the
    /// cached one when it still matches the file, else read and digested),
    /// or nil when the file is gone or unreadable.
    public func currentVersion(sourcePath: String) -> String? {
        guard let st = try? tree.stat(sourcePath), st.isRegular else { return nil }
        if let cached = cache.peek(sourcePath, fingerprint: st.fingerprint) { return cached.version }
        let key = PathKey(sourcePath)
        if let m = versionMemo.withLock({ $0[key] }), m.fingerprint == st.fingerprint { return m.version }
        guard let (bytes, read) = try? tree.readCiphertext(sourcePath, limit: configuration.maxCiphertextBytes) else { return nil }
        let version = versionOf(bytes)
        // Remembered by fingerprint: status (and every metrics scrape, which
        // any local user may make in a loop) would otherwise read and hash
        // a whole ciphertext, up to max_size, per held handle each time.
        versionMemo.withLock { memo in
            if memo.count >= 4096 { memo.removeAll() }
            memo[key] = (read, version)
        }
        return version
    }

    /// Open handles whose version is no longer the one in SOURCE (rotated,
    /// or the file was removed), with that current version (nil: gone).
    public func staleHandles() -> [(handle: HeldHandle, current: String?)] {
        let held = handles.all
        var current: [PathKey: String?] = [:]   // by bytes: café and cafe\u{301} are two files
        var out: [(HeldHandle, String?)] = []
        for h in held {
            let key = PathKey(h.sourcePath)
            if current[key] == nil { current[key] = .some(currentVersion(sourcePath: h.sourcePath)) }
            let now = current[key]!
            if now != h.version { out.append((h, now)) }
        }
        return out.sorted { ($0.0.mountPath, $0.0.openedAt) < ($1.0.mountPath, $1.0.openedAt) }
    }

    // MARK: Prefetch

    /// What a prefetch did: secrets decrypted (or found cached), secrets
    /// that failed, and the SOURCE paths of those that failed because KMS
    /// was unavailable (throttled past the call's deadline, 5xx, no
    /// answer): worth another try, unlike a bad file or a refusal.
    public struct PrefetchResult: Sendable {
        public var ok = 0
        /// Tried and not decrypted (bad files and refusals included).
        public var failed = 0
        /// To try again: KMS did not answer in time (or throttled past the
        /// call's deadline), and the secrets not tried (`untried`).
        public var unavailable: [String] = []
        /// Not tried: the pass gave up on a KMS that answered nothing.
        public var untried = 0
        /// Tried, and KMS did not answer in time.
        public var unanswered: Int { unavailable.count - untried }
        /// Tried, and final: bad files and refusals.
        public var final: Int { failed - unanswered }

        /// This pass followed by `retry`, a pass over its `unavailable`:
        /// what either decrypted or found final, and what `retry` left.
        public func then(_ retry: PrefetchResult) -> PrefetchResult {
            var r = retry
            r.ok += ok
            r.failed += final
            return r
        }
    }

    /// Every secret in SOURCE now: its SOURCE path and its path in the mount.
    public func secretFiles() -> [(source: String, mount: String)] {
        var files: [(source: String, mount: String)] = []
        // An explicit stack, never recursion over SOURCE (any depth).
        var pending: [(source: String, mount: String)] = [(".", "")]
        while let (dir, mountDir) = pending.popLast() {
            guard let items = try? tree.list(dir) else { continue }
            for i in items {
                let s = SourceTree.join(dir, i.sourceName)
                let m = mountDir.isEmpty ? i.name : mountDir + "/" + i.name
                if i.kind == .directory { pending.append((s, m)) } else { files.append((s, m)) }
            }
        }
        return files
    }

    /// Decrypts every secret in SOURCE (or only the SOURCE paths `only`
    /// names), `parallel` at a time, so services starting at boot never
    /// wait on KMS.
    /// `giveUpAfter`: once that many calls failed because KMS did not
    /// answer in time or are still waiting, none decrypted, and
    /// `answersNothing` says KMS has answered nothing at all (no throttle
    /// either: a throttled quota is progress of a kind, and its calls
    /// are worth waiting for), the pass tries no more; the rest come back
    /// in `unavailable` as untried. A KMS that does not answer (a network
    /// not up yet) then holds the pass for one round of call deadlines, not
    /// one per `parallel` secrets: with 100 secrets and timeout=10, about
    /// 11 s instead of minutes past systemd's start timeout.
    public func prefetch(parallel: Int, only: [String]? = nil, giveUpAfter: Int? = nil,
                         answersNothing: @escaping @Sendable () -> Bool = { true }) -> PrefetchResult {
        var files = secretFiles()
        if let only {
            let wanted = Set(only.map(PathKey.init))
            files = files.filter { wanted.contains(PathKey($0.source)) }
        }
        // The result, and the calls under way (for the give-up).
        let results = Mutex((r: PrefetchResult(), inFlight: 0))
        let maxBytes = configuration.maxCiphertextBytes
        let work = files
        let one: @Sendable (Int) -> Bool = { [self] i in
            // Stopping: the rest is not decrypted (nothing would keep it).
            guard !cache.isStopped else { return false }
            let f = work[i]
            if let giveUpAfter {
                // Calls still in flight count: with the lone first call
                // failing at its deadline and 7 more started a second
                // later, no ninth call holds the pass another deadline.
                let gaveUp = results.withLock { p -> Bool in
                    guard p.r.ok == 0 && p.r.unanswered + p.inFlight >= giveUpAfter && answersNothing() else {
                        p.inFlight += 1
                        return false
                    }
                    p.r.unavailable.append(f.source)
                    p.r.untried += 1
                    return true
                }
                if gaveUp { return false }
            } else {
                results.withLock { $0.inFlight += 1 }
            }
            let node = Node(ino: 0, kind: .secret, sourcePath: f.source, mountPath: f.mount)
            let current = try? tree.stat(f.source)
            let (r, _, _) = cache.acquire(path: f.source, current: current?.fingerprint) {
                self.load(node, maxBytes: maxBytes)
            }
            results.withLock { p in
                p.inFlight -= 1
                switch r {
                case .success: p.r.ok += 1
                case .failure(let e):
                    p.r.failed += 1
                    if e.kind == .unavailable { p.r.unavailable.append(f.source) }
                }
            }
            if case .success = r { return true }
            return false
        }
        guard !work.isEmpty else { return PrefetchResult() }
        PrefetchWorkers(items: work.count, limit: min(max(parallel, 1), work.count), one: one).run()
        return results.withLock { $0.r }
    }

    /// access(2): R_OK/X_OK for those the policy admits; W_OK never.
    public func access(_ ino: UInt64, mask: Int32, caller: Caller) -> Result<Void, FSError> {
        guard let n = node(ino) else { return .failure(.notFound) }
        if mask & W_OK != 0 { return .failure(.readOnly) }
        if n.kind == .directory || mask == F_OK { return .success(()) }
        if mask & X_OK != 0 { return .failure(.accessDenied) }
        return configuration.policy.admits(caller, path: n.mountPath) ? .success(()) : .failure(.accessDenied)
    }

    public func statfs() -> statvfs? { tree.statfs() }

    /// Wipes every cached plaintext (unmount, SIGTERM, SIGINT).
    public func shutdown() {
        cache.wipeAll()
    }
}

/// The workers of one prefetch pass. One secret goes first, alone (for up
/// to a second): when a whole fleet boots at once, each host's first answer
/// (a throttle paces its client) comes before it sends more, so the storm
/// opens with one request a host. Then every secret finished starts one
/// more worker, up to `limit` (a slow start): a host whose first answer
/// came back unthrottled still sends a few requests, not `limit`, into a
/// quota that the rest of the fleet may be filling. Until a secret has
/// decrypted, a second with none finished starts all the others at once:
/// a KMS that does not answer delays them by that second only, also when
/// the first secret was a bad file or already cached.
private final class PrefetchWorkers: @unchecked Sendable {
    private let items: Int
    private let limit: Int
    /// Works on one secret; true when it decrypted (or was cached).
    private let one: @Sendable (Int) -> Bool
    private let lock = ConditionLock()
    // Under `lock`.
    private var next = 1
    private var started = 0
    private var running = 0
    private var decrypted = false
    private var lastFinished = SystemClock.monotonic()

    init(items: Int, limit: Int, one: @escaping @Sendable (Int) -> Bool) {
        self.items = items
        self.limit = limit
        self.one = one
    }

    /// Starts one more worker while fewer than `limit` are started and
    /// secrets remain; false when it did not. `lock` held.
    @discardableResult
    private func addWorker(first: Bool) -> Bool {
        guard started < limit, first || next < items else { return false }
        guard startThread(name: "kmsfs-prefetch", { [self] in work(first: first) }) else { return false }
        started += 1
        running += 1
        return true
    }

    /// `lock` held: a secret finished, and starts one more worker.
    private func finished(decrypted ok: Bool) {
        if ok { decrypted = true }
        lastFinished = SystemClock.monotonic()
        addWorker(first: false)
        lock.broadcast()
    }

    private func work(first: Bool) {
        if first {
            let ok = one(0)
            lock.withLock { finished(decrypted: ok) }
        }
        while true {
            let i: Int = lock.withLock {
                let v = next
                next += 1
                return v
            }
            guard i < items else { break }
            let ok = one(i)
            lock.withLock { finished(decrypted: ok) }
        }
        lock.withLock {
            running -= 1
            lock.broadcast()
        }
    }

    /// Runs the pass; returns once every worker has finished.
    func run() {
        let inline: Bool = lock.withLock {
            if addWorker(first: true) { return false }
            started += 1                    // no thread could be made: this one works
            running += 1
            return true
        }
        if inline { work(first: true) }
        lock.withLock {
            lastFinished = SystemClock.monotonic()
            while running > 0 {
                guard !decrypted && started < limit && next < items else { lock.wait(); continue }
                let left = lastFinished + 1 - SystemClock.monotonic()
                if left > 0 { lock.wait(seconds: left); continue }
                while addWorker(first: false) {}   // a second with none finished
                lastFinished = SystemClock.monotonic()   // a thread that could not be made: again in a second
            }
        }
    }
}

/// A closure in a class, so that storing and reading it through a generic
/// container (`Mutex`) moves a reference, never the closure itself.
final class Hook<F: Sendable>: Sendable {
    let call: F
    init(_ call: F) { self.call = call }
}

/// How a slow open (`SecretFileSystem.OpenStart.slow`) answers: `answer`,
/// called once, from whichever thread finishes it; and `later`, which runs
/// more of it from the open pool (a retry that may wait on KMS again, from
/// a thread that must not wait), or, when it cannot, answers the open
/// itself (EIO).
public struct OpenContinuation: Sendable {
    public let answer: @Sendable (Result<OpenSecret, FSError>) -> Void
    public let later: @Sendable (_ work: @escaping @Sendable () -> Void) -> Void
    /// Whether the open was answered already (its caller was killed while
    /// it waited): the rest is skipped.
    public let isAnswered: @Sendable () -> Bool

    public init(answer: @escaping @Sendable (Result<OpenSecret, FSError>) -> Void,
                later: @escaping @Sendable (_ work: @escaping @Sendable () -> Void) -> Void,
                isAnswered: @escaping @Sendable () -> Bool = { false }) {
        self.answer = answer
        self.later = later
        self.isAnswered = isAnswered
    }

    /// Runs a slow open on this thread and waits for its answer (for
    /// callers that are not the FUSE bridge: tests, tools). Its `later`
    /// work runs on a thread of its own.
    public static func wait(for slow: SecretFileSystem.SlowOpen) -> Result<OpenSecret, FSError> {
        final class Answer: @unchecked Sendable {   // guarded by `lock`
            let lock = ConditionLock()
            var result: Result<OpenSecret, FSError>?
        }
        let a = Answer()
        let answer: @Sendable (Result<OpenSecret, FSError>) -> Void = { r in
            a.lock.withLock {
                if a.result == nil { a.result = r }
                a.lock.broadcast()
            }
        }
        slow(OpenContinuation(answer: answer, later: { work in
            if !startThread(name: "kmsfs-open", work) { answer(.failure(.io)) }
        }))
        return a.lock.withLock {
            while a.result == nil { a.lock.wait() }
            return a.result!
        }
    }
}
