import Foundation
import Testing
import AWS

/// The AWS SigV4 conformance suite (aws-c-auth's v4 vectors), read in place
/// from ../shared/vectors/sigv4: every header-signing case.
struct SigV4Vector: CustomStringConvertible, Sendable {
    let name: String
    let dir: URL
    var description: String { name }

    static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("shared/vectors/sigv4")

    static var all: [SigV4Vector] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: root.path) else { return [] }
        return names.sorted().compactMap { n in
            let d = root.appendingPathComponent(n)
            guard FileManager.default.fileExists(atPath: d.appendingPathComponent("header-signature.txt").path) else { return nil }
            return SigV4Vector(name: n, dir: d)
        }
    }

    func text(_ file: String) throws -> String {
        try String(contentsOf: dir.appendingPathComponent(file), encoding: .utf8)
    }
}

struct ParsedRequest {
    var method: String
    var path: String
    var query: String
    var headers: [(name: String, value: String)]
    var body: [UInt8]

    init(_ raw: String) {
        var lines = raw.components(separatedBy: "\n")
        let requestLine = lines.removeFirst()
        let parts = requestLine.split(separator: " ", omittingEmptySubsequences: false)
        method = String(parts.first!)
        let target = parts.dropFirst().dropLast().joined(separator: " ")
        if let q = target.firstIndex(of: "?") {
            path = String(target[..<q])
            query = String(target[target.index(after: q)...])
        } else {
            path = target
            query = ""
        }
        headers = []
        var bodyLines: [String] = []
        var inBody = false
        for line in lines {
            if inBody { bodyLines.append(line); continue }
            if line.isEmpty { inBody = true; continue }
            if line.first == " " || line.first == "\t", !headers.isEmpty {
                headers[headers.count - 1].value += " " + line
                continue
            }
            let colon = line.firstIndex(of: ":")!
            headers.append((String(line[..<colon]), String(line[line.index(after: colon)...])))
        }
        body = Array(bodyLines.joined(separator: "\n").utf8)
    }
}

@Suite struct SigV4Tests {
    @Test func vectorsArePresentOrSkippedLoudly() throws {
        if SigV4Vector.all.isEmpty {
            // ../shared is absent (a clone outside the workspace): nothing to check.
            print("SKIP: SigV4 vectors not found at \(SigV4Vector.root.path); the conformance cases are skipped")
            return
        }
        #expect(SigV4Vector.all.count >= 30)
    }

    @Test(arguments: SigV4Vector.all)
    func headerSigning(_ v: SigV4Vector) throws {
        let ctx = try JSONSerialization.jsonObject(with: Data(v.text("context.json").utf8)) as! [String: Any]
        let c = ctx["credentials"] as! [String: String]
        let creds = try AWSCredentials(accessKeyId: c["access_key_id"]!, secretAccessKey: c["secret_access_key"]!,
                                   sessionToken: c["token"], source: "vector", kind: .other)
        let date = Timestamp.parseISO8601(ctx["timestamp"] as! String)!
        let req = ParsedRequest(try v.text("request.txt"))
        let signBody = ctx["sign_body"] as? Bool ?? false
        let payloadHash = signBody ? Digest.hex(Digest.sha256(req.body)) : Digest.emptyPayloadHash

        var options = SigV4Signer.Options()
        options.normalizePath = ctx["normalize"] as? Bool ?? true
        options.addContentSHA256Header = signBody
        options.omitSessionTokenFromSignature = ctx["omit_session_token"] as? Bool ?? false
        let signer = SigV4Signer(region: ctx["region"] as! String, service: ctx["service"] as! String)
        let request = SigV4Signer.Request(method: req.method, path: req.path, query: req.query,
                                          headers: req.headers, payloadHash: payloadHash)

        // Stage 1, with the headers signing adds.
        var withAdded = request
        withAdded.headers.append(("X-Amz-Date", date.amzDate))
        if let t = creds.copyOfSessionToken(), !options.omitSessionTokenFromSignature { withAdded.headers.append(("X-Amz-Security-Token", t)) }
        if signBody { withAdded.headers.append(("x-amz-content-sha256", payloadHash)) }
        let (creq, _) = signer.canonicalRequest(withAdded, normalizePath: options.normalizePath)
        #expect(try creq == v.text("header-canonical-request.txt"))
        // Stage 2.
        let sts = signer.stringToSign(canonicalRequest: creq, date: date)
        #expect(try sts == v.text("header-string-to-sign.txt"))
        // Stages 3-4.
        let expectedSignature = try v.text("header-signature.txt").trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(signer.signature(stringToSign: sts, secretAccessKey: creds.copyOfSecretAccessKey(), date: date) == expectedSignature)
        // The whole: the Authorization header signing produces.
        let added = signer.sign(request, credentials: creds, date: date, options: options)
        let auth = added.first { $0.name == "Authorization" }!.value
        let expectedAuth = try v.text("header-signed-request.txt").components(separatedBy: "\n")
            .first { $0.hasPrefix("Authorization:") }!.dropFirst("Authorization:".count)
        #expect(auth == String(expectedAuth))
    }
}
