import AWS
import SecureMemory

/// AWS Encryption SDK message format (placeholder until the full reader
/// lands): detection only.
public enum EncryptionSDKMessage {
    /// Version 1 messages start 0x01 0x80 (version, type); version 2
    /// messages start 0x02 followed by a two-byte algorithm suite ID.
    public static func looksLikeMessage(_ bytes: [UInt8]) -> Bool {
        guard bytes.count >= 3 else { return false }
        if bytes[0] == 0x01 && bytes[1] == 0x80 { return true }
        if bytes[0] == 0x02 && (bytes[1] == 0x04 || bytes[1] == 0x05) && bytes[2] == 0x78 { return true }
        return false
    }
}

struct EncryptionSDKDecryptor {
    let kms: KMSClient
    func decrypt(_ bytes: [UInt8], path: String, requiredContext: [(key: String, value: String)],
                 pathContextKey: String) throws(DecodeError) -> DecodedSecret {
        throw .unrecognized("AWS Encryption SDK messages are not supported yet")
    }
}
