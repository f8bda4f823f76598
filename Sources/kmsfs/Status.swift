import ArgumentParser
import KmsfsKit
import AWS
import Log

/// `kmsfs status MOUNTPOINT`: the cache and counters of a live mount, read
/// over its root-only control socket. Never plaintext.
struct LiveStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the cached secrets and counters of a live mount (root only; no plaintext).")

    @Flag(help: "Print the daemon's JSON document.")
    var json = false

    @Argument(help: "The mountpoint.")
    var mountpoint: String

    func run() throws {
        let doc: JSONValue
        do { doc = try ControlClient.status(mountpoint: mountpoint) } catch { fail(error.description) }
        if json {
            print(StatusText.terminalSafeJSON(doc.serialized))
            return
        }
        print(StatusText.render(doc))
    }
}

enum StatusText {
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
            "kmsfs on \(s(d["mountpoint"])) (source \(s(d["source"]))), pid \(i(d["pid"])), up \(age(d["uptime_s"])), memory \(s(d["memory"]))\(whole(d["ttl_s"]).map { ", ttl \($0)s" } ?? "")",
            "opens \(i(c?["opens"]))  cache hits \(i(c?["cache_hits"]))  KMS decrypts \(i(c?["decrypts"]))  shared \(i(c?["shared"]))  refreshes \(i(c?["refreshes"]))  denied \(i(c?["denials"]))  failed \(i(c?["failures"]))",
            "KMS calls \(i(k?["calls"]))  errors \(i(k?["failures"]))  retries \(i(k?["retries"]))  throttled \(i(k?["throttled"]))  latency p50 \(ms(k?["p50_ms"]))  p99 \(ms(k?["p99_ms"]))",
        ]
        if let cr = d["credentials"] {
            out.append("credentials from \(s(cr["source"]))\(cr["access_key_id"]?.stringValue.map { " (\(LogEscape.escape($0)))" } ?? "")\(cr["expires"]?.stringValue.map { ", expire \(LogEscape.escape($0))" } ?? "")")
        }
        let entries = cache?["entries"]?.arrayValue ?? []
        out.append("cached secrets: \(entries.count) (\(i(cache?["bytes"])) bytes of locked memory)")
        if !entries.isEmpty {
            let rows = entries.map { e in [s(e["path"]), i(e["size"]), age(e["age_s"]), i(e["hits"]), s(e["format"]), s(e["key_id"])] }
            let header = ["NAME", "SIZE", "AGE", "HITS", "FORMAT", "KEY"]
            var widths = header.map(\.count)
            for r in rows { for (j, f) in r.enumerated() { widths[j] = max(widths[j], f.count) } }
            func line(_ r: [String]) -> String {
                r.enumerated().map { j, f in j == r.count - 1 ? f : f + String(repeating: " ", count: widths[j] - f.count) }
                    .joined(separator: "  ")
            }
            out.append("  " + line(header))
            for r in rows { out.append("  " + line(r)) }
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
