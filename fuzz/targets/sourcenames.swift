// SOURCE's names, which anyone who may write to SOURCE chooses: the mapping
// of `NAME.encrypted` to the name the mount shows, the name check, the
// escaping of names for log lines, and the decoding of the inotify records
// that carry them. Input: the bytes, as a name and as one read(2) of the
// inotify descriptor. Traps on a broken invariant, so that libFuzzer
// reports it as a crash.
import SecretFS

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ p: UnsafePointer<UInt8>?, _ n: Int) -> Int32 {
    let data = fuzzInput(p, n)
    let suffix = Array(".encrypted".utf8)
    // The escaping for log lines: printable ASCII, no quote or backslash
    // that is not an escape's.
    let escaped = Array(SourceTree.escapedBytes(data).utf8)
    precondition(escaped.allSatisfy { $0 >= 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "'") })
    if let name = String(validating: data, as: UTF8.self) {
        // Shown names drop exactly the suffix, by bytes.
        if let shown = SourceTree.shownName(ofCiphertext: name) {
            precondition(Array(shown.utf8) + suffix == data)
            precondition(SourceTree.mountPath(ofSource: name).utf8.elementsEqual(shown.utf8))
        } else {
            precondition(!(data.count > suffix.count && data.suffix(suffix.count).elementsEqual(suffix)))
            precondition(SourceTree.mountPath(ofSource: name).utf8.elementsEqual(data))
        }
        // A valid name is one path component and never "." or "..".
        if SourceTree.isValidName(name) {
            precondition(!data.isEmpty && !data.contains(UInt8(ascii: "/")) && data != [0x2E] && data != [0x2E, 0x2E])
        }
    }
    // One read of the inotify descriptor: every record's name is within
    // the buffer, and a name that is not UTF-8 comes out empty.
    let events = data.withUnsafeBytes { SourceWatcher.events(in: $0) }
    precondition(events.count <= data.count / 16)
    for e in events { precondition(e.name.utf8.count <= data.count) }
    return 0
}
