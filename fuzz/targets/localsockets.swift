// Bytes a local user chooses and the daemon's small socket servers read:
// the request head of a metrics scrape (its line and Host header), a
// mountpoint as /proc/self/mountinfo escapes it, the abstract address a
// LoadCredential= peer binds (`<random>/unit/<UNIT>/<ID>`), a
// /proc/PID/cgroup document (a process names its own cgroups), and a
// mount table as PathTrust reads a FUSE mount's owner from it (users
// name their FUSE mounts and mountpoints).
import SecretFS
import KmsfsKit
@testable import System
#if canImport(Glibc)
import Glibc
#endif

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ p: UnsafePointer<UInt8>?, _ n: Int) -> Int32 {
    let data = fuzzInput(p, n)
    _ = MetricsServer.route(data)
    _ = MetricsServer.hostAllowed(data)
    _ = MountInfo.unescape(Substring(String(decoding: data, as: UTF8.self)))
    precondition(MountInfo.unescape(bytes: data).count <= data.count, "an unescape that grew")
    if let r = CredentialServer.parseAddress(data) {
        precondition(SystemdUnitName.isValid(r.unit) && SystemdCredentialID.isValid(r.id), "accepted an invalid name")
    }
    if let u = unitFromCgroup(data) {
        precondition(u.hasSuffix(".service") || u.hasSuffix(".scope"), "a unit without a unit type")
    }
    _ = MetricsAddress.parse(String(decoding: data, as: UTF8.self))
    let devices: [UInt64] = [0, 52, (8 << 8) | 1, .max]
    for device in devices {
        _ = PathTrust.fuseMountOwner(device: device, mountinfo: data)
    }
    // The table streamed a chunk at a time finds what the whole-table
    // parse finds when no line is too long, and never more when some are.
    if let f = tmpfile() {
        defer { fclose(f) }
        let fd = fileno(f)
        if (try? data.withUnsafeBytes({ try FileDescriptor.writeAll(fd, $0) })) != nil, lseek(fd, 0, SEEK_SET) == 0 {
            let whole = MountInfo.entries(data)
            let streamed = MountInfo.entries(readingFrom: fd, maxLine: data.count + 1, where: { _ in true })
            precondition(streamed == whole, "a streamed table that differs")
            _ = lseek(fd, 0, SEEK_SET)
            let short = MountInfo.entries(readingFrom: fd, maxLine: 64, where: { _ in true }) ?? []
            precondition(short.count <= whole.count, "skipping long lines found more")
        }
    }
    return 0
}
