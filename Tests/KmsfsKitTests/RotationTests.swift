import Testing
@testable import KmsfsKit
import SecretFS
import SecureMemory
import AWS
import System
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// `on_change=` programs get the changed paths in runs that never hit
/// E2BIG: at most 1,000 paths and 64 KiB of them per run.
@Suite struct RotationLogTests {
    /// A log line names each path so that `a b` is not read as two.
    @Test func pathsInALogLineAreUnambiguous() {
        #expect(RotationNotifier.shown(["tls/key", "db/a b", "x\"y"]) == #"tls/key "db/a b" "x\"y""#)
        #expect(RotationNotifier.shown(["a", "b"]) != RotationNotifier.shown(["a b"]))
    }
}

@Suite struct RotationChunkTests {
    @Test func pathsAreCutIntoBoundedRunsInOrder() {
        let many = (0..<2500).map { "app/s\($0)" }
        let runs = RotationNotifier.chunks(many, maxCount: 1000, maxBytes: 64 * 1024)
        #expect(runs.map(\.count) == [1000, 1000, 500])
        #expect(runs.flatMap { $0 } == many)

        let long = (0..<600).map { String(repeating: "d", count: 3800) + "/\($0)" }
        let byBytes = RotationNotifier.chunks(long, maxCount: 1000, maxBytes: 64 * 1024)
        #expect(byBytes.allSatisfy { run in run.reduce(0) { $0 + $1.utf8.count + 3 } <= 64 * 1024 })
        #expect(byBytes.flatMap { $0 } == long)
        #expect(byBytes.count == 36)                     // 17 paths of ~3,807 bytes a run

        // One path longer than the budget still runs, alone.
        let huge = [String(repeating: "x", count: 70_000), "b"]
        #expect(RotationNotifier.chunks(huge, maxCount: 1000, maxBytes: 64 * 1024) == [[huge[0]], ["b"]])
        #expect(RotationNotifier.chunks([], maxCount: 1000, maxBytes: 64 * 1024).isEmpty)
    }
}

/// `reload=` runs the first systemctl of the daemon's PATH that only root
/// may change: a directory anyone may write early in the PATH of whoever
/// mounted must not choose what root runs at every rotation.
@Suite struct RotationSystemctlTests {
    @Test func systemctlIsFoundOnlyWhereNobodyElseMayChangeIt() throws {
        var template = Array("/tmp/kmsfs-systemctl-test.XXXXXX".utf8CString)
        let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        defer { _ = system("rm -rf '\(dir)'") }
        let bin = dir + "/bin"
        mkdir(bin, 0o755)
        let fake = bin + "/systemctl"
        let fd = open(fake, O_WRONLY | O_CREAT | O_TRUNC, 0o755)
        close(fd)
        chmod(fake, 0o755)

        #expect(try RotationNotifier.systemctl(searching: "relative/bin:\(bin):/usr/bin").get() == fake)
        #expect(try RotationNotifier.systemctl(searching: "\(dir)/none:\(bin)/").get() == fake)   // a trailing slash too
        chmod(bin, 0o777)
        #expect { try RotationNotifier.systemctl(searching: "\(bin):/usr/bin").get() } throws: {
            "\($0)".contains("not running \(fake): its directory \(bin) may be written by anyone")
        }
        chmod(bin, 0o755)
        chmod(fake, 0o775)
        #expect { try RotationNotifier.systemctl(searching: bin).get() } throws: { "\($0)".contains("may be written by its group") }
        chmod(fake, 0o755)
        // A link root owns is followed (merged /usr, NixOS's profiles), and
        // the file it leads to is what runs.
        let links = dir + "/links"
        mkdir(links, 0o755)
        symlink("../bin/systemctl", links + "/systemctl")
        #expect(try RotationNotifier.systemctl(searching: links).get() == fake)
        lchown(links + "/systemctl", 4242, 4242)
        #expect { try RotationNotifier.systemctl(searching: links).get() } throws: { "\($0)".contains("belongs to uid 4242") }
        chmod(fake, 0o644)   // not executable: looked past, as a shell would
        #expect { try RotationNotifier.systemctl(searching: "relative:\(bin)").get() } throws: {
            "\($0)".contains("no systemctl in the absolute directories of PATH (relative:\(bin))")
        }
    }
}

/// "Decrypts" by reversing the bytes; a ciphertext starting with `!` does
/// not decrypt, nor does anything while `down` (KMS unreachable).
final class ReversingDecryptor: SecretDecrypting, Sendable {
    let down = Atomic<Bool>(false)
    func decrypt(ciphertext: [UInt8], path: String) -> Result<DecryptedSecret, DecryptFailure> {
        if down.load(ordering: .relaxed) { return .failure(DecryptFailure(.unavailable, "KMS is down")) }
        if ciphertext.first == UInt8(ascii: "!") { return .failure(DecryptFailure(.badInput, "bad file")) }
        guard let b = try? SecureBuffer(capacity: max(ciphertext.count, 1)),
              (try? Array(ciphertext.reversed()).withUnsafeBytes({ try b.append($0) })) != nil else {
            return .failure(DecryptFailure(.badInput, "no memory"))
        }
        return .success(DecryptedSecret(plaintext: b, format: "reversed", keyId: nil))
    }
}

/// A notification that fails is tried again `retryDelays` apart, for the
/// secrets still at the version it was about, then given up; the next
/// notification to the target carries it.
@Suite(.serialized) struct RotationRetryTests {
    /// SOURCE with `a` and `b`, an `on_change=` program that logs each run
    /// and fails while `fail` exists, and a notifier over them.
    final class Rig {
        let dir: String
        let calls: String
        let failMarker: String
        let failCount: String
        let notifier: RotationNotifier
        let fs: SecretFileSystem
        let decryptor = ReversingDecryptor()
        let program: String
        /// Whom the notifier tells now (nil: the program).
        final class Told: Sendable { let program = Mutex<String?>(nil) }
        let told = Told()

        init(retryDelays: [Double], settle: Double = 0.05, start: Bool = true) throws {
            var template = Array("/tmp/kmsfs-retry-test.XXXXXX".utf8CString)
            dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
            chmod(dir, 0o755)
            mkdir(dir + "/src", 0o755)
            calls = dir + "/calls"
            failMarker = dir + "/fail"
            failCount = dir + "/fail-count"
            program = dir + "/notify"
            // Fails while `fail` exists, and the next N runs `fail-count`
            // says. The outcome is decided before the run is logged: a test
            // that sees the run may change the next one's at once.
            let script = """
                #!/bin/sh
                r=0
                if [ -e \(failMarker) ]; then r=1; fi
                if [ -s \(failCount) ]; then
                    n=$(cat \(failCount))
                    if [ "$n" -gt 0 ]; then echo $((n - 1)) > \(failCount); r=1; fi
                fi
                if [ -e \(failMarker).slow ]; then : > \(failMarker).started; sleep 1; fi
                echo "$@" >> \(calls)
                exit $r

                """
            // Close-on-exec: a child another test forks meanwhile must not
            // hold it open for writing (exec would fail with ETXTBSY).
            let fd = open(program, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o755)
            _ = script.withCString { write(fd, $0, strlen($0)) }
            close(fd)
            let policy = AccessPolicy(defaultPrincipals: Principals(uids: [0]),
                                      defaultPresentation: Presentation(uid: 0, gid: 0, mode: 0o400))
            fs = SecretFileSystem(tree: try SourceTree(path: dir + "/src"), configuration: FSConfiguration(policy: policy),
                                  decryptor: decryptor, audit: NoAuditSink())
            let told = told, program = program, fs = fs
            notifier = RotationNotifier(fs: fs, audit: NoAuditSink(), programs: Environment(["PATH": "/usr/bin:/bin"]),
                                        settle: settle, retryDelays: retryDelays) { _ in
                ChangeTargets(program: told.program.withLock { $0 } ?? program)
            }
            put("a", "1a")
            put("b", "1b")
            guard start else { return }
            notifier.start()
            // A rotation while the notifier notes the versions at start
            // could be noted as the start (and told to nobody).
            let notifier = notifier
            try #require(RotationRetryTests.eventually { notifier.snapshot.seeded })
        }

        deinit {
            notifier.stop()
            _ = system("rm -rf '\(dir)'")
        }

        /// Writes a new ciphertext for `name` (aside, then renamed over) and
        /// tells the notifier, as the watcher would.
        func rotate(_ name: String, _ ciphertext: String) {
            put(name, ciphertext)
            notifier.changed(sourcePath: name + ".encrypted")
        }

        func put(_ name: String, _ ciphertext: String) {
            let tmp = dir + "/src/." + name + ".new"
            let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            _ = ciphertext.withCString { write(fd, $0, strlen($0)) }
            close(fd)
            rename(tmp, dir + "/src/" + name + ".encrypted")
        }

        var runs: [String] {
            guard let f = fopen(calls, "r") else { return [] }
            defer { fclose(f) }
            var lines: [String] = []
            var buf = [CChar](repeating: 0, count: 4096)
            while fgets(&buf, Int32(buf.count), f) != nil {
                let n = buf.firstIndex(of: 0) ?? buf.count
                lines.append(String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self).trimmingSuffix("\n"))
            }
            return lines
        }

        /// The next `n` runs fail.
        func failNext(_ n: Int) {
            let fd = open(failCount, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            _ = "\(n)\n".withCString { write(fd, $0, strlen($0)) }
            close(fd)
        }

        func failing(_ on: Bool) {
            if on { close(open(failMarker, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)) } else { unlink(failMarker) }
        }
    }

    static func eventually(timeout: Double = 10, _ check: () -> Bool) -> Bool {
        let end = SystemClock.monotonic() + timeout
        while SystemClock.monotonic() < end {
            if check() { return true }
            usleep(20_000)
        }
        return check()
    }

    /// V1, then V2 (which an open decrypted), then V1 again, all before
    /// the batch: whoever took V2 must be told, though the file is back
    /// at the version the burst started from.
    @Test func aRollbackWithinOneBatchIsToldToWhoeverTookTheVersionBetween() throws {
        let rig = try Rig(retryDelays: [60], settle: 0.3)
        rig.put("a", "2a")
        let v2 = try #require(rig.fs.currentVersion(sourcePath: "a.encrypted"))
        rig.notifier.changed(sourcePath: "a.encrypted")                      // V1 -> V2
        rig.put("a", "1a")                                                   // back to V1
        rig.notifier.changed(sourcePath: "a.encrypted", previousVersion: v2) // an open had cached V2
        #expect(RotationRetryTests.eventually { rig.runs == ["a"] })
    }

    /// A secret removed, or a directory of them moved out of SOURCE, is
    /// forgotten: names churned in and out must not grow what the notifier
    /// keeps (versions, failures) for the daemon's life.
    @Test func secretsThatAreGoneAreForgotten() throws {
        let rig = try Rig(retryDelays: [60])
        rig.fs.onCiphertextChange { [notifier = rig.notifier] in notifier.changed(sourcePath: $0, previousVersion: $1) }
        rig.fs.onChangesUnnamed { [notifier = rig.notifier] in notifier.changesUnnamed() }
        #expect(rig.notifier.rememberedVersions == 2)
        for i in 0..<5 {
            rig.rotate("churn\(i)", "v\(i)")
        }
        try #require(RotationRetryTests.eventually { rig.notifier.rememberedVersions == 7 })
        for i in 0..<5 {
            unlink(rig.dir + "/src/churn\(i).encrypted")
            rig.fs.sourceChanged(directory: ".", name: "churn\(i).encrypted", isDirectory: false, removed: true)
        }
        #expect(RotationRetryTests.eventually { rig.notifier.rememberedVersions == 2 })

        // A broken one is listed as failing until it is gone.
        rig.rotate("broken", "!not a ciphertext")
        try #require(RotationRetryTests.eventually { rig.notifier.snapshot.failures.count == 1 })
        unlink(rig.dir + "/src/broken.encrypted")
        rig.fs.sourceChanged(directory: ".", name: "broken.encrypted", isDirectory: false, removed: true)
        #expect(RotationRetryTests.eventually { rig.notifier.snapshot.failures.isEmpty })

        // A directory moved out sends one event, for the directory.
        mkdir(rig.dir + "/src/d", 0o755)
        for (name, ciphertext) in [("x", "dx"), ("y", "dy"), ("z", "!broken")] {
            let fd = open(rig.dir + "/src/d/\(name).encrypted", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            _ = ciphertext.withCString { write(fd, $0, strlen($0)) }
            close(fd)
            rig.notifier.changed(sourcePath: "d/\(name).encrypted")
        }
        try #require(RotationRetryTests.eventually { rig.notifier.rememberedVersions == 4 && rig.notifier.snapshot.failures.count == 1 })
        #expect(rename(rig.dir + "/src/d", rig.dir + "/moved-out") == 0)
        rig.fs.sourceChanged(directory: ".", name: "d", isDirectory: true, removed: true)
        #expect(RotationRetryTests.eventually { rig.notifier.rememberedVersions == 2 })
        #expect(rig.notifier.snapshot.failures.isEmpty)
    }

    @Test func aFailedNotificationIsTriedAgainThenGivenUpThenCarriedByTheNext() throws {
        let rig = try Rig(retryDelays: [0.3, 0.3])
        rig.failing(true)
        rig.rotate("a", "2a")
        #expect(Self.eventually { rig.runs.count == 3 })
        #expect(rig.runs == ["a", "a", "a"])
        #expect(Self.eventually { rig.notifier.snapshot.retrying.first.map { $0.nextTry == nil } ?? false })
        let given = rig.notifier.snapshot
        #expect(given.retrying.count == 1)
        #expect(given.retrying.first?.paths == ["a"])
        #expect(given.retrying.first?.attempts == 3)
        #expect(given.notificationsFailed == 3 && given.notificationsOK == 0)
        usleep(800_000)
        #expect(rig.runs.count == 3)                 // given up: no fourth try on its own
        // The program works again; b's rotation tells about a as well.
        rig.failing(false)
        rig.rotate("b", "2b")
        #expect(Self.eventually { rig.runs.count == 4 })
        #expect(rig.runs.last == "b a")
        #expect(Self.eventually { rig.notifier.snapshot.retrying.isEmpty && rig.notifier.snapshot.notificationsOK == 1 })
    }

    @Test func aRetrySucceedsOnceTheTargetWorks() throws {
        let rig = try Rig(retryDelays: [0.5, 60])
        rig.failNext(1)
        rig.rotate("a", "2a")
        #expect(Self.eventually { rig.runs.count == 2 })
        #expect(rig.runs == ["a", "a"])
        #expect(Self.eventually { rig.notifier.snapshot.retrying.isEmpty && rig.notifier.snapshot.notificationsOK == 1 })
    }

    /// A retry is about one version: once the secret changed again, the
    /// next batch tells (or, when the new version does not decrypt, nobody
    /// is told about either).
    @Test func aRetryForAVersionSinceReplacedIsDropped() throws {
        let rig = try Rig(retryDelays: [3, 3])
        rig.failing(true)
        rig.rotate("a", "2a")
        #expect(Self.eventually { rig.runs.count == 1 })
        #expect(Self.eventually { rig.notifier.snapshot.retrying.count == 1 })
        rig.rotate("a", "!broken")
        #expect(Self.eventually { rig.notifier.snapshot.decryptFailures == 1 })
        // Dropped with the batch, not left until its time.
        #expect(Self.eventually(timeout: 1) { rig.notifier.snapshot.retrying.isEmpty })
        #expect(rig.runs == ["a"])
        // A good version later is told once, with no retry beside it.
        rig.failing(false)
        rig.rotate("a", "3a")
        #expect(Self.eventually { rig.runs.count == 2 })
        usleep(800_000)
        #expect(rig.runs == ["a", "a"])
    }

    /// The same bytes written again while a retry waits (a config run, a
    /// touch) leave the secret at the version the retry is about: the retry
    /// still happens.
    @Test func aTouchWhileARetryWaitsDoesNotCancelIt() throws {
        let rig = try Rig(retryDelays: [0.6, 60], settle: 1.0)
        rig.failNext(1)
        rig.rotate("a", "2a")
        #expect(Self.eventually { rig.runs.count == 1 })
        usleep(200_000)
        rig.rotate("a", "2a")                         // same bytes, still settling when the retry is due
        #expect(Self.eventually { rig.runs.count == 2 })
        #expect(rig.runs == ["a", "a"])
        #expect(Self.eventually { rig.notifier.snapshot.notificationsOK == 1 })
    }

    /// A remount or reload tries every failed notification again at once,
    /// given up or not; one whose target the policy no longer names is
    /// dropped, not run.
    @Test func aRemountTriesAgainAndDropsWhatIsNoLongerMeant() throws {
        let rig = try Rig(retryDelays: [0.2])
        rig.failing(true)
        rig.rotate("a", "2a")
        #expect(Self.eventually { rig.notifier.snapshot.retrying.first.map { $0.nextTry == nil } ?? false })
        #expect(rig.runs.count == 2)
        rig.failing(false)
        rig.notifier.targetsChanged()
        #expect(Self.eventually { rig.runs.count == 3 })
        #expect(Self.eventually { rig.notifier.snapshot.retrying.isEmpty && rig.notifier.snapshot.notificationsOK == 1 })

        rig.failing(true)
        rig.rotate("b", "2b")
        #expect(Self.eventually { rig.notifier.snapshot.retrying.first.map { $0.nextTry == nil } ?? false })
        let runs = rig.runs.count
        rig.told.program.withLock { $0 = "/bin/true" }       // the remount names another program
        rig.notifier.targetsChanged()
        #expect(Self.eventually { rig.notifier.snapshot.retrying.isEmpty })
        #expect(rig.runs.count == runs)
    }

    /// A retry decrypts first, as a batch does: it may come after the
    /// plaintext was wiped, with KMS down since. Nobody is restarted into
    /// a failing open; the retry waits for its next try, and tells once
    /// the secret decrypts again.
    @Test func aRetryDecryptsFirstAndWaitsWhileKMSIsDown() throws {
        let rig = try Rig(retryDelays: [0.3, 0.3, 60])
        rig.failNext(1)
        rig.rotate("a", "2a")
        #expect(Self.eventually { rig.runs.count == 1 })
        rig.decryptor.down.store(true, ordering: .relaxed)
        rig.fs.cache.wipeAll()                       // the TTL, say
        #expect(Self.eventually { rig.notifier.snapshot.retrying.first.map { $0.attempts >= 2 } ?? false })
        #expect(rig.runs == ["a"])                   // not run while it does not decrypt
        #expect(rig.notifier.snapshot.retrying.first?.reason.contains("KMS is down") == true)
        rig.decryptor.down.store(false, ordering: .relaxed)
        #expect(Self.eventually { rig.runs.count == 2 })
        #expect(Self.eventually { rig.notifier.snapshot.retrying.isEmpty && rig.notifier.snapshot.notificationsOK == 1 })
    }

    /// A remount or reload that comes while a try runs (a program may take
    /// up to a minute) still asks for one more try at once, not at the
    /// next delay.
    @Test func aRemountDuringATryTriesAgainAtOnce() throws {
        let rig = try Rig(retryDelays: [60])
        rig.failing(true)
        close(open(rig.failMarker + ".slow", O_WRONLY | O_CREAT | O_CLOEXEC, 0o600))
        rig.rotate("a", "2a")
        #expect(Self.eventually { access(rig.failMarker + ".started", F_OK) == 0 })   // the first try runs (1 s)
        rig.notifier.targetsChanged()
        unlink(rig.failMarker + ".slow")
        rig.failing(false)
        #expect(Self.eventually(timeout: 5) { rig.runs.count == 2 })
        #expect(Self.eventually { rig.notifier.snapshot.retrying.isEmpty })
    }

    /// A rotation whose event comes after the notifier noted the versions
    /// at start (the file was read new, the event still queued): the
    /// version an open had cached is what the applications hold, and the
    /// change is told, not taken for a touch.
    @Test func aRotationRacingTheStartIsToldAgainstTheVersionHandedOut() throws {
        let rig = try Rig(retryDelays: [60], start: false)
        let old = try #require(rig.fs.currentVersion(sourcePath: "a.encrypted"))
        rig.put("a", "2a")                           // the rename, its event not applied yet
        rig.notifier.start()
        #expect(Self.eventually { rig.notifier.snapshot.seeded })
        rig.notifier.changed(sourcePath: "a.encrypted", previousVersion: old)   // the event, late
        #expect(Self.eventually { rig.runs == ["a"] })
    }

    /// The watcher's events reach the notifier through the file system, as
    /// in the daemon; `openAndRead` opens `name` through it as root and reads it.
    static func wire(_ rig: Rig) {
        let notifier = rig.notifier
        rig.fs.onCiphertextChange { notifier.changed(sourcePath: $0, previousVersion: $1) }
    }

    static func openAndRead(_ rig: Rig, _ name: String) throws -> String {
        let ino = try rig.fs.lookup(parent: SecretFileSystem.rootInode, name: name).get().attributes.ino
        let handle = try rig.fs.open(ino, flags: O_RDONLY, caller: Caller(uid: 0, gid: 0, pid: getpid())).get()
        return handle.plaintext.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
    }

    /// The watcher applies the event of a rename over `name` (late).
    static func applyEvent(_ rig: Rig, _ name: String) {
        rig.fs.sourceChanged(directory: ".", name: name + ".encrypted", isDirectory: false, removed: false)
    }

    /// Regression: an open between the rename and the watcher applying its
    /// event (the watcher busy with a big batch, a loaded machine) decrypts
    /// the new version and caches it. That version, handed to the notifier
    /// as the one cached before the change, made the rotation look like a
    /// touch ("still version ...; nobody is told") and the service kept
    /// the old secret.
    @Test func aRotationAnOpenDecryptedBeforeItsEventIsStillTold() throws {
        let rig = try Rig(retryDelays: [60])
        Self.wire(rig)
        #expect(try Self.openAndRead(rig, "a") == "a1")                  // the service holds version 1
        rig.put("a", "2a")                                        // renamed over; the event waits
        #expect(try Self.openAndRead(rig, "a") == "a2")                  // an open in that window caches 2
        Self.applyEvent(rig, "a")
        #expect(Self.eventually { rig.runs == ["a"] })
    }

    /// The same window, from the cache's side: the version that open
    /// decrypted is the file SOURCE holds, so the late event keeps it. It
    /// was wiped, and the next stat showed the ciphertext's size again and
    /// the next open called KMS again for the same bytes.
    @Test func aLateEventKeepsThePlaintextAnOpenDecryptedFromTheNewFile() throws {
        let rig = try Rig(retryDelays: [60])
        Self.wire(rig)
        #expect(try Self.openAndRead(rig, "a") == "a1")
        rig.put("a", "2a")                                        // renamed over; the event waits
        #expect(try Self.openAndRead(rig, "a") == "a2")           // decrypts the new file
        let decrypts = rig.fs.counterSnapshot.decrypts
        Self.applyEvent(rig, "a")
        #expect(rig.fs.cache.peek("a.encrypted", fingerprint: try rig.fs.tree.stat("a.encrypted").fingerprint) != nil)
        #expect(try Self.openAndRead(rig, "a") == "a2")
        #expect(rig.fs.counterSnapshot.decrypts == decrypts)     // a hit, no second Decrypt
        #expect(Self.eventually { rig.runs == ["a"] })            // and still told
        rig.put("a", "3a")                                        // a later change still wipes it
        Self.applyEvent(rig, "a")
        #expect(rig.fs.cache.peek("a.encrypted", fingerprint: nil) == nil)
    }

    /// The same, with the new ciphertext written again (a deploy run twice,
    /// same bytes, new file) before the event is applied: the version the
    /// open cached is no longer the file's, yet not what the service holds.
    @Test func aRotationAnOpenDecryptedBeforeItsEventAndARewriteIsStillTold() throws {
        let rig = try Rig(retryDelays: [60])
        Self.wire(rig)
        #expect(try Self.openAndRead(rig, "a") == "a1")
        rig.put("a", "2a")
        #expect(try Self.openAndRead(rig, "a") == "a2")
        rig.put("a", "2a")                                        // same bytes, another inode
        Self.applyEvent(rig, "a")
        Self.applyEvent(rig, "a")
        #expect(Self.eventually { rig.runs == ["a"] })
    }

    /// The start race of `aRotationRacingTheStartIsToldAgainstTheVersionHandedOut`
    /// through the file system: the version cached before the rename is
    /// handed on (the baseline, read at start, is already the new one).
    /// And a touch is still no rotation.
    @Test func aRotationRacingTheStartIsToldThroughTheFileSystemAndATouchIsNot() throws {
        let rig = try Rig(retryDelays: [60], start: false)
        Self.wire(rig)
        #expect(try Self.openAndRead(rig, "a") == "a1")
        rig.put("a", "2a")                                        // the rename, its event not applied yet
        rig.notifier.start()
        #expect(Self.eventually { rig.notifier.snapshot.seeded })
        Self.applyEvent(rig, "a")                                 // the event, late
        #expect(Self.eventually { rig.runs == ["a"] })
        #expect(try Self.openAndRead(rig, "a") == "a2")
        rig.put("a", "2a")                                        // the same bytes again: a touch
        Self.applyEvent(rig, "a")
        #expect(Self.eventually { rig.notifier.snapshot.changes == 2 && rig.notifier.snapshot.pending == 0 })
        usleep(300_000)
        #expect(rig.runs == ["a"])
    }
}

private extension String {
    func trimmingSuffix(_ s: String) -> String { hasSuffix(s) ? String(dropLast(s.count)) : self }
}
