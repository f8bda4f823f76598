import System
import SecureMemory
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// An open handle as `kmsfs status` shows it: which version of which
/// secret a process opened, and since when. Never plaintext.
public struct HeldHandle: Sendable {
    public var sourcePath: String
    public var mountPath: String
    public var version: String
    public var pid: Int32
    public var uid: UInt32
    /// Wall-clock seconds since the epoch.
    public var openedAt: Double
}

/// Every open handle of the mount, keyed by a handle number. An
/// `OpenSecret` registers itself on open and leaves when the kernel
/// releases it (its deinit), so the table can never hold a closed handle.
/// It holds at most one entry per open file description the kernel keeps.
public final class HandleTable: Sendable {
    private struct State {
        var next: UInt64 = 1
        var handles: [UInt64: HeldHandle] = [:]
    }
    private let state = Mutex(State())

    public init() {}

    func add(_ h: HeldHandle) -> UInt64 {
        state.withLock { s in
            let id = s.next
            s.next &+= 1
            s.handles[id] = h
            return id
        }
    }

    func remove(_ id: UInt64) {
        _ = state.withLock { $0.handles.removeValue(forKey: id) }
    }

    public var all: [HeldHandle] { state.withLock { Array($0.handles.values) } }
    public var count: Int { state.withLock { $0.handles.count } }
}

/// The version of a ciphertext when no better digest is given: FNV-1a 64
/// in hex (the daemon injects a SHA-256 prefix).
public func fnvVersion(_ bytes: [UInt8]) -> String {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes {
        h ^= UInt64(b)
        h = h &* 0x100_0000_01b3
    }
    let hex = String(h, radix: 16)
    return String(repeating: "0", count: 16 - hex.count) + hex
}

/// The systemd unit a process runs in, from its cgroup (v2:
/// `0::/system.slice/nginx.service`), or nil: the first component after
/// the leading `*.slice` ones, as systemd's `sd_pid_get_unit` reads it.
/// Never a deeper one: below a unit's own cgroup the tree may be delegated
/// to someone else (`user@UID.service` to that user's manager, a
/// `Delegate=yes` service or a container to its payload), who can name a
/// sub-cgroup `nginx.service`.
public func systemdUnit(pid: Int32) -> String? {
    let fd: FileDescriptor
    do { fd = try FileDescriptor.open("/proc/\(pid)/cgroup", O_RDONLY) } catch { return nil }
    var buf = [UInt8](repeating: 0, count: 4096)
    let got = (try? fd.read(filling: &buf)) ?? 0
    return unitFromCgroup(Array(buf[0..<got]))
}

/// The systemd unit of a process that is still alive when the answer is
/// given (`whileProcessLives`: no PID-reuse race), for `allow_unit=`.
public func liveSystemdUnit(pid: Int32) -> String? {
    whileProcessLives(pid) { systemdUnit(pid: pid) }
}

/// The same for a process pinned by `pidfd` since before (a socket peer's,
/// taken at connect): a PID reused meanwhile is never read as it.
public func liveSystemdUnit(pidfd: Int32, pid: Int32) -> String? {
    whileProcessLives(pidfd: pidfd, pid: pid) { systemdUnit(pid: pid) }
}

/// The unit named by a `/proc/PID/cgroup` document (see `systemdUnit`).
public func unitFromCgroup(_ doc: [UInt8]) -> String? {
    for line in doc.split(separator: UInt8(ascii: "\n")) {
        // cgroup v2 is the line with hierarchy 0 and no controllers; v1's
        // name=systemd line has the same path.
        let fields = line.split(separator: UInt8(ascii: ":"), maxSplits: 2, omittingEmptySubsequences: false)
        guard fields.count == 3 else { continue }
        let isV2 = fields[0].elementsEqual("0".utf8) && fields[1].isEmpty
        let isV1 = fields[1].elementsEqual("name=systemd".utf8)
        guard isV2 || isV1 else { continue }
        // Past the slices, the next component is the unit (or there is none).
        let components = fields[2].split(separator: UInt8(ascii: "/"))
        guard let c = components.first(where: { !$0.suffix(6).elementsEqual(".slice".utf8) }) else { continue }
        let name = String(decoding: c, as: UTF8.self)
        guard name.utf8.allSatisfy({ $0 > 32 && $0 < 127 }), name.hasSuffix(".service") || name.hasSuffix(".scope") else { continue }
        return name
    }
    return nil
}
