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
        var pw = passwd()
        var result: UnsafeMutablePointer<passwd>? = nil
        var buf = [CChar](repeating: 0, count: 16384)
        let rc = getpwnam_r(token, &pw, &buf, buf.count, &result)
        guard rc == 0, let r = result else { throw Failure(message: "no such user '\(token)'") }
        return r.pointee.pw_uid
    }

    public static func gid(_ token: String) throws(Failure) -> UInt32 {
        if let n = UInt32(token) { return n }
        var gr = group()
        var result: UnsafeMutablePointer<group>? = nil
        var buf = [CChar](repeating: 0, count: 65536)
        let rc = getgrnam_r(token, &gr, &buf, buf.count, &result)
        guard rc == 0, let r = result else { throw Failure(message: "no such group '\(token)'") }
        return r.pointee.gr_gid
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
