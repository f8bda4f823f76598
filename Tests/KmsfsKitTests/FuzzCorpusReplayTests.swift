import System
import Testing
import KmsfsKit
import AWS
import KMS
import SecretFS
import SecureMemory
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Replays every committed fuzz seed (fuzz/corpus/TARGET/*) through the
/// public entry points of the parsers the libFuzzer targets in
/// fuzz/targets drive, in the normal unit-test build: CI checks the
/// corpora without a fuzz build or a timed fuzz (`make fuzz` does those;
/// see docs/fuzzing.md). A crash the fuzzer
/// finds is kept as a seed here, so it stays fixed.
@Suite struct FuzzCorpusReplayTests {
    static let root: String = {
        var p = #filePath
        for _ in 0..<3 { p = String(p[..<(p.lastIndex(of: "/") ?? p.startIndex)]) }
        return p + "/fuzz/corpus"
    }()

    static func inputs(_ target: String) -> [(name: String, bytes: [UInt8])] {
        let dir = root + "/" + target
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var out: [(String, [UInt8])] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            guard !name.hasPrefix(".") else { continue }
            if case .success(let b) = readSmallFile(dir + "/" + name) { out.append((name, b)) }
        }
        return out.sorted { $0.0 < $1.0 }
    }

    /// As fuzz/Support.swift: parts split at 0xFF.
    static func parts(_ d: [UInt8]) -> [[UInt8]] {
        d.split(separator: 0xFF, omittingEmptySubsequences: false).map(Array.init)
    }

    final class Answers: HTTPTransport, @unchecked Sendable {
        static let statuses = [200, 200, 200, 200, 400, 401, 403, 404, 429, 500, 503]
        let parts: [[UInt8]]
        let calls = Mutex(0)
        init(_ parts: [[UInt8]]) { self.parts = parts.isEmpty ? [[]] : parts }
        func send(_ request: HTTPRequest) throws(TransportError) -> HTTPResponse {
            let n = calls.withLock { c in defer { c += 1 }; return c }
            if n > 16 { throw TransportError(.connect, "replay: too many requests") }
            var part = parts[min(n, parts.count - 1)]
            var status = 200
            if let first = part.first { status = Answers.statuses[Int(first) % Answers.statuses.count]; part.removeFirst() }
            let buf = try! SecureBuffer(capacity: max(part.count, 1))
            part.withUnsafeBytes { try! buf.append($0) }
            return HTTPResponse(status: status, headers: [], body: buf)
        }
        func trimIdle(olderThan seconds: Double) -> Int { 0 }
    }

    static let clock = Clock(now: { Timestamp(seconds: 1_700_000_000) }, monotonic: { 1000 }, sleep: { _ in })
    static func retry() -> RetryStrategy {
        var r = RetryStrategy.Configuration()
        r.maxAttempts = 2
        r.baseDelay = 0
        r.maxBackoff = 0
        return RetryStrategy(r, random: { 0 })
    }
    static func kms(_ answers: [[UInt8]]) -> KMSClient {
        KMSClient(region: "us-east-1", endpoint: URLParts("http://127.0.0.1:1")!,
                  credentials: StaticCredentialProvider(try! AWSCredentials(accessKeyId: "AKID", secretAccessKey: "SECRET", source: "replay", kind: .other)),
                  transport: Answers(answers), clock: clock, retry: retry())
    }

    @Test func everyTargetHasSeeds() {
        for t in ["esdk", "base64", "json", "policy", "mountopts", "sharedconfig", "credentials", "kmsresponse", "control", "localsockets", "sourcenames"] {
            #expect(!FuzzCorpusReplayTests.inputs(t).isEmpty, "no seeds in fuzz/corpus/\(t)")
        }
    }

    @Test func esdk() {
        for (_, data) in FuzzCorpusReplayTests.inputs("esdk") {
            _ = try? EncryptionSDKMessage.parseHeader(data)
            let kms = KMSClient(region: "us-east-1", endpoint: URLParts("http://127.0.0.1:1")!,
                                credentials: FailingCredentialProvider(name: "replay", error: .notConfigured("replay")),
                                transport: Answers([]), clock: FuzzCorpusReplayTests.clock, retry: FuzzCorpusReplayTests.retry())
            let flags = data.last ?? 0
            for commitment in [false, true] {
                _ = try? CiphertextDecoder(kms: kms, requiredContext: flags & 1 == 0 ? [] : [("app", "web")],
                                           requirePathBinding: flags & 2 != 0, requireCommitment: commitment).decrypt(data, path: "db/password")
            }
        }
    }

    @Test func base64() {
        for (name, data) in FuzzCorpusReplayTests.inputs("base64") {
            _ = CiphertextDecoder.detect(data)
            #expect(Base64.decode(Base64.encode(data)) == data, "\(name)")
            if let d = Base64.decode(String(decoding: data, as: UTF8.self)) {
                #expect(Base64.decode(Base64.encode(d)) == d, "\(name)")
            }
        }
    }

    @Test func json() {
        for (name, data) in FuzzCorpusReplayTests.inputs("json") {
            data.withUnsafeBytes { raw in
                if let v = JSONValue.parse(raw) { #expect(JSONValue.parse(v.serialized) != nil, "\(name)") }
                for key in ["Plaintext", "KeyId", "CiphertextBlob", "__type", "message"] {
                    #expect(JSONScanner.agreesWithParser(key, in: raw), "\(name): \(key)")
                }
            }
        }
    }

    @Test func policy() {
        let resolve: (String) throws(PrincipalResolver.Failure) -> UInt32 = { (s: String) throws(PrincipalResolver.Failure) in
            if let n = UInt32(s) { return n }
            if let n = ["root": 0, "app": 1000, "web": 1001][s] { return UInt32(n) }
            throw PrincipalResolver.Failure(message: "no such principal '\(s)'")
        }
        for (_, data) in FuzzCorpusReplayTests.inputs("policy") {
            _ = try? PolicyFile.parse(String(decoding: data, as: UTF8.self), file: "replay", uid: resolve, gid: resolve)
        }
    }

    /// SOURCE names and inotify records: what the target checks, asserted.
    @Test func sourceNames() {
        for (name, data) in FuzzCorpusReplayTests.inputs("sourcenames") {
            if let s = String(validating: data, as: UTF8.self), let shown = SourceTree.shownName(ofCiphertext: s) {
                #expect(Array(shown.utf8) + Array(".encrypted".utf8) == data, "\(name)")
            }
            #expect(SourceTree.escapedBytes(data).utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "'") })
            let events = data.withUnsafeBytes { SourceWatcher.events(in: $0) }
            #expect(events.count <= data.count / 16, "\(name)")
        }
        let two = FuzzCorpusReplayTests.inputs("sourcenames").first { $0.0 == "inotify-two" }!.1
        let events = two.withUnsafeBytes { SourceWatcher.events(in: $0) }
        #expect(events.map(\.name) == ["db.password.encrypted", "tls"])
        #expect(events.map(\.mask) == [0x8, 0x100])
        let bad = FuzzCorpusReplayTests.inputs("sourcenames").first { $0.0 == "inotify-not-utf8" }!.1
        #expect(bad.withUnsafeBytes { SourceWatcher.events(in: $0) }.map(\.name) == [""])
        #expect(bad.withUnsafeBytes { SourceWatcher.events(in: $0) }.map(\.mask) == [0x400])
    }

    @Test func mountOptions() {
        for (_, data) in FuzzCorpusReplayTests.inputs("mountopts") {
            let args = FuzzCorpusReplayTests.parts(data).map { String(decoding: $0, as: UTF8.self) }
            _ = MountOptions.remountChanges(args)
            if let o = try? MountOptions.parse(args) { _ = try? Configuration.filesystem(o) }
            if args.count >= 2 { _ = try? MountOptions.remounted([args[0]], with: Array(args.dropFirst())) }
        }
    }

    @Test func sharedConfig() {
        for (_, data) in FuzzCorpusReplayTests.inputs("sharedconfig") {
            let p = FuzzCorpusReplayTests.parts(data).map { String(decoding: $0, as: UTF8.self) }
            _ = try? SharedConfigFiles.parse(config: p[0], credentials: p.count > 1 ? p[1] : nil)
            _ = ProcessCredentialProvider.split(p[0])
        }
    }

    @Test func credentials() {
        for (_, var data) in FuzzCorpusReplayTests.inputs("credentials") {
            guard let selector = data.first else { continue }
            data.removeFirst()
            let t = Answers(FuzzCorpusReplayTests.parts(data))
            switch selector % 5 {
            case 0:
                var c = ContainerCredentialProvider(environment: Environment(["AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:1/creds"]),
                                                    transport: t, clock: FuzzCorpusReplayTests.clock)
                c.attempts = 2
                c.pause = 0
                _ = try? c.credentials()
            case 1:
                _ = try? IMDSCredentialProvider(client: IMDSClient(endpoint: URLParts("http://169.254.169.254")!, transport: t,
                                                                   clock: FuzzCorpusReplayTests.clock, attempts: 2)).credentials()
            case 2:
                let sts = STSClient(endpoint: URLParts("https://sts.us-east-1.amazonaws.com")!, region: "us-east-1", transport: t,
                                    clock: FuzzCorpusReplayTests.clock, retry: FuzzCorpusReplayTests.retry())
                _ = try? sts.assumeRole(roleArn: "arn:aws:iam::1:role/r", sessionName: "s",
                                        sourceCredentials: try! AWSCredentials(accessKeyId: "A", secretAccessKey: "S", source: "r", kind: .other), source: "r")
            case 3:
                if let doc = data.withUnsafeBytes({ JSONValue.parse($0) }) {
                    _ = doc["Expiration"]?.stringValue.flatMap { Timestamp.parseISO8601($0) }
                }
            default:
                _ = Timestamp.parseISO8601(String(decoding: data, as: UTF8.self))
            }
        }
    }

    @Test func kmsResponses() {
        for (_, data) in FuzzCorpusReplayTests.inputs("kmsresponse") {
            for line in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
                _ = ResponseHeaderLine(line)
            }
            _ = try? FuzzCorpusReplayTests.kms(FuzzCorpusReplayTests.parts(data)).decrypt(ciphertextBlob: [1, 2, 3])
        }
    }

    /// The control channel's request handling without a socket: the line
    /// as the server cuts it, then a remount through the option parser.
    @Test func controlRequests() {
        for (_, data) in FuzzCorpusReplayTests.inputs("control") {
            var line = data
            if let nl = line.firstIndex(of: UInt8(ascii: "\n")) { line.removeSubrange(nl...) }
            let request = String(decoding: line, as: UTF8.self)
            if request.hasPrefix("remount ") {
                if let (_, new) = try? MountOptions.remounted(["allow_uid=0,ttl=300"], with: [String(request.dropFirst(8))]) {
                    _ = try? Configuration.filesystem(new)
                }
            }
        }
    }

    @Test func localsockets() {
        for (name, data) in FuzzCorpusReplayTests.inputs("localsockets") {
            _ = MetricsServer.route(data)
            _ = MetricsServer.hostAllowed(data)
            _ = MountInfo.unescape(Substring(String(decoding: data, as: UTF8.self)))
            if let r = CredentialServer.parseAddress(data) {
                #expect(SystemdUnitName.isValid(r.unit) && SystemdCredentialID.isValid(r.id), "\(name)")
            }
            if let u = unitFromCgroup(data) { #expect(u.hasSuffix(".service") || u.hasSuffix(".scope"), "\(name)") }
            _ = MetricsAddress.parse(String(decoding: data, as: UTF8.self))
        }
    }
}
