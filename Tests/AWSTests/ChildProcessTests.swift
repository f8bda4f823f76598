import Testing
@testable import AWS
#if canImport(Glibc)
import Glibc
#endif

/// Programs the daemon runs without reading their output (fusermount3 for
/// a daemon that is not root): bounded, reaped, their status reported.
@Suite struct ChildProcessTests {
    /// A child killed that does not exit within the second the runner
    /// waits (one in uninterruptible sleep takes SIGKILL only when it
    /// wakes) is reaped once it has exited, by the next spawn, and is not
    /// left a zombie for the daemon's life.
    @Test func aKilledChildThatOutlivesTheWaitIsReapedLater() {
        var pid: pid_t = 0
        let argv = ["/bin/sh", "-c", "sleep 0.3"]
        var cargs = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        #expect(posix_spawn(&pid, "/bin/sh", nil, nil, &cargs, environ) == 0)
        ProcessRunner.abandon(pid)
        ProcessRunner.reapAbandoned()
        #expect(kill(pid, 0) == 0)            // still running: kept
        var gone = false
        for _ in 0..<500 where !gone {
            usleep(10_000)
            ProcessRunner.reapAbandoned()
            gone = kill(pid, 0) != 0 && errno == ESRCH
        }
        #expect(gone, "the exited child was never reaped")
    }

    /// The same through `credential_process`'s runner, with a child the
    /// kill misses (it left its process group) and that exits 5 s later
    /// (1.6 s left it 0.3 s past the runner's wait: under ThreadSanitizer
    /// on a busy machine it had exited, and was reaped, before the look).
    /// The wait is 1.5 s: python3 must have left the group by then, or
    /// the kill takes it (on a loaded machine its start took over 0.3 s).
    @Test func aCredentialProcessThatOutlivesTheWaitIsReapedLater() {
        let env = Environment(["PATH": "/usr/bin:/bin"])
        let script = "import os, time; os.setpgid(0, os.getpgid(os.getppid())); print('x', flush=True); time.sleep(5)"
        #expect(throws: (any Error).self) {
            _ = try ProcessRunner.run(["python3", "-c", script], environment: env, timeout: 1.5, limit: 4096)
        }
        #expect(ProcessRunner.reapAbandoned() >= 1)   // still running after its second: remembered
        var left = 1
        for _ in 0..<1000 where left > 0 {
            usleep(10_000)
            left = ProcessRunner.reapAbandoned()
        }
        #expect(left == 0, "the exited child was never reaped")
    }

    @Test func aProgramWhoseOutputIsDiscardedIsKilledAtItsDeadlineAndReaped() {
        let env = Environment(["PATH": "/usr/bin:/bin"])
        let t0 = Double(time(nil))
        guard case .failure(let hung) = ChildProcess.run(["sh", "-c", "echo out; sleep 30"], environment: env, timeout: 0.3) else {
            Issue.record("a program that sleeps 30 s was not killed at 0.3 s")
            return
        }
        #expect(hung.message.hasPrefix("no answer within") && hung.message.hasSuffix("killed"))
        #expect(Double(time(nil)) - t0 < 5)
        guard case .failure(let three) = ChildProcess.run(["sh", "-c", "exit 3"], environment: env, timeout: 5) else {
            Issue.record("exit 3 was taken for success")
            return
        }
        #expect(three.message == "exited with status 3")
        guard case .success = ChildProcess.run(["true"], environment: env, timeout: 5) else {
            Issue.record("true failed")
            return
        }
        guard case .failure(let missing) = ChildProcess.run(["kmsfs-no-such-program"], environment: env, timeout: 5) else {
            Issue.record("a missing program ran")
            return
        }
        #expect(missing.message.hasPrefix("cannot run it:"))
    }
}

@Suite struct ChildEnvironmentTests {
    /// A child's environment: every plain variable as set (and removed),
    /// the secret ones whole, each once, and nothing else.
    @Test func theChildsEnvironmentHoldsEveryVariableOnce() throws {
        var env = Environment(["HOME": "/root", "AWS_REGION": "eu-west-1", "NOTIFY_SOCKET": "/run/x",
                               "AWS_SECRET_ACCESS_KEY": "wJalr/K7MDENG=", "AWS_SESSION_TOKEN": "tok en"])
        env.setPlain("KMSFS_READY_FD", "3")
        env.setPlain("NOTIFY_SOCKET", nil)
        let entries = try env.withCEnvironment { envp -> [String] in
            var out: [String] = []
            var p = envp
            while let e = p.pointee { out.append(String(cString: e)); p += 1 }
            return out
        }
        #expect(entries.sorted() == ["AWS_REGION=eu-west-1", "AWS_SECRET_ACCESS_KEY=wJalr/K7MDENG=", "AWS_SESSION_TOKEN=tok en",
                                     "HOME=/root", "KMSFS_READY_FD=3"])
        // None: no locked block, and an empty array.
        #expect(try Environment([:]).withCEnvironment { $0.pointee == nil })
    }
}
