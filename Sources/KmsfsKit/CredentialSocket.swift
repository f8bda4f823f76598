import SecretFS
import SecureMemory
import System
import Log
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// systemd's `LoadCredential=ID:PATH` socket protocol, served from the
/// mount's secrets (`-o credential_socket=PATH`): systemd (as root, from a
/// process already in the unit's cgroup) connects from the abstract address
/// `\0<random>/unit/<UNIT>/<ID>` and reads the credential to EOF; the unit
/// then finds it in `$CREDENTIALS_DIRECTORY/ID` (see systemd.exec(5)).
///
/// The address is anyone's to bind, so it only says what is asked: the
/// unit is read from the peer itself (SO_PEERCRED's pid, its cgroup read
/// through a pidfd) and must be the one the address names; the peer must be
/// root; the secret's `allow_unit=` list must name the unit. Any refusal
/// makes systemd's read fail, so the unit does not start (a connection
/// merely closed would give it an empty credential): see `sendRefusal`.
/// Each request is audited like an open.
public final class CredentialServer: @unchecked Sendable {
    public let path: String
    private let fd: Int32
    private let fs: SecretFileSystem
    private let scratch = ScratchPool(bufferSize: 64 * 1024, maxPooled: 4)
    private let pool = WorkPool(name: "kmsfs-cred", limit: 16, queueLimit: 1024)
    private let stopped = Atomic<Bool>(false)
    /// Connections being served, and whether their answer has begun: at
    /// stop, one still waiting (on KMS, say) is answered with the refusal
    /// by the stopping thread, since the process's exit would close it and
    /// systemd would read the nothing it got as an empty credential.
    private let connections = ConditionLock()
    private var answering: [Int32: Bool] = [:]      // under `connections`
    private var stopping = false                     // under `connections`
    private var acceptEnded = false                  // under `connections`
    private var takenAtStop: [Int32] = []            // under `connections`: refused by `answerTaken`

    public init(path: String, fs: SecretFileSystem) throws(Errno) {
        self.path = path
        self.fs = fs
        fd = try listenUnix(path, mode: 0o600, what: "credential_socket=",
                            because: "a socket put in its place would hand services false credentials")
        socketFile = BoundSocketFile(at: path)
    }
    private let socketFile: BoundSocketFile?

    public func start() {
        acceptConnections(fd, thread: "kmsfs-credsock", until: { [self] in stopped.load(ordering: .relaxed) },
                          onExit: { [self] in connections.withLock { acceptEnded = true; connections.broadcast() } }) { [self] c in
            // The peer as it connected, pinned before the request waits in
            // the queue: a peer that exits meanwhile could otherwise have
            // its PID taken by a process of the unit it names.
            let peer = pinPeer(c)
            // Known from here on, so that the stop answers it even while it
            // waits in the pool's queue behind workers held up by KMS.
            CredentialServer.prepare(c)
            connections.withLock { answering[c] = false }
            if !pool.submit({ [self] in serve(c, peer) }) {
                // No worker to take it (1,024 waiting, or stopping): closed
                // unanswered it would read as an empty credential.
                peer.close()
                refuse(c, "a request: too many waiting, or stopping")
            }
        }
    }

    /// Each connection's socket options, set once: a send buffer that holds
    /// a whole refusal (and any credential systemd accepts), so that no
    /// answer waits on the reader and the stop never cuts one short (root
    /// may force it past wmem_max; under a sandbox without CAP_NET_ADMIN
    /// the largest the system allows), and a send timeout for a peer that
    /// does not read at all.
    static func prepare(_ c: Int32) {
        var size = Int32(CredentialServer.systemdCredentialLimit + 256 * 1024)
        if setsockopt(c, SOL_SOCKET, SO_SNDBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            setsockopt(c, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// The first step of the stop, before any plaintext is wiped: no more
    /// connections are accepted (those left in the listen queue are reset
    /// at exit, which fails systemd's read), answers under way get up to a
    /// second to end, and every connection not yet answered, queued or
    /// waiting on KMS, is taken by the stop, for `answerTaken` to refuse
    /// once the plaintext is wiped (a refusal is zeros; sending one may
    /// wait on a slow reader, which must not hold up the wipe).
    public func beginStop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        shutdown(fd, Int32(SHUT_RDWR))                  // wakes the accept thread's poll
        connections.withLock {
            stopping = true
            let deadline = SystemClock.monotonic() + 1
            while !acceptEnded || answering.values.contains(true) {
                let left = deadline - SystemClock.monotonic()
                if left <= 0 { break }
                _ = connections.wait(seconds: left)
            }
            let fds = answering.filter { !$0.value }.map(\.key)
            for c in fds { answering[c] = true }    // the stop's now: the serving thread leaves them
            takenAtStop = fds
        }
    }

    /// The refusals for the connections `beginStop` took, sent after the
    /// wipe and before the exit (or a SIGKILL after a stuck audit flush),
    /// so that systemd never reads an empty or truncated credential.
    public func answerTaken() {
        let waiting: [Int32] = connections.withLock {
            defer { takenAtStop = [] }
            return takenAtStop
        }
        if !waiting.isEmpty {
            CredentialServer.logRefusal("\(waiting.count) request\(waiting.count == 1 ? "" : "s") still waiting at stop")
        }
        for c in waiting { sendRefusal(c) }
    }

    public func stop() {
        beginStop()
        answerTaken()
        pool.stop(waiting: 0.5)
        socketFile?.unlinkIfStillOurs()
    }

    deinit { close(fd) }

    /// What a connection's abstract address asks for.
    public struct Request: Equatable, Sendable {
        public var unit: String
        public var id: String
    }

    /// `\0<random>/unit/<UNIT>/<ID>` (the bytes after the leading NUL), or
    /// nil for any other shape.
    public static func parseAddress(_ bytes: [UInt8]) -> Request? {
        let parts = bytes.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        guard parts.count == 4, !parts[0].isEmpty, parts[1].elementsEqual("unit".utf8),
              let unit = String(validating: parts[2], as: UTF8.self),
              let id = String(validating: parts[3], as: UTF8.self),
              SystemdUnitName.isValid(unit), SystemdCredentialID.isValid(id) else { return nil }
        return Request(unit: unit, id: id)
    }

    /// Takes the right to answer `c`: false once the stop has taken it
    /// (the connection is then the stop's; leave it alone). With `secret`,
    /// also false while stopping, so that a secret is never sent from
    /// memory the stop is about to wipe (the caller refuses instead).
    private func claim(_ c: Int32, secret: Bool = false) -> Bool {
        connections.withLock {
            guard answering[c] == false, !(secret && stopping) else { return false }
            answering[c] = true
            return true
        }
    }

    /// The answer is written: forgets `c` and closes it.
    private func finish(_ c: Int32) {
        connections.withLock {
            answering[c] = nil
            connections.broadcast()
        }
        close(c)
    }

    private func serve(_ c: Int32, _ peer: PeerProcess) {
        defer { peer.close() }
        // Taken by the stop while it waited in the queue: the stop's now.
        guard connections.withLock({ answering[c] == false }) else { return }
        if connections.withLock({ stopping }) { return refuse(c, "a request: the daemon is stopping") }
        guard let cred = peerCredentials(c) else { return refuse(c, "no peer credentials") }
        guard let address = peerAddress(c) else {
            return refuse(c, "pid \(cred.pid): not an abstract address of the form <random>/unit/<unit>/<id>")
        }
        guard let req = CredentialServer.parseAddress(address) else {
            return refuse(c, "pid \(cred.pid): the address '\(String(decoding: address.prefix(200), as: UTF8.self))' is not <random>/unit/<unit>/<id>")
        }
        let path = fs.configuration.policy.credentialPath(for: req.id)
        // Refused before any access decision: audited as a denied open of
        // the credential, like the refusals the access check makes.
        func refuseAudited(_ why: String, unit: String?) {
            fs.refuseCredential(path: path, caller: Caller(uid: cred.uid, gid: cred.gid, pid: cred.pid, unit: { unit }),
                                detail: "systemd credential for \(req.unit): \(why)")
            refuse(c, "\(req.unit)/\(req.id): \(why)")
        }
        guard cred.uid == 0 else {
            return refuseAudited("the peer (pid \(cred.pid)) runs as uid \(cred.uid), not root as systemd does", unit: nil)
        }
        let unit: String?
        switch peer {
        case .pinned(let pidfd): unit = liveSystemdUnit(pidfd: pidfd, pid: cred.pid)
        case .notSupported: unit = liveSystemdUnit(pid: cred.pid)
        case .gone: unit = nil
        }
        guard let actual = unit else {
            return refuseAudited("the peer's (pid \(cred.pid)) unit cannot be read", unit: nil)
        }
        guard actual == req.unit else {
            return refuseAudited("the address names \(req.unit) but the peer (pid \(cred.pid)) runs in \(actual)", unit: actual)
        }
        let caller = Caller(uid: cred.uid, gid: cred.gid, pid: cred.pid, unit: { actual })
        switch fs.openCredential(path: path, unit: actual, caller: caller) {
        case .success(let secret):
            guard claim(c, secret: true) else {
                // Stopping: refused rather than sent from memory being wiped.
                return refuse(c, "\(req.unit)/\(req.id): the daemon is stopping")
            }
            if send(secret.plaintext, to: c) {
                Log.info("credential: served \(path) to \(actual) as \(req.id)")
                shutdown(c, Int32(SHUT_WR))
                finish(c)
            } else {
                let e = Errno.current
                let why = secret.plaintext.isRevoked
                    ? "\(req.unit)/\(req.id): its plaintext was wiped meanwhile (ttl= passed, or the daemon is stopping)"
                    : "\(req.unit)/\(req.id): writing the credential failed: \(Errno.text(e))"
                refuse(c, why, claimed: true)
            }
        case .failure(let e):
            let why = e == .accessDenied ? "\(actual) is not in allow_unit= for \(path)"
                : e == .notFound ? "no secret \(path) in the mount" : "\(path) could not be decrypted (see above)"
            refuse(c, "\(req.unit)/\(req.id): \(why)")
        }
    }

    /// Copies through locked scratch (memfd_secret pages are not handed to
    /// the kernel), writes, wipes.
    private func send(_ plaintext: SecureBuffer, to c: Int32) -> Bool {
        // The length is taken once: a plaintext wiped meanwhile (its count
        // drops to 0; the TTL or the stop revoked it) is a failure,
        // answered with the refusal, never a shorter credential followed
        // by EOF.
        guard let total = plaintext.readableCount else { return false }
        var offset = 0
        var ok = true
        while ok && offset < total {
            let n = min(scratch.bufferSize, total - offset)
            do {
                // The stop's wipe leaves the scratch to this send (it is
                // wiped right after); the credential itself may be wiped
                // meanwhile, and is then refused rather than sent whole.
                let intact = try scratch.withScratch { buf -> Int in
                    guard plaintext.copyBytes(from: offset, count: n, to: buf.baseAddress!) else {
                        ok = false       // wiped meanwhile: refused, not sent
                        return n
                    }
                    var sent = 0
                    while sent < n {
                        let w = (try? syscallRetrying("send") { Glibc.send(c, buf.baseAddress! + sent, n - sent, Int32(MSG_NOSIGNAL)) }) ?? -1
                        if w <= 0 { ok = false; break }
                        sent += w
                    }
                    return n
                }
                if !intact || plaintext.isRevoked { ok = false }
            } catch {
                ok = false
            }
            offset += n
        }
        return ok
    }

    /// Refuses `c` (`claimed`: this thread already holds the right to
    /// answer it; else it takes it, and leaves `c` alone if the stop has).
    private func refuse(_ c: Int32, _ why: String, claimed: Bool = false) {
        // A refusal needs the connection too: the stop may have answered it.
        guard claimed || claim(c) else { return }
        CredentialServer.logRefusal(why)
        sendRefusal(c)
        finish(c)
    }

    private static func logRefusal(_ why: String) {
        Log.warning("credential: refused \(why); answering more than systemd's credential limit so the unit does not start")
    }

    /// systemd's CREDENTIAL_SIZE_MAX: a credential longer than this fails
    /// the unit's start (E2BIG).
    public static let systemdCredentialLimit = 1 << 20

    /// Makes systemd's read fail. An AF_UNIX stream has no reset (SO_LINGER
    /// does nothing there; a plain close reads as an empty credential, and
    /// systemd 252 would start the unit with it), so the refusal is an
    /// answer one byte over systemd's credential size limit: zeros, never a
    /// secret, which systemd refuses whole.
    private func sendRefusal(_ c: Int32) {
        let zeros = [UInt8](repeating: 0, count: 64 * 1024)
        var left = CredentialServer.systemdCredentialLimit + 1
        while left > 0 {
            let w = (try? zeros.withUnsafeBytes { z in
                try syscallRetrying("send") { Glibc.send(c, z.baseAddress, min(left, z.count), Int32(MSG_NOSIGNAL)) }
            }) ?? -1
            if w <= 0 { break }
            left -= w
        }
    }

    /// The bytes of the peer's abstract address after its leading NUL.
    private func peerAddress(_ c: Int32) -> [UInt8]? {
        var addr = sockaddr_un()
        var len = socklen_t(MemoryLayout<sockaddr_un>.size)
        let rc = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(c, $0, &len) }
        }
        let header = MemoryLayout<sa_family_t>.size
        guard rc == 0, Int(len) > header + 1, Int(len) <= MemoryLayout<sockaddr_un>.size else { return nil }
        return withUnsafeBytes(of: &addr.sun_path) { p -> [UInt8]? in
            let n = Int(len) - header
            guard p[0] == 0 else { return nil }   // a path, not an abstract address
            return Array(p[1..<n])
        }
    }
}
