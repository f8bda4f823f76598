/// The KMS keys a mount (or a tool run) may decrypt under: `-o kms_key=`,
/// `--kms-key` (the Encryption SDKs' "strict mode").
///
/// Entries are key ARNs, alias ARNs or alias names. A bare key ID is
/// refused: it names a key of that ID in whatever account the credentials
/// belong to, and cannot be compared with the key ARN an Encryption SDK
/// message records.
///
/// How each format uses the list (docs/formats.md, "Key allow-list"):
/// - raw and base64 KMS blobs: Decrypt carries the entry as `KeyId`, so KMS
///   itself refuses a blob of another key; with several entries each is
///   tried in turn while KMS refuses (IncorrectKeyException or
///   AccessDeniedException), at most once per entry.
/// - Encryption SDK messages: an encrypted data key whose key ARN equals a
///   listed key ARN is decrypted with that ARN as `KeyId`; alias entries are
///   passed as `KeyId` for the data keys they could name (an alias ARN: keys
///   of its partition, region and account; an alias name: any), and KMS
///   resolves the alias and refuses a data key of another key.
/// - Whenever the `KeyId` sent was a key ARN, the key ARN in KMS's answer
///   must equal it, or the plaintext is wiped and the file refused (a KMS
///   that ignored `KeyId`).
public struct KMSKeyAllowList: Sendable, Equatable, CustomStringConvertible {
    public enum Entry: Sendable, Equatable, CustomStringConvertible {
        case keyARN(String)
        case aliasARN(String)
        case aliasName(String)

        public var description: String {
            switch self { case .keyARN(let s), .aliasARN(let s), .aliasName(let s): return s }
        }

        public var isKeyARN: Bool { if case .keyARN = self { return true }; return false }

        /// True when this entry, sent as `KeyId`, could name the key of
        /// `keyARN` (an alias ARN lives in its key's partition, region and
        /// account; an alias name resolves in the caller's).
        func couldName(keyARN: String) -> Bool {
            switch self {
            case .keyARN(let a): return a == keyARN
            case .aliasName: return true
            case .aliasARN(let a):
                guard let mine = KMSKeyAllowList.arnParts(a), let theirs = KMSKeyAllowList.arnParts(keyARN) else { return false }
                return mine.partition == theirs.partition && mine.region == theirs.region && mine.account == theirs.account
            }
        }
    }

    /// The most entries one list may hold: each may cost one Decrypt call
    /// for a raw blob.
    public static let maxEntries = 10

    public let entries: [Entry]

    public init(_ entries: [Entry] = []) { self.entries = entries }

    public var isEmpty: Bool { entries.isEmpty }

    public var keyARNs: [String] { entries.compactMap { if case .keyARN(let s) = $0 { return s }; return nil } }

    public var description: String { entries.map(\.description).joined(separator: "+") }

    /// Parses `KEY[+KEY...]` and appends the keys to `self` (duplicates
    /// dropped). The error is the reason, for a one-line message.
    public func adding(_ text: String) throws(KMSKeyListError) -> KMSKeyAllowList {
        var out = entries
        for part in text.split(separator: "+", omittingEmptySubsequences: false).map(String.init) {
            guard !part.isEmpty else { throw KMSKeyListError("an empty entry; separate keys with '+'") }
            let e = try KMSKeyAllowList.parseEntry(part)
            if !out.contains(e) { out.append(e) }
        }
        guard out.count <= KMSKeyAllowList.maxEntries else {
            throw KMSKeyListError("\(out.count) keys, more than the \(KMSKeyAllowList.maxEntries) allowed")
        }
        return KMSKeyAllowList(out)
    }

    public static func parseEntry(_ s: String) throws(KMSKeyListError) -> Entry {
        if s.hasPrefix("alias/") {
            guard validAliasName(s) else {
                throw KMSKeyListError("'\(s)' is not an alias name (alias/ then 1 to 250 letters, digits, '/', '_' or '-')")
            }
            return .aliasName(s)
        }
        if s.hasPrefix("arn:") {
            guard let p = arnParts(s) else {
                throw KMSKeyListError("'\(s)' is not a KMS key or alias ARN (arn:PARTITION:kms:REGION:ACCOUNT:key/ID or :alias/NAME)")
            }
            if p.resource.hasPrefix("key/") {
                let id = p.resource.dropFirst(4)
                guard !id.isEmpty, id.count <= 128, id.utf8.allSatisfy({ isAlnum($0) || $0 == UInt8(ascii: "-") }) else {
                    throw KMSKeyListError("'\(s)' has a malformed key ID after key/")
                }
                return .keyARN(s)
            }
            if p.resource.hasPrefix("alias/") {
                guard validAliasName(p.resource) else {
                    throw KMSKeyListError("'\(s)' has a malformed alias name after alias/")
                }
                return .aliasARN(s)
            }
            throw KMSKeyListError("'\(s)' is not a KMS key or alias ARN (its resource is neither key/ID nor alias/NAME)")
        }
        throw KMSKeyListError("'\(s)' is neither a key ARN, an alias ARN nor alias/NAME (a bare key ID would name that key in any account: give its ARN)")
    }

    static func isAlnum(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A)
    }

    static func validAliasName(_ s: String) -> Bool {
        guard s.hasPrefix("alias/") else { return false }
        let name = s.utf8.dropFirst(6)
        return !name.isEmpty && name.count <= 250
            && name.allSatisfy { isAlnum($0) || $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") }
    }

    /// `arn:PARTITION:kms:REGION:ACCOUNT:RESOURCE`, each part checked for
    /// the characters it may hold; nil for anything else.
    static func arnParts(_ s: String) -> (partition: String, region: String, account: String, resource: String)? {
        let parts = s.split(separator: ":", maxSplits: 5, omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 6, parts[0] == "arn", parts[2] == "kms" else { return nil }
        let lowerDash: (String) -> Bool = { p in
            !p.isEmpty && p.count <= 64 && p.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == UInt8(ascii: "-") }
        }
        guard lowerDash(parts[1]), lowerDash(parts[3]) else { return nil }
        guard parts[4].utf8.count == 12, parts[4].utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        return (parts[1], parts[3], parts[4], parts[5])
    }

    /// The entries to send as `KeyId` for an Encryption SDK data key
    /// recorded under `keyARN` (its provider info), in list order: an equal
    /// key ARN, then the aliases that could name it.
    func keyIds(forDataKeyOf keyARN: String?) -> [Entry] {
        guard let keyARN else { return entries.filter { $0.isAliasName } }
        return entries.filter { $0.isKeyARN && $0.couldName(keyARN: keyARN) }
            + entries.filter { !$0.isKeyARN && $0.couldName(keyARN: keyARN) }
    }
}

extension KMSKeyAllowList.Entry {
    var isAliasName: Bool { if case .aliasName = self { return true }; return false }
}

/// Why a `kms_key=` list was refused (the caller names the option).
public struct KMSKeyListError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
