#if canImport(Glibc)
import Glibc
#endif

/// /proc/self/mountinfo (proc(5)), read in one place: the daemon finds its
/// own mount there (the stale mount a crash left, the FUSE connection to
/// abort), and `PathTrust` finds who mounted a FUSE file system. Its bytes
/// are partly chosen by local users (they name their FUSE mounts and
/// mountpoints), so they are parsed as bytes, never trusted to be text
/// (`fuzz/targets/localsockets`).
public enum MountInfo {
    /// One line: the fields kmsfs reads.
    public struct Entry: Sendable, Equatable {
        /// The mount's ID (the first field; `mnt_id` in fdinfo), when it
        /// is a number.
        public var mountID: UInt64? = nil
        /// `major:minor`, as the kernel writes it.
        public var device: [UInt8]
        /// The mountpoint, its escapes decoded.
        public var mountpoint: [UInt8]
        /// The file system type (`fuse.kmsfs`, `ext4`, ...).
        public var fstype: [UInt8]
        /// The super block's options (`user_id=0,group_id=0,...`).
        public var superOptions: [UInt8]

        public var mountpointPath: String { String(decoding: mountpoint, as: UTF8.self) }
        public var fstypeName: String { String(decoding: fstype, as: UTF8.self) }
    }

    /// Every line of `table` that names a device. The kernel writes every
    /// field and escapes the separators in names; a line missing the rest
    /// is kept with what it has (no mountpoint, no type), so that a check
    /// of its device fails closed rather than passing over it.
    public static func entries(_ table: [UInt8]) -> [Entry] {
        var out: [Entry] = []
        for line in table.split(separator: UInt8(ascii: "\n")) {
            // id parent major:minor root mountpoint options [optional...] - fstype source superopts
            let fields = line.split(separator: UInt8(ascii: " "))
            guard fields.count > 2 else { continue }
            guard fields.count > 4,
                  let dash = fields.firstIndex(where: { $0.elementsEqual([UInt8(ascii: "-")]) }),
                  dash >= 6, dash + 3 < fields.count else {
                out.append(Entry(mountID: number(fields[0]), device: Array(fields[2]), mountpoint: [], fstype: [], superOptions: []))
                continue
            }
            out.append(Entry(mountID: number(fields[0]), device: Array(fields[2]), mountpoint: unescape(bytes: fields[4]),
                             fstype: Array(fields[dash + 1]), superOptions: Array(fields[dash + 3])))
        }
        return out
    }

    /// A decimal field (at most 20 digits, so no overflow goes unnoticed).
    static func number(_ field: some Collection<UInt8>) -> UInt64? {
        guard !field.isEmpty, field.count <= 20, field.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
        return UInt64(String(decoding: field, as: UTF8.self))
    }

    /// The ID of the mount an open descriptor is on (`mnt_id:` in
    /// /proc/self/fdinfo): the kernel's own record, no file system call.
    public static func mountID(of fd: Int32) -> UInt64? {
        procFields("/proc/self/fdinfo/\(fd)", ["mnt_id"]).first.flatMap { number($0.utf8) }
    }

    /// This process's mount table; empty when it cannot be read.
    public static func current() -> [Entry] {
        guard case .success(let table) = readSmallFile("/proc/self/mountinfo", limit: 64 << 20) else { return [] }
        return entries(table)
    }

    /// `major:minor` of a device number, as mountinfo writes it (glibc's
    /// major() and minor(): 32-bit halves spread over the 64 bits).
    public static func deviceField(_ device: UInt64) -> [UInt8] {
        let major = ((device >> 8) & 0xfff) | ((device >> 32) & 0xffff_f000)
        let minor = (device & 0xff) | ((device >> 12) & 0xffff_ff00)
        return Array("\(major):\(minor)".utf8)
    }

    /// The kernel writes space, tab, newline and backslash in a path as
    /// `\040`, `\011`, `\012` and `\134`; every such escape is decoded
    /// (decoding only `\040` left a mountpoint with a tab, a newline or a
    /// backslash matching no path).
    public static func unescape(bytes field: some Collection<UInt8>) -> [UInt8] {
        let b = Array(field)
        var out: [UInt8] = []
        out.reserveCapacity(b.count)
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\"), i + 3 < b.count,
               b[(i + 1)...(i + 3)].allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "7") }) {
                let v = (Int(b[i + 1]) - 48) * 64 + (Int(b[i + 2]) - 48) * 8 + (Int(b[i + 3]) - 48)
                if v <= 255 {
                    out.append(UInt8(v))
                    i += 4
                    continue
                }
            }
            out.append(b[i])
            i += 1
        }
        return out
    }

    public static func unescape(_ field: Substring) -> String {
        String(decoding: unescape(bytes: field.utf8), as: UTF8.self)
    }
}
