// The control socket, as root's `kmsfs status` / `mount -o remount` use
// it: every input through the server's request handling in process, and
// regularly through the real server on a socket under /run/kmsfs (a
// mountpoint name of its own): the request written, the write side shut,
// the answer read back and parsed as the client does.
@testable import KmsfsKit
@testable import AWS
import System
import SecureMemory
import Log
#if canImport(Glibc)
import Glibc
#endif

final class LiveFuzzOptions: @unchecked Sendable {
    var raw = ["allow_uid=0,ttl=300"]
}

let server: ControlServer = {
    let live = LiveFuzzOptions()
    let s = try! ControlServer(mountpoint: "/nonexistent/kmsfs-fuzz-control-\(getpid())", status: {
        .object([("mountpoint", .string("/fuzz")), ("files", .number(1))])
    }, remount: { changes in
        do throws(OptionError) {
            let (raw, new) = try MountOptions.remounted(live.raw, with: [changes])
            _ = try Configuration.filesystem(new)
            live.raw = raw
            return .success("options now \(raw.joined(separator: ","))")
        } catch {
            return .failure(error)
        }
    })
    s.start()
    atexit { unlink(ControlSocket.path(for: "/nonexistent/kmsfs-fuzz-control-\(getpid())")) }
    return s
}()

/// The server's request handling without the socket (as ControlServer.serve
/// does it: at most 64 KiB, cut at the first newline, `remount ` or a
/// status word), fed through a pipe so readMessage sees real reads.
func handleInProcess(_ data: [UInt8]) {
    var fds: [Int32] = [0, 0]
    guard pipe(&fds) == 0 else { return }
    defer { close(fds[0]) }
    data.withUnsafeBytes { Log.writeAll(fds[1], $0) }
    close(fds[1])
    guard case .success(var line) = readMessage(fds[0], limit: 65536, throughNewline: true) else { return }
    if let nl = line.firstIndex(of: UInt8(ascii: "\n")) { line.removeSubrange(nl...) }
    let request = String(decoding: line, as: UTF8.self)
    if request.hasPrefix("remount ") {
        if let (_, new) = try? MountOptions.remounted(["allow_uid=0,ttl=300"], with: [String(request.dropFirst(8))]) {
            _ = try? Configuration.filesystem(new)
        }
        return
    }
    _ = request.filter { $0 != " " && $0 != "\r" && $0 != "\t" } == "status"
}

nonisolated(unsafe) var inputs = 0

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ p: UnsafePointer<UInt8>?, _ n: Int) -> Int32 {
    let data = fuzzInput(p, n)
    guard data.count <= 60_000 else { return 0 }    // a pipe holds 64 KiB
    handleInProcess(data)
    // Every 32nd input (and every seed, the first ones) also goes to the
    // real server over its socket: a round trip through another thread
    // costs 30 in-process runs.
    inputs += 1
    guard inputs <= 64 || inputs % 32 == 0 else { return 0 }
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    precondition(fd >= 0)
    defer { close(fd) }
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let path = Array(server.path.utf8)
    withUnsafeMutableBytes(of: &addr.sun_path) { b in for (i, c) in path.enumerated() { b[i] = c } }
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    precondition(rc == 0, "cannot connect to the control socket")
    data.withUnsafeBytes { Log.writeAll(fd, $0) }
    shutdown(fd, Int32(SHUT_WR))
    guard case .success(let answer) = readMessage(fd, limit: 1 << 20) else { return 0 }
    let doc = answer.withUnsafeBytes { JSONValue.parse($0) }
    precondition(doc != nil, "the control channel answered something that is not JSON")
    _ = doc?["error"]?.stringValue
    return 0
}
