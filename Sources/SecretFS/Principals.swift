#if canImport(Glibc)
import Glibc
#endif

/// Resolves user and group names (or numbers) through the system's user
/// database (NSS), as `chown` does.
public enum PrincipalResolver {
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public let message: String
        public init(message: String) { self.message = message }
        public var description: String { message }
    }

    public static func uid(_ token: String) throws(Failure) -> UInt32 {
        if let n = UInt32(token) { return n }
        let (rc, id) = lookUp(16384) { buf, size -> (Int32, UInt32?) in
            var pw = passwd()
            var result: UnsafeMutablePointer<passwd>? = nil
            let rc = getpwnam_r(token, &pw, buf, size, &result)
            return (rc, result?.pointee.pw_uid)
        }
        guard let id else { throw Failure(message: notFound("user", token, rc)) }
        return id
    }

    public static func gid(_ token: String) throws(Failure) -> UInt32 {
        if let n = UInt32(token) { return n }
        let (rc, id) = lookUp(65536) { buf, size -> (Int32, UInt32?) in
            var gr = group()
            var result: UnsafeMutablePointer<group>? = nil
            let rc = getgrnam_r(token, &gr, buf, size, &result)
            return (rc, result?.pointee.gr_gid)
        }
        guard let id else { throw Failure(message: notFound("group", token, rc)) }
        return id
    }

    static func notFound(_ what: String, _ token: String, _ rc: Int32) -> String {
        rc == 0 || rc == ENOENT ? "no such \(what) '\(token)'" : "cannot look up \(what) '\(token)': \(String(cString: strerror(rc)))"
    }

    /// Calls a `get*nam_r` with a buffer that doubles while it answers
    /// ERANGE (a directory group of thousands of members), up to 16 MiB;
    /// `call` takes what it needs out of the buffer before it is freed.
    static func lookUp<T>(_ start: Int, _ call: (UnsafeMutablePointer<CChar>, Int) -> (Int32, T?)) -> (Int32, T?) {
        var size = start
        while true {
            let buf = UnsafeMutablePointer<CChar>.allocate(capacity: size)
            defer { buf.deallocate() }
            let (rc, value) = call(buf, size)
            if rc == ERANGE && size < 16 << 20 { size *= 2; continue }
            return (rc, value)
        }
    }

    /// `a:b:c` → ids; names resolved now.
    public static func uids(_ list: [String]) throws(Failure) -> Set<UInt32> {
        var out = Set<UInt32>()
        for t in list { out.insert(try uid(t)) }
        return out
    }

    public static func gids(_ list: [String]) throws(Failure) -> Set<UInt32> {
        var out = Set<UInt32>()
        for t in list { out.insert(try gid(t)) }
        return out
    }
}
