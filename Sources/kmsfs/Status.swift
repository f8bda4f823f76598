import ArgumentParser
import KmsfsKit
import AWS

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

    @Argument(help: "The mountpoint.")
    var mountpoint: String

    func validate() throws {
        if json && prometheus { throw ValidationError("give --json or --prometheus, not both") }
        if perSecret && !prometheus { throw ValidationError("--per-secret goes with --prometheus") }
    }

    func run() throws {
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

enum StatusText {
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
