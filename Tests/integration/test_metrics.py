"""Issue 17 item 4: Prometheus metrics, off by default. `-o metrics=ADDR`
serves /metrics on loopback (or a Unix socket); `kmsfs status --prometheus`
prints the same exposition. Checked with Debian's real promtool and a real
Prometheus server scraping the endpoint; never a plaintext byte, never a
credential, no secret names unless asked for."""
import http.client
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from conftest import Mount, free_port, wait_port, refused_at_mount, run_as

SECRET = b"metrics-plaintext-must-not-leak-7f3a"


def scrape(port, path="/metrics", method="GET"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, r.getheader("Content-Type"), body


def samples(text):
    """{'name{labels}': value} of an exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
    return out


@pytest.fixture
def metered(tmp_path, kms, kmsfs_bin, public_tmp, users):
    src = tmp_path / "src"
    (src / "app").mkdir(parents=True)
    (src / "app" / "token.encrypted").write_bytes(kms.encrypt_blob(SECRET))
    (src / "broken.encrypted").write_bytes(b"\x01\x02 not a ciphertext at all")
    port = free_port()
    base = pathlib.Path(tempfile.mkdtemp(prefix="metrics-", dir=public_tmp))
    os.chmod(base, 0o755)
    (base / "mnt").mkdir()
    m = Mount(src, base / "mnt", "allow_uid=0,metrics=127.0.0.1:%d" % port, kms.env, tmp_path / "kmsfs.log")
    m.port = port
    yield m
    m.stop()


def test_endpoint_counts_each_kind_of_open_and_promtool_accepts_it(metered, kms, kmsfs_bin):
    m = metered
    status, ctype, body = scrape(m.port)
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    before = samples(body.decode())
    assert before['kmsfs_opens_total{result="kms"}'] == 0

    assert open(m.file("app/token"), "rb").read() == SECRET      # decrypted through KMS
    assert open(m.file("app/token"), "rb").read() == SECRET      # from the cache
    with pytest.raises(OSError):
        open(m.file("broken"), "rb")                              # fails (EIO)
    r = run_as("kmsfs-bob", ["cat", m.file("app/token")])
    assert r.returncode != 0                                      # denied (EACCES)

    _, _, body = scrape(m.port)
    text = body.decode()
    s = samples(text)
    assert s['kmsfs_opens_total{result="kms"}'] == 1
    assert s['kmsfs_opens_total{result="cache"}'] == 1
    assert s['kmsfs_opens_total{result="denied"}'] == 1
    assert s['kmsfs_opens_total{result="failed"}'] == 1
    assert s['kmsfs_kms_requests_total{operation="Decrypt",outcome="success"}'] >= 1
    assert s['kmsfs_kms_request_duration_seconds_count{operation="Decrypt"}'] >= 1
    assert s['kmsfs_kms_request_duration_seconds_bucket{operation="Decrypt",le="+Inf"}'] >= 1
    assert s["kmsfs_cached_secrets"] == 1 and s["kmsfs_cached_bytes"] >= len(SECRET)
    assert abs(s["kmsfs_kms_last_success_timestamp_seconds"] - time.time()) < 120
    assert s['kmsfs_build_info{version="%s"}' % kmsfs_version(kmsfs_bin)] == 1
    assert 'kmsfs_credentials_info{source="environment"} 1' in text     # the kind only

    # Never a plaintext byte, a credential, or (by default) a secret's name.
    assert SECRET.decode() not in text
    assert kms.secret_key not in text and kms.access_key not in text
    assert "token" not in text and "broken" not in text

    promtool = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert promtool.returncode == 0, promtool.stdout + promtool.stderr

    # kmsfs status --prometheus prints the same figures.
    r = subprocess.run([kmsfs_bin, "status", m.path, "--prometheus"], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    cli = samples(r.stdout.decode())
    for key in ['kmsfs_opens_total{result="kms"}', 'kmsfs_opens_total{result="cache"}',
                'kmsfs_opens_total{result="denied"}', "kmsfs_cached_bytes"]:
        assert cli[key] == s[key]
    assert subprocess.run(["promtool", "check", "metrics"], input=r.stdout, capture_output=True).returncode == 0


def kmsfs_version(kmsfs_bin):
    out = subprocess.run([kmsfs_bin, "--version"], capture_output=True, text=True).stdout.strip()
    return out.split()[-1]


def test_only_get_and_head_of_metrics_are_answered_and_a_silent_client_blocks_nobody(metered):
    m = metered
    assert scrape(m.port, "/")[0] == 404
    assert scrape(m.port, "/metrics?x=1")[0] == 200
    assert scrape(m.port, "/metrics", "POST")[0] == 405
    status, _, body = scrape(m.port, "/metrics", "HEAD")
    assert status == 200 and body == b""
    # Garbage and an oversized head get 400 and the server keeps going.
    with socket.create_connection(("127.0.0.1", m.port), timeout=10) as s:
        s.sendall(b"\x00\xff\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    with socket.create_connection(("127.0.0.1", m.port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000)
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    # A client that connects and says nothing is dropped after 2 s.
    idle = socket.create_connection(("127.0.0.1", m.port), timeout=10)
    t0 = time.time()
    assert scrape(m.port)[0] == 200
    assert time.time() - t0 < 8
    idle.close()


def test_per_secret_series_only_on_request(tmp_path, kms, mount_factory):
    src = tmp_path / "src"
    src.mkdir()
    (src / "db.password.encrypted").write_bytes(kms.encrypt_blob(SECRET))
    port = free_port()
    m = mount_factory(src, "allow_uid=0,metrics=127.0.0.1:%d,metrics_per_secret" % port)
    open(m.file("db.password"), "rb").read()
    open(m.file("db.password"), "rb").read()
    text = scrape(port)[2].decode()
    assert samples(text)['kmsfs_secret_hits_total{path="db.password"}'] >= 1
    assert SECRET.decode() not in text
    # On a loopback port any local user reads those names: the log says so.
    assert m.wait_log("metrics_per_secret on 127.0.0.1:%d: any local user can read the names" % port), m.log()


def test_per_secret_series_turned_on_by_remount_are_warned_of_too(tmp_path, kms, mount_factory, kmsfs_bin):
    src = tmp_path / "src"
    src.mkdir()
    (src / "db.password.encrypted").write_bytes(kms.encrypt_blob(SECRET))
    port = free_port()
    m = mount_factory(src, "allow_uid=0,metrics=127.0.0.1:%d" % port)
    assert "metrics_per_secret on" not in m.log()
    r = subprocess.run([kmsfs_bin, str(src), m.path, "-o", "remount,metrics_per_secret"], env=kms.env,
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert m.wait_log("metrics_per_secret on 127.0.0.1:%d: any local user can read the names" % port), m.log()


def test_unix_socket_endpoint(tmp_path, kms, mount_factory):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.encrypted").write_bytes(kms.encrypt_blob(SECRET))
    sock = tmp_path / "metrics.sock"
    m = mount_factory(src, "allow_uid=0,metrics=unix:%s" % sock)
    assert oct(os.stat(sock).st_mode & 0o777) == "0o660"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and b"kmsfs_opens_total" in data
    m.stop()
    assert not sock.exists()


@pytest.mark.parametrize("value, why", [
    ("0.0.0.0:9464", "loopback only"),
    ("192.0.2.1:9464", "loopback only"),
    ("127.evil.example.invalid:9464", "loopback only"),
    ("127.0.0.1:0", "port"),
    ("127.0.0.1:99999", "port"),
    ("unix:relative.sock", "absolute"),
])
def test_a_bad_metrics_address_is_refused_with_one_line(tmp_path, kms, kmsfs_bin, value, why):
    line = refused_at_mount(kmsfs_bin, kms.env, tmp_path, "metrics=" + value)
    assert why in line and "metrics=" in line, line


def test_a_taken_port_does_not_stop_the_mount_and_is_served_once_free(tmp_path, kms):
    """Any local user may bind a loopback port first: that must not keep
    /etc/secrets from mounting. The secrets are served, a warning says
    why metrics are not, and the port is tried again until it is free."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "s.encrypted").write_bytes(kms.encrypt_blob(b"served"))
    (tmp_path / "mnt").mkdir()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    m = Mount(src, tmp_path / "mnt", "allow_uid=0,metrics=127.0.0.1:%d" % port, kms.env, tmp_path / "kmsfs.log")
    try:
        assert open(m.file("s"), "rb").read() == b"served"
        assert m.wait_log("the secrets are served without metrics"), m.log()
        busy.close()
        assert m.wait_log("is free now; serving /metrics", timeout=15), m.log()
        status, _, body = scrape(port)
        assert status == 200 and b"kmsfs_build_info" in body
    finally:
        busy.close()
        m.stop()


def test_a_client_trickling_its_request_does_not_hold_the_endpoint(metered):
    """One connection is served at a time: a request head must arrive whole
    within 2 s, or a local user sending a byte a second would hold
    /metrics for hours."""
    m = metered
    slow = socket.create_connection(("127.0.0.1", m.port))
    stop = []

    def trickle():
        for _ in range(40):
            if stop:
                return
            try:
                slow.send(b"G")
            except OSError:
                return
            time.sleep(0.25)

    import threading
    t = threading.Thread(target=trickle)
    t.start()
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        status, _, _ = scrape(m.port)
        assert status == 200
        assert time.monotonic() - t0 < 5, "the trickling client held the endpoint"
    finally:
        stop.append(1)
        t.join()
        slow.close()


def test_a_real_prometheus_server_scrapes_the_endpoint(metered, tmp_path):
    m = metered
    prometheus = shutil.which("prometheus")
    assert prometheus, "Debian's prometheus package is missing: tools/deps.sh installs it"
    open(m.file("app/token"), "rb").read()
    web = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n"
                   "  - job_name: kmsfs\n    static_configs:\n      - targets: ['127.0.0.1:%d']\n" % m.port)
    proc = subprocess.Popen([prometheus, "--config.file=%s" % cfg, "--storage.tsdb.path=%s" % (tmp_path / "tsdb"),
                             "--web.listen-address=127.0.0.1:%d" % web],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"),
                            start_new_session=True)
    try:
        wait_port(web, timeout=60)
        query = "http://127.0.0.1:%d/api/v1/query?query=%s" % (web, urllib.request.quote('kmsfs_opens_total{result="kms"}'))
        deadline = time.time() + 60
        result = []
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(query, timeout=10) as r:
                    doc = json.load(r)
            except urllib.error.HTTPError as e:      # 503 until its storage is ready
                assert e.code == 503, e
                time.sleep(0.5)
                continue
            result = doc["data"]["result"]
            if result:
                break
            time.sleep(0.5)
        assert result, (tmp_path / "prometheus.log").read_text(errors="replace")[-2000:]
        assert result[0]["metric"]["job"] == "kmsfs" and float(result[0]["value"][1]) == 1
        with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/targets" % web, timeout=10) as r:
            targets = json.load(r)["data"]["activeTargets"]
        assert targets[0]["health"] == "up", targets
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_idle_connections_do_not_hold_up_a_scrape(metered):
    """Any local user may connect and send nothing. Served one at a time,
    each idle connection cost the endpoint 2 s, and one every 50 ms kept a
    scrape waiting 33 s, past Prometheus's 10 s timeout. Request heads are
    read from every connection at once now."""
    m = metered
    idle = []
    try:
        for _ in range(40):
            idle.append(socket.create_connection(("127.0.0.1", m.port)))
            time.sleep(0.02)
        t0 = time.monotonic()
        status, _, _ = scrape(m.port)
        assert status == 200
        assert time.monotonic() - t0 < 2, "idle connections held the endpoint %.1f s" % (time.monotonic() - t0)
    finally:
        for s in idle:
            s.close()


def test_a_request_naming_another_host_is_refused(metered):
    """DNS rebinding: a page in a local browser reaching 127.0.0.1 under a
    name of its own. A loopback endpoint answers Host: localhost or a
    loopback address only."""
    m = metered
    for host, want in [("evil.example", 403), ("evil.example:%d" % m.port, 403), ("127.0.0.1:%d" % m.port, 200),
                       ("localhost", 200), ("[::1]:%d" % m.port, 200)]:
        c = http.client.HTTPConnection("127.0.0.1", m.port, timeout=10)
        c.putrequest("GET", "/metrics", skip_host=True)
        c.putheader("Host", host)
        c.endheaders()
        r = c.getresponse()
        r.read()
        c.close()
        assert r.status == want, (host, r.status)
