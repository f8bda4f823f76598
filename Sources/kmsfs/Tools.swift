import ArgumentParser
import KmsfsKit
import AWS
import KMS
import SecretFS
import SecureMemory
import Log
#if canImport(Glibc)
import Glibc
#endif

/// Shared by the tools: the AWS settings from the environment (and the
/// same options the mount takes).
struct AWSOptions: ParsableArguments {
    @Option(help: "AWS region (default: AWS_REGION, AWS_DEFAULT_REGION).")
    var region: String?

    @Option(help: "KMS endpoint URL (default: AWS_ENDPOINT_URL_KMS, AWS_ENDPOINT_URL, the regional endpoint).")
    var endpoint: String?

    @Option(help: "Shared-config profile (default: AWS_PROFILE).")
    var profile: String?

    func settings() -> AWSSettings {
        do {
            return try AWSSettings.resolve(region: region, endpoint: endpoint, profile: profile, caBundle: nil,
                                           maxAttempts: nil, timeout: nil, environment: Environment.process())
        } catch {
            fail(error.message, code: 2)
        }
    }
}

/// Tools handle plaintext too: same hardening as the daemon, best effort.
func hardenTool() {
    ProcessHardening.forbidCoreDumps()
    SecureMemoryPolicy.allowUnlocked = true
    Log.configure(destination: .stderr(journal: false), level: .warning)
}

struct DecryptCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decrypt",
        abstract: "Decrypt a FILE.encrypted and write the plaintext to stdout.")

    @OptionGroup var aws: AWSOptions

    @Option(name: .customLong("context"), help: "Required encryption context pair KEY=VALUE (repeatable).")
    var context: [String] = []

    @Argument(help: "The ciphertext file.")
    var file: String

    func run() throws {
        hardenTool()
        let required = parseContext(context)
        let bytes = readWholeFile(file)
        let decoder = CiphertextDecoder(kms: aws.settings().makeKMSClient(), requiredContext: required)
        let name = String(file.split(separator: "/").last ?? Substring(file))
        let logical = name.hasSuffix(ciphertextSuffix) ? String(name.dropLast(ciphertextSuffix.count)) : name
        do {
            let secret = try decoder.decrypt(bytes, path: logical)
            secret.plaintext.withUnsafeBytes { writeAllBytes(1, $0) }
        } catch {
            fail("\(file): \(error)")
        }
    }
}

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Decrypt every file under SOURCE in memory and print one status line each (no plaintext).")

    @Option(name: .customShort("o"), help: "Mount options (region=, endpoint=, context=, max_size=, ...).")
    var options: [String] = []

    @Argument(help: "Directory holding the NAME.encrypted files.")
    var source: String

    func run() throws {
        hardenTool()
        let o: MountOptions
        do { o = try MountOptions.parse(options) } catch { fail(error.message, code: 2) }
        let settings: AWSSettings
        do {
            settings = try AWSSettings.resolve(region: o.region, endpoint: o.endpoint, profile: o.profile, caBundle: o.caBundle,
                                               maxAttempts: o.maxAttempts, timeout: o.kmsTimeout, environment: Environment.process())
        } catch { fail(error.message, code: 2) }
        let tree: SourceTree
        do { tree = try SourceTree(path: source) } catch { fail("source \(source): \(error)") }
        let decoder = CiphertextDecoder(kms: settings.makeKMSClient(), requiredContext: o.requiredContext)
        var failures = 0
        var total = 0
        func walk(_ dir: String, _ mountDir: String) {
            let entries: [SourceEntry]
            do { entries = try tree.list(dir) } catch {
                print("FAIL \(mountDir.isEmpty ? "." : mountDir)/: \(error)")
                failures += 1
                return
            }
            for e in entries {
                let src = SourceTree.join(dir, e.sourceName)
                let path = mountDir.isEmpty ? e.name : mountDir + "/" + e.name
                if e.kind == .directory { walk(src, path); continue }
                total += 1
                do {
                    let (bytes, _) = try tree.readCiphertext(src, limit: o.maxCiphertextBytes)
                    let d = try decoder.decrypt(bytes, path: path)
                    let ctx = d.encryptionContext.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
                    print("OK   \(path) format=\(d.formatDetail) key=\(d.keyId ?? "-") context=\(ctx.isEmpty ? "-" : ctx) size=\(d.plaintext.count)")
                } catch let e as DecodeError {
                    failures += 1
                    print("FAIL \(path): \(e)")
                } catch let e as SourceTree.ReadError {
                    failures += 1
                    switch e {
                    case .tooLarge(let size, let limit): print("FAIL \(path): \(size) bytes is over the \(limit)-byte limit (max_size=)")
                    case .notRegular: print("FAIL \(path): not a regular file")
                    case .system(let s): print("FAIL \(path): \(s)")
                    }
                } catch {
                    failures += 1
                    print("FAIL \(path): \(error)")
                }
            }
        }
        walk(".", "")
        print("\(total - failures) of \(total) secrets decrypted\(failures > 0 ? ", \(failures) failed" : "")")
        if failures > 0 { throw ExitCode(1) }
    }
}

struct EncryptCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encrypt",
        abstract: "Encrypt each FILE to FILE.encrypted (AWS Encryption SDK format, path bound in the context).")

    @OptionGroup var aws: AWSOptions

    @Option(name: .customLong("key-id"), help: "KMS key ID, ARN or alias.")
    var keyId: String

    @Option(name: .customLong("context"), help: "Encryption context pair KEY=VALUE (repeatable).")
    var context: [String] = []

    @Argument(help: "Plaintext files.")
    var files: [String]

    func run() throws {
        fail("encrypt is not implemented yet")
    }
}

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the cache and counters of a live mount (no plaintext).")

    @Argument(help: "The mountpoint.")
    var mountpoint: String

    func run() throws {
        fail("status is not implemented yet")
    }
}

func parseContext(_ pairs: [String]) -> [(key: String, value: String)] {
    pairs.map { p in
        guard let eq = p.firstIndex(of: "="), eq != p.startIndex else { fail("--context \(p): expected KEY=VALUE", code: 2) }
        return (String(p[..<eq]), String(p[p.index(after: eq)...]))
    }
}

func readWholeFile(_ path: String) -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { fail("\(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var out = [UInt8]()
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n < 0 { fail("\(path): \(String(cString: strerror(errno)))") }
        if n == 0 { break }
        out += buf[0..<n]
    }
    return out
}

func writeAllBytes(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) {
    var off = 0
    while off < bytes.count {
        let n = write(fd, bytes.baseAddress! + off, bytes.count - off)
        if n < 0 { if errno == EINTR { continue }; fail("write: \(String(cString: strerror(errno)))") }
        off += n
    }
}
