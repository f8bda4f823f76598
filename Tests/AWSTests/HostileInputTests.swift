import System
import Testing
import AWS
import SecureMemory
#if canImport(Glibc)
import Glibc
#endif

/// Inputs an attacker controls (a fake KMS or metadata service, a hostile
/// credential_process): each is refused as malformed, none traps.
@Suite struct HostileInputTests {
    @Test func responseHeaderLinesAreCutOnBytes() {
        func line(_ s: String) -> ResponseHeaderLine { ResponseHeaderLine(Array(s.utf8)) }
        #expect(line("HTTP/1.1 200 OK\r\n") == .status(200))
        #expect(line("HTTP/2 400\r\n") == .status(400))
        #expect(line("HTTP/1.1\r\n") == .status(nil))
        #expect(line("HTTP/1.1 99999999999999999999999 x\r\n") == .status(nil))
        #expect(line("Content-Length:  12 \r\n") == .field(name: "Content-Length", value: "12"))
        #expect(line("x-amzn-ErrorType:a:b\r\n") == .field(name: "x-amzn-ErrorType", value: "a:b"))
        #expect(line("\r\n") == .other)
        #expect(line("no colon here\r\n") == .other)
        // ":" and a combining mark after it are one Character.
        #expect(line("Content-Length:\u{301}5\r\n") == .field(name: "Content-Length", value: "\u{301}5"))
        #expect(ResponseHeaderLine([0xFF, 0x3A, 0xC3]) == .field(name: "\u{FFFD}", value: "\u{FFFD}"))
    }

    @Test func unpairedSurrogatesAreErrorsNotTraps() {
        // Issue 13 A2: a high surrogate followed by an escape that is not a
        // low surrogate underflowed `low - 0xDC00` and killed the daemon.
        for bad in [#""\uD800\u0041""#, #""\uD800\u0000""#, #""\uDBFF\uDBFF""#, #""\uD800""#, #""\uD800x""#,
                    #""\uDC00""#, #""\uDFFF\uD800""#, #""\uD800\u""#, #""\uD800\uZZZZ""#, #""\uD83D\uDE0""#] {
            #expect(JSONValue.parse(bad) == nil, "\(bad)")
            #expect(JSONValue.parse(#"{"KeyId":\#(bad),"Plaintext":"aGk="}"#) == nil, "\(bad)")
        }
        #expect(JSONValue.parse(#""\uD83D\uDE00""#)?.stringValue == "\u{1F600}")
        #expect(JSONValue.parse(#""\uDBFF\uDFFF""#)?.stringValue == "\u{10FFFF}")
        #expect(JSONValue.parse(#""\u00e9\u0041\/""#)?.stringValue == "éA/")
    }

    @Test func strictStringsAndNumbers() {
        for bad in ["\"a\u{01}b\"", #""\x41""#, #""\q""#, #""abc"#, #""\"#, "1e999", "-1e400", "01", "1.", ".5", "+1", "1e", "-", "--1", "1e+"] {
            #expect(JSONValue.parse(bad) == nil, "\(bad)")
        }
        #expect(JSONValue.parse("-0.5e-3")?.numberValue == -0.0005)
        #expect(JSONValue.parse("0")?.numberValue == 0)
        #expect(JSONValue.parse("1E2")?.numberValue == 100)
        #expect(JSONValue.parse("12345678901234567890123")?.numberValue != nil)
    }

    @Test func deepNestingIsRefused() {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(JSONValue.parse(deep) == nil)
        let deepObject = String(repeating: #"{"a":"#, count: 50_000) + "1" + String(repeating: "}", count: 50_000)
        #expect(JSONValue.parse(deepObject) == nil)
    }

    @Test func arbitraryBytesNeverTrap() {
        // A cheap stand-in for the fuzzer: every short mutation of a
        // credentials document parses or is refused.
        let seed = Array(#"{"Version":1,"AccessKeyId":"A","SecretAccessKey":"\uD83D\uDE00\n","Expiration":"2030-01-01T00:00:00Z","n":-1.5e3}"#.utf8)
        let alphabet: [UInt8] = Array(#"\"u0DdFf8{}[],:e.-+1 "#.utf8) + [0, 0x80, 0xFF]
        for pos in seed.indices {
            for c in alphabet {
                var m = seed
                m[pos] = c
                _ = m.withUnsafeBytes { JSONValue.parse($0) }
                var t = m
                t.removeSubrange(pos...)
                _ = t.withUnsafeBytes { JSONValue.parse($0) }
                _ = m.withUnsafeBytes { JSONScanner.stringMember("SecretAccessKey", in: $0) }
            }
        }
    }

    @Test func hostileTimestampsAreClampedOrRefused() {
        #expect(Timestamp.parseISO8601("9999-12-31T23:59:59Z") != nil)
        #expect(Timestamp.parseISO8601("+015-08-30T12:36:00Z") == nil)
        #expect(Timestamp.parseISO8601("2015-08-30T12:36:00." + String(repeating: "9", count: 5000) + "Z") != nil)
        // Out of range, or not the form: refused (timegm carried month 13
        // into the next year, and bytes after the zone were ignored), so
        // the document is refused with the Expiration named.
        for bad in ["2015-08-30T12:36:00+99:99", "2015-13-01T00:00:00Z", "2015-04-31T00:00:00Z", "2015-02-29T00:00:00Z",
                    "2015-08-30T24:00:00Z", "2015-08-30T12:60:00Z", "2015-08-30T12:36:61Z", "2015-08-00T12:36:00Z",
                    "2015-08-30T12x36y00Z", "2015-08-30T12:36:00Zjunk", "2015-08-30T12:36:00+01:3", "2015-08-30T12:36:00.Z",
                    "2015-08-30T12:36:00+0160", "2015-08-30T12:36:00 UTC", "2015-08-30X12:36:00Z"] {
            #expect(Timestamp.parseISO8601(bad) == nil, "\(bad)")
        }
        let base = Timestamp.parseISO8601("2015-08-30T12:36:00Z")!.seconds
        for (good, delta) in [("2016-02-29T12:36:00Z", 15_811_200.0), ("2015-08-30T12:36:00.5Z", 0.5), ("2015-08-30t12:36:00z", 0),
                              ("2015-08-30T14:36:00+02:00", 0), ("2015-08-30T14:36:00+0200", 0), ("2015-08-30T10:36:00-02", 0),
                              ("2015-08-30 12:36:00", 0), ("2015-08-30T12:36:00", 0)] {
            #expect(Timestamp.parseISO8601(good)?.seconds == base + delta, "\(good)")
        }
        // Formatting a timestamp no real source produces clamps, not traps.
        #expect(Timestamp(seconds: 1e300).iso8601.hasPrefix("9999-"))
        #expect(Timestamp(seconds: -1e300).iso8601.hasPrefix("1-") || Timestamp(seconds: -1e300).iso8601.hasPrefix("0001-"))
        #expect(Timestamp(seconds: .nan).iso8601 == "1970-01-01T00:00:00Z")
        #expect(Timestamp(seconds: .infinity).amzDate.hasPrefix("9999"))
        #expect(clampedMilliseconds(1e30) == 86_400_000 && clampedMilliseconds(.nan) == 0)
        #expect(clampedMilliseconds(-5) == 0 && clampedMilliseconds(.infinity) == 86_400_000 && clampedMilliseconds(1.5) == 1500)
        #expect(displaySeconds(1e30) == Int.max && displaySeconds(.nan) == 0 && displaySeconds(7.9) == 7)
    }

    @Test func base64NeverTraps() {
        for text in ["", "=", "====", "A", "AB==C", "\u{FF}", "QQ==QQ==", String(repeating: "/", count: 4097), "\\/\\/"] {
            _ = Base64.decode(text)
            _ = Array(text.utf8).withUnsafeBytes { Base64.looksLikeBase64($0) }
        }
        // The secure decoder refuses to write past its output.
        let input = Array("QUJDREVG".utf8)
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: 2, alignment: 1)
        defer { out.deallocate() }
        #expect(input.withUnsafeBytes { Base64.decode($0, into: out) } == nil)
        // Only the backslash of JSON's "\/" is skipped; any other is an error
        // (a "\u002B" decoded as base64 would give other bytes, silently).
        #expect(Base64.decode(#"\/\/\/\/"#) == [0xff, 0xff, 0xff])
        for text in [#"\u002B\u002B\u002B\u002B"#, #"QUJD\"#, #"QU\JD"#, #"QUJD\n"#] {
            #expect(Base64.decode(text) == nil, "\(text)")
        }
    }

    /// The access key ID goes into the Authorization header: a credential
    /// source cannot add header lines through it, and the transport sends
    /// no header with a control character whatever its origin.
    @Test func anAccessKeyIdThatIsNotOneWordIsRefused() throws {
        let dir = TempDir()
        for id in [#"AKIA\r\nX-Injected: 1"#, "AK IA", #"\u0000"#, ""] {
            let json = dir.write("c.json", #"{"Version": 1, "AccessKeyId": "\#(id)", "SecretAccessKey": "S", "SessionToken": "T"}"#)
            let p = ProcessCredentialProvider(command: "/bin/cat \(json)", profile: "p", environment: Environment([:]))
            #expect(throws: CredentialError.self) { try p.credentials() }
        }
        #expect(AWSCredentials.isAccessKeyId("ASIAXAMPLE1234567890"))
        let request = HTTPRequest(method: "GET", url: URLParts("http://127.0.0.1:9/")!, headers: [("X-Test", "a\r\nX-Injected: 1")])
        do {
            _ = try CurlTransport().send(request)
            Issue.record("a header with CR LF was sent")
        } catch {
            #expect(error.message.contains("control character"), "\(error)")
        }
    }

    @Test func loopbackIsAnAddressNotAPrefix() {
        // Issue 13 A11: "127.evil.example.invalid" passed as loopback.
        for yes in ["http://127.0.0.1/", "http://127.255.1.2:9/x", "http://[::1]:8/", "http://localhost/", "http://LOCALHOST:1/",
                    "http://[::ffff:127.0.0.1]/", "http://[0:0:0:0:0:0:0:1]/"] {
            #expect(URLParts(yes)!.isLoopback, "\(yes)")
        }
        for no in ["http://127.evil.example.invalid/", "http://127.0.0.1.nip.io/", "http://127.1/", "http://1270.0.0.1/",
                   "http://127.0.0.1x/", "http://[::2]/", "http://[::1%lo]/", "http://localhost.evil.example/",
                   "http://128.0.0.1/", "http://0x7f.0.0.1/", "http://[::ffff:10.0.0.1]/", "http://[fe80::1]/"] {
            #expect(!(URLParts(no)?.isLoopback ?? false), "\(no)")
        }
        #expect(URLParts("http://127.0.0.1:80/")!.ipAddress == [127, 0, 0, 1])
        #expect(URLParts("http://example.com/")!.ipAddress == nil)
    }

    @Test func containerFullURIOverHTTPNeedsAnAllowedAddress() {
        func check(_ uri: String) -> Bool {
            let p = ContainerCredentialProvider(environment: Environment(["AWS_CONTAINER_CREDENTIALS_FULL_URI": uri]),
                                                transport: ScriptedTransport { _, _ in .init(status: 500, body: "") })
            do { _ = try p.endpoint(); return true } catch { return false }
        }
        for ok in ["http://169.254.170.2/v2/x", "http://169.254.170.23/v1/credentials", "http://[fd00:ec2::23]/v1/credentials",
                   "http://[fd00:ec2:0:0::23]/v1/credentials", "http://127.0.0.2:9/c", "https://127.evil.example.invalid/c"] {
            #expect(check(ok), "\(ok)")
        }
        for bad in ["http://127.evil.example.invalid/creds", "http://169.254.170.2.evil.example/x", "http://169.254.170.200/x",
                    "http://[fd00:ec2::24]/x", "http://localhost.evil.example/x", "http://127.1/x"] {
            #expect(!check(bad), "\(bad)")
        }
    }

    @Test func credentialProcessInheritsNoDescriptor() throws {
        // Issue 13 A9: the helper inherited the pooled connection to KMS and
        // curl's socketpair. A descriptor opened without close-on-exec (as
        // curl 7.88 opens its wakeup socketpair) must not reach it either.
        let leaked = dup(2)
        #expect(leaked > 2)
        defer { close(leaked) }
        let dir = TempDir()
        let out = dir.path + "/fds"
        let json = dir.write("creds.json", #"{"Version": 1, "AccessKeyId": "AK", "SecretAccessKey": "S"}"#)
        // Lists the helper's own descriptors (the listing's directory
        // descriptor is closed by then, so readlink skips it).
        let script = dir.write("fds.py", """
            #!/usr/bin/env python3
            import os, sys
            fds = []
            for f in os.listdir("/proc/self/fd"):
                try:
                    fds.append("%s %s" % (f, os.readlink("/proc/self/fd/" + f)))
                except OSError:
                    pass
            open(sys.argv[1], "w").write("\\n".join(sorted(fds)))
            sys.stdout.write(open(sys.argv[2]).read())
            """, mode: 0o700)
        let p = ProcessCredentialProvider(command: "\(script) \(out) \(json)", profile: "p",
                                          environment: Environment(["PATH": "/usr/bin:/bin"]))
        _ = try p.credentials()
        let listed = try readSmallFile(out, limit: 4096).get()
        let fds = String(decoding: listed, as: UTF8.self).split(whereSeparator: { $0 == "\n" })
            .map { String($0.split(separator: " ")[0]) }.sorted()
        #expect(fds == ["0", "1", "2"], "\(fds)")
    }

    @Test func secretMembersAreDecodedIntoSecureMemoryOnly() throws {
        // Issue 13 A14: the secret key and token of a credentials document
        // never become Strings: the parser leaves them undecoded, the
        // scanner decodes them into secure memory.
        let doc = Array(#"{"AccessKeyId":"ASIA1","SecretAccessKey":"s\/e\u0063ret","Token":"tok+/=","Nested":{"Token":"x"}}"#.utf8)
        try doc.withUnsafeBytes { b in
            let v = try #require(JSONValue.parse(b, redacting: ["SecretAccessKey", "Token"]))
            #expect(v["AccessKeyId"]?.stringValue == "ASIA1")
            #expect(v["SecretAccessKey"] == .null && v["Token"] == .null && v["Nested"]?["Token"] == .null)
            let s = try #require(try JSONScanner.secureStringMember("SecretAccessKey", in: b))
            s.withUnsafeBytes { #expect(String(decoding: $0, as: UTF8.self) == "s/ecret") }
            #expect(try JSONScanner.secureStringMember("Missing", in: b) == nil)
        }
        // A redacted member is still checked: a bad escape refuses the document.
        #expect(JSONValue.parse(#"{"Token":"\uD800\u0041"}"#) == nil)
        #expect(Array(#"{"Token":"\uD800\u0041"}"#.utf8).withUnsafeBytes { JSONValue.parse($0, redacting: ["Token"]) } == nil)
        #expect(try Array(#"{"Token":"\uD800\u0041"}"#.utf8).withUnsafeBytes { try JSONScanner.secureStringMember("Token", in: $0) } == nil)
    }

    @Test func aTokenThatIsNotOneWordIsRefused() throws {
        // Sent as a header: CR/LF would inject headers.
        let dir = TempDir()
        for token in [#"a\r\nX-Injected: 1"#, "a b", #"\u0000"#] {
            let json = dir.write("c.json", #"{"Version": 1, "AccessKeyId": "AK", "SecretAccessKey": "S", "SessionToken": "\#(token)"}"#)
            let p = ProcessCredentialProvider(command: "/bin/cat \(json)", profile: "p", environment: Environment([:]))
            #expect(throws: CredentialError.self) { try p.credentials() }
        }
        let good = dir.write("g.json", #"{"Version": 1, "AccessKeyId": "AK", "SecretAccessKey": "S e c", "SessionToken": "IQo+/="}"#)
        let c = try ProcessCredentialProvider(command: "/bin/cat \(good)", profile: "p", environment: Environment([:])).credentials()
        #expect(c.copyOfSecretAccessKey() == "S e c" && c.copyOfSessionToken() == "IQo+/=")
        #expect(c.secret.backing != .unlockedAnonymous && c.token!.backing != .unlockedAnonymous)
        #expect(!"\(c)".contains("S e c") && !"\(c)".contains("IQo"))
    }

    @Test func theSessionTokenTravelsAsASecureHeaderAndIsSigned() throws {
        let c = try AWSCredentials(accessKeyId: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                                   sessionToken: "TOKEN-123", source: "test", kind: .other)
        let signer = SigV4Signer(region: "us-east-1", service: "kms")
        let req = SigV4Signer.Request(method: "POST", path: "/", headers: [("Host", "kms.us-east-1.amazonaws.com")],
                                      payloadHash: Digest.emptyPayloadHash)
        let date = Timestamp.parseISO8601("2015-08-30T12:36:00Z")!
        let added = signer.sign(req, credentials: c, date: date)
        #expect(!added.contains { $0.value.contains("TOKEN-123") })
        let auth = added.first { $0.name == "Authorization" }!.value
        #expect(auth.contains("SignedHeaders=host;x-amz-date;x-amz-security-token,"))
        // Same signature as the string path (the conformance vectors' one).
        var withToken = req
        withToken.headers += [("X-Amz-Date", date.amzDate), ("X-Amz-Security-Token", "TOKEN-123")]
        let (creq, _) = signer.canonicalRequest(withToken, normalizePath: true)
        let sig = signer.signature(stringToSign: signer.stringToSign(canonicalRequest: creq, date: date),
                                   secretAccessKey: c.copyOfSecretAccessKey(), date: date)
        #expect(auth.hasSuffix("Signature=" + sig))
        let secure = SigV4Signer.secureHeaders(for: c)
        #expect(secure.count == 1 && secure[0].name == "X-Amz-Security-Token")
    }

    /// An endpoint's error text goes into every retry's log line, audit
    /// records and status: a megabyte of it is cut where it is read.
    @Test func hugeErrorTextIsBounded() throws {
        let huge = String(repeating: "é", count: 500_000)
        for body in [#"{"__type":"\#(huge)","message":"\#(huge)"}"#,
                     "<Error><Code>\(huge)</Code><Message>\(huge)</Message></Error>"] {
            let b = try SecureBuffer(capacity: body.utf8.count)
            try b.append(utf8: body)
            let e = AWSJSONClient.parseError(HTTPResponse(status: 400, headers: [("x-amzn-RequestId", huge)], body: b))
            #expect("\(e)".utf8.count < 2048, "\("\(e)".utf8.count) bytes")
        }
    }

    /// An error's code and message are read from the body's top level
    /// without building the rest: a megabyte of tiny array elements made a
    /// tree of some 20 MB for each throttled retry. A JSON body with
    /// neither member is shown as text, as any other body.
    @Test func anErrorBodyIsReadForItsCodeAndMessageOnly() throws {
        let big = "[" + Array(repeating: "0", count: 400_000).joined(separator: ",") + "]"
        for body in [#"{"a":\#(big),"__type":"com.amazon#ThrottlingException","message":"Rate exceeded"}"#,
                     #"{"__type":"ThrottlingException","a":{"message":"inner"},"Message":"Rate exceeded","a":\#(big)}"#] {
            let b = try SecureBuffer(capacity: body.utf8.count)
            try b.append(utf8: body)
            guard case .service(let code, let message, let status, _) = AWSJSONClient.parseError(HTTPResponse(status: 400, headers: [], body: b)) else {
                Issue.record("not a service error"); continue
            }
            #expect(code == "ThrottlingException" && message == "Rate exceeded" && status == 400)
        }
        let body = #"{"error":"upstream timed out"}"#
        let b = try SecureBuffer(capacity: body.utf8.count)
        try b.append(utf8: body)
        guard case .service(let code, let message, _, _) = AWSJSONClient.parseError(HTTPResponse(status: 502, headers: [], body: b)) else {
            Issue.record("not a service error"); return
        }
        #expect(code == "HTTP502" && message == body)
    }

    /// Error bodies are read as text for log lines. One that carries a
    /// credentials document or a plaintext anyway (a broken proxy or agent
    /// answering 500 with it) keeps those members out of the text and of
    /// every String: no secret in the error, the log or the heap.
    @Test func anErrorBodyThatCarriesSecretsIsNotEchoed() throws {
        let secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
        let bodies = [#"{"message":"oops","AccessKeyId":"AKIA","SecretAccessKey":"\#(secret)","Token":"\#(secret)"}"#,
                      #"{"__type":"InternalFailure","message":"x","Plaintext":"\#(secret)"}"#,
                      "<Error><Code>X</Code><Message>m</Message><SecretAccessKey>\(secret)</SecretAccessKey></Error>",
                      "<Creds><SessionToken>\(secret)</SessionToken></Creds>"]
        for body in bodies {
            let b = try SecureBuffer(capacity: body.utf8.count)
            try b.append(utf8: body)
            let r = HTTPResponse(status: 500, headers: [], body: b)
            #expect(!r.nonSecretBodyText().contains(secret), "\(body)")
            let e = AWSJSONClient.parseError(r)
            #expect(!"\(e)".contains(secret), "\(e)")
        }
        // An ordinary error body is still shown.
        let body = #"{"__type":"AccessDeniedException","message":"User: arn:aws:iam::1:user/u is not authorized"}"#
        let b = try SecureBuffer(capacity: body.utf8.count)
        try b.append(utf8: body)
        let r = HTTPResponse(status: 400, headers: [], body: b)
        #expect(r.nonSecretBodyText() == body)
        #expect("\(AWSJSONClient.parseError(r))".contains("is not authorized"))
    }

    /// An XML error body's code and message are found in its bytes: a
    /// combining mark after `<Code>` hid the code from a Character search
    /// (the error read as HTTP400); the five entities decode, any other
    /// is shown as sent, and a missing element is nil.
    @Test func xmlErrorElementsAreFoundOnBytes() throws {
        #expect(xmlElement("Code", in: "<Error><Code>\u{301}Throttling</Code></Error>") == "\u{301}Throttling")
        #expect(xmlElement("Code", in: "<Code>a</Code>\u{301}") == "a")
        #expect(xmlElement("Message", in: "<Message>&lt;&amp;lt;&#39;&bogus;&gt;&quot;&apos;&</Message>") == "<&lt;&#39;&bogus;>\"'&")
        #expect(xmlElement("Code", in: "<Code>unclosed") == nil)
        #expect(xmlElement("Code", in: "</Code><Code>") == nil)
        #expect(xmlElement("Code", in: "<Cod") == nil)
        let body = "<ErrorResponse><Error><Code>\u{301}InvalidClientTokenId</Code><Message>m</Message></Error></ErrorResponse>"
        let b = try SecureBuffer(capacity: body.utf8.count)
        try b.append(utf8: body)
        let e = AWSJSONClient.parseError(HTTPResponse(status: 403, headers: [], body: b))
        guard case .service(let code, let message, _, _) = e else { Issue.record("\(e)"); return }
        #expect(code == "\u{301}InvalidClientTokenId")
        #expect(message == "m")
    }

    @Test func hostileSTSAnswersAreRefusedNotTrusted() throws {
        func assume(_ body: String) -> Result<AWSCredentials, CredentialError> {
            let t = ScriptedTransport { _, _ in .init(status: 200, body: body) }
            do {
                return .success(try stsClient(t, .system).assumeRoleWithWebIdentity(roleArn: "arn:aws:iam::1:role/r", sessionName: "s",
                                                                                    token: secureText("jwt"), source: "test"))
            } catch { return .failure(error) }
        }
        let good = try assume(stsAnswer("AssumeRoleWithWebIdentity", id: "ASIAX")).get()
        #expect(good.copyOfSecretAccessKey() == "sec-ASIAX" && good.copyOfSessionToken() == "tok-ASIAX")
        #expect(try assume("<Credentials><AccessKeyId>A</AccessKeyId><SecretAccessKey>s&amp;t</SecretAccessKey><SessionToken>t&lt;</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration></Credentials>")
            .get().copyOfSecretAccessKey() == "s&t")
        for bad in ["<SessionToken>tok</SessionToken><SecretAccessKey>sec",            // unclosed
                    "<AccessKeyId>A</AccessKeyId><SecretAccessKey>s&bogus;</SecretAccessKey><SessionToken>t</SessionToken>",
                    "<AccessKeyId>A</AccessKeyId><SecretAccessKey>s</SecretAccessKey><SessionToken>a\r\nX-Evil: 1</SessionToken>",
                    "<AccessKeyId>A</AccessKeyId><SecretAccessKey></SecretAccessKey><SessionToken>t</SessionToken>",
                    "", "<", "</AccessKeyId><AccessKeyId>",
                    // Temporary credentials with no expiry would be kept forever.
                    "<AccessKeyId>A</AccessKeyId><SecretAccessKey>s</SecretAccessKey><SessionToken>t</SessionToken>",
                    "<AccessKeyId>A</AccessKeyId><SecretAccessKey>s</SecretAccessKey><SessionToken>t</SessionToken><Expiration>soon</Expiration>"] {
            guard case .failure = assume(bad) else { Issue.record("accepted: \(bad)"); continue }
        }
    }
}
