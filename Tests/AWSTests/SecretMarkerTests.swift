import Testing
@testable import AWS

@Suite struct SecretMarkerTests {
    /// The marker search that keeps secrets out of error text finds a
    /// marker wherever a byte-by-byte search does: at either end, after
    /// a partial match, never past the buffer.
    @Test func theSecretMarkerSearchAgreesWithANaiveOne() {
        func naive(_ h: [UInt8], _ n: [UInt8]) -> Bool {
            n.isEmpty || (h.count >= n.count && (0...(h.count - n.count)).contains { h[$0..<($0 + n.count)].elementsEqual(n) })
        }
        var cases: [([UInt8], [UInt8])] = [([], [1]), ([], []), ([1], []), ([1, 2], [1, 2, 3]), ([1, 1, 2], [1, 2]),
                                           ([2, 1, 1], [1, 1]), ([1, 2, 1, 2, 3], [1, 2, 3]), ([3, 1, 2], [3])]
        var g = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let h = (0..<Int.random(in: 0...24, using: &g)).map { _ in UInt8.random(in: 0...2, using: &g) }
            let n = (0..<Int.random(in: 1...4, using: &g)).map { _ in UInt8.random(in: 0...2, using: &g) }
            cases.append((h, n))
        }
        for (h, n) in cases {
            // The haystack as a slice of a larger buffer whose next byte
            // would complete the needle: nothing past the end is read.
            let padded = h + n.suffix(1)
            let got = padded.withUnsafeBytes { HTTPResponse.contains(UnsafeRawBufferPointer(rebasing: $0.prefix(h.count)), n) }
            #expect(got == naive(h, n), "\(h) \(n)")
        }
    }
}
