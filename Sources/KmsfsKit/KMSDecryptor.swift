import KMS
import SecretFS

/// SecretFS's decryption through KMS: format detection, context checks,
/// and failures classified for the cache (bad file / refused / unavailable).
public struct KMSDecryptor: SecretDecrypting {
    public let decoder: CiphertextDecoder

    public init(decoder: CiphertextDecoder) { self.decoder = decoder }

    public func decrypt(ciphertext: [UInt8], path: String) -> Result<DecryptedSecret, DecryptFailure> {
        do {
            let d = try decoder.decrypt(ciphertext, path: path)
            return .success(DecryptedSecret(plaintext: d.plaintext, format: d.formatDetail, keyId: d.keyId))
        } catch {
            let kind: DecryptFailureKind = error.isUnavailable ? .unavailable : (error.isRefusal ? .refused : .badInput)
            return .failure(DecryptFailure(kind, error.description))
        }
    }
}
