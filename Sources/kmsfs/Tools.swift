import System
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
    SecureMemoryPolicy.unlockedWarning = "kmsfs: warning: secret bytes are held in memory that is not locked and may be swapped: the locked-memory limit is too low for them (ulimit -l; run as root, or raise LimitMEMLOCK/memlock)"
    Log.configure(destination: .stderr(journal: false), level: .warning)
}

/// `--max-size`: the largest ciphertext (or, for encrypt, plaintext) a
/// tool reads, as the mount's `max_size=`.
struct SizeLimitOption: ParsableArguments {
    @Option(name: .customLong("max-size"), help: "Largest file to read (bytes, or 64K, 64M, 1G; default 64M, as the mount's max_size=).")
    var maxSize: String = "64M"

    var bytes: Int {
        guard let n = MountOptions.parseSize(maxSize), MountOptions.Limits.maxSize.contains(n) else {
            fail("--max-size \(maxSize): expected a size from 1 to 1G, such as 65536, 64K, 64M", code: 2)
        }
        return n
    }
}

struct DecryptCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decrypt",
        abstract: "Decrypt a FILE.encrypted and write the plaintext to stdout.",
        discussion: """
        A message bound to a path (kmsfs:path, written by kmsfs encrypt) must match where FILE \
        is: with --root SOURCE, exactly FILE's path relative to SOURCE without .encrypted; \
        without it, the end of FILE's path.
        """)

    @OptionGroup var aws: AWSOptions
    @OptionGroup var limit: SizeLimitOption

    @Option(name: .customLong("context"), help: "Required encryption context pair KEY=VALUE (repeatable).")
    var context: [String] = []

    @Option(name: .customLong("root"), help: "The SOURCE directory FILE is served from (checks kmsfs:path exactly).")
    var root: String?

    @Option(name: .customLong("kms-key"), help: "Only decrypt under this KMS key: key ARN, alias ARN or alias/NAME (repeatable, or KEY+KEY; as the mount's kms_key=).")
    var kmsKeys: [String] = []

    @Option(name: .customLong("max-encrypted-data-keys"), help: "Refuse an Encryption SDK message listing more encrypted data keys (1 to 100; default 10, as the mount's max_encrypted_data_keys=).")
    var maxEncryptedDataKeys: Int = EncryptionSDKMessage.defaultMaxEncryptedDataKeys

    @Flag(name: .customLong("require-commitment"), help: "Refuse an Encryption SDK message whose algorithm suite has no key commitment (as the mount's require_commitment).")
    var requireCommitment = false

    @Argument(help: "The ciphertext file.")
    var file: String

    func run() throws {
        hardenTool()
        let required = parseContext(context)
        let maxBytes = limit.bytes
        var allowed = KMSKeyAllowList()
        for k in kmsKeys {
            do { allowed = try allowed.adding(k) } catch { fail("--kms-key \(k): \(error.message)", code: 2) }
        }
        let edkRange = EncryptionSDKMessage.maxEncryptedDataKeysRange
        guard edkRange.contains(maxEncryptedDataKeys) else {
            fail("--max-encrypted-data-keys \(maxEncryptedDataKeys): expected a whole number from \(edkRange.lowerBound) to \(edkRange.upperBound)", code: 2)
        }
        let binding: PathBinding
        if let root {
            binding = .exact(SourceTree.mountPath(ofSource: relativePath(of: file, under: root)))
        } else {
            binding = .suffix(SourceTree.mountPath(ofSource: physicalPath(of: file)))
        }
        let bytes: [UInt8]
        do { bytes = try readCiphertextFile(file, limit: maxBytes) } catch { fail("\(file): \(error)") }
        let decoder = CiphertextDecoder(kms: aws.settings().makeKMSClient(), requiredContext: required,
                                        requireCommitment: requireCommitment, allowedKeys: allowed,
                                        maxEncryptedDataKeys: maxEncryptedDataKeys)
        do {
            let secret = try decoder.decrypt(bytes, binding: binding)
            secret.plaintext.withUnsafeBytes { writeAllBytes(1, $0) }
        } catch {
            fail("\(file): \(error)")
        }
    }
}

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Decrypt every file under SOURCE in memory and print one status line each (no plaintext).",
        discussion: """
        Each secret gets one line, in SOURCE order:
          OK   PATH format=FORMAT key=KEY context=K=V,... size=BYTES
          FAIL PATH: REASON
        then a summary line. FORMAT is kms-blob, kms-blob-base64 or \
        aws-encryption-sdk-vN/SUITE/frame-LENGTH|unframed; the context omits the SDK's own \
        aws-crypto-* keys and escapes , = % and whitespace as %XX. \
        Exit status: 0 when every secret decrypted, 1 when any failed, 2 for bad usage.
        """)

    @Option(name: .customShort("o"), help: "Mount options (region=, endpoint=, context=, kms_key=, max_size=, ...).")
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
        let decoder = CiphertextDecoder(kms: settings.makeKMSClient(), requiredContext: o.requiredContext,
                                        requirePathBinding: o.requireBinding, requireCommitment: o.requireCommitment,
                                        allowedKeys: o.kmsKeys,
                                        maxEncryptedDataKeys: o.maxEncryptedDataKeys)
        var failures = 0
        var total = 0
        // Depth first, in listing order, with an explicit stack: SOURCE is
        // anyone's to shape, and a deep tree must not exhaust the stack.
        var stack: [(dir: String, mountDir: String, entries: [SourceEntry], next: Int)] = []
        func enter(_ dir: String, _ mountDir: String) {
            do { stack.append((dir, mountDir, try tree.list(dir), 0)) } catch {
                printLine("FAIL \(mountDir.isEmpty ? "." : mountDir)/: \(error)")
                failures += 1
            }
        }
        enter(".", "")
        while let top = stack.last {
            guard top.next < top.entries.count else { stack.removeLast(); continue }
            let e = top.entries[top.next]
            stack[stack.count - 1].next += 1
            let src = SourceTree.join(top.dir, e.sourceName)
            let path = top.mountDir.isEmpty ? e.name : top.mountDir + "/" + e.name
            if e.kind == .directory { enter(src, path); continue }
            total += 1
            do {
                let (bytes, _) = try tree.readCiphertext(src, limit: o.maxCiphertextBytes)
                let d = try decoder.decrypt(bytes, path: path)
                printLine("OK   \(path) format=\(d.formatDetail) key=\(d.keyId ?? "-") context=\(statusContext(d.encryptionContext)) size=\(d.plaintext.count)")
            } catch let e as DecodeError {
                failures += 1
                printLine("FAIL \(path): \(e)")
            } catch let e as SourceTree.ReadError {
                failures += 1
                switch e {
                case .tooLarge(let size, let limit): printLine("FAIL \(path): \(size) bytes is over the \(limit)-byte ciphertext limit (max_size=)")
                case .notRegular: printLine("FAIL \(path): not a regular file")
                case .system(let s): printLine("FAIL \(path): \(s)")
                }
            } catch {
                failures += 1
                printLine("FAIL \(path): \(error)")
            }
        }
        printLine("\(total - failures) of \(total) secrets decrypted\(failures > 0 ? ", \(failures) failed" : "")")
        if failures > 0 { throw ExitCode(1) }
    }
}

/// Prints one line of `check` or `encrypt` output, escaped byte by byte
/// (`LogEscape`): a name in SOURCE holding CR, LF or ESC cannot add a line
/// or drive the terminal.
func printLine(_ line: String) {
    print(LogEscape.escape(line))
}

/// The context as `check` prints it: `K=V` pairs joined by commas, the
/// SDK's own `aws-crypto-*` keys left out, `-` when nothing is left.
func statusContext(_ pairs: [(key: String, value: String)]) -> String {
    let shown = pairs.filter { !$0.key.hasPrefix("aws-crypto-") }
    guard !shown.isEmpty else { return "-" }
    return shown.map { "\(escapeStatus($0.key))=\(escapeStatus($0.value))" }.joined(separator: ",")
}

/// Percent-escapes what would make a status line ambiguous: whitespace,
/// control characters, `,`, `=` and `%`.
func escapeStatus(_ s: String) -> String {
    var out = ""
    for scalar in s.unicodeScalars {
        let v = scalar.value
        if v <= 0x20 || v == 0x7F || (0x80..<0xA0).contains(v) || scalar == "," || scalar == "=" || scalar == "%" {
            for b in String(scalar).utf8 {
                let h = String(b, radix: 16, uppercase: true)
                out += "%" + (h.count == 1 ? "0" + h : h)
            }
        } else {
            out.unicodeScalars.append(scalar)
        }
    }
    return out
}

struct EncryptCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encrypt",
        abstract: "Encrypt each FILE to FILE.encrypted (AWS Encryption SDK format, path bound in the context).",
        discussion: """
        Writes an AWS Encryption SDK v2 message (suite 0x0578: AES-256-GCM, HKDF-SHA512, key \
        commitment, ECDSA P-384 signature; 4096-byte frames) under a data key from KMS \
        GenerateDataKey. The context binds FILE's path relative to --root (default: FILE's own \
        directory, so just its name) as kmsfs:path: the mount serves the file only at that path, \
        so give --root SOURCE for files in subdirectories of SOURCE. FILE.encrypted is written \
        to a temporary file in the same directory, synced and renamed into place (mode 0600), \
        replacing an older one; the plaintext is read into locked memory and never written. \
        One line per file on stdout:
          OK   FILE -> FILE.encrypted path=PATH key=KEY size=BYTES
          FAIL FILE: REASON
        Exit status: 0 when every file was encrypted, 1 when any failed, 2 for bad usage.
        """)

    @OptionGroup var aws: AWSOptions
    @OptionGroup var limit: SizeLimitOption

    @Option(name: .customLong("key-id"), help: "KMS key ID, ARN or alias.")
    var keyId: String

    @Option(name: .customLong("context"), help: "Encryption context pair KEY=VALUE (repeatable).")
    var context: [String] = []

    @Option(name: .customLong("root"), help: "The SOURCE directory the files will be served from (default: each file's directory).")
    var root: String?

    @Argument(help: "Plaintext files.")
    var files: [String]

    func run() throws {
        hardenTool()
        let pairs = parseContext(context)
        for (k, _) in pairs where k == kmsfsPathContextKey || k.hasPrefix("aws-crypto-") {
            fail("--context \(k)=...: '\(k)' is set by kmsfs encrypt itself", code: 2)
        }
        if let k = EncryptionSDKWriter.duplicateKey(in: pairs) {
            fail("--context \(k)=...: '\(k)' is given twice (no reader would accept the file)", code: 2)
        }
        let maxBytes = limit.bytes
        let kms = aws.settings().makeKMSClient()
        var failures = 0
        for file in files {
            do {
                let line = try encryptOne(file, context: pairs, kms: kms, maxBytes: maxBytes)
                printLine(line)
            } catch {
                failures += 1
                printLine("FAIL \(file): \(error)")
            }
        }
        if failures > 0 { throw ExitCode(1) }
    }

    private func encryptOne(_ file: String, context: [(key: String, value: String)], kms: KMSClient,
                            maxBytes: Int) throws(ToolError) -> String {
        guard !SourceTree.hasCiphertextSuffix(file) else { throw ToolError("it already ends in \(ciphertextSuffix)") }
        let bound: String
        if let root {
            bound = try checkedRelativePath(of: file, under: root)
        } else {
            bound = baseName(file)
        }
        let plaintext = try readPlaintextFile(file, limit: maxBytes)
        let message: EncryptionSDKWriter.Message
        do {
            message = try EncryptionSDKWriter.encrypt(plaintext, kms: kms, keyId: keyId,
                                                      context: context + [(kmsfsPathContextKey, bound)])
        } catch {
            throw ToolError("\(error)")
        }
        let output = file + ciphertextSuffix
        try writeAtomically(output, message.bytes)
        return "OK   \(file) -> \(output) path=\(bound) key=\(message.keyId) size=\(plaintext.count)"
    }
}

func parseContext(_ pairs: [String]) -> [(key: String, value: String)] {
    pairs.map { p in
        // On scalars, as context= is read at mount: "=" and a combining
        // mark after it are one Character.
        guard let eq = p.unicodeScalars.firstIndex(of: "="), eq != p.startIndex else { fail("--context \(p): expected KEY=VALUE", code: 2) }
        return (String(p[..<eq]), String(p[p.unicodeScalars.index(after: eq)...]))
    }
}

/// One tool failure: the line printed after the file's name.
struct ToolError: Error, CustomStringConvertible {
    let message: String
    init(_ message: String) { self.message = message }
    var description: String { message }
}

func errnoText(_ e: Int32 = Errno.current) -> String { Errno.text(e) }

// Both cut on the byte: "/" and a combining mark after it are one
// Character, which Character searches and splits pass over.
func baseName(_ path: String) -> String {
    path.utf8.split(separator: UInt8(ascii: "/")).last.map { String(decoding: $0, as: UTF8.self) } ?? path
}

func dirName(_ path: String) -> String {
    guard let slash = path.utf8.lastIndex(of: UInt8(ascii: "/")) else { return "." }
    return slash == path.startIndex ? "/" : String(path[..<slash])
}

func realPath(_ path: String) -> String? {
    guard let p = realpath(path, nil) else { return nil }
    defer { free(p) }
    return String(cString: p)
}

/// FILE's absolute path through its real directory (the file itself may be
/// a symlink: its name is what counts).
func physicalPath(of file: String) -> String {
    guard let dir = realPath(dirName(file)) else { fail("\(file): \(errnoText())") }
    return (dir == "/" ? "" : dir) + "/" + baseName(file)
}

/// FILE's path relative to `root`, through real directories; refuses a
/// file outside `root`.
func checkedRelativePath(of file: String, under root: String) throws(ToolError) -> String {
    guard let realRoot = realPath(root) else { throw ToolError("--root \(root): \(errnoText())") }
    guard let dir = realPath(dirName(file)) else { throw ToolError(errnoText()) }
    let name = baseName(file)
    guard name != "." && name != ".." else { throw ToolError("not a file name") }
    if dir == realRoot { return name }
    let prefix = realRoot == "/" ? "/" : realRoot + "/"
    guard dir.hasPrefix(prefix) else { throw ToolError("it is not under --root \(root) (\(realRoot))") }
    return String(dir.dropFirst(prefix.count)) + "/" + name
}

func relativePath(of file: String, under root: String) -> String {
    do { return try checkedRelativePath(of: file, under: root) } catch { fail("\(file): \(error)", code: 2) }
}

/// Opens a regular file for reading and hands it to `body` with its size,
/// after checking the size against `limit` (before anything is read).
func withRegularFile<R>(_ path: String, limit: Int, what: String,
                        _ body: (borrowing FileDescriptor, Int) throws(ToolError) -> R) throws(ToolError) -> R {
    let fd: FileDescriptor
    do { fd = try FileDescriptor.open(path, O_RDONLY | O_NOCTTY | O_NONBLOCK) } catch { throw ToolError(error.text) }
    let st: stat
    do { st = try regularFileStatus(fd, limit: limit) } catch {
        switch error {
        case .system(let e): throw ToolError(e.text)
        case .notRegular: throw ToolError("not a regular file")
        case .tooLarge(let size, _): throw ToolError("\(size) bytes is over the \(limit)-byte \(what) limit (--max-size)")
        }
    }
    return try body(fd, Int(st.st_size))
}

/// Reads exactly `count` bytes (the size fstat gave) into `into`; a file
/// that changed size while being read is refused. Returns the failure.
func readExactly(_ fd: borrowing FileDescriptor, _ into: UnsafeMutableRawBufferPointer, count: Int) -> ToolError? {
    let got: Int
    do { got = try fd.read(filling: UnsafeMutableRawBufferPointer(rebasing: into[0..<count])) } catch {
        return ToolError("read: \(error.text)")
    }
    if got < count { return ToolError("the file shrank while it was read") }
    // One more byte says whether the file grew; it may be plaintext
    // (`encrypt`), so it is wiped at once.
    var extra: [UInt8] = [0]
    let more = (try? FileDescriptor.read(fd.rawValue, into: &extra)) ?? -1
    secureWipe(&extra)
    return more == 0 ? nil : ToolError("the file grew while it was read")
}

func readCiphertextFile(_ path: String, limit: Int) throws(ToolError) -> [UInt8] {
    try withRegularFile(path, limit: limit, what: "ciphertext") { (fd, size) throws(ToolError) in
        var bytes = [UInt8](repeating: 0, count: size)
        if let failure = bytes.withUnsafeMutableBytes({ readExactly(fd, $0, count: size) }) { throw failure }
        return bytes
    }
}

/// Reads a plaintext straight into secure memory.
func readPlaintextFile(_ path: String, limit: Int) throws(ToolError) -> SecureBuffer {
    try withRegularFile(path, limit: limit, what: "plaintext") { (fd, size) throws(ToolError) in
        var failure: ToolError?
        let buffer: SecureBuffer?
        do {
            buffer = try SecureBuffer(unsafeUninitializedCapacity: max(size, 1)) { cap in
                failure = readExactly(fd, cap, count: size)
                return failure == nil ? size : nil
            }
        } catch { throw ToolError("\(error)") }
        guard let buffer else { throw failure! }
        return buffer
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it (mode
/// 0600), fsync, rename over `path`, fsync of the directory. The temporary
/// file is removed on any failure.
func writeAtomically(_ path: String, _ bytes: [UInt8]) throws(ToolError) {
    let dir = dirName(path)
    var template = Array((dir + "/." + baseName(path) + ".XXXXXX").utf8CString)
    let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
    guard fd >= 0 else { throw ToolError("cannot create a temporary file in \(dir): \(errnoText())") }
    let tmp = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    var ok = false
    defer { if !ok { unlink(tmp) } }
    func check(_ r: Int32, _ what: String) throws(ToolError) {
        if r != 0 { let e = Errno.current; close(fd); throw ToolError("\(what) \(tmp): \(errnoText(e))") }
    }
    try check(fchmod(fd, 0o600), "fchmod")
    do { try FileDescriptor.writeAll(fd, bytes) } catch {
        close(fd)
        throw ToolError("write \(tmp): \(error.text)")
    }
    try check(fsync(fd), "fsync")
    guard close(fd) == 0 else { throw ToolError("close \(tmp): \(errnoText())") }
    guard rename(tmp, path) == 0 else { throw ToolError("rename \(tmp) to \(path): \(errnoText())") }
    ok = true
    let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if dfd >= 0 { _ = fsync(dfd); close(dfd) }
}

func writeAllBytes(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) {
    do { try FileDescriptor.writeAll(fd, bytes) } catch { fail("write: \(error.text)") }
}
