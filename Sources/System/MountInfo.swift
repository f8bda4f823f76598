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
        table.split(separator: UInt8(ascii: "\n")).compactMap { entry($0) }
    }

    /// One line's entry; nil when it names no device.
    static func entry(_ line: ArraySlice<UInt8>) -> Entry? {
        // id parent major:minor root mountpoint options [optional...] - fstype source superopts
        let fields = line.split(separator: UInt8(ascii: " "))
        guard fields.count > 2 else { return nil }
        guard fields.count > 4,
              let dash = fields.firstIndex(where: { $0.elementsEqual([UInt8(ascii: "-")]) }),
              dash >= 6, dash + 3 < fields.count else {
            return Entry(mountID: number(fields[0]), device: Array(fields[2]), mountpoint: [], fstype: [], superOptions: [])
        }
        return Entry(mountID: number(fields[0]), device: Array(fields[2]), mountpoint: unescape(bytes: fields[4]),
                     fstype: Array(fields[dash + 1]), superOptions: Array(fields[dash + 3]))
    }

    /// Longest line read: a mount kmsfs looks for (its own, SOURCE's, a
    /// directory's on the way) has paths under PATH_MAX, each byte written
    /// as at most four; longer lines are other users' mounts at depths no
    /// path can name, skipped as they stream past.
    public static let maxLine = 256 << 10

    /// The entries of the mount table open at `fd` that `keep` accepts,
    /// read a chunk at a time and never held whole: the table has no size
    /// bound (any user can make FUSE mounts, up to fusermount3's thousand,
    /// at paths of a thousand 255-byte names, each line then megabytes).
    /// A whole-table read capped at 64 MiB used to find nothing past the
    /// cap, and the daemon then took its own mount for gone. nil when
    /// reading fails.
    public static func entries(readingFrom fd: Int32, maxLine: Int = MountInfo.maxLine,
                               where keep: (Entry) -> Bool) -> [Entry]? {
        var out: [Entry] = []
        var line: [UInt8] = []
        var skipping = false
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        func take() {
            if !skipping, let e = entry(line[...]), keep(e) { out.append(e) }
            line.removeAll(keepingCapacity: true)
            skipping = false
        }
        while true {
            let n: Int
            do { n = try FileDescriptor.read(fd, into: &chunk) } catch { return nil }
            if n == 0 { break }
            var start = 0
            while start < n {
                let newline = chunk[start..<n].firstIndex(of: UInt8(ascii: "\n"))
                let end = newline ?? n
                if !skipping {
                    if line.count + (end - start) > maxLine {
                        skipping = true
                        line.removeAll(keepingCapacity: true)
                    } else {
                        line += chunk[start..<end]
                    }
                }
                guard let newline else { break }
                take()
                start = newline + 1
            }
        }
        if !line.isEmpty || skipping { take() }
        return out
    }

    /// This process's mount table, the entries `keep` accepts; nil when it
    /// cannot be read.
    public static func current(where keep: (Entry) -> Bool) -> [Entry]? {
        let fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return entries(readingFrom: fd, where: keep)
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

    /// This process's whole mount table (tests; the daemon asks for the
    /// entries it looks for); empty when it cannot be read.
    public static func current() -> [Entry] {
        current(where: { _ in true }) ?? []
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
