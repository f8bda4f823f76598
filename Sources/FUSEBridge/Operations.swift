import CFuse
import System
import SecretFS
import SecureMemory
import Log
#if canImport(Glibc)
import Glibc
import Synchronization
#endif

/// What every request reaches through `fuse_req_userdata`.
final class BridgeContext: @unchecked Sendable {
    let fs: SecretFileSystem
    let scratch: ScratchPool
    let debug: Bool
    /// Opens that may wait on KMS run here, off the FUSE workers, at most
    /// `max_inflight=` at once; they answer when their decryption ends.
    let opens: WorkPool
    let parkedOpens: ParkedOpens
    /// With -o io_uring: the opens that may be parked at once once the
    /// ring serves (0: not asked for), and whether that limit is in force.
    private let ringParkedOpens: Int
    private let ringLimited = Atomic<Bool>(false)
    /// Whether the ring serves (asked in Session.swift, the file that
    /// starts it: a header's static inline state is one per file that
    /// calls it, as Swift compiles a module in parallel).
    private let ringServing: @Sendable () -> Bool

    /// Puts the ring's limit on waiting opens in force once the kernel has
    /// taken the ring (asked for and not offered, /dev/fuse serves with the
    /// ordinary limits). The ring's queues are small, and a single user's
    /// burst (200 workers opening one cold secret) may use all of them.
    func limitParkedOpensToTheRing() {
        guard ringParkedOpens > 0, !ringLimited.load(ordering: .relaxed), ringServing(),
              !ringLimited.exchange(true, ordering: .acquiringAndReleasing) else { return }
        parkedOpens.setLimits(ringParkedOpens, perUid: ringParkedOpens)
    }
    /// Opens refused because too many were parked, since the last log line
    /// about them, and when that was: a user who floods opens gets one
    /// line a second, not one per open.
    private let refusedOpens = Mutex<(count: Int, loggedAt: Double)>((0, -.infinity))

    func noteRefusedOpen(uid: UInt32) {
        let now = SystemClock.monotonic()
        let (log, count) = refusedOpens.withLock { r -> (Bool, Int) in
            r.count += 1
            guard now - r.loggedAt >= 1 else { return (false, 0) }
            defer { r = (0, now) }
            return (true, r.count)
        }
        guard log else { return }
        let parked = parkedOpens.load
        let line = "open: \(parked.count) opens already wait for KMS (one user may have \(parked.perUid) of at most \(parked.limit)); answering EIO (uid \(uid); \(count) open\(count == 1 ? "" : "s") refused since the last such line)"
        // This runs on a FUSE worker or a ring's thread, and a log write
        // may wait (journald): written from a thread of its own, at most
        // one a second.
        if !startThread(name: "kmsfs-log", { Log.error(line) }) { Log.error(line) }
    }
    /// Page drops: at the release of a handle read through the page cache
    /// (a private mmap), and a second after a page-cache read (sendfile,
    /// splice). One thread, started when there is one to do (never the FUSE
    /// worker's: a drop waits for page locks that a read of the same file
    /// holds until a worker answers it). One drop does for every request
    /// made before it runs, so a user closing mappings in a loop queues at
    /// most one per file.
    let pageDrops: DueQueue<UInt64>
    /// A moment after each page drop, the bound put back in the inode by
    /// the daemon's own lookup (`restoreBound`), without waiting for a
    /// user's: nobody may look the name up for hours, and a user holding
    /// an `O_PATH` descriptor of the file (no open needed) read the exact
    /// size through it all that while. The daemon reads the size back as
    /// any user can, and forgets the name and looks it up again (three
    /// tries) while it is not the bound: a lookup that crossed the drop or
    /// a `stat` (sent before an attribute bump, answered after it) has its
    /// bound refused by the kernel but makes the name valid for the entry
    /// timeout, which once kept the exact size readable for 10 s.
    let reexpiries: DueQueue<UInt64>
    /// The session, set once right after it is created (before any request).
    var session: OpaquePointer? {
        get { sessionSlot.pointer }
        set { sessionSlot.pointer = newValue }
    }
    private let sessionSlot: SessionSlot
    /// The session no longer serves (its loop ended): the bound is no
    /// longer put back by a lookup of the daemon's own, which would wait.
    func markClosing() { sessionSlot.closing.store(true, ordering: .releasing) }

    init(fs: SecretFileSystem, mountpoint: String, maxRead: Int, debug: Bool, maxInflightOpens: Int, ringParkedOpens: Int,
         ringServing: @escaping @Sendable () -> Bool) {
        self.ringServing = ringServing
        self.fs = fs
        self.scratch = ScratchPool(bufferSize: maxRead)
        self.debug = debug
        // One lane per user, taken in turn; a user may fill half the queue.
        // The opens parked (queued, decrypting or joined to another's
        // decryption) are limited by `parkedOpens`, in the same way. (The
        // queue may hold more than the parked: the job of an open answered
        // while it waited, its caller killed, stays until its turn.)
        self.opens = WorkPool(name: "kmsfs-open", limit: maxInflightOpens, queueLimit: 65_536, keyQueueLimit: 32_768)
        self.parkedOpens = ParkedOpens(limit: 65_536, perUid: 32_768)
        self.ringParkedOpens = ringParkedOpens
        let session = SessionSlot()
        self.sessionSlot = session
        let forgetName: @Sendable (UInt64) -> Void = { ino in
            guard let se = session.pointer, let (parent, name) = fs.kernelEntry(of: ino) else { return }
            _ = name.withCString { n in
                kmsfs_notify_expire_entry(se, parent, n, strlen(n)) == 0
                    || fuse_lowlevel_notify_inval_entry(se, parent, n, strlen(n)) == 0
            }
        }
        let restoreBound: @Sendable (UInt64) -> Void = { ino in
            // A page-cache read since the drop (another drop is queued for
            // it) sets the exact size again, and a lookup during such a
            // read stores the bound under it: the read then goes past the
            // end into EIO (twice as many of two sendfile loops' copies
            // failed). The drop queued after it puts the bound back then.
            if session.pageDrops?.isWaiting(ino) == true { return }
            // The size every lookup stores (`AttributeView.entry`).
            guard let relative = fs.mountPath(of: ino),
                  let bound = UInt64(exactly: fs.configuration.maxCiphertextBytes) else { return }
            let path = mountpoint + "/" + relative
            for attempt in 0..<3 {
                // The walk below waits for this session's workers: never
                // once the session is closing (it may no longer serve).
                guard !session.closing.load(ordering: .acquiring) else { return }
                forgetName(ino)
                var seen: UInt64 = 0, size: UInt64 = 0
                // Another file there (the name gone from SOURCE, another
                // mount on the mountpoint): nothing of ours to put back.
                guard kmsfs_cached_size(path, &seen, &size) == 0, seen == ino, size != bound else { return }
                if attempt < 2 { usleep(20_000) }
            }
        }
        let reexpiries = DueQueue<UInt64>(name: "kmsfs-expire", delay: 0.2, action: restoreBound)
        self.reexpiries = reexpiries
        let pageDrops = DueQueue<UInt64>(name: "kmsfs-inval", delay: 1) { ino in
            guard let se = session.pointer else { return }
            _ = fuse_lowlevel_notify_inval_inode(se, ino, 0, 0)
            // A read through the page cache that ended short, and lseek's
            // getattr on a handle, leave the exact plaintext size in the
            // inode, where any user can read it (statx AT_STATX_DONT_SYNC).
            // Forgetting the name makes the next lookup, that user's
            // included, store the bound (max_size=) there again.
            // Expired, not dropped, where the kernel can (6.2 on): a
            // dropped dentry detaches whatever is mounted on it.
            forgetName(ino)
            reexpiries.schedule(ino, later: true)
        }
        session.pageDrops = pageDrops
        self.pageDrops = pageDrops
    }
}

/// What the page-drop and re-expiry threads' actions reach that is made
/// after them: the session pointer (set right after the session is
/// created) and the page-drop queue (for the re-expiry's action, made
/// before it). Each written once, before any request (and so before any
/// drop is queued); read after.
private final class SessionSlot: @unchecked Sendable {
    var pointer: OpaquePointer?
    var pageDrops: DueQueue<UInt64>?
    /// Set when the session stops serving, before its queues are stopped.
    let closing = Atomic<Bool>(false)
}

@inline(__always)
private func context(_ req: fuse_req_t?) -> BridgeContext {
    Unmanaged<BridgeContext>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
}

/// The caller's supplementary groups, looked up through its request at
/// most once: the request is valid only until it is answered, and a parked
/// open may be answered (its caller killed) while another thread decides
/// it. So a parked open looks them up before it is parked, when the policy
/// names groups, and is then `seal`ed: a later decision reads the answer
/// kept here, or, had none been looked up (a policy that came to name
/// groups while the open waited), none (no group admits it).
private final class GroupLookup: @unchecked Sendable {   // state under `lock`
    private let req: fuse_req_t?
    private let lock = Mutex<(known: [UInt32]?, sealed: Bool)>((nil, false))

    init(_ req: fuse_req_t?) { self.req = req }

    /// Looks the groups up now if `resolving`; the request is never read after.
    func seal(resolving: Bool) {
        if resolving { _ = groups() }
        lock.withLock { $0.sealed = true }
    }

    func groups() -> [UInt32] {
        lock.withLock { state in
            if let known = state.known { return known }
            if state.sealed { return [] }
            var groups = [gid_t](repeating: 0, count: 64)
            var n = fuse_req_getgroups(req, Int32(groups.count), &groups)
            if n > Int32(groups.count) {
                groups = [gid_t](repeating: 0, count: Int(n))
                n = fuse_req_getgroups(req, Int32(groups.count), &groups)
            }
            let found = n > 0 ? Array(groups.prefix(Int(min(n, Int32(groups.count))))) : []
            state.known = found
            return found
        }
    }
}

private func caller(_ req: fuse_req_t?, groups lookup: GroupLookup? = nil) -> Caller {
    let ctx = fuse_req_ctx(req)!.pointee
    let lookup = lookup ?? GroupLookup(req)
    return Caller(uid: ctx.uid, gid: ctx.gid, pid: ctx.pid) {
        lookup.groups()
    } unit: {
        liveSystemdUnit(pid: ctx.pid)
    }
}

private func statBuffer(_ a: Attributes) -> stat {
    var st = stat()
    st.st_ino = ino_t(a.ino)
    st.st_mode = mode_t(a.mode)
    st.st_nlink = nlink_t(a.nlink)
    st.st_uid = a.uid
    st.st_gid = a.gid
    st.st_size = off_t(a.size)
    st.st_blksize = 4096
    // A ciphertext's size is SOURCE's to choose (a sparse file of 2^63-1
    // bytes): no rounding that can overflow.
    st.st_blocks = blkcnt_t(max(a.size, 0) / 512 + (max(a.size, 0) % 512 == 0 ? 0 : 1))
    st.st_atim = a.atime
    st.st_mtim = a.mtime
    st.st_ctim = a.ctime
    return st
}

private func entryParam(_ r: EntryReply) -> fuse_entry_param {
    var e = fuse_entry_param()
    e.ino = r.attributes.ino
    e.generation = 1
    e.attr = statBuffer(r.attributes)
    e.attr_timeout = r.attributeTimeout
    e.entry_timeout = r.entryTimeout
    return e
}

private func debugLog(_ req: fuse_req_t?, _ text: @autoclosure () -> String) {
    if context(req).debug { Log.debug("fuse: \(text())") }
}

private func reply(_ req: fuse_req_t?, error: Int32) {
    _ = fuse_reply_err(req, error)
}

// MARK: - Operations. Each ends in exactly one fuse_reply_*.

let opInit: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<fuse_conn_info>?) -> Void = { _, conn in
    guard let conn else { return }
    // Plaintext is copied into locked scratch memory for each reply; never
    // let libfuse splice or move pages.
    conn.pointee.want &= ~(KMSFS_FUSE_CAP_SPLICE_READ | KMSFS_FUSE_CAP_SPLICE_WRITE | KMSFS_FUSE_CAP_SPLICE_MOVE)
    conn.pointee.want &= ~KMSFS_FUSE_CAP_WRITEBACK_CACHE
    if conn.pointee.capable & KMSFS_FUSE_CAP_READDIRPLUS != 0 {
        conn.pointee.want |= KMSFS_FUSE_CAP_READDIRPLUS
        conn.pointee.want &= ~KMSFS_FUSE_CAP_READDIRPLUS_AUTO
    }
}

let opLookup: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafePointer<CChar>?) -> Void = { req, parent, name in
    // The name as the caller's bytes, escaped: any local user may look up
    // any name, and a repaired String would hide what was asked.
    debugLog(req, "lookup parent=\(parent) name=\(LogEscape.escape(cString: name!))")
    // Names that are not UTF-8 are never shown (the listing hides them).
    // Repaired, `\xff` would look up the file named U+FFFD instead.
    guard let n = String(validatingCString: name!) else { reply(req, error: ENOENT); return }
    switch context(req).fs.lookup(parent: parent, name: n) {
    case .success(let r):
        var e = entryParam(r)
        // A page-cache read in the last second (its drop is queued) has
        // put the exact size in the inode, and a copy may be reading to it:
        // storing the bound now sent such copies past the end, into EIO or,
        // when another read then set the exact size again, into zeros with
        // no error (two sendfile loops: 27 of 18,000 copies failed, 7 of
        // them silently; with this, 4 and 1). Any user can read that size
        // back until the drop anyway; the lookup after it stores the bound.
        let ctx = context(req)
        if r.attributes.kind == .secret, ctx.pageDrops.isWaiting(r.attributes.ino),
           let exact = ctx.fs.decryptedSize(of: r.attributes.ino) {
            e.attr.st_size = off_t(exact)
        }
        _ = fuse_reply_entry(req, &e)
    case .failure(let err):
        if err == .notFound {
            // A negative entry the kernel may cache for the entry timeout.
            var e = fuse_entry_param()
            e.entry_timeout = context(req).fs.configuration.entryTimeout
            _ = fuse_reply_entry(req, &e)
        } else {
            reply(req, error: err.code)
        }
    }
}

let opForget: @convention(c) (fuse_req_t?, fuse_ino_t, UInt64) -> Void = { req, ino, n in
    context(req).fs.forget(ino, count: n)
    fuse_reply_none(req)
}

let opForgetMulti: @convention(c) (fuse_req_t?, Int, UnsafeMutablePointer<fuse_forget_data>?) -> Void = { req, count, list in
    let fs = context(req).fs
    for i in 0..<count {
        let f = list![i]
        fs.forget(f.ino, count: f.nlookup)
    }
    fuse_reply_none(req)
}

let opGetattr: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = { req, ino, fi in
    debugLog(req, "getattr ino=\(ino)")
    let ctx = context(req)
    // The size a secret shows depends on the caller (its attribute timeout
    // is 0, so each stat asks; see SecretFileSystem.AttributeView). stat
    // and fstat(2) come here without a file handle; lseek(SEEK_END) on an
    // open file comes with one.
    switch ctx.fs.getattr(ino, view: fi == nil ? .caller(caller(req)) : .handle) {
    case .success(let (a, timeout)):
        var st = statBuffer(a)
        if fi != nil {
            // lseek(SEEK_END) reads the exact size this stores in the inode;
            // put the bound back a second later (see the page-drop queue).
            queuePageDrop(ctx, ino, later: true)
        }
        if a.forCallerOnly, let session = ctx.session {
            // Bump the inode's attribute version while this request is in
            // flight: the kernel then hands this reply to its caller without
            // storing it in the inode, where any user could read it back
            // (statx AT_STATX_DONT_SYNC). Attributes only (offset -1): no
            // page or inode lock is taken, so this is safe inside getattr.
            _ = fuse_lowlevel_notify_inval_inode(session, ino, -1, 0)
        }
        _ = fuse_reply_attr(req, &st, timeout)
    case .failure(let err):
        reply(req, error: err.code)
    }
}

let opOpen: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = { req, ino, fi in
    let ctx = context(req)
    let groups = GroupLookup(req)
    let who = caller(req, groups: groups)
    debugLog(req, "open ino=\(ino) uid=\(who.uid) pid=\(who.pid)")
    switch ctx.fs.beginOpen(ino, flags: fi!.pointee.flags, caller: who) {
    case .done(let result):
        answerOpen(req, fi!, result)
    case .slow(let finish):
        // A cache miss may wait seconds on KMS: park the request and answer
        // it from the open pool, so this worker goes back to the loop. The
        // kernel's fuse_file_info lives on this worker's stack: keep a copy.
        let parked = ParkedOpen(req: req, fi: fi!.pointee, pid: who.pid, uid: who.uid)
        groups.seal(resolving: ctx.fs.configuration.policy.namesGroups)   // while the request is surely live
        ctx.limitParkedOpensToTheRing()
        guard ctx.parkedOpens.add(parked) else {
            ctx.noteRefusedOpen(uid: who.uid)
            answerOpen(req, fi!, .failure(.io))
            return
        }
        let pool = ctx.opens
        let answer: @Sendable (Result<OpenSecret, FSError>) -> Void = { parked.answer($0, in: ctx) }
        // An open that joins a decryption in flight is answered by the
        // thread running it, and holds no pool thread meanwhile; what may
        // wait on KMS runs on the pool, skipped once the open is answered,
        // EIO once the pool stops. Only this worker may run it itself when
        // no pool thread can be made: `later` is called from pool threads
        // (and others), where that would nest one open's work in another's.
        let submit: @Sendable (_ work: @escaping @Sendable () -> Void, _ runsHere: Bool) -> Void = { work, runsHere in
            let queued = pool.submit(key: who.uid, runsHere: runsHere) {
                if parked.isAnswered {
                    return
                } else if pool.isStopping {
                    answer(.failure(.io))
                } else {
                    work()
                }
            }
            if !queued {
                if !pool.isStopping { ctx.noteRefusedOpen(uid: who.uid) }
                answer(.failure(.io))
            }
        }
        // Once the kernel has sent an open, its caller waits for the
        // answer even through SIGKILL: a killed opener (a unit stopped with
        // KMS slow or gone) stayed in D state until its turn in the pool
        // and its KMS call were over. The INTERRUPT the kernel sends then
        // answers it at once (other signals, such as Go's constant SIGURG,
        // leave it waiting), and the pool skips it. One that came already
        // makes libfuse call the handler from inside this registration,
        // holding no reference of its own to the request (answering there
        // would free it under libfuse's feet): so the handler answers only
        // once registered, and such an INTERRUPT is looked at here.
        // Under io_uring an INTERRUPT (always read from /dev/fuse) is
        // handled on another thread while this one registers: once the
        // handler may answer, and so free the request, this thread must not
        // touch `req` again. So `req` is read first, and the one state
        // change decides who looks at an INTERRUPT that came meanwhile.
        fuse_req_interrupt_func(req, onParkedOpenInterrupt, Unmanaged.passUnretained(ctx).toOpaque())
        let early = fuse_req_interrupted(req) != 0
        let registered = parked.state.compareExchange(expected: ParkedOpen.registering, desired: ParkedOpen.registered,
                                                      ordering: .acquiringAndReleasing).exchanged
        if early || !registered {
            if isBeingKilled(who.pid) {
                parked.answer(.failure(FSError(EINTR)), in: ctx)
                return
            }
            parked.state.store(ParkedOpen.registered, ordering: .releasing)
        }
        let k = OpenContinuation(answer: answer, later: { submit($0, false) }, isAnswered: { parked.isAnswered })
        submit({ finish(k) }, true)
    }
}

/// fi->fh holds one retained Swift object per open file (`OpenSecret`) or
/// directory (`OpenDirectory`): stored when the open is answered, borrowed
/// by read and readdir, released once by release and releasedir. These
/// three are the only places fh is cast.
extension UnsafeMutablePointer where Pointee == fuse_file_info {
    /// Stores `object`, retained, in fh; release the result if the open
    /// cannot be answered (the kernel will then never send release).
    @inline(__always)
    func storeHandle<T: AnyObject>(_ object: T) -> Unmanaged<T> {
        let ref = Unmanaged.passRetained(object)
        pointee.fh = UInt64(UInt(bitPattern: ref.toOpaque()))
        return ref
    }

    /// The object stored at open, borrowed; nil when fh holds none.
    @inline(__always)
    func handle<T: AnyObject>(_ type: T.Type) -> T? {
        guard let raw = UnsafeRawPointer(bitPattern: UInt(pointee.fh)) else { return nil }
        return Unmanaged<T>.fromOpaque(raw).takeUnretainedValue()
    }

    /// Releases the object stored at open (at release, once).
    @inline(__always)
    func releaseHandle<T: AnyObject>(_ type: T.Type) {
        guard let raw = UnsafeRawPointer(bitPattern: UInt(pointee.fh)) else { return }
        Unmanaged<T>.fromOpaque(raw).release()
    }
}

/// Answers an open with its handle (direct I/O) or its errno.
private func answerOpen(_ req: fuse_req_t?, _ fi: UnsafeMutablePointer<fuse_file_info>, _ result: Result<OpenSecret, FSError>) {
    switch result {
    case .success(let handle):
        // Direct I/O: the kernel's page cache never holds plaintext, and
        // every read comes here.
        kmsfs_fi_set_open_flags(fi, 1, 0, 0)
        let ref = fi.storeHandle(handle)
        if fuse_reply_open(req, fi) != 0 {
            // The opener went away (interrupted): the kernel will not release it.
            ref.release()
        }
    case .failure(let err):
        reply(req, error: err.code)
    }
}

/// An open answered later, from another thread: the request (valid until
/// its one reply) and a heap copy of its fuse_file_info. Answered once:
/// by the pool, or by an INTERRUPT whose caller is being killed,
/// whichever claims it first.
final class ParkedOpen: @unchecked Sendable {
    let req: fuse_req_t?
    let fi: UnsafeMutablePointer<fuse_file_info>
    /// The caller's thread, and its uid.
    let pid: Int32
    let uid: UInt32
    private let answered = Atomic<Bool>(false)
    /// Where its INTERRUPT handler stands (see opOpen): `registering`
    /// while opOpen still reads the request; `interruptedEarly` when the
    /// handler ran then (opOpen looks at the caller instead); `registered`
    /// once the handler may answer.
    let state = Atomic<UInt8>(ParkedOpen.registering)
    static let registering: UInt8 = 0
    static let registered: UInt8 = 1
    static let interruptedEarly: UInt8 = 2

    init(req: fuse_req_t?, fi: fuse_file_info, pid: Int32, uid: UInt32) {
        self.req = req
        self.fi = .allocate(capacity: 1)
        self.fi.initialize(to: fi)
        self.pid = pid
        self.uid = uid
    }

    var isAnswered: Bool { answered.load(ordering: .acquiring) }

    /// Answers, unless it was answered already (then `result`'s handle,
    /// if any, is simply dropped).
    func answer(_ result: Result<OpenSecret, FSError>, in ctx: BridgeContext) {
        guard !answered.exchange(true, ordering: .acquiringAndReleasing) else { return }
        ctx.parkedOpens.remove(self)
        answerOpen(req, fi, result)
    }

    deinit { fi.deallocate() }
}

/// The opens parked now, by request, for the INTERRUPT handler; and how
/// many there may be. Each holds a kernel request, under io_uring an entry
/// of its CPU's queue, until it is answered: counted here, not in the open
/// pool, as an open that joined another's decryption is in no pool queue.
final class ParkedOpens: @unchecked Sendable {
    private struct Table {
        var opens: [UInt: ParkedOpen] = [:]
        var byUid: [UInt32: Int] = [:]
        var limit: Int
        var perUid: Int
    }
    private let table: Mutex<Table>

    /// At most `limit` parked at once, `perUid` of them one uid's.
    init(limit: Int, perUid: Int) {
        table = Mutex(Table(limit: max(1, limit), perUid: max(1, min(perUid, limit))))
    }

    private static func key(_ req: fuse_req_t?) -> UInt { UInt(bitPattern: req.map { UnsafeRawPointer($0) }) }

    /// Parks `p`; false when the limit (or its uid's) is reached.
    func add(_ p: ParkedOpen) -> Bool {
        table.withLock { t in
            guard t.opens.count < t.limit, t.byUid[p.uid, default: 0] < t.perUid else { return false }
            t.opens[Self.key(p.req)] = p
            t.byUid[p.uid, default: 0] += 1
            return true
        }
    }

    func remove(_ p: ParkedOpen) {
        table.withLock { t in
            guard t.opens[Self.key(p.req)] === p else { return }
            t.opens[Self.key(p.req)] = nil
            let left = t.byUid[p.uid, default: 1] - 1
            t.byUid[p.uid] = left > 0 ? left : nil
        }
    }

    func find(_ req: fuse_req_t?) -> ParkedOpen? { table.withLock { $0.opens[Self.key(req)] } }

    /// (parked now, at most, at most for one uid).
    var load: (count: Int, limit: Int, perUid: Int) { table.withLock { ($0.opens.count, $0.limit, $0.perUid) } }

    func setLimits(_ limit: Int, perUid: Int) {
        table.withLock { t in
            t.limit = max(1, limit)
            t.perUid = max(1, min(perUid, t.limit))
        }
    }
}

/// libfuse calls this when an INTERRUPT names a parked open, with the
/// request's own lock held and a reference taken: answering here is what
/// its interrupt API allows. (Also from inside `fuse_req_interrupt_func`
/// when one came already, without that reference: not answered then, see
/// opOpen.)
private let onParkedOpenInterrupt: @convention(c) (fuse_req_t?, UnsafeMutableRawPointer?) -> Void = { req, data in
    guard let data else { return }
    let ctx = Unmanaged<BridgeContext>.fromOpaque(data).takeUnretainedValue()
    guard let parked = ctx.parkedOpens.find(req) else { return }
    // Still registering: opOpen looks at it (answering here could free the
    // request while opOpen reads it).
    if parked.state.compareExchange(expected: ParkedOpen.registering, desired: ParkedOpen.interruptedEarly,
                                    ordering: .acquiringAndReleasing).exchanged { return }
    guard parked.state.load(ordering: .acquiring) == ParkedOpen.registered, !parked.isAnswered,
          isBeingKilled(parked.pid) else { return }
    parked.answer(.failure(FSError(EINTR)), in: ctx)
}

let opRead: @convention(c) (fuse_req_t?, fuse_ino_t, Int, off_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = { req, ino, size, offset, fi in
    let ctx = context(req)
    guard let handle = fi!.handle(OpenSecret.self) else { reply(req, error: EBADF); return }
    let plaintext = handle.plaintext
    // Wiped for good (its TTL passed, the daemon stops): an error, never an
    // empty file.
    guard let total = plaintext.readableCount else { reply(req, error: EIO); return }
    let start = min(Int(max(offset, 0)), total)
    let length = min(size, total - start, ctx.scratch.bufferSize)
    // read(2) on a direct-I/O handle always names its lock owner (the
    // kernel's fuse_direct_io passes current->files); the page cache's
    // reads for a private mmap (fuse_read_folio, fuse_readahead) never do.
    // An owner of 0 is taken as the page cache: at worst a direct read pays
    // the invalidations below for nothing.
    let viaPageCache = fi!.pointee.lock_owner == 0
    if viaPageCache {
        handle.notePageCacheRead()
        // sendfile(2) and splice(2) read through the page cache too (since
        // Linux 6.5, whatever FOPEN_DIRECT_IO says), and a server may keep
        // such a file open for days: its pages are dropped a second after
        // the reads, not only at release.
        queuePageDrop(ctx, ino, later: true)
        // A short read here makes the kernel shrink the inode's size to
        // where the data ended: the exact plaintext size. It must: sendfile
        // and splice stop at that size, and kept at the bound every lookup
        // stores (max_size=) they went on with zeros to 64 MiB (shutil's
        // copyfile made a 64 MiB file of a 2 KB secret). Any user can read
        // that size back (statx AT_STATX_DONT_SYNC) until the drop queued
        // above forgets the name and the next lookup stores the bound again.
        //
        // A page-cache read that starts past the end is answered with an
        // error, never empty: an empty reply would set the size to its own
        // offset, past the end, and the kernel then refuses the exact size
        // from the read that holds the end if that reply comes second.
        // Readahead sends both together, and over io_uring they can come
        // on two queues (the reader moved CPU between them), whose threads
        // answer in either order: shutil.copyfile then padded a keystore
        // with zeros to the next 128 KiB. An error changes no size: the
        // readahead's pages past the end are left unread, which nobody
        // reads once the size is exact. A read that starts exactly at the
        // end still gets an empty reply (that size is exact).
        if offset > off_t(total) {
            reply(req, error: EIO)
            return
        }
    }
    if length <= 0 {
        _ = fuse_reply_buf(req, nil, 0)
        return
    }
    // memfd_secret pages cannot be handed to the kernel for the reply (it
    // pins pages): copy into locked scratch, reply, wipe.
    do {
        try ctx.scratch.withScratch { (buf: UnsafeMutableRawBufferPointer) -> Int in
            if plaintext.copyBytes(from: start, count: length, to: buf.baseAddress!) {
                _ = fuse_reply_buf(req, buf.baseAddress!.assumingMemoryBound(to: CChar.self), length)
            } else {
                reply(req, error: EIO)   // wiped under this read (the daemon is stopping)
            }
            return length
        }
    } catch {
        Log.error("read: no locked scratch memory: \(error)")
        reply(req, error: EIO)
    }
}

let opRelease: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = { req, ino, fi in
    let ctx = context(req)               // the request is gone once answered
    let pageCacheUsed = fi!.handle(OpenSecret.self)?.wasReadThroughPageCache ?? false
    fi!.releaseHandle(OpenSecret.self)
    reply(req, error: 0)
    // Direct I/O keeps plaintext out of the page cache, except for a
    // private mmap(2), which the kernel serves through it (reads without a
    // lock owner, see opRead). The last close of such a mapping ends here:
    // drop whatever pages it left. A handle only ever read with read(2)
    // brought no page in, and its release costs no further round trip.
    // Off this thread: dropping pages waits for their locks, which a read
    // of the same file may hold until the FUSE reader (this thread)
    // answers it. One thread does every drop, in order: a user closing
    // mappings in a loop queues drops, not threads.
    if pageCacheUsed { queuePageDrop(ctx, ino, later: false) }
}

/// Drops `ino`'s pages from the kernel's page cache on the drop thread, at
/// once or a second from now (`DueQueue`: a drop already queued for no
/// later serves). The session's stop drops what is still queued before it
/// destroys the session.
private func queuePageDrop(_ ctx: BridgeContext, _ ino: fuse_ino_t, later: Bool) {
    guard ctx.session != nil else { return }
    if !ctx.pageDrops.schedule(ino, later: later) {
        Log.error("cannot queue the page-cache drop of inode \(ino) (stopping, or no thread); its pages stay until evicted")
    }
}

let opFsync: @convention(c) (fuse_req_t?, fuse_ino_t, Int32, UnsafeMutablePointer<fuse_file_info>?) -> Void = { req, _, _, _ in
    reply(req, error: 0)
}

let opOpendir: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = { req, ino, fi in
    debugLog(req, "opendir ino=\(ino)")
    switch context(req).fs.openDirectory(ino, caller: caller(req)) {
    case .success(let dir):
        let ref = fi!.storeHandle(dir)
        if fuse_reply_open(req, fi) != 0 { ref.release() }
    case .failure(let err):
        reply(req, error: err.code)
    }
}

private func fillDirectory(_ req: fuse_req_t?, _ size: Int, _ offset: off_t,
                           _ fi: UnsafeMutablePointer<fuse_file_info>?, plus: Bool) {
    let ctx = context(req)
    guard let dir = fi!.handle(OpenDirectory.self) else { reply(req, error: EBADF); return }
    var buf = [CChar](repeating: 0, count: size)
    var used = 0
    // Offsets: 0 ".", 1 "..", then items; an entry's offset is the next one's index.
    var index = Int(offset)
    let count = dir.items.count + 2
    buf.withUnsafeMutableBufferPointer { b in
        while index < count {
            let name: String
            var st = stat()
            var e = fuse_entry_param()
            var counted: UInt64? = nil
            if index < 2 {
                name = index == 0 ? "." : ".."
                st.st_ino = ino_t(dir.ino)
                st.st_mode = mode_t(Glibc.S_IFDIR)
                e.attr = st
            } else {
                let item = dir.items[index - 2]
                name = item.name
                if plus {
                    guard let r = ctx.fs.lookupForListing(dir, item: item) else { index += 1; continue }
                    e = entryParam(r)
                    counted = r.attributes.ino
                } else {
                    st.st_ino = 0   // unknown here; the kernel looks it up
                    st.st_mode = mode_t(item.kind == .directory ? Glibc.S_IFDIR : Glibc.S_IFREG)
                }
            }
            let remaining = size - used
            let needed = name.withCString { n -> Int in
                if plus {
                    return fuse_add_direntry_plus(req, b.baseAddress! + used, remaining, n, &e, off_t(index + 1))
                } else {
                    return fuse_add_direntry(req, b.baseAddress! + used, remaining, n, &st, off_t(index + 1))
                }
            }
            if needed > remaining {
                if let ino = counted { ctx.fs.forget(ino, count: 1) }
                break
            }
            used += needed
            index += 1
        }
        _ = fuse_reply_buf(req, b.baseAddress, used)
    }
}

let opReaddir: @convention(c) (fuse_req_t?, fuse_ino_t, Int, off_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = { req, ino, size, offset, fi in
    fillDirectory(req, size, offset, fi, plus: false)
}

let opReaddirplus: @convention(c) (fuse_req_t?, fuse_ino_t, Int, off_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = { req, ino, size, offset, fi in
    fillDirectory(req, size, offset, fi, plus: true)
}

let opReleasedir: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = { req, _, fi in
    fi!.releaseHandle(OpenDirectory.self)
    reply(req, error: 0)
}

let opStatfs: @convention(c) (fuse_req_t?, fuse_ino_t) -> Void = { req, _ in
    var s = context(req).fs.statfs() ?? statvfs()
    // Nothing can be written here.
    s.f_bfree = 0
    s.f_bavail = 0
    s.f_ffree = 0
    s.f_favail = 0
    s.f_namemax = 255
    _ = fuse_reply_statfs(req, &s)
}

let opAccess: @convention(c) (fuse_req_t?, fuse_ino_t, Int32) -> Void = { req, ino, mask in
    switch context(req).fs.access(ino, mask: mask, caller: caller(req)) {
    case .success: reply(req, error: 0)
    case .failure(let e): reply(req, error: e.code)
    }
}

let opReadlink: @convention(c) (fuse_req_t?, fuse_ino_t) -> Void = { req, _ in
    reply(req, error: EINVAL)   // no symlinks are ever shown
}

// No extended attributes: ENOSYS once, and the kernel stops asking (ls -l
// would otherwise cost two round trips per file). Unlike open's, these
// answers skip no access check.
let opGetxattr: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafePointer<CChar>?, Int) -> Void = { req, _, _, _ in
    reply(req, error: ENOSYS)
}

let opListxattr: @convention(c) (fuse_req_t?, fuse_ino_t, Int) -> Void = { req, _, _ in
    reply(req, error: ENOSYS)
}

// Everything that would change the tree: EROFS.
let opSetattr: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<stat>?, Int32, UnsafeMutablePointer<fuse_file_info>?) -> Void = { req, _, _, _, _ in reply(req, error: EROFS) }
let opMknod: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafePointer<CChar>?, mode_t, dev_t) -> Void = { req, _, _, _, _ in reply(req, error: EROFS) }
let opMkdir: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafePointer<CChar>?, mode_t) -> Void = { req, _, _, _ in reply(req, error: EROFS) }
let opUnlink: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafePointer<CChar>?) -> Void = { req, _, _ in reply(req, error: EROFS) }
let opSymlink: @convention(c) (fuse_req_t?, UnsafePointer<CChar>?, fuse_ino_t, UnsafePointer<CChar>?) -> Void = { req, _, _, _ in reply(req, error: EROFS) }
let opRename: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafePointer<CChar>?, fuse_ino_t, UnsafePointer<CChar>?, UInt32) -> Void = { req, _, _, _, _, _ in reply(req, error: EROFS) }
let opLink: @convention(c) (fuse_req_t?, fuse_ino_t, fuse_ino_t, UnsafePointer<CChar>?) -> Void = { req, _, _, _ in reply(req, error: EROFS) }
let opWrite: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafePointer<CChar>?, Int, off_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = { req, _, _, _, _, _ in reply(req, error: EROFS) }
let opCreate: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafePointer<CChar>?, mode_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = { req, _, _, _, _ in reply(req, error: EROFS) }
let opSetxattr: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafePointer<CChar>?, UnsafePointer<CChar>?, Int, Int32) -> Void = { req, _, _, _, _, _ in reply(req, error: EROFS) }
let opRemovexattr: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafePointer<CChar>?) -> Void = { req, _, _ in reply(req, error: EROFS) }
let opFallocate: @convention(c) (fuse_req_t?, fuse_ino_t, Int32, off_t, off_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = { req, _, _, _, _, _ in reply(req, error: EROFS) }

func makeOperations() -> fuse_lowlevel_ops {
    var ops = fuse_lowlevel_ops()
    ops.`init` = opInit
    ops.lookup = opLookup
    ops.forget = opForget
    ops.forget_multi = opForgetMulti
    ops.getattr = opGetattr
    ops.open = opOpen
    ops.read = opRead
    ops.release = opRelease
    // No flush: nothing is ever written, and without it the kernel stops
    // sending FLUSH on every close (one round trip fewer per open).
    ops.fsync = opFsync
    ops.opendir = opOpendir
    ops.readdir = opReaddir
    ops.readdirplus = opReaddirplus
    ops.releasedir = opReleasedir
    ops.statfs = opStatfs
    ops.access = opAccess
    ops.readlink = opReadlink
    ops.getxattr = opGetxattr
    ops.listxattr = opListxattr
    ops.setattr = opSetattr
    ops.mknod = opMknod
    ops.mkdir = opMkdir
    ops.unlink = opUnlink
    ops.rmdir = opUnlink
    ops.symlink = opSymlink
    ops.rename = opRename
    ops.link = opLink
    ops.write = opWrite
    ops.create = opCreate
    ops.setxattr = opSetxattr
    ops.removexattr = opRemovexattr
    ops.fallocate = opFallocate
    return ops
}
