import Testing
import AWS
#if canImport(Glibc)
import Glibc
#endif

/// Programs the daemon runs without reading their output (fusermount3 for
/// a daemon that is not root): bounded, reaped, their status reported.
@Suite struct ChildProcessTests {
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
