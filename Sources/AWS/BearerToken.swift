import SecureMemory

/// Bearer tokens: the web identity token, the container authorization
/// token and the IMDS session token. Whoever holds one may use it, as with
/// the session token, so they are kept the same way: read into secure
/// memory, trimmed there, and sent as a secure header or a secure body,
/// never made into a `String`.
enum BearerToken {
    /// A copy of `raw` without its leading and trailing blanks (space,
    /// tab, CR, LF); nil when nothing else is left.
    static func trimmed(_ raw: SecureBuffer) throws(SecureMemoryError) -> SecureBuffer? {
        try raw.withUnsafeBytes { (b: UnsafeRawBufferPointer) throws(SecureMemoryError) -> SecureBuffer? in
            let t = SigV4Signer.trimmed(b)
            return t.isEmpty ? nil : try SecureBuffer(copying: t)
        }
    }

    /// Whether `b` holds a line break (CR or LF): never a legal header value.
    static func hasLineBreak(_ b: SecureBuffer) -> Bool {
        b.withUnsafeBytes { $0.contains(10) || $0.contains(13) }
    }
}
