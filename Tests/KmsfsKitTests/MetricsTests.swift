import Testing
import KmsfsKit
import AWS

@Suite struct MetricsTests {
    @Test func loopbackAddressesAreAcceptedAndOthersRefused() throws {
        for ok in ["127.0.0.1:9464", "127.1.2.3:1", "localhost:9464", "[::1]:9464", "unix:/run/kmsfs/m.sock"] {
            #expect(throws: Never.self) { try MetricsAddress.parse(ok).get() }
        }
        for bad in ["0.0.0.0:9464", "10.0.0.1:9464", "[::]:9464", "[::ffff:127.0.0.1]:1", "127.evil.example:80",
                    "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1: 80", ":80",
                    "unix:rel.sock", "[::1]9464", "[::1"] {
            #expect(throws: OptionError.self) { try MetricsAddress.parse(bad).get() }
        }
    }

    @Test func theOptionParsesAndCannotChangeOnALiveMount() throws {
        let o = try MountOptions.parse(["metrics=127.0.0.1:9464,metrics_per_secret"])
        #expect(o.metrics == .tcp(host: "127.0.0.1", port: 9464))
        #expect(o.metricsPerSecret)
        #expect(throws: OptionError.self) {
            try MountOptions.remounted(["metrics=127.0.0.1:9464"], with: ["metrics=127.0.0.1:9465"])
        }
    }

    @Test func requestsAreRoutedByTheRequestLineOnly() {
        func route(_ s: String) -> MetricsServer.Route { MetricsServer.route(Array(s.utf8)) }
        #expect(route("GET /metrics HTTP/1.1\r\n\r\n") == .metrics(headOnly: false))
        #expect(route("HEAD /metrics?x=1 HTTP/1.0\r\n\r\n") == .metrics(headOnly: true))
        #expect(route("GET / HTTP/1.1\r\n\r\n") == .notFound)
        #expect(route("GET /metricsX HTTP/1.1\r\n\r\n") == .notFound)
        #expect(route("POST /metrics HTTP/1.1\r\n\r\n") == .badMethod)
        #expect(route("GET /metrics\r\n\r\n") == .bad)
        #expect(route("\u{0}\u{ff}\r\n\r\n") == .bad)
        #expect(route("") == .bad)
    }

    @Test func theHostHeaderIsFoundOnBytes() {
        func allowed(_ head: String) -> Bool { MetricsServer.hostAllowed(Array(head.utf8)) }
        #expect(allowed("GET /metrics HTTP/1.1\r\n\r\n"))
        #expect(allowed("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9464\r\n\r\n"))
        #expect(allowed("GET /metrics HTTP/1.1\r\nhost:localhost\r\n\r\n"))
        #expect(allowed("GET /metrics HTTP/1.1\r\nHost: [::1]:9464\r\n\r\n"))
        #expect(!allowed("GET /metrics HTTP/1.1\r\nHost: evil.example\r\n\r\n"))
        // ":" and a combining mark after it are one Character: a Character
        // search found no colon, and so no Host line, and let it through.
        #expect(!allowed("GET /metrics HTTP/1.1\r\nHost:\u{301}evil.example\r\n\r\n"))
        #expect(!allowed("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:\u{301}9464\r\n\r\n"))
    }

    @Test func labelValuesCannotForgeALine() {
        let doc = JSONValue.object([
            ("cache", .object([("entries", .array([.object([("path", .string("a\"b\\c\nkmsfs_fake 1\r")), ("hits", .number(2))])])),
                               ("bytes", .number(4096))])),
        ])
        let text = PrometheusText.render(doc, perSecret: true)
        #expect(text.contains(#"kmsfs_secret_hits_total{path="a\"b\\c\nkmsfs_fake 1\#u{FFFD}"} 2"#))
        #expect(!text.split(separator: "\n").contains { $0.hasPrefix("kmsfs_fake") })
        #expect(!PrometheusText.render(doc).contains("kmsfs_secret_hits_total{"))
    }

    /// Where the credentials came from, by kind only: the whole source
    /// (`kmsfs status`) names roles, profiles and account IDs.
    @Test(arguments: [
        ("environment", "environment"), ("container credentials 169.254.170.2", "container"),
        ("instance role web-prod-role", "instance-role"), ("credential_process (profile vault)", "credential-process"),
        ("web identity arn:aws:iam::111122223333:role/eks-app", "web-identity"),
        ("profile deploy (role arn:aws:iam::111122223333:role/deploy)", "assumed-role"), ("profile default", "profile"),
        ("something new", "other"),
    ])
    func credentialsInfoNamesTheKindOfSourceOnly(source: String, kind: String) {
        // As status has them: the source whole, and its kind beside it.
        let text = PrometheusText.render(.object([("credentials", .object([("source", .string(source)), ("kind", .string(kind))]))]))
        #expect(text.contains("kmsfs_credentials_info{source=\"\(kind)\"} 1"))
        for identifier in ["111122223333", "web-prod-role", "vault", "deploy", "169.254.170.2"] {
            #expect(!text.contains(identifier))
        }
    }

    /// Before the first credentials are fetched, status names the provider
    /// (where kmsfs will look), not a source: the kind is `pending`.
    @Test func credentialsNotFetchedYetArePending() {
        let doc = JSONValue.object([("credentials", .object([("source", .string("profile deploy")), ("kind", .string("pending"))]))])
        #expect(PrometheusText.render(doc).contains("kmsfs_credentials_info{source=\"pending\"} 1"))
    }

    @Test func everySampleBelongsToADeclaredFamily() {
        let text = PrometheusText.render(.object([("kms", .object([("latency_buckets", .array([.array([.number(0.005), .number(1)])])),
                                                                    ("latency_count", .number(1)), ("latency_sum_s", .number(0.004))]))]))
        var families = Set<String>()
        for line in text.split(separator: "\n") {
            if line.hasPrefix("# TYPE ") { families.insert(String(line.split(separator: " ")[2])); continue }
            if line.hasPrefix("#") { continue }
            let name = String(line.prefix { $0 != "{" && $0 != " " })
            let base = ["_bucket", "_sum", "_count"].reduce(name) { n, s in n.hasSuffix(s) && !families.contains(n) ? String(n.dropLast(s.count)) : n }
            #expect(families.contains(base), "\(name) has no # TYPE")
        }
        #expect(text.contains("kmsfs_kms_request_duration_seconds_bucket{operation=\"Decrypt\",le=\"0.005\"} 1"))
    }
}
