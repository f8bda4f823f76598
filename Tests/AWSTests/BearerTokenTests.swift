import System
import Testing
import AWS
import SecureMemory

/// The web identity token, the container authorization token and the IMDS
/// session token are bearer tokens: they reach the transport from secure
/// memory (a secure header or a secure body), never among the plain
/// headers or in a plain body.
@Suite struct BearerTokenTests {
    @Test func theWebIdentityTokenTravelsInASecureBody() throws {
        let dir = TempDir()
        // Characters the form encoding must escape, and blanks to trim.
        let jwt = "eyJ+a/b=c.d_e-f~g h%i&j"
        let file = dir.write("token", "\r\n\t \(jwt) \n")
        let t = ScriptedTransport { _, n in .init(status: 200, body: stsAnswer("AssumeRoleWithWebIdentity", id: "ASIA\(n)")) }
        let sts = stsClient(t, .system)
        let p = WebIdentityCredentialProvider(tokenFile: file, roleArn: "arn:aws:iam::1:role/r", sessionName: "s",
                                              origin: "test", sts: { sts })
        _ = try p.credentials()
        let req = t.requests[0]
        guard case .secure = req.body else { Issue.record("the body is not in secure memory"); return }
        #expect(req.form["WebIdentityToken"] == jwt)
        #expect(req.form["RoleArn"] == "arn:aws:iam::1:role/r" && req.form["Action"] == "AssumeRoleWithWebIdentity")
        #expect(req.bodyText.contains("WebIdentityToken=" + SigV4Signer.uriEncode(jwt)))
        #expect(!req.headers.contains { $0.value.contains("eyJ") })
    }

    @Test func everyByteOfTheWebIdentityTokenIsFormEncoded() throws {
        let dir = TempDir()
        let all = (0...255).map { UInt8($0) }
        let file = dir.write("token", bytes: Array("x".utf8) + all + Array("x".utf8))
        let t = ScriptedTransport { _, n in .init(status: 200, body: stsAnswer("AssumeRoleWithWebIdentity", id: "ASIA\(n)")) }
        let sts = stsClient(t, .system)
        _ = try WebIdentityCredentialProvider(tokenFile: file, roleArn: "arn:aws:iam::1:role/r", sessionName: "s",
                                              origin: "test", sts: { sts }).credentials()
        let encoded = "x" + all.map { c -> String in
            let keep = (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c == 45 || c == 46 || c == 95 || c == 126
            return keep ? String(UnicodeScalar(c)) : "%" + (c < 16 ? "0" : "") + String(c, radix: 16, uppercase: true)
        }.joined() + "x"
        let fields = t.requests[0].bodyText.split(separator: "&").map(String.init)
        #expect(fields.contains("WebIdentityToken=" + encoded))
        #expect(fields.contains("RoleArn=" + SigV4Signer.uriEncode("arn:aws:iam::1:role/r")))
    }

    @Test func theContainerTokenTravelsAsASecureHeader() throws {
        let dir = TempDir()
        let file = dir.write("token", "  file-token \n")
        let doc = #"{"AccessKeyId":"ASIACONT","SecretAccessKey":"s","Token":"t","Expiration":"2030-01-01T00:00:00Z"}"#
        let t = ScriptedTransport { _, _ in .init(status: 200, body: doc) }
        for (env, token) in [(["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": file], "file-token"),
                             // An inner blank is legal in a header value (a "Basic ..." scheme).
                             (["AWS_CONTAINER_AUTHORIZATION_TOKEN": "Basic dXNlcjpwYXNz"], "Basic dXNlcjpwYXNz")] {
            var e = env
            e["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = "http://127.0.0.1:9/c"
            _ = try ContainerCredentialProvider(environment: Environment(e), transport: t).credentials()
            let req = try #require(t.requests.last)
            #expect(!req.headers.contains { $0.name == "Authorization" })
            #expect(req.secureHeaders.count == 1 && req.secureHeaders[0].name == "Authorization")
            #expect(req.header("Authorization") == token)
        }
    }

    @Test func theIMDSSessionTokenTravelsAsASecureHeader() throws {
        let t = IMDSProviderTests.imds()
        let client = IMDSClient(endpoint: URLParts("http://169.254.169.254")!, transport: t)
        _ = try IMDSCredentialProvider(client: client).credentials()
        let gets = t.requests.filter { $0.method == "GET" }
        #expect(gets.count == 2)
        for req in gets {
            #expect(!req.headers.contains { $0.name.lowercased() == "x-aws-ec2-metadata-token" })
            #expect(req.header("X-aws-ec2-metadata-token") == "TOKEN")
        }
    }

    @Test func anIMDSTokenThatIsTooLongOrBlankIsNotUsed() throws {
        for answer in [String(repeating: "A", count: 4097), " \r\n"] {
            let t = ScriptedTransport { req, _ in
                req.method == "PUT" ? .init(status: 200, body: answer) : .init(status: 200, body: "")
            }
            let client = IMDSClient(endpoint: URLParts("http://169.254.169.254")!, transport: t)
            #expect(throws: CredentialError.self) { try IMDSCredentialProvider(client: client).credentials() }
            #expect(t.requests.allSatisfy { $0.method == "PUT" }, "a GET went out with answer \(answer.prefix(8))")
        }
    }

    @Test func theTransportRefusesAControlCharacterInASecureHeader() throws {
        for value in ["tok\r\nX-Injected: 1", "tok\u{7F}", "tok\0"] {
            var request = HTTPRequest(method: "GET", url: URLParts("http://127.0.0.1:9/")!)
            request.secureHeaders = [("Authorization", secureText(value))]
            do {
                _ = try CurlTransport().send(request)
                Issue.record("a secure header with a control character was sent")
            } catch {
                #expect(error.message.contains("control character"), "\(error)")
            }
        }
    }
}
