"""Issue 15 item 2: systemd's LoadCredential=ID:PATH served from KMS. A
client does what systemd does (as root, from a process already in the
unit's cgroup, bound to the abstract address <random>/unit/<UNIT>/<ID>) and
reads to EOF. Allowed units get the exact plaintext; a unit not allowed, a
forged address, a non-root peer or an unknown ID get an answer over
systemd's 1 MiB credential limit (zeros), so systemd's read fails and the
unit does not start (an AF_UNIX stream cannot be reset), each audited."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import refused_at_mount
from kmsproxy import Fault
from test_units import units  # noqa: F401  (the fixture)

CLIENT = r'''
import os, socket, sys
unit, ident, path = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(b"\0" + os.urandom(8).hex().encode() + b"/unit/" + unit.encode() + b"/" + ident.encode())
s.connect(path)
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
if len(data) > 1 << 20:          # what systemd refuses (CREDENTIAL_SIZE_MAX): E2BIG
    assert data.count(0) == len(data)
    sys.stderr.write("REFUSED\n")
    sys.exit(3)
sys.stdout.buffer.write(data)
'''


def fetch(cgroup, unit, ident, sock, user=None):
    """Runs the client in `cgroup` (as root, or `user`), asking for `unit`/`ident`."""
    drop = 'setpriv --reuid "$5" --regid "$5" --init-groups ' if user else ""
    script = 'echo $$ > "$1/cgroup.procs" && exec %s"%s" -c "$6" "$2" "$3" "$4"' % (drop, sys.executable)
    return subprocess.run(["sh", "-c", script, "sh", str(cgroup), unit, ident, str(sock), user or "", CLIENT],
                          capture_output=True, timeout=60)


def test_units_get_their_credentials_and_nothing_else(tmp_path, kms, mount_factory, units, users, public_tmp):  # noqa: F811
    web, web_cg = units["web"]
    batch, batch_cg = units["batch"]
    src = tmp_path / "src"
    (src / "db").mkdir(parents=True)
    (src / "api.token.encrypted").write_bytes(kms.encrypt_blob(b"token-for-web\n"))
    (src / "db" / "main.password.encrypted").write_bytes(kms.encrypt_blob(b"db-password"))
    policy = tmp_path / "policy"
    policy.write_text("db/main.password  allow_unit=%s  credential=db-password\n"
                      "api.token         allow_unit=%s\n" % (batch, web))
    sock = public_tmp / ("cred-%s.sock" % uuid.uuid4().hex[:8])   # a non-root peer must reach it in one case
    audit = tmp_path / "audit.log"
    m = mount_factory(src, "allow_uid=0,policy=%s,credential_socket=%s,audit=%s" % (policy, sock, audit))
    assert oct(sock.stat().st_mode & 0o777) == "0o600"

    r = fetch(web_cg, web, "api.token", sock)
    assert r.returncode == 0 and r.stdout == b"token-for-web\n", r.stderr
    r = fetch(batch_cg, batch, "db-password", sock)          # credential=ID names a nested file
    assert r.returncode == 0 and r.stdout == b"db-password", r.stderr

    refusals = [
        (batch_cg, batch, "api.token", None, "not in allow_unit="),          # a unit not allowed
        (batch_cg, web, "api.token", None, "runs in %s" % batch),          # an address forged for another unit
        (web_cg, web, "api.token", "kmsfs-alice", "not root"),             # not root (systemd connects as root)
        (web_cg, web, "missing", None, "not in allow_unit= for missing"),  # no rule names it: refused before any lookup
        (web_cg, web, "..", None, "not <random>/unit/<unit>/<id>"),        # not a credential ID
    ]
    for cg, unit, ident, user, why in refusals:
        if user:
            sock.chmod(0o666)                                          # let the non-root peer reach the socket
        r = fetch(cg, unit, ident, sock, user)
        if user:
            sock.chmod(0o600)
        assert r.returncode == 3 and b"REFUSED" in r.stderr, (ident, why, r.returncode, r.stderr)
        assert m.wait_log(why), (why, m.log()[-2000:])
    text = audit.read_text()
    assert text.count("result=allowed") == 2
    assert "path=api.token result=denied" in text and "systemd credential for %s" % batch in text
    # Refusals before any access decision are audited too: the forged
    # address and the peer that is not root.
    denied = [l for l in text.splitlines() if "result=denied" in l]
    assert any("runs in %s" % batch in l and "names %s" % web in l for l in denied), denied
    assert any("not root as systemd does" in l for l in denied), denied
    assert b"token-for-web" not in pathlib.Path(m.log_path).read_bytes()


def mount_with_a_kms_that_hangs(tmp_path, kms, proxy, mount_factory, public_tmp, unit):
    """A mount whose one credential, api.token for `unit`, waits 20 s on
    KMS (timeout=30); returns it and its credential socket."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "api.token.encrypted").write_bytes(kms.encrypt_blob(b"token-for-web\n"))
    policy = tmp_path / "policy"
    policy.write_text("api.token  allow_unit=%s\n" % unit)
    sock = public_tmp / ("cred-%s.sock" % uuid.uuid4().hex[:8])
    proxy.reset()
    proxy.delay = 20
    proxy.policy = lambda n, target: Fault.SLOW
    m = mount_factory(src, "allow_uid=0,policy=%s,credential_socket=%s,timeout=30" % (policy, sock),
                      env=kms.base_env(endpoint=proxy.url))
    return m, sock


def test_a_request_still_waiting_on_kms_at_stop_is_refused_not_answered_empty(tmp_path, kms, proxy, mount_factory,
                                                                               units, public_tmp):  # noqa: F811
    """The daemon stops (a restart, an upgrade) while systemd waits for a
    credential KMS has not decrypted yet: the exit would close the
    connection, which systemd reads as an empty credential and starts the
    unit with. The stop answers it with the refusal instead."""
    web, web_cg = units["web"]
    m, sock = mount_with_a_kms_that_hangs(tmp_path, kms, proxy, mount_factory, public_tmp, web)
    script = 'echo $$ > "$1/cgroup.procs" && exec "%s" -c "$5" "$2" "$3" "$4"' % sys.executable
    client = subprocess.Popen(["sh", "-c", script, "sh", str(web_cg), web, "api.token", str(sock), CLIENT],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 10
        while proxy.count("Decrypt") < 1 and time.time() < deadline:
            time.sleep(0.05)
        assert proxy.count("Decrypt") >= 1, m.log()
        m.proc.send_signal(signal.SIGTERM)
        out, err = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 3 and b"REFUSED" in err, (client.returncode, out, err, m.log()[-2000:])
    assert m.proc.wait(15) == 0
    assert "refused 1 request still waiting at stop" in m.log()


FLOOD_CLIENT = r'''
import json, os, resource, select, socket, sys, time
unit, ident, path, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 64, n + 64))
socks = []
for i in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(b"\0" + os.urandom(8).hex().encode() + b"/unit/" + unit.encode() + b"/" + ident.encode())
    s.connect(path)
    socks.append(s)
got = {s.fileno(): 0 for s in socks}
ended = {}
poller = select.poll()
for s in socks:
    poller.register(s, select.POLLIN)
deadline = time.time() + 8
while time.time() < deadline:
    for fd, _ in poller.poll(200):
        chunk = os.read(fd, 1 << 20)
        if chunk:
            got[fd] += len(chunk)
        else:
            ended[fd] = got[fd]
            poller.unregister(fd)
print(json.dumps(sorted(ended.values())))
'''


def test_requests_past_the_queue_are_refused_not_answered_empty(tmp_path, kms, proxy, mount_factory, units,
                                                                 public_tmp):  # noqa: F811
    """More credential requests than the 16 workers and the queue of 1,024
    hold (workers held up by a slow KMS): those turned away get the
    refusal, never a closed connection (an empty credential)."""
    web, web_cg = units["web"]
    m, sock = mount_with_a_kms_that_hangs(tmp_path, kms, proxy, mount_factory, public_tmp, web)
    script = 'echo $$ > "$1/cgroup.procs" && exec "%s" -c "$6" "$2" "$3" "$4" "$5"' % sys.executable
    r = subprocess.run(["sh", "-c", script, "sh", str(web_cg), web, "api.token", str(sock), str(16 + 1024 + 4),
                        FLOOD_CLIENT], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ended = json.loads(r.stdout)
    assert ended, "no request was turned away within 8 s"
    assert all(n > 1 << 20 for n in ended), ended          # each a refusal, none empty
    assert m.wait_log("too many waiting")


@pytest.mark.parametrize("value", ["relative.sock", "/" + "x" * 120])
def test_a_bad_credential_socket_path_is_refused_with_one_line(tmp_path, kms, kmsfs_bin, value):
    assert "credential_socket=" in refused_at_mount(kmsfs_bin, kms.env, tmp_path, "credential_socket=" + value)


def test_a_credential_socket_in_a_directory_others_may_write_is_refused(tmp_path, kms, kmsfs_bin):
    """Whoever may rename the socket may put their own in its place and hand
    a service a credential of their choosing: a directory on its path that
    someone else may write, or that belongs to another user, refuses the
    mount, with one line (links and sticky directories: SystemTests)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    line = refused_at_mount(kmsfs_bin, kms.env, tmp_path, "credential_socket=%s/c.sock" % shared)
    assert "credential_socket=" in line and "its directory %s may be written by anyone" % shared in line, line
    assert not (shared / "c.sock").exists()
    os.chown(shared, 4242, 4242)
    shared.chmod(0o755)
    line = refused_at_mount(kmsfs_bin, kms.env, tmp_path, "credential_socket=%s/c.sock" % shared)
    assert "belongs to uid 4242" in line, line
