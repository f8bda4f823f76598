import Testing
import Foundation
@testable import SecretFS
import System
import SecureMemory
import Synchronization

/// A decryptor that "decrypts" by reversing bytes, counts calls, and can
/// be made slow or failing.
final class FakeDecryptor: SecretDecrypting, @unchecked Sendable {
    let calls = Mutex(0)
    let delay: Double
    let failWith: DecryptFailure?
    /// When set, each decryption waits for a signal of it.
    let gate: DispatchSemaphore?

    init(delay: Double = 0, failWith: DecryptFailure? = nil, gate: DispatchSemaphore? = nil) {
        self.delay = delay
        self.failWith = failWith
        self.gate = gate
    }

    func decrypt(ciphertext: [UInt8], path: String) -> Result<DecryptedSecret, DecryptFailure> {
        calls.withLock { $0 += 1 }
        gate?.wait()
        if delay > 0 { usleep(UInt32(delay * 1e6)) }
        if let failWith { return .failure(failWith) }
        if ciphertext.first == UInt8(ascii: "!") { return .failure(DecryptFailure(.badInput, "bad file")) }
        do {
            let b = try SecureBuffer(capacity: ciphertext.count)
            try Array(ciphertext.reversed()).withUnsafeBytes { try b.append($0) }
            return .success(DecryptedSecret(plaintext: b, format: "fake", keyId: nil))
        } catch {
            return .failure(DecryptFailure(.badInput, "\(error)"))
        }
    }
}

final class MemoryAudit: AuditSink, @unchecked Sendable {
    let records = Mutex<[AuditRecord]>([])
    /// When true, `tryRecord` finds no room (a full audit queue).
    let full = Atomic<Bool>(false)
    func record(_ r: AuditRecord) { records.withLock { $0.append(r) } }
    func tryRecord(_ r: AuditRecord) -> Bool {
        if full.load(ordering: .relaxed) { return false }
        record(r)
        return true
    }
}

/// Every tree `makeTree` made, removed when the test process exits (many
/// tests hand the path straight to a file system and keep no name for it).
private let madeTrees = Mutex<[String]>([])

func makeTree() throws -> String {
    let dir = NSTemporaryDirectory() + "kmsfs-unit-\(UUID().uuidString)"
    let first = madeTrees.withLock { trees in
        trees.append(dir)
        return trees.count == 1
    }
    if first {
        atexit {
            for dir in madeTrees.withLock({ $0 }) { try? FileManager.default.removeItem(atPath: dir) }
        }
    }
    let fm = FileManager.default
    try fm.createDirectory(atPath: dir + "/sub", withIntermediateDirectories: true)
    try Data("olleh".utf8).write(to: URL(fileURLWithPath: dir + "/a.encrypted"))
    try Data("dlrow".utf8).write(to: URL(fileURLWithPath: dir + "/sub/b.encrypted"))
    try Data("!".utf8).write(to: URL(fileURLWithPath: dir + "/bad.encrypted"))
    try Data("plain".utf8).write(to: URL(fileURLWithPath: dir + "/notes.txt"))
    try fm.createSymbolicLink(atPath: dir + "/link.encrypted", withDestinationPath: dir + "/a.encrypted")
    return dir
}

/// A file system over `dir` that admits root only, shown 0400 root:root.
func rootOnlyFileSystem(_ dir: String, decryptor: SecretDecrypting) throws -> SecretFileSystem {
    let policy = AccessPolicy(defaultPrincipals: Principals(uids: [0]), defaultPresentation: Presentation(uid: 0, gid: 0, mode: 0o400))
    return SecretFileSystem(tree: try SourceTree(path: dir), configuration: FSConfiguration(policy: policy),
                            decryptor: decryptor, audit: MemoryAudit())
}

/// A clock the test moves by hand.
final class TestClock: Sendable { let seconds = Mutex(100.0) }

/// A root-only file system over a new tree, auditing into memory, on a
/// clock the test moves (`time.seconds`).
func rootOnlyFileSystemOnAClock() throws -> (SecretFileSystem, MemoryAudit, TestClock) {
    let audit = MemoryAudit()
    let time = TestClock()
    let policy = AccessPolicy(defaultPrincipals: Principals(uids: [0]), defaultPresentation: Presentation(uid: 0, gid: 0, mode: 0o400))
    let fs = SecretFileSystem(tree: try SourceTree(path: try makeTree()), configuration: FSConfiguration(policy: policy),
                              decryptor: FakeDecryptor(), audit: audit, monotonic: { time.seconds.withLock { $0 } })
    return (fs, audit, time)
}

func text(_ s: OpenSecret) -> String {
    s.plaintext.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
}

@Suite struct FileSystemTests {
    let root = Caller(uid: 0, gid: 0, pid: Int32(getpid()))

    func make(_ d: FakeDecryptor = FakeDecryptor(), ttl: Double? = nil, audit: MemoryAudit = MemoryAudit(),
              tree: String? = nil) throws -> SecretFileSystem {
        let policy = AccessPolicy(defaultPrincipals: Principals(uids: [0]), defaultPresentation: Presentation(uid: 0, gid: 0, mode: 0o400))
        return SecretFileSystem(tree: try SourceTree(path: try tree ?? makeTree()),
                                configuration: FSConfiguration(policy: policy, cache: .init(ttl: ttl)),
                                decryptor: d, audit: audit)
    }

    /// beginOpen runs on the FUSE reader, which must never wait: a cache
    /// hit and a refusal answer at once, unless the audit queue is full,
    /// when both record from the open pool (`.slow`) instead.
    @Test func openStartsNeverWaitOnAFullAuditQueue() throws {
        let audit = MemoryAudit()
        let fs = try make(audit: audit)
        fs.sourceIsWatched = true
        let a = try fs.lookup(parent: SecretFileSystem.rootInode, name: "a").get().attributes.ino
        #expect(text(try fs.open(a, flags: O_RDONLY, caller: root).get()) == "hello")   // now cached
        let stranger = Caller(uid: 4242, gid: 4242, pid: 1)
        guard case .done(.success) = fs.beginOpen(a, flags: O_RDONLY, caller: root) else {
            Issue.record("a cache hit should answer at once"); return
        }
        guard case .done(.failure(.accessDenied)) = fs.beginOpen(a, flags: O_RDONLY, caller: stranger) else {
            Issue.record("a refusal should answer at once"); return
        }
        let before = audit.records.withLock { $0.count }
        audit.full.store(true, ordering: .relaxed)
        guard case .slow(let hit) = fs.beginOpen(a, flags: O_RDONLY, caller: root),
              case .slow(let refusal) = fs.beginOpen(a, flags: O_RDONLY, caller: stranger) else {
            Issue.record("with the audit queue full, opens should go to the pool"); return
        }
        #expect(audit.records.withLock { $0.count } == before)     // nothing recorded on the reader
        #expect(text(try OpenContinuation.wait(for: hit).get()) == "hello")
        #expect(throws: FSError.accessDenied) { try OpenContinuation.wait(for: refusal).get() }
        #expect(audit.records.withLock { $0.suffix(2).map(\.outcome) } == [.cache, .denied])
    }

    @Test func mirrorsSecretsAndDirectoriesOnly() throws {
        let fs = try make()
        let dir = try fs.openDirectory(SecretFileSystem.rootInode).get()
        #expect(dir.items.map(\.name) == ["a", "bad", "sub"])
        #expect(try fs.lookup(parent: SecretFileSystem.rootInode, name: "a").get().attributes.kind == .secret)
        #expect(try fs.lookup(parent: SecretFileSystem.rootInode, name: "sub").get().attributes.kind == .directory)
        for hidden in ["notes.txt", "notes", "link", "a.encrypted"] {
            #expect(throws: FSError.notFound) { try fs.lookup(parent: SecretFileSystem.rootInode, name: hidden).get() }
        }
    }

    @Test func openDecryptsOnceAndSizesExactly() throws {
        let d = FakeDecryptor()
        let audit = MemoryAudit()
        let fs = try make(d, audit: audit)
        let a = try fs.lookup(parent: SecretFileSystem.rootInode, name: "a").get().attributes.ino
        #expect(text(try fs.open(a, flags: O_RDONLY, caller: root).get()) == "hello")
        #expect(text(try fs.open(a, flags: O_RDONLY, caller: root).get()) == "hello")
        #expect(d.calls.withLock { $0 } == 1)
        #expect(try fs.getattr(a).get().0.size == 5)
        #expect(audit.records.withLock { $0.map(\.outcome) } == [.kms, .cache])
    }

    @Test func refusedCallersGetEACCESAndNothingIsDecrypted() throws {
        let d = FakeDecryptor()
        let audit = MemoryAudit()
        let fs = try make(d, audit: audit)
        let a = try fs.lookup(parent: SecretFileSystem.rootInode, name: "a").get().attributes.ino
        let stranger = Caller(uid: 4242, gid: 4242, pid: 1)
        #expect(throws: FSError.accessDenied) { try fs.open(a, flags: O_RDONLY, caller: stranger).get() }
        #expect(d.calls.withLock { $0 } == 0)
        #expect(audit.records.withLock { $0.first?.outcome } == .denied)
        #expect(throws: FSError.readOnly) { try fs.open(a, flags: O_WRONLY, caller: root).get() }
        // A refused caller asking to write is refused as such, and recorded.
        for flags in [O_WRONLY, O_RDWR, O_RDONLY | O_TRUNC] {
            #expect(throws: FSError.accessDenied) { try fs.open(a, flags: flags, caller: stranger).get() }
        }
        #expect(audit.records.withLock { $0.map(\.outcome) } == [.denied, .denied, .denied, .denied])
        #expect(d.calls.withLock { $0 } == 0)
    }

    /// Anyone may try any secret: a user looping on refused opens gets a
    /// budget of records (100 at once, 20 a second); past it refusals are
    /// counted, and the next record says how many were not recorded. Other
    /// users and admitted opens are not touched.
    @Test func refusalsBeyondAUsersBudgetAreCountedNotEachRecorded() throws {
        let (fs, audit, time) = try rootOnlyFileSystemOnAClock()
        let a = try fs.lookup(parent: SecretFileSystem.rootInode, name: "a").get().attributes.ino
        let mallory = Caller(uid: 4242, gid: 4242, pid: 1)
        for _ in 0..<150 {
            #expect(throws: FSError.accessDenied) { try fs.open(a, flags: O_RDONLY, caller: mallory).get() }
        }
        #expect(audit.records.withLock { $0.count } == 100)
        #expect(fs.counterSnapshot.denials == 150)
        // Another user, and root, are recorded as ever.
        #expect(throws: FSError.accessDenied) { try fs.open(a, flags: O_RDONLY, caller: Caller(uid: 4343, gid: 1, pid: 1)).get() }
        #expect(text(try fs.open(a, flags: O_RDONLY, caller: root).get()) == "hello")
        #expect(audit.records.withLock { $0.suffix(2).map(\.uid) } == [4343, 0])
        time.seconds.withLock { $0 += 1 }   // 20 more
        for _ in 0..<25 {
            #expect(throws: FSError.accessDenied) { try fs.open(a, flags: O_RDONLY, caller: mallory).get() }
        }
        let mine = audit.records.withLock { $0.filter { $0.uid == 4242 } }
        #expect(mine.count == 120)
        #expect(mine[100].detail?.contains("50 refusals of this user before this one were counted, not recorded") == true)
        #expect(mine[101].detail == "not in the allowed users or groups")
        #expect(fs.counterSnapshot.denials == 176)
    }

    /// Requests come from every user namespace (allow_other): a user with
    /// thousands of subordinate uids is thousands of users. All of them
    /// together get ten users' worth of records (1,000 at once, 200 a
    /// second), and users past the 4,096 remembered share one user's
    /// budget (100 at once, 20 a second).
    @Test func refusalsOfManyUsersTogetherAreBounded() throws {
        let (fs, audit, time) = try rootOnlyFileSystemOnAClock()
        let a = try fs.lookup(parent: SecretFileSystem.rootInode, name: "a").get().attributes.ino
        for uid in UInt32(100_000)..<100_000 + 6_000 {
            #expect(throws: FSError.accessDenied) { try fs.open(a, flags: O_RDONLY, caller: Caller(uid: uid, gid: uid, pid: 1)).get() }
        }
        #expect(audit.records.withLock { $0.count } == 1000)
        #expect(fs.counterSnapshot.denials == 6000)
        time.seconds.withLock { $0 += 1 }   // 200 more in all; new users past the 4,096 share 100
        for uid in UInt32(200_000)..<200_000 + 300 {
            #expect(throws: FSError.accessDenied) { try fs.open(a, flags: O_RDONLY, caller: Caller(uid: uid, gid: uid, pid: 1)).get() }
        }
        #expect(audit.records.withLock { $0.count } == 1100)
        // The 1,904 refusals the shared budget left unrecorded were other
        // users': the next record says so, not that they were uid 200,000's.
        let firstShared = audit.records.withLock { $0.first { $0.uid == 200_000 } }
        #expect(firstShared?.detail?.hasSuffix("; 1904 refusals of users past the 4096 remembered before this one were counted, not recorded") == true)
        for uid in UInt32(100_100)..<100_100 + 300 {   // remembered users, their own budgets full again
            #expect(throws: FSError.accessDenied) { try fs.open(a, flags: O_RDONLY, caller: Caller(uid: uid, gid: uid, pid: 1)).get() }
        }
        #expect(audit.records.withLock { $0.count } == 1200)
        // Admitted opens are never limited.
        #expect(text(try fs.open(a, flags: O_RDONLY, caller: root).get()) == "hello")
    }

    /// Whoever writes SOURCE decides how large a directory is, and every
    /// local user's opendir listed it on a worker of its own: the entries
    /// listings being built hold together are bounded (ENFILE past it),
    /// given back once a listing is built, and a directory larger than
    /// the whole budget is never listed.
    @Test func listingsBeingBuiltHoldABoundedNumberOfEntriesTogether() throws {
        let dir = try makeTree()
        try FileManager.default.createDirectory(atPath: dir + "/many", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir + "/more", withIntermediateDirectories: true)
        for i in 0..<1500 { try Data("x".utf8).write(to: URL(fileURLWithPath: dir + "/many/s\(i).encrypted")) }
        for i in 0..<3000 { try Data("x".utf8).write(to: URL(fileURLWithPath: dir + "/more/s\(i).encrypted")) }
        let budget = ListingBudget(limit: 2048)
        let tree = try SourceTree(path: dir, listingBudget: budget)
        // One listing at a time fits, and gives its entries back.
        #expect(try tree.list("many", hold: ListingBudget.Hold(budget)).count == 1500)
        #expect(budget.inUse == 0)
        // One still being used (held) leaves no room for another.
        var hold: ListingBudget.Hold? = ListingBudget.Hold(budget)
        let many = try tree.list("many", hold: hold)
        #expect(many.count == 1500 && budget.inUse == 2048)
        #expect { try tree.list(".", hold: ListingBudget.Hold(budget)) } throws: { ($0 as? Errno)?.code == ENFILE }
        // The daemon's own walks (watcher, prefetch, rotation) are not
        // charged: they must see every directory.
        #expect(try tree.list(".").map(\.name) == ["a", "bad", "many", "more", "sub"])
        hold = nil
        #expect(budget.inUse == 0)
        #expect(try tree.list(".", hold: ListingBudget.Hold(budget)).count == 5)
        // Larger than the whole budget: never listed for a user, nothing kept.
        #expect { try tree.list("more", hold: ListingBudget.Hold(budget)) } throws: { ($0 as? Errno)?.code == ENFILE }
        #expect(budget.inUse == 0)
        #expect(try tree.list("more").count == 3000)
        let policy = AccessPolicy(defaultPrincipals: Principals(uids: [0]), defaultPresentation: Presentation(uid: 0, gid: 0, mode: 0o400))
        let fs = SecretFileSystem(tree: tree, configuration: FSConfiguration(policy: policy), decryptor: FakeDecryptor(), audit: MemoryAudit())
        guard case .success(let more) = fs.lookup(parent: SecretFileSystem.rootInode, name: "more"),
              case .success(let m) = fs.lookup(parent: SecretFileSystem.rootInode, name: "many") else {
            Issue.record("no entries"); return
        }
        #expect(throws: FSError(ENFILE)) { try fs.openDirectory(more.attributes.ino, caller: root).get() }
        let opened = try fs.openDirectory(m.attributes.ino, caller: root).get()
        #expect(opened.items.count == 1500 && budget.inUse == 0)   // built: the ledger counts what handles keep
    }

    /// opendir needs no permission: one user's handles may hold so many
    /// entries, then get EMFILE until they close some; other users are not
    /// affected. Handles on the same listing share it: the first costs its
    /// entries, each further one a single entry.
    @Test func oneUsersOpenDirectoriesHoldABoundedNumberOfEntries() throws {
        let policy = AccessPolicy(defaultPrincipals: Principals(uids: [0]), defaultPresentation: Presentation(uid: 0, gid: 0, mode: 0o400))
        var c = FSConfiguration(policy: policy)
        c.directoryEntriesPerUser = 7   // the root lists 3 entries
        let fs = SecretFileSystem(tree: try SourceTree(path: try makeTree()), configuration: c,
                                  decryptor: FakeDecryptor(), audit: MemoryAudit())
        let mallory = Caller(uid: 4242, gid: 4242, pid: 1)
        var held: [OpenDirectory] = []
        for _ in 0..<5 { held.append(try fs.openDirectory(SecretFileSystem.rootInode, caller: mallory).get()) }   // 3 + 1 + 1 + 1 + 1
        #expect(throws: FSError(EMFILE)) { try fs.openDirectory(SecretFileSystem.rootInode, caller: mallory).get() }
        #expect(try fs.openDirectory(SecretFileSystem.rootInode, caller: root).get().items.count == 3)
        held.removeLast()   // closed: its entry is given back
        held.append(try fs.openDirectory(SecretFileSystem.rootInode, caller: mallory).get())
        #expect(held.count == 5)
        // One listing, not five: the same storage.
        let first = held[0].items.withUnsafeBufferPointer { $0.baseAddress }
        #expect(held.allSatisfy { $0.items.withUnsafeBufferPointer { $0.baseAddress } == first })
        held.removeAll()    // all closed: all given back
        for _ in 0..<5 { held.append(try fs.openDirectory(SecretFileSystem.rootInode, caller: mallory).get()) }
        // A directory larger than the whole share still opens alone.
        c.directoryEntriesPerUser = 2
        let small = SecretFileSystem(tree: try SourceTree(path: try makeTree()), configuration: c,
                                     decryptor: FakeDecryptor(), audit: MemoryAudit())
        let one = try small.openDirectory(SecretFileSystem.rootInode, caller: mallory).get()
        #expect(one.items.count == 3)
        #expect(throws: FSError(EMFILE)) { try small.openDirectory(SecretFileSystem.rootInode, caller: mallory).get() }
    }

    /// A shared listing is never a stale one: each opendir lists SOURCE
    /// anew and shares only an equal listing, by bytes and stats.
    @Test func aChangedDirectoryIsListedAnewWhileAnOldListingIsHeld() throws {
        let policy = AccessPolicy(defaultPrincipals: Principals(uids: [0]), defaultPresentation: Presentation(uid: 0, gid: 0, mode: 0o400))
        let dir = try makeTree()
        let fs = SecretFileSystem(tree: try SourceTree(path: dir), configuration: FSConfiguration(policy: policy),
                                  decryptor: FakeDecryptor(), audit: MemoryAudit())
        let u = Caller(uid: 4242, gid: 4242, pid: 1)
        let old = try fs.openDirectory(SecretFileSystem.rootInode, caller: u).get()
        #expect(old.items.map(\.name).sorted() == ["a", "bad", "sub"])
        try Data("x".utf8).write(to: URL(fileURLWithPath: dir + "/caf\u{e9}.encrypted"))
        let added = try fs.openDirectory(SecretFileSystem.rootInode, caller: u).get()
        #expect(added.items.count == 4)
        // The same name in NFD, with the same stats: equal as Strings,
        // another file to SOURCE (compared directly: a renamed file on disk
        // would differ in its ctime anyway).
        let stat = added.items.first { $0.name == "a" }!.stat
        func item(_ name: String) -> OpenDirectory.Item {
            OpenDirectory.Item(name: name, kind: .secret, entry: SourceEntry(name: name, sourceName: name + ".encrypted", kind: .secret), stat: stat)
        }
        #expect(DirectoryListing.same([item("caf\u{e9}")], [item("caf\u{e9}")]))
        #expect(!DirectoryListing.same([item("caf\u{e9}")], [item("cafe\u{301}")]))
        // A secret rewritten in place: the same names, another size.
        try Data("longer".utf8).write(to: URL(fileURLWithPath: dir + "/a.encrypted"))
        let rewritten = try fs.openDirectory(SecretFileSystem.rootInode, caller: u).get()
        let size = { (d: OpenDirectory) in d.items.first { $0.name == "a" }?.stat?.size }
        #expect(size(old) == 5 && size(rewritten) == 6)
    }

    /// Users together hold at most 16 users' worth of entries (subordinate
    /// uids are users here), and an empty directory's handle costs one.
    /// Root and the uids the lists name are bound by their own share only:
    /// strangers filling the total do not deny them; a member of a named
    /// group is not named.
    @Test func allUsersOpenDirectoriesTogetherAreBounded() throws {
        let policy = AccessPolicy(defaultPrincipals: Principals(uids: [8000], gids: [9000]), defaultPresentation: Presentation(uid: 0, gid: 0, mode: 0o400))
        var c = FSConfiguration(policy: policy)
        c.directoryEntriesPerUser = 4       // the root lists 4 entries here: one handle a user; 64 in all
        let dir = try makeTree()
        try FileManager.default.createDirectory(atPath: dir + "/empty", withIntermediateDirectories: false)
        let fs = SecretFileSystem(tree: try SourceTree(path: dir), configuration: c, decryptor: FakeDecryptor(), audit: MemoryAudit())
        var held: [Any] = []
        for uid in UInt32(5000)..<5016 {
            held.append(try fs.openDirectory(SecretFileSystem.rootInode, caller: Caller(uid: uid, gid: uid, pid: 1)).get())
        }
        #expect(throws: FSError(EMFILE)) { try fs.openDirectory(SecretFileSystem.rootInode, caller: Caller(uid: 6000, gid: 6000, pid: 1)).get() }
        #expect(throws: FSError(EMFILE)) { try fs.openDirectory(SecretFileSystem.rootInode, caller: Caller(uid: 9001, gid: 9000, pid: 1)).get() }
        var named: [Any] = []
        for uid: UInt32 in [0, 8000] {
            named.append(try fs.openDirectory(SecretFileSystem.rootInode, caller: Caller(uid: uid, gid: uid, pid: 1)).get())
            // ... within their own share still.
            #expect(throws: FSError(EMFILE)) { try fs.openDirectory(SecretFileSystem.rootInode, caller: Caller(uid: uid, gid: uid, pid: 1)).get() }
        }
        // Their entries count: a stranger's closed handle does not make room
        // for another stranger while they hold theirs.
        held.removeLast()
        #expect(throws: FSError(EMFILE)) { try fs.openDirectory(SecretFileSystem.rootInode, caller: Caller(uid: 6000, gid: 6000, pid: 1)).get() }
        named.removeAll()
        held.append(try fs.openDirectory(SecretFileSystem.rootInode, caller: Caller(uid: 6000, gid: 6000, pid: 1)).get())
        // Empty directories: one entry each, so one user gets 4 handles, not unbounded.
        let empty = try fs.lookup(parent: SecretFileSystem.rootInode, name: "empty").get().attributes.ino
        held.removeAll()
        let u = Caller(uid: 7000, gid: 7000, pid: 1)
        for _ in 0..<4 { held.append(try fs.openDirectory(empty, caller: u).get()) }
        #expect(throws: FSError(EMFILE)) { try fs.openDirectory(empty, caller: u).get() }
    }

    /// Whoever writes SOURCE sets a file's times at will: one past what 64
    /// bits of nanoseconds hold (year 2262) or before 1677 is shown and
    /// opened like any other, never a trap at `ls -l`.
    @Test func fileTimesBeyondNanosecondRangeAreNoTrap() throws {
        let dir = try makeTree()
        for (name, seconds) in [("a.encrypted", 10_413_792_000), ("sub/b.encrypted", -10_413_792_000)] {
            var times = [timespec(tv_sec: seconds, tv_nsec: 999_999_999), timespec(tv_sec: seconds, tv_nsec: 999_999_999)]
            #expect(utimensat(AT_FDCWD, dir + "/" + name, &times, 0) == 0)
        }
        let fs = try make(tree: dir)
        let listing = try fs.openDirectory(SecretFileSystem.rootInode).get()
        for item in listing.items { _ = fs.lookupForListing(listing, item: item) }
        let a = try fs.lookup(parent: SecretFileSystem.rootInode, name: "a").get().attributes
        #expect(a.mtime.tv_sec == 10_413_792_000)
        #expect(try fs.getattr(a.ino).get().0.mtime.tv_sec == 10_413_792_000)
        #expect(text(try fs.open(a.ino, flags: O_RDONLY, caller: root).get()) == "hello")
        let sub = try fs.lookup(parent: SecretFileSystem.rootInode, name: "sub").get().attributes.ino
        let b = try fs.lookup(parent: sub, name: "b").get().attributes.ino
        #expect(text(try fs.open(b, flags: O_RDONLY, caller: root).get()) == "world")
        #expect(Fingerprint.nanoseconds(timespec(tv_sec: Int.max, tv_nsec: 0)) == .max)
        #expect(Fingerprint.nanoseconds(timespec(tv_sec: -10_413_792_000, tv_nsec: 5)) == .min)
        #expect(Fingerprint.nanoseconds(timespec(tv_sec: 9_223_372_036, tv_nsec: 999_999_999)) == .max)
        #expect(Fingerprint.nanoseconds(timespec(tv_sec: 1, tv_nsec: 5)) == 1_000_000_005)
    }

    /// The name the kernel looked an inode up by, for the bridge to expire
    /// it: split on bytes, so a name that starts with a combining mark
    /// ("/" + U+0301 is one Character) is found, nested or at the root.
    @Test func kernelEntryNamesTheParentAndNameByBytes() throws {
        let dir = try makeTree()
        try FileManager.default.createDirectory(atPath: dir + "/d", withIntermediateDirectories: true)
        try Data("x".utf8).write(to: URL(fileURLWithPath: dir + "/d/\u{301}x.encrypted"))
        let fs = try rootOnlyFileSystem(dir, decryptor: FakeDecryptor())
        let root = SecretFileSystem.rootInode
        let d = try fs.lookup(parent: root, name: "d").get().attributes.ino
        let x = try fs.lookup(parent: d, name: "\u{301}x").get().attributes.ino
        let a = try fs.lookup(parent: root, name: "a").get().attributes.ino
        #expect(fs.kernelEntry(of: x).map { [String($0.parent), $0.name] } == [String(d), "\u{301}x"])
        #expect(fs.kernelEntry(of: d).map { [String($0.parent), $0.name] } == [String(root), "d"])
        #expect(fs.kernelEntry(of: a).map { [String($0.parent), $0.name] } == [String(root), "a"])
        #expect(fs.kernelEntry(of: root) == nil)
    }

    /// A decryption can take seconds; a policy reloaded meanwhile that no
    /// longer admits the caller decides the open.
    @Test func aPolicyReloadedDuringTheDecryptionDecidesTheOpen() throws {
        let audit = MemoryAudit()
        let fs = try make(FakeDecryptor(delay: 0.3), audit: audit)
        let a = try fs.lookup(parent: SecretFileSystem.rootInode, name: "a").get().attributes.ino
        guard case .slow(let finish) = fs.beginOpen(a, flags: O_RDONLY, caller: root) else {
            Issue.record("a cache miss should go to the pool"); return
        }
        final class Outcome: @unchecked Sendable { var result: Result<OpenSecret, FSError>? }   // written before `done`
        let outcome = Outcome()
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread { outcome.result = OpenContinuation.wait(for: finish); done.signal() }
        usleep(50_000)
        var c = fs.configuration
        c.policy = AccessPolicy(defaultPrincipals: Principals(uids: [4242]), defaultPresentation: Presentation(uid: 0, gid: 0, mode: 0o400))
        fs.reconfigure(c)
        done.wait()
        #expect(throws: FSError.accessDenied) { try outcome.result!.get() }
        // One record, the refusal (not an `allowed` one first); the
        // decryption and the open still count.
        #expect(audit.records.withLock { $0.map(\.outcome) } == [.denied])
        let n = fs.counterSnapshot
        #expect(n.decrypts == 1 && n.opens == 1 && n.denials == 1)
    }

    @Test func concurrentFirstOpensShareOneDecryption() throws {
        let d = FakeDecryptor(delay: 0.2)
        let fs = try make(d)
        let a = try fs.lookup(parent: SecretFileSystem.rootInode, name: "a").get().attributes.ino
        let results = Mutex<[String]>([])
        let group = DispatchGroup()
        for _ in 0..<12 {
            DispatchQueue.global().async(group: group) {
                if let s = try? fs.open(a, flags: O_RDONLY, caller: root).get() { results.withLock { $0.append(text(s)) } }
            }
        }
        group.wait()
        #expect(results.withLock { $0 } == Array(repeating: "hello", count: 12))
        #expect(d.calls.withLock { $0 } == 1)
    }

    /// Opens that join a decryption in flight return at once and are
    /// answered by the thread that ran it, after its own open: waiting,
    /// each held an open-pool thread (64 opens of one cold secret held
    /// every one, and all other cold opens waited for that KMS call).
    @Test(.timeLimit(.minutes(1)))   // a joiner that waited would hang here, the gate shut
    func opensThatJoinADecryptionHoldNoThread() throws {
        let gate = DispatchSemaphore(value: 0)
        let d = FakeDecryptor(gate: gate)
        let audit = MemoryAudit()
        let fs = try make(d, audit: audit)
        let a = try fs.lookup(parent: SecretFileSystem.rootInode, name: "a").get().attributes.ino
        let answers = Mutex<[String]>([])
        func continuation(_ name: String) -> OpenContinuation {
            OpenContinuation(answer: { r in
                answers.withLock { $0.append(name + ":" + ((try? r.get()).map(text) ?? "error")) }
            }, later: { _ in Issue.record("nothing here should go back to the pool") })
        }
        var slow: [SecretFileSystem.SlowOpen] = []
        for _ in 0..<8 {
            guard case .slow(let finish) = fs.beginOpen(a, flags: O_RDONLY, caller: root) else {
                Issue.record("a cache miss should go to the pool"); return
            }
            slow.append(finish)
        }
        let first = slow.removeFirst()
        let firstReturned = DispatchSemaphore(value: 0)
        let firstK = continuation("first")
        Thread.detachNewThread { first(firstK); firstReturned.signal() }
        while d.calls.withLock({ $0 }) == 0 { usleep(1000) }     // decrypting, held at the gate
        for (i, finish) in slow.enumerated() { finish(continuation("joiner\(i)")) }   // all return, on this thread
        #expect(answers.withLock { $0 }.isEmpty)                  // nobody answered before the decryption ends
        gate.signal()
        firstReturned.wait()                                       // the decrypting thread answered everyone
        #expect(answers.withLock { $0 } == ["first:hello"] + (0..<7).map { "joiner\($0):hello" })
        #expect(d.calls.withLock { $0 } == 1)
        #expect(audit.records.withLock { $0.map(\.outcome) } == [.kms] + Array(repeating: .shared, count: 7))
    }

    /// A decryption another caller runs (a prefetch, a credential request,
    /// a rotation check) hands the opens that joined it back to the pool
    /// (`later`) instead of answering them on its own thread; and a joined
    /// open answered meanwhile (its caller killed) is dropped, uncounted.
    @Test func joinersOfAnotherCallersDecryptionGoBackToThePool() throws {
        let gate = DispatchSemaphore(value: 0)
        let d = FakeDecryptor(gate: gate)
        let audit = MemoryAudit()
        let fs = try make(d, audit: audit)
        let a = try fs.lookup(parent: SecretFileSystem.rootInode, name: "a").get().attributes.ino
        let source = try #require(fs.secretFiles().first { $0.mount == "a" }).source
        let answers = Mutex<[String]>([])
        let laterFrom = Mutex<[String]>([])
        let killed = Atomic<Bool>(false)
        func continuation(_ name: String, killable: Bool = false) -> OpenContinuation {
            OpenContinuation(answer: { r in
                answers.withLock { $0.append(name + ":" + ((try? r.get()).map(text) ?? "error")) }
            }, later: { work in
                laterFrom.withLock { $0.append(name) }
                Thread.detachNewThread { work() }
            }, isAnswered: { killable && killed.load(ordering: .relaxed) })
        }
        let decrypted = DispatchSemaphore(value: 0)
        Thread.detachNewThread { _ = fs.decryptNow(sourcePath: source); decrypted.signal() }
        while d.calls.withLock({ $0 }) == 0 { usleep(1000) }
        for name in ["joiner", "killed"] {
            guard case .slow(let finish) = fs.beginOpen(a, flags: O_RDONLY, caller: root) else {
                Issue.record("a cache miss should go to the pool"); return
            }
            finish(continuation(name, killable: name == "killed"))
        }
        killed.store(true, ordering: .relaxed)
        gate.signal()
        decrypted.wait()
        let deadline = Date().addingTimeInterval(5)
        while answers.withLock({ $0.count }) < 1 && Date() < deadline { usleep(1000) }
        usleep(50_000)   // the killed one's work, had it answered
        #expect(laterFrom.withLock { $0 }.sorted() == ["joiner", "killed"])
        #expect(answers.withLock { $0 } == ["joiner:hello"])
        #expect(audit.records.withLock { $0.map(\.outcome) } == [.shared])
        #expect(d.calls.withLock { $0 } == 1)
    }

    @Test func badFileIsEIOAndOthersStillOpen() throws {
        let fs = try make()
        let bad = try fs.lookup(parent: SecretFileSystem.rootInode, name: "bad").get().attributes.ino
        #expect(throws: FSError.io) { try fs.open(bad, flags: O_RDONLY, caller: root).get() }
        let sub = try fs.lookup(parent: SecretFileSystem.rootInode, name: "sub").get().attributes.ino
        let b = try fs.lookup(parent: sub, name: "b").get().attributes.ino
        #expect(text(try fs.open(b, flags: O_RDONLY, caller: root).get()) == "world")
    }

    /// The TTL is a hard bound (SPEC: on TTL expiry every cached plaintext
    /// is wiped): a handle held open loses its bytes too, and says so (its
    /// reads answer EIO, not an empty file).
    @Test func ttlExpiryWipesThePlaintextOpenHandlesHoldToo() throws {
        let d = FakeDecryptor()
        let fs = try make(d, ttl: 0.2)
        let a = try fs.lookup(parent: SecretFileSystem.rootInode, name: "a").get().attributes.ino
        let held = try fs.open(a, flags: O_RDONLY, caller: root).get()
        #expect(text(held) == "hello")
        usleep(300_000)
        #expect(fs.cache.expire() == 1)
        #expect(fs.cache.count == 0)
        #expect(text(held) == "" && held.plaintext.isRevoked)
        _ = try fs.open(a, flags: O_RDONLY, caller: root).get()
        #expect(d.calls.withLock { $0 } == 2)
    }

    @Test func forgetReleasesInodes() throws {
        let fs = try make()
        let before = fs.inodeCount
        let a = try fs.lookup(parent: SecretFileSystem.rootInode, name: "a").get().attributes.ino
        _ = try fs.lookup(parent: SecretFileSystem.rootInode, name: "a").get()
        #expect(fs.inodeCount == before + 1)
        fs.forget(a, count: 1)
        #expect(fs.inodeCount == before + 1)
        fs.forget(a, count: 1)
        #expect(fs.inodeCount == before)
    }

    /// Regression: nodes were found by SOURCE path alone. A directory
    /// `c.encrypted` (shown as `c.encrypted`) replaced in SOURCE by the file
    /// `c.encrypted` (the secret `c`) while someone held the directory's
    /// node (an O_PATH descriptor, a cwd: no forget) made `c` that
    /// directory node: ENOTDIR on `c` for everyone until they let go.
    @Test func anEntryReplacedByAnotherKindUnderOneSourcePathGetsItsOwnNode() throws {
        let dir = try makeTree()
        let fm = FileManager.default
        try fm.createDirectory(atPath: dir + "/c.encrypted", withIntermediateDirectories: false)
        let fs = try make(tree: dir)
        let root = SecretFileSystem.rootInode
        let old = try fs.lookup(parent: root, name: "c.encrypted").get().attributes
        #expect(old.kind == .directory)
        // SOURCE replaces the directory with the secret; the old node is held.
        try fm.removeItem(atPath: dir + "/c.encrypted")
        try Data("terces".utf8).write(to: URL(fileURLWithPath: dir + "/c.encrypted"))
        let new = try fs.lookup(parent: root, name: "c").get().attributes
        #expect(new.kind == .secret)
        #expect(new.ino != old.ino)
        #expect(try fs.getattr(new.ino).get().0.kind == .secret)
        #expect(text(try fs.open(new.ino, flags: O_RDONLY, caller: self.root).get()) == "secret")
        #expect(throws: FSError.notFound) { try fs.getattr(old.ino).get() }
        // The old node, forgotten at last, leaves the new one in the table.
        fs.forget(old.ino, count: 1)
        #expect(try fs.lookup(parent: root, name: "c").get().attributes.ino == new.ino)
        // And the reverse: the secret replaced by a directory while held.
        try fm.removeItem(atPath: dir + "/c.encrypted")
        try fm.createDirectory(atPath: dir + "/c.encrypted", withIntermediateDirectories: false)
        try Data("dlrow".utf8).write(to: URL(fileURLWithPath: dir + "/c.encrypted/d.encrypted"))
        let again = try fs.lookup(parent: root, name: "c.encrypted").get().attributes
        #expect(again.kind == .directory)
        #expect(again.ino != new.ino)
        let d = try fs.lookup(parent: again.ino, name: "d").get().attributes.ino
        #expect(text(try fs.open(d, flags: O_RDONLY, caller: self.root).get()) == "world")
        #expect(fs.kernelEntry(of: d)?.parent == again.ino)
        fs.forget(new.ino, count: 2)
        #expect(try fs.lookup(parent: root, name: "c.encrypted").get().attributes.ino == again.ino)
        #expect(fs.kernelEntry(of: d)?.parent == again.ino)
    }

    /// Regression (issue 13 A12): after an allowed read, anyone saw the
    /// plaintext's exact size (a password's length).
    @Test func aCallerWhoMayNotOpenSeesNoSize() throws {
        let fs = try make()
        let other = Caller(uid: 4242, gid: 4242, pid: 1)
        // What the kernel stores (lookup, readdirplus): one bound for every secret.
        let entry = try fs.lookup(parent: SecretFileSystem.rootInode, name: "a").get()
        #expect(entry.attributes.size == Int64(fs.configuration.maxCiphertextBytes) && !entry.attributes.forCallerOnly)
        #expect(entry.attributeTimeout == 0)
        let a = entry.attributes.ino
        #expect(try fs.getattr(a, caller: root).get().0.size == 5)        // before decryption: the ciphertext's size
        _ = try fs.open(a, flags: O_RDONLY, caller: root).get()
        let mine = try fs.getattr(a, caller: root).get()
        #expect(mine.0.size == 5 && mine.0.forCallerOnly)
        let theirs = try fs.getattr(a, caller: other).get()
        #expect(theirs.0.size == 0 && theirs.0.forCallerOnly)
        #expect(theirs.0.mode & 0o777 == 0o400 && theirs.0.uid == 0)   // owner and mode still shown
        #expect(theirs.1 == 0)   // never cached by the kernel for another caller
        #expect(try fs.getattr(a, view: .handle).get().0.size == 5)
        #expect(try fs.lookup(parent: SecretFileSystem.rootInode, name: "a").get().attributes.size == Int64(fs.configuration.maxCiphertextBytes))
    }

    /// Regression (issue 13 A13): `café` (NFC) and `cafe\u{301}` (NFD) in
    /// SOURCE are two files; Swift's String keys made them one node.
    @Test func unicodeEquivalentNamesAreTwoFiles() throws {
        let dir = try makeTree()
        try Data("cfn".utf8).write(to: URL(fileURLWithPath: dir + "/caf\u{E9}.encrypted"))
        try Data("dfn".utf8).write(to: URL(fileURLWithPath: dir + "/cafe\u{301}.encrypted"))
        let fs = try rootOnlyFileSystem(dir, decryptor: FakeDecryptor())
        let nfc = try fs.lookup(parent: SecretFileSystem.rootInode, name: "caf\u{E9}").get().attributes.ino
        let nfd = try fs.lookup(parent: SecretFileSystem.rootInode, name: "cafe\u{301}").get().attributes.ino
        #expect(nfc != nfd)
        let listed = try fs.openDirectory(SecretFileSystem.rootInode).get().items.map(\.name)
        #expect(listed.filter { $0.utf8.elementsEqual("caf\u{E9}".utf8) || $0.utf8.elementsEqual("cafe\u{301}".utf8) }.count == 2)
        #expect(text(try fs.open(nfc, flags: O_RDONLY, caller: root).get()) == "nfc")
        #expect(text(try fs.open(nfd, flags: O_RDONLY, caller: root).get()) == "nfd")
        // A name whose first scalar joins the dot into one Character is
        // still NAME.encrypted, by bytes.
        #expect(!"\u{600}.encrypted".hasSuffix(".encrypted"))   // the premise
        #expect(SourceTree.shownName(ofCiphertext: "d/\u{600}.encrypted") == "d/\u{600}")
        #expect(SourceTree.mountPath(ofSource: "d/\u{600}.encrypted") == "d/\u{600}")
    }
}

/// Fails the secret whose ciphertext is `dlrow` (sub/b) as KMS-unavailable
/// while `down`, like a call throttled past its deadline.
final class ThrottledDecryptor: SecretDecrypting, @unchecked Sendable {
    let down = Mutex(true)
    let calls = Mutex<[String: Int]>([:])
    let inner = FakeDecryptor()

    func decrypt(ciphertext: [UInt8], path: String) -> Result<DecryptedSecret, DecryptFailure> {
        let key = String(decoding: ciphertext, as: UTF8.self)
        calls.withLock { $0[key, default: 0] += 1 }
        if key == "dlrow", down.withLock({ $0 }) { return .failure(DecryptFailure(.unavailable, "ThrottlingException")) }
        return inner.decrypt(ciphertext: ciphertext, path: path)
    }
}

/// The hooks SOURCE changes call are read on every change. Read as a bare
/// closure out of a `Mutex` (a generic inout), each read wrapped the stored
/// closure in one more reabstraction thunk: the calls went deeper with every
/// change until the watcher's 256 KiB stack overflowed (about 2,500 touches
/// of a ciphertext killed the daemon, swiftlang/swift#91348).
///
/// The depth is counted in frames (backtrace(3)), not as the address of a
/// local: AddressSanitizer (detect_stack_use_after_return, on by default)
/// keeps address-taken locals on a "fake stack" of its own, where addresses
/// say nothing of depth (the test failed there, 105,728 to 942,848 bytes
/// "deeper", with the stack as deep as before). Not with the Runtime
/// module's `Backtrace.capture`: under ASan it crashed (SEGV reading an
/// image in `getElfImageInfo`) while other tests ran.
@Suite struct SourceChangeHookTests {
    /// Frames on this thread's stack, as glibc's backtrace(3) counts them
    /// (at most 4,096; -1 if it cannot be found). Found with dlsym: the
    /// Glibc module does not import execinfo.h.
    static func frameCount() -> Int {
        typealias Backtrace = @convention(c) (UnsafeMutablePointer<UnsafeMutableRawPointer?>?, Int32) -> Int32
        guard let symbol = dlsym(nil, "backtrace") else { return -1 }
        let backtrace = unsafeBitCast(symbol, to: Backtrace.self)
        var frames = [UnsafeMutableRawPointer?](repeating: nil, count: 4096)
        return Int(frames.withUnsafeMutableBufferPointer { backtrace($0.baseAddress, Int32($0.count)) })
    }

    @Test func theHooksCallDepthStaysTheSameAfterManyChanges() throws {
        let dir = try makeTree()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fs = try rootOnlyFileSystem(dir, decryptor: FakeDecryptor())
        // Frames are counted at call 100 (not the very first, which may
        // take a path of its own: lazy metadata, a sanitizer's hooks), at
        // every thousandth after it, and at the last.
        let calls = Mutex(0)
        let depths = Mutex<[Int: Int]>([:])
        @Sendable func called() {
            let n = calls.withLock { n in defer { n += 1 }; return n }
            guard n % 1000 == 100 || n == 30_000 else { return }
            let frames = SourceChangeHookTests.frameCount()
            depths.withLock { $0[n] = frames }
        }
        fs.onCiphertextChange { _, _ in called() }
        fs.onChangesUnnamed { called() }
        for i in 0..<20_000 {
            fs.sourceChanged(directory: ".", name: "a.encrypted", isDirectory: false, removed: false)
            if i % 2 == 0 { fs.sourceChanged(directory: ".", name: "sub", isDirectory: true, removed: false) }
        }
        fs.sourceChangedEverywhere()
        #expect(calls.withLock { $0 } == 30_001)
        let d = depths.withLock { $0 }
        #expect(d.count == 31 && !d.values.contains(-1), "no backtrace: \(d)")
        if let first = d[100], let last = d[30_000] {
            #expect(abs(last - first) < 4, "the hook's call went \(last - first) frames deeper")
            #expect(d.values.max()! - d.values.min()! < 4, "depths \(d.sorted { $0.key < $1.key }.map(\.value))")
        }
    }
}

@Suite struct PrefetchTests {
    /// A retry pass's counts follow on from the first's: what either
    /// decrypted or found final, and what the retry left to try.
    @Test func aRetryPassFollowsOnFromTheFirst() {
        var first = SecretFileSystem.PrefetchResult()
        (first.ok, first.failed, first.unavailable, first.untried) = (10, 5, ["a", "b", "c", "d"], 2)   // 3 final, 2 unanswered
        var retry = SecretFileSystem.PrefetchResult()
        (retry.ok, retry.failed, retry.unavailable, retry.untried) = (2, 2, ["d"], 0)   // 1 final, 1 unanswered
        let r = first.then(retry)
        #expect(r.ok == 12)
        #expect(r.final == 4)
        #expect(r.unanswered == 1)
        #expect(r.failed == 5)
        #expect(r.unavailable == ["d"] && r.untried == 0)
    }

    @Test func prefetchNamesWhatKMSDidNotAnswerAndRetriesOnlyThose() throws {
        let d = ThrottledDecryptor()
        let fs = try rootOnlyFileSystem(try makeTree(), decryptor: d)
        let first = fs.prefetch(parallel: 4)
        #expect(first.failed == 2)                       // bad (a bad file) and sub/b (KMS unavailable)
        #expect(first.unavailable.count == 1 && first.unavailable[0].hasSuffix("b.encrypted"), "\(first.unavailable)")
        #expect(first.ok == 1)
        d.down.withLock { $0 = false }
        let again = fs.prefetch(parallel: 4, only: first.unavailable)
        #expect(again.ok == 1 && again.failed == 0 && again.unavailable.isEmpty)
        // Only sub/b was tried again: the bad file once, a once (then cached).
        #expect(d.calls.withLock { $0 } == ["dlrow": 2, "!": 1, "olleh": 1])
        // Nothing left: an empty list prefetches nothing.
        #expect(fs.prefetch(parallel: 4, only: []).ok == 0)
    }

    /// A stop (the cache wiped) while a prefetch runs: the rest is not
    /// decrypted, since nothing would keep it.
    @Test func aPrefetchAfterTheStopDecryptsNothing() throws {
        let d = FakeDecryptor()
        let fs = try rootOnlyFileSystem(try makeTree(), decryptor: d)
        fs.shutdown()
        #expect(fs.cache.isStopped)
        let r = fs.prefetch(parallel: 4)
        #expect(r.ok == 0 && r.failed == 0)
        #expect(d.calls.withLock { $0 } == 0)
    }

    /// Once the mount is gone the tree lets go of SOURCE (so SOURCE's own
    /// file system can be unmounted): its descriptor now names /dev/null,
    /// and every later resolution fails instead of reaching SOURCE.
    @Test func releaseLetsGoOfSource() throws {
        let tree = try SourceTree(path: try makeTree())
        #expect(try tree.list(".").count > 0)
        tree.release()
        var st = stat()
        #expect(fstat(tree.rootFD, &st) == 0 && (st.st_mode & S_IFMT) == S_IFCHR)
        #expect(fcntl(tree.rootFD, F_GETFD) & FD_CLOEXEC != 0)
        #expect(throws: (any Error).self) { try tree.list(".") }
        #expect(throws: (any Error).self) { try tree.stat("a.encrypted") }
    }
}

/// Counts the calls in flight when each begins (a prefetch's concurrency).
final class ConcurrencyDecryptor: SecretDecrypting, @unchecked Sendable {
    let inFlight = Mutex(0)
    let atStart = Mutex<[Int]>([])
    let delay: Double
    let inner = FakeDecryptor()
    init(delay: Double) { self.delay = delay }

    func decrypt(ciphertext: [UInt8], path: String) -> Result<DecryptedSecret, DecryptFailure> {
        let n = inFlight.withLock { $0 += 1; return $0 }
        atStart.withLock { $0.append(n) }
        usleep(UInt32(delay * 1e6))
        defer { inFlight.withLock { $0 -= 1 } }
        return inner.decrypt(ciphertext: ciphertext, path: path)
    }
}

/// A KMS that does not answer: each call fails as unavailable after
/// `delay`, but the first `answered` decrypt, and a ciphertext "bad" fails
/// at once as a bad file. Counts the calls.
final class SilentKMS: SecretDecrypting, @unchecked Sendable {
    let calls = Mutex(0)
    let delay: Double
    let answered: Int
    let inner = FakeDecryptor()
    init(delay: Double, answered: Int = 0) { self.delay = delay; self.answered = answered }

    func decrypt(ciphertext: [UInt8], path: String) -> Result<DecryptedSecret, DecryptFailure> {
        let n = calls.withLock { $0 += 1; return $0 }
        if String(decoding: ciphertext, as: UTF8.self) == "bad" { return .failure(DecryptFailure(.badInput, "damaged")) }
        if n <= answered { return inner.decrypt(ciphertext: ciphertext, path: path) }
        usleep(UInt32(delay * 1e6))
        return .failure(DecryptFailure(.unavailable, "KMS did not answer within \(delay) s"))
    }

    var count: Int { calls.withLock { $0 } }
}

@Suite struct PrefetchSlowStartTests {
    /// A file system over a new SOURCE of `files` secrets, decrypted by `d`,
    /// and the SOURCE directory (for the caller to remove).
    func make(files: Int, _ d: some SecretDecrypting) throws -> (SecretFileSystem, String) {
        let dir = NSTemporaryDirectory() + "kmsfs-unit-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for i in 0..<files {
            try Data("olleh".utf8).write(to: URL(fileURLWithPath: dir + "/s\(i).encrypted"))
        }
        return (try rootOnlyFileSystem(dir, decryptor: d), dir)
    }

    /// The first secret goes alone, then each one finished starts one more
    /// worker: concurrency climbs 1, 2, 3 ... to `parallel` and never past it.
    @Test func workersStartOneAtATimeAsSecretsFinish() throws {
        let d = ConcurrencyDecryptor(delay: 0.03)
        let (fs, dir) = try make(files: 60, d)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = fs.prefetch(parallel: 8)
        #expect(r.ok == 60 && r.failed == 0)
        let starts = d.atStart.withLock { $0 }
        #expect(starts.count == 60)
        #expect(starts[0] == 1 && starts[1] == 1, "\(starts)")     // alone, then one worker and a second starting
        #expect(starts.max() == 8, "\(starts)")
        // No call ever began with more in flight than one plus the secrets finished before it.
        for (k, n) in starts.enumerated() { #expect(n <= k + 1, "call \(k): \(n) in flight; \(starts)") }
        // The ramp is quick: by the tenth call, several run at once.
        #expect(starts.prefix(12).max()! >= 3, "\(starts)")
    }

    /// A KMS that answers nothing in time (a network not up yet): once the
    /// lone first call and a round of workers failed so with nothing
    /// decrypted, the pass tries no more and hands the rest back untried,
    /// instead of waiting out every secret's deadline. One success is
    /// progress: then every secret is tried (a throttled quota).
    @Test func aPassGivesUpOnAKMSThatAnswersNothingButNotOnOneThatMakesProgress() throws {
        /// A pass over 60 secrets against `d`.
        func pass(_ d: SilentKMS, giveUpAfter: Int? = 8,
                  answersNothing: @escaping @Sendable () -> Bool = { true }) throws -> SecretFileSystem.PrefetchResult {
            let (fs, dir) = try make(files: 60, d)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            return fs.prefetch(parallel: 8, giveUpAfter: giveUpAfter, answersNothing: answersNothing)
        }
        let dead = SilentKMS(delay: 0.02)
        let r = try pass(dead)
        let tried = dead.count
        #expect(r.ok == 0 && r.failed == tried && r.untried == 60 - tried)
        #expect(tried >= 8 && tried <= 16, "tried \(tried)")
        #expect(r.unavailable.count == 60)                      // all of them to try again
        #expect(Set(r.unavailable).count == 60)

        let progressing = SilentKMS(delay: 0.02, answered: 1)
        let p = try pass(progressing)
        #expect(p.ok == 1 && p.failed == 59 && p.untried == 0 && p.unavailable.count == 59)
        #expect(progressing.count == 60)

        // A KMS that answered something (a throttle: the quota is busy,
        // not unreachable) is not given up on: every secret is tried.
        let throttled = SilentKMS(delay: 0.02)
        #expect(try pass(throttled, answersNothing: { false }).untried == 0)
        #expect(throttled.count == 60)

        // Without giveUpAfter (the default), every secret is tried.
        let patient = SilentKMS(delay: 0.02)
        #expect(try pass(patient, giveUpAfter: nil).untried == 0)
        #expect(patient.count == 60)
    }

    /// A KMS that does not answer, with calls that last past the second
    /// that releases the workers (as a real call deadline does): the lone
    /// first and the 7 released a second later are all that is tried, and
    /// the pass ends one call later than the release, not a call after
    /// that. Also when the first secret is a bad file, which fails at once
    /// and must not take the release with it.
    @Test(arguments: [false, true])
    func aSilentKMSCostsOneCallAfterTheRelease(firstIsBad: Bool) throws {
        let d = SilentKMS(delay: 1.5)
        let (fs, dir) = try make(files: 30, d)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        if firstIsBad {   // the first secret in the walk's (directory) order
            try Data("bad".utf8).write(to: URL(fileURLWithPath: dir + "/" + fs.secretFiles()[0].source))
        }
        let t0 = Date()
        let r = fs.prefetch(parallel: 8, giveUpAfter: 8)
        let took = Date().timeIntervalSince(t0)
        let tried = d.count
        #expect(tried == (firstIsBad ? 9 : 8), "tried \(tried)")
        #expect(r.ok == 0 && r.untried == 30 - tried)
        #expect(took < 3.2, "took \(took) s")          // the release at 1 s, then one 1.5 s call: 2.5 s
    }

    /// A KMS that does not answer the first secret within a second: the
    /// others start together then, not one per answer.
    @Test func aFirstCallWithoutAnswerReleasesTheOthersAfterASecond() throws {
        let d = ConcurrencyDecryptor(delay: 1.5)
        let (fs, dir) = try make(files: 8, d)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let t0 = Date()
        let r = fs.prefetch(parallel: 8)
        let took = Date().timeIntervalSince(t0)
        #expect(r.ok == 8)
        #expect(d.atStart.withLock { $0 }.max() == 8)
        #expect(took < 4, "took \(took) s")      // 1 s + 1.5 s, not 8 × 1.5 s
    }
}
