import Testing
@testable import SecretFS

/// Whom the refusal budget names when it leaves refusals unrecorded: the
/// log line a minute must not name a user for what all users did together.
@Suite struct RefusalBudgetTests {
    @Test func aUserIsNamedForTheirOwnBudgetOnlyAndEveryoneInOneLineAMinute() {
        var b = RefusalBudget()
        // 1,000 users refused once each, at once: the total (1,000 at once)
        // is spent, each user's own (100) is not.
        for uid in UInt32(1)...1000 { #expect(b.take(uid: uid, now: 0) == .record(unrecorded: 0, shared: false)) }
        // The next users are over the total, not over their own budget:
        // one warning for all, then none for a minute.
        #expect(b.take(uid: 2001, now: 0) == .countOnly(warn: .everyone))
        for uid in UInt32(2002)...2500 { #expect(b.take(uid: uid, now: 0) == .countOnly(warn: nil)) }
        #expect(b.take(uid: 2501, now: 61) == .record(unrecorded: 0, shared: false))   // refilled: 200 a second
        // One user over their own 100 at once: named, once a minute.
        var c = RefusalBudget()
        for _ in 0..<100 { _ = c.take(uid: 7, now: 0) }
        #expect(c.take(uid: 7, now: 0) == .countOnly(warn: .user))
        #expect(c.take(uid: 7, now: 0) == .countOnly(warn: nil))
        #expect(c.take(uid: 7, now: 1) == .record(unrecorded: 2, shared: false))        // 20 a second back
    }
}
