import Testing
import KmsfsKit

/// `on_change=` programs get the changed paths in runs that never hit
/// E2BIG: at most 1,000 paths and 64 KiB of them per run.
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
