"""Loopback stand-ins for the places AWS hands out credentials: the EC2
instance metadata service (IMDSv2), the container credential endpoint (ECS,
EKS Pod Identity) and STS AssumeRoleWithWebIdentity.

They serve credentials the test minted for real (moto's STS AssumeRole), so
moto accepts the requests kmsfs signs with them, session token included.
Each server records what it was asked, can be taken "down" (answers 503 or
hangs) and is shut down by `close()`.
"""
import datetime
import http.server
import json
import socketserver
import threading
import time
import urllib.parse


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FakeServer:
    """Base: a threaded HTTP server on 127.0.0.1 with a request log."""

    def __init__(self):
        self.lock = threading.Lock()
        self.log = []          # (method, path, headers dict, body bytes)
        self.down = False      # answer 503 to everything
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length", "0") or 0)
                body = self.rfile.read(length) if length else b""
                with outer.lock:
                    outer.log.append((self.command, self.path, dict(self.headers.items()), body))
                if outer.down:
                    return self.reply(503, b"down for the test", "text/plain")
                outer.handle(self, body)

            def reply(self, status, payload, ctype="application/json"):
                if isinstance(payload, str):
                    payload = payload.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = do_POST = _handle

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def requests(self, method=None):
        with self.lock:
            return [r for r in self.log if method is None or r[0] == method]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def iso(ts):
    """ISO 8601 UTC, as AWS credential documents write expirations."""
    if isinstance(ts, datetime.datetime):
        return ts.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def credentials_document(creds, token_key="Token"):
    """The JSON IMDS and the container endpoint answer with."""
    return json.dumps({"Code": "Success", "Type": "AWS-HMAC", "LastUpdated": iso(time.time()),
                       "AccessKeyId": creds["AccessKeyId"], "SecretAccessKey": creds["SecretAccessKey"],
                       token_key: creds["SessionToken"], "Expiration": iso(creds["Expiration"])})


class FakeIMDS(FakeServer):
    """EC2 instance metadata. With `require_token` it behaves as an instance
    with IMDSv2 required (GETs without a valid token get 401). With
    `hop_limit_1` the token PUT never answers (its reply would be dropped by
    a hop limit of 1 in a container), and GETs work without a token."""

    TOKEN = "fake-imds-session-token"

    def __init__(self, creds, role="kmsfs-instance-role", region="us-east-1", require_token=True, hop_limit_1=False):
        self.creds = creds
        self.role = role
        self.region = region
        self.require_token = require_token
        self.hop_limit_1 = hop_limit_1
        super().__init__()

    def handle(self, h, body):
        if h.command == "PUT":
            if h.path != "/latest/api/token" or not h.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return h.reply(400, b"")
            if self.hop_limit_1:
                time.sleep(3)            # the answer never arrives in time
                return h.reply(200, self.TOKEN, "text/plain")
            return h.reply(200, self.TOKEN, "text/plain")
        if self.require_token and h.headers.get("X-aws-ec2-metadata-token") != self.TOKEN:
            return h.reply(401, b"", "text/plain")
        base = "/latest/meta-data/iam/security-credentials/"
        if h.path == base:
            return h.reply(200, self.role, "text/plain")
        if h.path == base + self.role:
            return h.reply(200, credentials_document(self.creds))
        if h.path == "/latest/meta-data/placement/region":
            return h.reply(200, self.region, "text/plain")
        return h.reply(404, b"", "text/plain")


class FakeContainerCredentials(FakeServer):
    """The ECS agent / EKS Pod Identity agent endpoint: GET PATH with an
    `Authorization` header equal to `token` (when given)."""

    def __init__(self, creds, path="/v1/credentials", token=None):
        self.creds = creds
        self.path = path
        self.token = token
        super().__init__()

    def handle(self, h, body):
        if h.command != "GET" or h.path != self.path:
            return h.reply(404, b'{"message":"not found"}')
        if self.token is not None and h.headers.get("Authorization") != self.token:
            return h.reply(401, b'{"message":"bad token"}')
        return h.reply(200, credentials_document(self.creds))


class FakeSTS(FakeServer):
    """STS AssumeRoleWithWebIdentity over the query protocol: checks the form
    (role, session name, the token from the file) and answers XML."""

    def __init__(self, creds, role_arn, token):
        self.creds = creds
        self.role_arn = role_arn
        self.token = token
        super().__init__()

    def error(self, h, status, code, message):
        h.reply(status, ("<ErrorResponse><Error><Type>Sender</Type><Code>%s</Code><Message>%s</Message></Error>"
                         "<RequestId>fake</RequestId></ErrorResponse>" % (code, message)), "text/xml")

    def handle(self, h, body):
        form = dict(urllib.parse.parse_qsl(body.decode()))
        if h.command != "POST" or form.get("Action") != "AssumeRoleWithWebIdentity" or form.get("Version") != "2011-06-15":
            return self.error(h, 400, "InvalidAction", "unexpected request")
        if "Authorization" in h.headers:
            return self.error(h, 400, "InvalidRequest", "AssumeRoleWithWebIdentity is not signed")
        if form.get("RoleArn") != self.role_arn:
            return self.error(h, 403, "AccessDenied", "wrong role")
        if form.get("WebIdentityToken") != self.token:
            return self.error(h, 400, "InvalidIdentityToken", "token does not match")
        if len(form.get("RoleSessionName", "")) < 2:
            return self.error(h, 400, "ValidationError", "RoleSessionName")
        c = self.creds
        xml = ("<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">"
               "<AssumeRoleWithWebIdentityResult><SubjectFromWebIdentityToken>system:serviceaccount:x</SubjectFromWebIdentityToken>"
               "<AssumedRoleUser><Arn>%s/%s</Arn><AssumedRoleId>AROA:%s</AssumedRoleId></AssumedRoleUser>"
               "<Credentials><SessionToken>%s</SessionToken><SecretAccessKey>%s</SecretAccessKey>"
               "<Expiration>%s</Expiration><AccessKeyId>%s</AccessKeyId></Credentials>"
               "</AssumeRoleWithWebIdentityResult><ResponseMetadata><RequestId>fake</RequestId></ResponseMetadata>"
               "</AssumeRoleWithWebIdentityResponse>") % (
            self.role_arn, form["RoleSessionName"], form["RoleSessionName"], c["SessionToken"],
            c["SecretAccessKey"], iso(c["Expiration"]), c["AccessKeyId"])
        return h.reply(200, xml, "text/xml")
