// policy= files: paths, globs (and matching them), users and groups. Names resolve without
// the password database (numbers and a few fixed names).
import SecretFS

let users: [String: UInt32] = ["root": 0, "app": 1000, "web": 1001]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ p: UnsafePointer<UInt8>?, _ n: Int) -> Int32 {
    let data = fuzzInput(p, n)
    let text = String(decoding: data, as: UTF8.self)
    let resolve: (String) throws(PrincipalResolver.Failure) -> UInt32 = { (s: String) throws(PrincipalResolver.Failure) in
        if let n = UInt32(s) { return n }
        if let n = users[s] { return n }
        throw PrincipalResolver.Failure(message: "no such principal '\(s)'")
    }
    _ = try? PolicyFile.parse(text, file: "fuzz.policy", uid: resolve, gid: resolve)
    for line in text.split(separator: "\n").prefix(4) { _ = GlobPattern.problem(String(line)) }
    // A pattern (the first line) against a path (the second): any of each
    // ends, in pattern × path steps.
    let lines = text.split(separator: "\n", maxSplits: 2, omittingEmptySubsequences: false)
    if lines.count >= 2 { _ = GlobPattern(String(lines[0])).matches(String(lines[1])) }
    return 0
}
