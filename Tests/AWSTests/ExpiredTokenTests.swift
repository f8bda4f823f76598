import Testing
import AWS

@Suite struct ExpiredTokenTests {
    @Test func anExpiredTokenAnswerFetchesNewCredentialsAndSucceedsOnce() throws {
        let clock = ManualClock()
        let expires = clock.now + 3600
        let source = CountingProvider { n in creds("AKIDGEN\(n)", expires: expires) }
        let cache = CachingCredentialProvider(source, clock: clock.clock, runner: ManualRunner().runner)
        let transport = ScriptedTransport { req, _ in
            // The first credentials were revoked early; the second work.
            req.header("X-Amz-Security-Token") == "token-AKIDGEN1"
                ? .init(status: 400, body: #"{"__type":"ExpiredTokenException","message":"The security token included in the request is expired"}"#)
                : .init(status: 200, body: #"{"Plaintext":"aGk="}"#)
        }
        let client = AWSJSONClient(signingName: "kms", targetPrefix: "TrentService", region: "us-east-1",
                                   endpoint: URLParts("http://127.0.0.1:1")!, credentials: cache,
                                   transport: transport, clock: clock.clock)
        let response = try client.call("Decrypt", body: .bytes([]))
        #expect(response.status == 200)
        #expect(source.count == 2)
        #expect(transport.count == 2)
        #expect(cache.current?.accessKeyId == "AKIDGEN2")
    }

    /// A session token whose expiry was not known (a profile's
    /// aws_session_token, a credential_process without Expiration) is
    /// dropped too when KMS calls it expired, not served until a restart.
    @Test func aSessionTokenWithoutAnExpiryIsRefetchedOnExpiredToken() throws {
        let clock = ManualClock()
        let source = CountingProvider { n in
            try! AWSCredentials(accessKeyId: "ASIANOEXP\(n)", secretAccessKey: "s", sessionToken: "token-\(n)", source: "test", kind: .other)
        }
        let cache = CachingCredentialProvider(source, clock: clock.clock, runner: ManualRunner().runner)
        let transport = ScriptedTransport { req, _ in
            req.header("X-Amz-Security-Token") == "token-1"
                ? .init(status: 400, body: #"{"__type":"ExpiredTokenException","message":"expired"}"#)
                : .init(status: 200, body: #"{"Plaintext":"aGk="}"#)
        }
        let client = AWSJSONClient(signingName: "kms", targetPrefix: "TrentService", region: "us-east-1",
                                   endpoint: URLParts("http://127.0.0.1:1")!, credentials: cache,
                                   transport: transport, clock: clock.clock)
        #expect(try client.call("Decrypt", body: .bytes([])).status == 200)
        #expect(source.count == 2 && cache.current?.accessKeyId == "ASIANOEXP2")
    }

    @Test func longTermKeysAreNotRefetchedOnExpiredToken() {
        let source = CountingProvider { _ in creds("AKIDSTATIC") }
        let transport = ScriptedTransport { _, _ in
            .init(status: 400, body: #"{"__type":"ExpiredTokenException","message":"expired"}"#)
        }
        let client = AWSJSONClient(signingName: "kms", targetPrefix: "TrentService", region: "us-east-1",
                                   endpoint: URLParts("http://127.0.0.1:1")!, credentials: source,
                                   transport: transport, clock: ManualClock().clock)
        #expect(throws: AWSError.self) { try client.call("Decrypt", body: .bytes([])) }
        #expect(transport.count == 1)
        #expect(source.count == 1)
    }
}
