// -o option strings as mount(8), fstab and a remount over the control
// channel hand them, through to the filesystem configuration.
// Input: ARG [0xFF ARG]... (several -o arguments).
@testable import KmsfsKit

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ p: UnsafePointer<UInt8>?, _ n: Int) -> Int32 {
    let data = fuzzInput(p, n)
    let args = fuzzParts(data).map { String(decoding: $0, as: UTF8.self) }
    _ = MountOptions.isRemount(args)
    _ = MountOptions.remountChanges(args)
    for a in args.prefix(2) {
        _ = MountOptions.parseDuration(a)
        _ = MountOptions.parseSize(a)
        for item in MountOptions.splitOptions(a) {
            // What we escape must split back to itself.
            let back = MountOptions.splitOptions(MountOptions.escapeOption(item))
            precondition(back == [item], "escapeOption/splitOptions round trip differs")
        }
    }
    if let o = try? MountOptions.parse(args) {
        _ = try? Configuration.filesystem(o)
        _ = try? Configuration.filesystem(o, watched: true)
    }
    if args.count >= 2 {
        _ = try? MountOptions.remounted([args[0]], with: Array(args.dropFirst()))
    }
    return 0
}
