"""Issue 13: a hostile KMS, credential helper or environment cannot kill or
fool the daemon.

- A2: a KMS answer with an unpaired surrogate escape (`"\\uD800\\u0041"`)
  used to trap the JSON decoder and take the mount down; now that open
  fails with EIO and every other file is still served.
- A9: a `credential_process` helper started after KMS calls inherits no
  descriptor of the daemon (not the pooled connection to KMS, not curl's
  socketpair): only 0, 1 and 2; and every descriptor the daemon holds from
  3 up is close-on-exec.
- A11: a container credentials URI over http whose host merely starts with
  `127.` is a DNS name, not loopback, and is refused with one line.
"""
import base64
import datetime
import errno
import http.client
import http.server
import json
import os
import socketserver
import threading
import time

import pytest

from conftest import mounted
from test_credentials import bare_env, role  # noqa: F401  (role is a fixture)

GOOD = {"a": b"first secret, served", "b": b"second secret, also served"}
BAD = b"the answer for this one is hostile"


class HostileKMS:
    """Forwards to moto; answers Decrypt of chosen ciphertexts with a body
    built by `rewrite(moto_answer_dict) -> (status, raw_body_bytes)`."""

    def __init__(self, upstream_port):
        self.rewrites = {}          # base64 CiphertextBlob -> rewrite function
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                conn.request("POST", self.path, body=body, headers=dict(self.headers.items()))
                resp = conn.getresponse()
                status, data = resp.status, resp.read()
                conn.close()
                try:
                    blob = json.loads(body).get("CiphertextBlob")
                except ValueError:
                    blob = None
                rewrite = outer.rewrites.get(blob)
                if rewrite is not None and status == 200:
                    outer.hits += 1
                    status, data = rewrite(json.loads(data))
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile(kms):
    h = HostileKMS(kms.port)
    yield h
    h.close()


def bad_key_id(answer):
    # The raw bytes a hostile KMS sends: a high surrogate, then an escape
    # that is not a low surrogate.
    return 200, ('{"KeyId":"\\uD800\\u0041","Plaintext":"%s","EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}'
                 % answer["Plaintext"]).encode()


def bad_error_body(answer):
    return 400, b'{"__type":"\\uDBFF\\uDBFF","message":"\\uD800\\u0000"}'


@pytest.mark.parametrize("rewrite", [bad_key_id, bad_error_body], ids=["key-id", "error-body"])
def test_a_bad_escape_from_kms_fails_one_open_and_the_mount_keeps_serving(tmp_path, kms, hostile, mount_factory, rewrite):
    src = tmp_path / "src"
    src.mkdir()
    for name, data in GOOD.items():
        (src / (name + ".encrypted")).write_bytes(kms.encrypt_blob(data))
    blob = kms.encrypt_blob(BAD)
    (src / "bad.encrypted").write_bytes(blob)
    hostile.rewrites[base64.b64encode(blob).decode()] = rewrite
    m = mount_factory(src, "allow_uid=0", env=kms.base_env(endpoint=hostile.url))
    with open(m.file("a"), "rb") as f:
        assert f.read() == GOOD["a"]
    for _ in range(2):
        with pytest.raises(OSError) as e:
            open(m.file("bad"), "rb").read()
        assert e.value.errno == errno.EIO
        assert m.proc.poll() is None, "the daemon died:\n" + m.log()
    assert hostile.hits >= 1
    for name, data in GOOD.items():
        with open(m.file(name), "rb") as f:
            assert f.read() == data
    assert m.proc.poll() is None
    assert mounted(m.path)


FD_HELPER = r'''#!/usr/bin/env python3
import datetime, json, os, sys
fds = []
for f in os.listdir("/proc/self/fd"):
    try:
        fds.append("%%s=%%s" %% (f, os.readlink("/proc/self/fd/" + f)))
    except OSError:
        pass   # the listing's own directory descriptor, closed by now
with open(%(log)r, "a") as out:
    out.write(" ".join(sorted(fds)) + "\n")
creds = json.load(open(%(creds)r))
# Short-lived, so the daemon runs the helper again while it holds a
# pooled connection to KMS.
exp = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=4)
creds["Expiration"] = exp.strftime("%%Y-%%m-%%dT%%H:%%M:%%SZ")
print(json.dumps(creds))
'''


def test_credential_process_inherits_only_stdio(tmp_path, kms, role, mount_factory):  # noqa: F811
    c = role.mint()
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"Version": 1, "AccessKeyId": c["AccessKeyId"],
                                 "SecretAccessKey": c["SecretAccessKey"], "SessionToken": c["SessionToken"]}))
    log = tmp_path / "fds.log"
    helper = tmp_path / "fds-helper.py"
    helper.write_text(FD_HELPER % {"log": str(log), "creds": str(creds)})
    helper.chmod(0o700)
    config = tmp_path / "config"
    config.write_text("[default]\ncredential_process = %s\n" % helper)
    src = tmp_path / "src"
    src.mkdir()
    # One file per read: each open is a Decrypt (nothing cached yet).
    files = {"c%02d" % i: ("secret %d" % i).encode() for i in range(40)}
    for name, data in files.items():
        (src / (name + ".encrypted")).write_bytes(kms.encrypt_blob(data))
    m = mount_factory(src, "allow_uid=0", env=bare_env(kms, AWS_CONFIG_FILE=str(config)))
    names = iter(sorted(files))
    first = next(names)
    with open(m.file(first), "rb") as f:
        assert f.read() == files[first]
    # Past the refresh point (half the 4 s lifetime) the next KMS call
    # starts the helper again, the earlier calls' connection still pooled.
    for name in names:
        time.sleep(0.5)
        with open(m.file(name), "rb") as f:
            assert f.read() == files[name]
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
    runs = log.read_text().splitlines()
    assert len(runs) >= 2, m.log()
    for run in runs:
        fds = dict(item.split("=", 1) for item in run.split())
        assert sorted(fds, key=int) == ["0", "1", "2"], run
        assert not any(t.startswith("socket:") for t in fds.values()), run
    # And every descriptor the daemon holds from 3 up is close-on-exec
    # (curl's sockets, its wakeup socketpair, the control socket, ...).
    inheritable = []
    for fd in os.listdir("/proc/%d/fd" % m.pid):
        if int(fd) < 3:
            continue
        try:
            target = os.readlink("/proc/%d/fd/%s" % (m.pid, fd))
            flags = next(l for l in open("/proc/%d/fdinfo/%s" % (m.pid, fd)) if l.startswith("flags:")).split()[1]
        except (OSError, StopIteration):
            continue   # closed meanwhile
        if not int(flags, 8) & os.O_CLOEXEC:
            inheritable.append((fd, target))
    assert not inheritable, inheritable


def test_container_uri_named_like_loopback_is_refused(tmp_path, kms, mount_factory):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.encrypted").write_bytes(kms.encrypt_blob(GOOD["a"]))
    env = bare_env(kms, AWS_CONTAINER_CREDENTIALS_FULL_URI="http://127.evil.example.invalid/creds",
                   AWS_CONTAINER_AUTHORIZATION_TOKEN="bearer-token")
    # The mount comes up (credentials may appear later) and says why it has none.
    m = mount_factory(src, "allow_uid=0", env=env)
    assert m.wait_log("host '127.evil.example.invalid' is not allowed over http"), m.log()
    with pytest.raises(OSError) as e:
        open(m.file("a"), "rb").read()
    assert e.value.errno in (errno.EIO, errno.EACCES), e.value
    lines = [l for l in m.log().splitlines() if "127.evil.example.invalid" in l]
    assert lines and all("not allowed over http" in l for l in lines), lines
