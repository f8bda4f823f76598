import Testing
import AWS

/// Inputs the fuzzers in fuzz/targets found (docs/fuzzing.md), each kept
/// as a regression test.
@Suite struct FuzzFindingsTests {
    /// fuzz/targets/json.swift: `-2.e510` parsed as -infinity, and the
    /// writer turned it into `-inf`, which is not JSON (serialized output
    /// must parse again).
    @Test func overflowingNumbersAreNotJSON() {
        #expect(JSONValue.parse(#"{"a;":[0,-2.e510,010,5e00]}"#) == nil)
        #expect(JSONValue.parse("1e999") == nil)
        #expect(JSONValue.parse("[-1e400]") == nil)
        #expect(JSONValue.parse("1e308")?.numberValue == 1e308)
        #expect(JSONValue.array([.number(.infinity), .number(-.infinity), .number(.nan)]).serialized == "[null,null,null]")
        let v = JSONValue.parse(#"{"n":[1.5e300,-2,0.25]}"#)
        #expect(v != nil && JSONValue.parse(v!.serialized) == v)
    }
}
