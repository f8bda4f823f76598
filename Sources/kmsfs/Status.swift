import System
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
            print(StatusText.terminalSafeJSON(doc.serialized))
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
    /// The mount path of a secret named on the command line (`db.password`,
    /// `./db.password`, or `/etc/secrets/db.password` whatever the
    /// mountpoint was given as), which must be a secret of this mount, or
    /// one an open handle still holds though it is gone from SOURCE: a
    /// typo, or a SOURCE name (`db.password.encrypted`), would be held by
    /// nobody and answer "rotated" at once, and the old credential would
    /// be revoked under its users. Exit 2 for anything else.
    func secretPath(_ given: String) -> String {
        var mount = mountpoint
        if let real = realpath(mountpoint, nil) {
            mount = String(cString: real)
            free(real)
        }
        var rel = given
        if given.hasPrefix("/") {
            let prefix = mount == "/" ? "/" : mount + "/"
            guard given.hasPrefix(prefix) || given.hasPrefix(mountpoint + "/") else {
                fail("\(given) is not in the mount \(mount)", code: 2)
            }
            rel = StatusText.mountRelative(given, mountpoint: given.hasPrefix(prefix) ? mount : mountpoint)
        } else {
            rel = StatusText.mountRelative(given, mountpoint: mountpoint)
        }
        // Handles are matched by their exact mount path: `db//password`
        // or `db/./password` must become `db/password`, or the check below
        // (the kernel's lookup, which normalizes) would pass a name no
        // handle ever matches. `..` could leave the mount: refused.
        // On bytes: "/" and a combining mark after it are one Character.
        var parts: [String] = []
        for part in rel.utf8.split(separator: UInt8(ascii: "/")).map({ String(decoding: $0, as: UTF8.self) }) where part != "." {
            if part == ".." { fail("\(given): name the secret without '..'", code: 2) }
            parts.append(part)
        }
        rel = parts.joined(separator: "/")
        var st = stat()
        if !rel.isEmpty, stat(mount + "/" + rel, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFREG else { fail("\(given) is not a secret of \(mount) (a directory)", code: 2) }
            return rel
        }
        let doc = try? ControlClient.status(mountpoint: mountpoint)
        let held = (doc?["handles"]?["stale"]?.arrayValue ?? []).contains { $0["path"]?.stringValue == rel }
        guard held else {
            fail("\(given): no such secret in \(mount)\(rel.hasSuffix(".encrypted") ? " (name it without .encrypted)" : "")", code: 2)
        }
        return rel
    }

    /// Polls the daemon until no open handle of the named secrets (all
    /// when none are named) holds a version older than SOURCE's; exit 0
    /// then, or 1 at the timeout naming who still holds one.
    ///
    /// Done only after two clean looks a quarter second apart: for the
    /// few milliseconds between a rename in SOURCE and the daemon's
    /// watcher seeing it, a cache hit still hands out the old version,
    /// and its handle appears just after a look that found none.
    func waitForRotation() -> Never {
        let wanted = Set(paths.map { secretPath($0) })
        let deadline = timeout.map { SystemClock.monotonic() + $0 }
        var cleanLooks = 0
        while true {
            let doc: JSONValue
            do { doc = try ControlClient.status(mountpoint: mountpoint) } catch { fail(error.description) }
            let stale = (doc["handles"]?["stale"]?.arrayValue ?? []).filter {
                wanted.isEmpty || wanted.contains($0["path"]?.stringValue ?? "")
            }
            cleanLooks = stale.isEmpty ? cleanLooks + 1 : 0
            if cleanLooks >= 2 {
                print("rotated: no open handle holds an older version\(wanted.isEmpty ? "" : " of " + wanted.sorted().joined(separator: " "))")
                Glibc.exit(0)
            }
            if cleanLooks == 1 {
                SystemClock.sleep(0.25)
                continue
            }
            if let deadline, SystemClock.monotonic() >= deadline {
                for h in stale { Log.writeAll(2, "kmsfs: still held: " + StatusText.holder(h) + "\n") }
                fail("timed out after \(timeout.map { String(Int($0)) } ?? "?") s: \(stale.count) open handle\(stale.count == 1 ? " holds" : "s hold") an older version")
            }
            SystemClock.sleep(0.2)
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

    /// One holder of an older version, every string escaped (a path from
    /// SOURCE and a process's name are anyone's choice).
    static func holder(_ h: JSONValue) -> String {
        func s(_ v: JSONValue?) -> String { v?.stringValue.map { LogEscape.escape($0) } ?? "?" }
        func n(_ v: JSONValue?) -> Int { v?.numberValue.flatMap { $0.isFinite && abs($0) < 9e15 ? Int($0.rounded()) : nil } ?? 0 }
        let unit = h["unit"]?.stringValue.map { " unit \(LogEscape.escape($0))" } ?? ""
        let now = h["current"]?.stringValue.map { LogEscape.escape($0) } ?? "removed"
        return "\(s(h["path"])): pid \(n(h["pid"])) (\(s(h["comm"])))\(unit) holds version \(s(h["version"])) (now \(now)) for \(n(h["held_s"]))s"
    }

    /// Every string the daemon sent (names from SOURCE among them) is
    /// escaped byte by byte (`LogEscape`): a name holding CR, LF or ESC
    /// cannot add a line or drive the terminal.
    static func render(_ d: JSONValue) -> String {
        func s(_ v: JSONValue?) -> String { v?.stringValue.map { LogEscape.escape($0) } ?? "-" }
        /// A whole number, or nil for what no Int holds (nan, 1e300).
        func whole(_ v: JSONValue?) -> Int? {
            guard let d = v?.numberValue, d.isFinite, abs(d) < 9e15 else { return nil }
            return Int(d)
        }
        func i(_ v: JSONValue?) -> String { whole(v).map { String($0) } ?? "-" }
        func ms(_ v: JSONValue?) -> String { v?.numberValue.map { "\($0) ms" } ?? "-" }
        func age(_ v: JSONValue?) -> String {
            guard let t = whole(v) else { return "-" }
            if t < 60 { return "\(t)s" }
            if t < 3600 { return "\(t / 60)m\(t % 60)s" }
            return "\(t / 3600)h\(t % 3600 / 60)m"
        }
        let c = d["counters"], k = d["kms"], cache = d["cache"]
        var out = [
            "kmsfs on \(s(d["mountpoint"])) (source \(s(d["source"]))), pid \(i(d["pid"])), up \(age(d["uptime_s"])), memory \(s(d["memory"]))\(whole(d["memory_fallbacks"]).flatMap { $0 > 0 ? " (\($0) allocations since start fell back to locked memory)" : nil } ?? "")\(whole(d["ttl_s"]).map { ", ttl \($0)s" } ?? "")",
            "opens \(i(c?["opens"]))  cache hits \(i(c?["cache_hits"]))  KMS decrypts \(i(c?["decrypts"]))  shared \(i(c?["shared"]))  refreshes \(i(c?["refreshes"]))  denied \(i(c?["denials"]))  failed \(i(c?["failures"]))",
            "KMS calls \(i(k?["calls"]))  errors \(i(k?["failures"]))  retries \(i(k?["retries"]))  throttled \(i(k?["throttled"]))  latency p50 \(ms(k?["p50_ms"]))  p99 \(ms(k?["p99_ms"]))\(k?["paced_rate"]?.numberValue.map { "  paced at \($0)/s" } ?? "")",
        ]
        if let cr = d["credentials"] {
            out.append("credentials from \(s(cr["source"]))\(cr["access_key_id"]?.stringValue.map { " (\(LogEscape.escape($0)))" } ?? "")\(cr["expires"]?.stringValue.map { ", expire \(LogEscape.escape($0))" } ?? "")")
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
        if let retrying = d["rotation"]?["retrying"]?.arrayValue, !retrying.isEmpty {
            out.append("notifications that failed (the applications may hold the older version):")
            for r in retrying {
                let paths = LogEscape.escape(RotationNotifier.shown((r["paths"]?.arrayValue ?? []).compactMap(\.stringValue)))
                let next = r["next_try_s"]?.numberValue.map { "next try in \(age(.number($0)))" }
                    ?? "given up (tried again with its next notification, a remount or a reload)"
                out.append("  \(s(r["target"])) about \(paths): tries \(i(r["attempts"])), \(next): \(s(r["reason"]))")
            }
        }
        return out.joined(separator: "\n")
    }
}

extension StatusText {
    /// The daemon's JSON, still the same document, with the code points a
    /// terminal obeys but JSON allows raw (DEL, the C1 controls, the line
    /// separators and directional overrides `LogEscape` hides) written as
    /// `\uXXXX`. Outside strings JSON is ASCII, so each is inside one.
    static func terminalSafeJSON(_ json: String) -> String {
        var out = ""
        out.reserveCapacity(json.utf8.count)
        for u in json.unicodeScalars {
            let v = u.value
            if v == 0x7F || (0x80...0x9F).contains(v) || (0x2028...0x202E).contains(v) || (0x2066...0x2069).contains(v) {
                let h = String(v, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
            } else {
                out.unicodeScalars.append(u)
            }
        }
        return out
    }
}
