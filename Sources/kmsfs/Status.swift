import ArgumentParser
import KmsfsKit
import AWS
import Log
#if canImport(Glibc)
import Glibc
#endif

/// `kmsfs status MOUNTPOINT`: the cache and counters of a live mount, read
/// over its root-only control socket. Never plaintext.
struct LiveStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the cached secrets and counters of a live mount (root only; no plaintext).")

    @Flag(help: "Print the daemon's JSON document.")
    var json = false

    @Flag(help: "Print Prometheus' text exposition (for node_exporter's textfile collector).")
    var prometheus = false

    @Flag(help: "With --prometheus: also the per-secret series.")
    var perSecret = false

    @Flag(help: "Wait until no open handle holds an older version of the named secrets (or of any); exit 1 on timeout.")
    var waitRotated = false

    @Option(help: "With --wait-rotated: give up after this many seconds (default: wait until done).")
    var timeout: Double?

    @Argument(help: "The mountpoint.")
    var mountpoint: String

    @Argument(help: "With --wait-rotated: secrets to wait for (paths in the mount).")
    var paths: [String] = []

    func validate() throws {
        if json && prometheus { throw ValidationError("give --json or --prometheus, not both") }
        if perSecret && !prometheus { throw ValidationError("--per-secret goes with --prometheus") }
        if !paths.isEmpty && !waitRotated { throw ValidationError("secret paths go with --wait-rotated") }
        if timeout != nil && !waitRotated { throw ValidationError("--timeout goes with --wait-rotated") }
        if let t = timeout, !(t >= 0 && t <= 31_536_000) { throw ValidationError("--timeout: expected seconds from 0 to 31536000") }
        if waitRotated && (json || prometheus) { throw ValidationError("--wait-rotated prints its own lines; drop --json/--prometheus") }
    }

    func run() throws {
        if waitRotated { waitForRotation() }
        let doc: JSONValue
        do { doc = try ControlClient.status(mountpoint: mountpoint) } catch { fail(error.description) }
        if json {
            print(doc.serialized)
            return
        }
        if prometheus {
            print(PrometheusText.render(doc, perSecret: perSecret), terminator: "")
            return
        }
        print(StatusText.render(doc))
    }
}

extension LiveStatusCommand {
    /// Polls the daemon until no open handle of the named secrets (all
    /// when none are named) holds a version older than SOURCE's; exit 0
    /// then, or 1 at the timeout naming who still holds one.
    func waitForRotation() -> Never {
        let wanted = Set(paths.map { StatusText.mountRelative($0, mountpoint: mountpoint) })
        let deadline = timeout.map { monotonicSeconds() + $0 }
        while true {
            let doc: JSONValue
            do { doc = try ControlClient.status(mountpoint: mountpoint) } catch { fail(error.description) }
            let stale = (doc["handles"]?["stale"]?.arrayValue ?? []).filter {
                wanted.isEmpty || wanted.contains($0["path"]?.stringValue ?? "")
            }
            if stale.isEmpty {
                print("rotated: no open handle holds an older version\(wanted.isEmpty ? "" : " of " + wanted.sorted().joined(separator: " "))")
                Glibc.exit(0)
            }
            if let deadline, monotonicSeconds() >= deadline {
                for h in stale { Log.writeAll(2, "kmsfs: still held: " + StatusText.holder(h) + "\n") }
                fail("timed out after \(timeout.map { String(Int($0)) } ?? "?") s: \(stale.count) open handle\(stale.count == 1 ? "" : "s") hold an older version")
            }
            usleep(200_000)
        }
    }
}

enum StatusText {
    /// `secret/x`, `/etc/secrets/secret/x` or `./secret/x` as the mount path `secret/x`.
    static func mountRelative(_ p: String, mountpoint: String) -> String {
        var m = mountpoint
        while m.count > 1 && m.hasSuffix("/") { m.removeLast() }
        var s = Substring(p)
        if s.hasPrefix(m + "/") { s = s.dropFirst(m.count + 1) }
        while s.hasPrefix("./") { s = s.dropFirst(2) }
        while s.hasPrefix("/") { s = s.dropFirst() }
        return String(s)
    }

    static func holder(_ h: JSONValue) -> String {
        let unit = h["unit"]?.stringValue.map { " unit \($0)" } ?? ""
        let held = h["held_s"]?.numberValue.flatMap { Int(exactly: $0.rounded()) } ?? 0
        return "\(h["path"]?.stringValue ?? "?"): pid \(h["pid"]?.numberValue.flatMap { Int(exactly: $0) } ?? 0) (\(h["comm"]?.stringValue ?? "?"))\(unit) holds version \(h["version"]?.stringValue ?? "?") (now \(h["current"]?.stringValue ?? "removed")) for \(held)s"
    }

    static func render(_ d: JSONValue) -> String {
        func s(_ v: JSONValue?) -> String { v?.stringValue ?? "-" }
        func i(_ v: JSONValue?) -> String { v?.numberValue.map { String(Int($0)) } ?? "-" }
        func ms(_ v: JSONValue?) -> String { v?.numberValue.map { "\($0) ms" } ?? "-" }
        func age(_ v: JSONValue?) -> String {
            guard let t = v?.numberValue.map({ Int($0) }) else { return "-" }
            if t < 60 { return "\(t)s" }
            if t < 3600 { return "\(t / 60)m\(t % 60)s" }
            return "\(t / 3600)h\(t % 3600 / 60)m"
        }
        let c = d["counters"], k = d["kms"], cache = d["cache"]
        var out = [
            "kmsfs on \(s(d["mountpoint"])) (source \(s(d["source"]))), pid \(i(d["pid"])), up \(age(d["uptime_s"])), memory \(s(d["memory"]))\(d["ttl_s"]?.numberValue.map { ", ttl \(Int($0))s" } ?? "")",
            "opens \(i(c?["opens"]))  cache hits \(i(c?["cache_hits"]))  KMS decrypts \(i(c?["decrypts"]))  shared \(i(c?["shared"]))  refreshes \(i(c?["refreshes"]))  denied \(i(c?["denials"]))  failed \(i(c?["failures"]))",
            "KMS calls \(i(k?["calls"]))  errors \(i(k?["failures"]))  retries \(i(k?["retries"]))  throttled \(i(k?["throttled"]))  latency p50 \(ms(k?["p50_ms"]))  p99 \(ms(k?["p99_ms"]))",
        ]
        if let cr = d["credentials"] {
            out.append("credentials from \(s(cr["source"]))\(cr["access_key_id"]?.stringValue.map { " (\($0))" } ?? "")\(cr["expires"]?.stringValue.map { ", expire \($0)" } ?? "")")
        }
        let entries = cache?["entries"]?.arrayValue ?? []
        out.append("cached secrets: \(entries.count) (\(i(cache?["bytes"])) bytes of locked memory)")
        if !entries.isEmpty {
            let rows = entries.map { e in [s(e["path"]), s(e["version"]), i(e["size"]), age(e["age_s"]), i(e["hits"]), s(e["format"]), s(e["key_id"])] }
            let header = ["NAME", "VERSION", "SIZE", "AGE", "HITS", "FORMAT", "KEY"]
            var widths = header.map(\.count)
            for r in rows { for (j, f) in r.enumerated() { widths[j] = max(widths[j], f.count) } }
            func line(_ r: [String]) -> String {
                r.enumerated().map { j, f in j == r.count - 1 ? f : f + String(repeating: " ", count: widths[j] - f.count) }
                    .joined(separator: "  ")
            }
            out.append("  " + line(header))
            for r in rows { out.append("  " + line(r)) }
        }
        let stale = d["handles"]?["stale"]?.arrayValue ?? []
        if !stale.isEmpty {
            out.append("older versions still open: \(stale.count)")
            for h in stale { out.append("  " + holder(h)) }
        }
        if let r = d["rotation"], let failures = r["failures"]?.arrayValue, !failures.isEmpty {
            out.append("rotations that did not decrypt (nobody was told):")
            for f in failures { out.append("  \(s(f["path"])): \(s(f["reason"]))") }
        }
        return out.joined(separator: "\n")
    }
}
