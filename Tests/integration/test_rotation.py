"""Issue 17: rotation that reaches the applications. Versions per secret and
per open handle, `kmsfs status --wait-rotated`, and reload=/on_change=
notifications: one per target for a burst of changes, after the new version
decrypted, and none for a broken ciphertext."""
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import time

import pytest

from conftest import read_in_background, refused_at_mount


def put(kms, path, data):
    """Atomic replace, as config management does: write aside, rename over."""
    tmp = str(path) + ".tmp-new"
    with open(tmp, "wb") as f:
        f.write(kms.encrypt_blob(data) if isinstance(data, bytes) else data.encode())
    os.rename(tmp, path)
    return hashlib.sha256(open(path, "rb").read()).hexdigest()[:12]


def status(kmsfs_bin, m):
    r = subprocess.run([kmsfs_bin, "status", m.path, "--json"], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def eventually(check, timeout=10.0):
    deadline = time.time() + timeout
    while True:
        v = check()
        if v:
            return v
        if time.time() > deadline:
            return v
        time.sleep(0.05)


class Holder:
    """A real process that opens a secret, reads it and keeps it open."""

    def __init__(self, path):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; f = open(sys.argv[1], 'rb'); sys.stdout.write(f.read().decode()); "
             "sys.stdout.write('\\n'); sys.stdout.flush(); sys.stdin.read()", path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.read = self.proc.stdout.readline().rstrip(b"\n")

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(10)


@pytest.fixture
def holders():
    hs = []
    yield lambda p: hs.append(Holder(p)) or hs[-1]
    for h in hs:
        if h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait()


def test_status_names_who_holds_an_old_version_and_wait_rotated_waits_for_it(tmp_path, kms, mount_factory, kmsfs_bin, holders):
    src = tmp_path / "src"
    src.mkdir()
    v1 = put(kms, src / "db.password.encrypted", b"password-one")
    put(kms, src / "other.encrypted", b"other")
    m = mount_factory(src, "allow_uid=0")
    h = holders(m.file("db.password"))
    assert h.read == b"password-one"
    doc = status(kmsfs_bin, m)
    assert [e["version"] for e in doc["cache"]["entries"] if e["path"] == "db.password"] == [v1]
    assert doc["handles"]["open"] == 1 and doc["handles"]["stale"] == []

    v2 = put(kms, src / "db.password.encrypted", b"password-two")
    assert v2 != v1
    stale = eventually(lambda: status(kmsfs_bin, m)["handles"]["stale"])
    assert len(stale) == 1
    s = stale[0]
    assert (s["path"], s["version"], s["current"], s["pid"]) == ("db.password", v1, v2, h.proc.pid)
    assert s["comm"].startswith("python")
    # New opens get the new version while the old handle keeps its bytes.
    assert open(m.file("db.password"), "rb").read() == b"password-two"
    text = subprocess.run([kmsfs_bin, "status", m.path], capture_output=True, text=True, timeout=30).stdout
    assert "older versions still open: 1" in text and "pid %d" % h.proc.pid in text and v1 in text

    # Another secret is not held: done at once. This one: times out naming the holder.
    r = subprocess.run([kmsfs_bin, "status", m.path, "--wait-rotated", "other", "--timeout", "5"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    t0 = time.time()
    r = subprocess.run([kmsfs_bin, "status", m.path, "--wait-rotated", m.file("db.password"), "--timeout", "1"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and time.time() - t0 < 10
    assert "pid %d" % h.proc.pid in r.stderr and "db.password" in r.stderr and "timed out" in r.stderr
    # The same, written another way: still the held secret.
    r = subprocess.run([kmsfs_bin, "status", m.path + "/", "--wait-rotated", "./db.password", "--timeout", "1"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "timed out" in r.stderr, r.stderr
    # The same named by its absolute path with the mountpoint given as ".".
    r = subprocess.run([kmsfs_bin, "status", ".", "--wait-rotated", m.file("db.password"), "--timeout", "1"],
                       capture_output=True, text=True, timeout=30, cwd=m.path)
    assert r.returncode == 1 and "timed out" in r.stderr, r.stderr
    # A path that is no secret of the mount is refused, not "rotated" at once
    # (a rotation script would revoke the old credential under its users).
    (src / "dir").mkdir()
    for wrong, why in (("db.pasword", "no such secret"), ("db.password.encrypted", "without .encrypted"),
                       ("dir", "a directory"), (str(tmp_path / "elsewhere"), "is not in the mount"),
                       ("dir/../db.password", "without '..'")):
        r = subprocess.run([kmsfs_bin, "status", m.path, "--wait-rotated", "other", wrong, "--timeout", "1"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and why in r.stderr and "rotated" not in r.stdout, (wrong, r.returncode, r.stderr)

    waiter = subprocess.Popen([kmsfs_bin, "status", m.path, "--wait-rotated", "--timeout", "60"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1)
    assert waiter.poll() is None                       # still waiting while the handle is open
    h.close()
    assert waiter.wait(15) == 0
    assert status(kmsfs_bin, m)["handles"] == {"open": 0, "stale": []}


def notify_script(tmp_path):
    log = tmp_path / "notified.log"
    script = tmp_path / "on-change"
    script.write_text("#!/bin/sh\nprintf '%%s\\n' \"$*\" >> %s\nls /proc/self/fd | tr '\\n' ' ' >> %s.fds\n"
                      "env | grep -c '^AWS_' >> %s.env\necho \"on-change-stderr audit $*\" >&2\nexit 0\n" % (log, log, log))
    script.chmod(0o755)
    return script, log


def test_a_burst_of_twenty_changes_notifies_once_after_decrypting_and_a_broken_one_nobody(tmp_path, kms, mount_factory, kmsfs_bin):
    src = tmp_path / "src"
    (src / "app").mkdir(parents=True)
    for i in range(20):
        put(kms, src / "app" / ("s%02d.encrypted" % i), b"v1-%d" % i)
    script, log = notify_script(tmp_path)
    audit = tmp_path / "audit.log"
    m = mount_factory(src, "allow_uid=0,settle=1,on_change=%s,audit=%s" % (script, audit))
    for i in range(20):
        put(kms, src / "app" / ("s%02d.encrypted" % i), b"v2-%d" % i)
        time.sleep(0.02)
    assert eventually(lambda: log.exists(), 15)
    time.sleep(2.5)                                     # nothing more arrives for the same burst
    lines = log.read_text().splitlines()
    assert len(lines) == 1, lines
    assert sorted(lines[0].split()) == ["app/s%02d" % i for i in range(20)]
    assert (tmp_path / "notified.log.env").read_text().split() == ["0"]   # no AWS credentials in its environment
    # Decrypted before telling: the application's next open is a cache hit.
    before = status(kmsfs_bin, m)
    assert before["rotation"]["notifications_ok"] == 1
    assert open(m.file("app/s07"), "rb").read() == b"v2-7"
    after = status(kmsfs_bin, m)
    assert after["counters"]["decrypts"] == before["counters"]["decrypts"]
    assert after["counters"]["cache_hits"] == before["counters"]["cache_hits"] + 1
    assert eventually(lambda: "result=notified" in audit.read_text())
    # Its output is dropped, stderr too: a line it prints holding a
    # secret's name (any bytes but '/') never becomes a line of the
    # daemon's log or audit trail.
    assert "on-change-stderr" not in m.log() + audit.read_text()

    # A broken new version: nobody is told, the failure is logged and in status.
    (src / "app" / "s03.encrypted.tmp").write_bytes(b"\x01\x02 this is not a ciphertext")
    os.rename(src / "app" / "s03.encrypted.tmp", src / "app" / "s03.encrypted")
    doc = eventually(lambda: (lambda d: d if d["rotation"]["failures"] else None)(status(kmsfs_bin, m)), 15)
    assert doc and doc["rotation"]["failures"][0]["path"] == "app/s03"
    time.sleep(1.5)
    assert len(log.read_text().splitlines()) == 1
    assert m.wait_log("app/s03: the new ciphertext does not decrypt")
    text = subprocess.run([kmsfs_bin, "status", m.path], capture_output=True, text=True, timeout=30).stdout
    assert "app/s03" in text and "nobody was told" in text


def test_a_failed_notification_is_tried_again_and_status_shows_it_meanwhile(tmp_path, kms, mount_factory, kmsfs_bin):
    """A reload that fails (systemd busy, a unit mid-restart) is not the end:
    kmsfs tries again 10 s later for the secrets still at that version, and
    `kmsfs status` names it until then."""
    src = tmp_path / "src"
    src.mkdir()
    put(kms, src / "db.encrypted", b"one")
    log = tmp_path / "notified.log"
    marker = tmp_path / "fail-once"
    marker.write_text("")
    script = tmp_path / "on-change"
    script.write_text("#!/bin/sh\nprintf '%%s\\n' \"$*\" >> %s\n"
                      "if [ -e %s ]; then rm %s; exit 3; fi\n" % (log, marker, marker))
    script.chmod(0o755)
    audit = tmp_path / "audit.log"
    m = mount_factory(src, "allow_uid=0,settle=0.5,on_change=%s,audit=%s" % (script, audit))
    put(kms, src / "db.encrypted", b"two")
    assert eventually(lambda: log.exists(), 15)
    assert m.wait_log("will tell program:%s about db again in 10 s (try 2 of 5)" % script, timeout=10), m.log()
    doc = status(kmsfs_bin, m)
    [r] = doc["rotation"]["retrying"]
    assert r["target"] == "program:%s" % script and r["paths"] == ["db"] and r["attempts"] == 1
    assert 0 < r["next_try_s"] <= 10 and "status 3" in r["reason"]
    text = subprocess.run([kmsfs_bin, "status", m.path], capture_output=True, text=True, timeout=30).stdout
    assert "notifications that failed" in text and "program:%s about db: tries 1, next try in" % script in text
    assert eventually(lambda: len(log.read_text().splitlines()) == 2, 20), log.read_text()
    assert log.read_text().splitlines() == ["db", "db"]
    assert eventually(lambda: status(kmsfs_bin, m)["rotation"]["retrying"] == [], 10)
    assert eventually(lambda: "result=notified" in audit.read_text(), 10)   # the audit is written by its own thread
    rec = audit.read_text()
    assert rec.index("result=failed") < rec.index("result=notified"), rec
    assert open(m.file("db"), "rb").read() == b"two"


def test_a_touch_tells_nobody_and_a_path_like_an_option_goes_as_a_path(tmp_path, kms, mount_factory):
    """A touch, a chmod or the same bytes written again change no secret: no
    program is run (a reload= would restart a unit for nothing). A secret
    whose path starts with '-' reaches the program as './-...', never as an
    option."""
    src = tmp_path / "src"
    src.mkdir()
    put(kms, src / "db.encrypted", b"one")
    put(kms, src / "-rf.encrypted", b"dash-one")
    script, log = notify_script(tmp_path)
    m = mount_factory(src, "allow_uid=0,settle=1,on_change=%s" % script)
    assert open(m.file("db"), "rb").read() == b"one"
    os.utime(src / "db.encrypted")
    os.chmod(src / "db.encrypted", 0o640)
    data = (src / "db.encrypted").read_bytes()
    (src / "db.encrypted").write_bytes(data)
    assert m.wait_log("db changed on disk but is still version", timeout=15), m.log()
    put(kms, src / "-rf.encrypted", b"dash-two")
    assert eventually(lambda: log.exists(), 15)
    time.sleep(1.5)
    assert log.read_text().splitlines() == ["./-rf"]
    assert open(m.file("-rf"), "rb").read() == b"dash-two"


def test_reload_runs_systemctl_reload_or_restart_once_per_unit(tmp_path, kms, mount_factory):
    src = tmp_path / "src"
    src.mkdir()
    put(kms, src / "tls.key.encrypted", b"key-1")
    put(kms, src / "tls.crt.encrypted", b"crt-1")
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "systemctl.calls"
    (fake / "systemctl").write_text("#!/bin/sh\necho \"$@\" >> %s\n" % calls)
    (fake / "systemctl").chmod(0o755)
    env = dict(kms.env, PATH="%s:%s" % (fake, os.environ.get("PATH", "/usr/bin:/bin")))
    m = mount_factory(src, "allow_uid=0,settle=0.5,reload=nginx.service+app@blue.service", env=env)
    put(kms, src / "tls.key.encrypted", b"key-2")
    put(kms, src / "tls.crt.encrypted", b"crt-2")
    assert eventually(lambda: calls.exists() and len(calls.read_text().splitlines()) >= 2, 15)
    time.sleep(1.5)
    assert sorted(calls.read_text().splitlines()) == ["reload-or-restart -- app@blue.service",
                                                      "reload-or-restart -- nginx.service"]
    assert open(m.file("tls.key"), "rb").read() == b"key-2"


@pytest.mark.parametrize("option, why", [
    ("reload=-H evil", "not a systemd unit name"),
    ("reload=nginx.service+", "not a systemd unit name"),
    ("reload=a;b", "not a systemd unit name"),
    ("on_change=relative/prog", "absolute path"),
    ("settle=1e30", "settle"),
])
def test_bad_notification_options_are_refused_with_one_line(tmp_path, kms, kmsfs_bin, option, why):
    assert why in refused_at_mount(kmsfs_bin, kms.env, tmp_path, option)


def test_a_policy_rule_names_its_own_targets(tmp_path, kms, mount_factory):
    src = tmp_path / "src"
    (src / "db").mkdir(parents=True)
    put(kms, src / "db" / "main.password.encrypted", b"db-1")
    put(kms, src / "web.key.encrypted", b"web-1")
    mount_wide, mount_log = notify_script(tmp_path)
    rule_dir = tmp_path / "rule"
    rule_dir.mkdir()
    rule_prog, rule_log = notify_script(rule_dir)
    policy = tmp_path / "policy"
    policy.write_text("db/*  allow_uid=0  on_change=%s\n" % rule_prog)
    mount_factory(src, "allow_uid=0,settle=0.3,policy=%s,on_change=%s" % (policy, mount_wide))
    put(kms, src / "db" / "main.password.encrypted", b"db-2")
    put(kms, src / "web.key.encrypted", b"web-2")
    assert eventually(lambda: rule_log.exists() and mount_log.exists(), 15)
    time.sleep(1)
    assert rule_log.read_text().splitlines() == ["db/main.password"]
    assert mount_log.read_text().splitlines() == ["web.key"]


def one_secret_told_to_a_program(tmp_path, kms, mount_factory, settle=0.5, program_mode=0o755):
    """A mount of one secret, db, whose changes run notify_script's program
    (made `program_mode`), once the notifier has noted its version; returns
    SOURCE, the mount and the program's log."""
    src = tmp_path / "src"
    src.mkdir()
    put(kms, src / "db.encrypted", b"one")
    script, log = notify_script(tmp_path)
    script.chmod(program_mode)
    m = mount_factory(src, "allow_uid=0,settle=%s,on_change=%s" % (settle, script))
    assert m.wait_log("versions of 1 secrets noted", timeout=10), m.log()
    return src, m, log


def test_a_reader_caching_the_new_version_between_two_events_does_not_hide_the_rotation(tmp_path, kms, mount_factory):
    """Rotated while nothing was cached, opened (which caches the new
    version), then chmod'ed, as `install -m` does: the change is still
    told. It was measured against the version cached at the later event,
    the new one, and reported as a touch."""
    src, m, log = one_secret_told_to_a_program(tmp_path, kms, mount_factory, settle=2)
    put(kms, src / "db.encrypted", b"two")
    assert open(m.file("db"), "rb").read() == b"two"
    os.chmod(src / "db.encrypted", 0o640)
    assert eventually(lambda: log.exists(), 15), m.log()
    assert log.read_text().splitlines() == ["db"]


def test_a_touch_of_a_secret_never_opened_tells_nobody(tmp_path, kms, mount_factory):
    """Nothing cached to compare with: the version noted at start is."""
    src, m, log = one_secret_told_to_a_program(tmp_path, kms, mount_factory)
    os.utime(src / "db.encrypted")
    assert m.wait_log("db changed on disk but is still version", timeout=15), m.log()
    time.sleep(1)
    assert not log.exists()


def test_a_directory_moved_into_place_is_told_one_record_per_secret(tmp_path, kms, mount_factory):
    """An atomic deploy, `mv tls tls.old; mv tls.new tls`, raises events for
    the directories only: every secret under them is compared with what was
    last announced, and the changed ones are told (one audit record each,
    even for a name with a comma)."""
    src = tmp_path / "src"
    (src / "tls").mkdir(parents=True)
    put(kms, src / "tls" / "key.encrypted", b"key-1")
    put(kms, src / "tls" / "a,b.encrypted", b"ab-1")
    put(kms, src / "tls" / "same.encrypted", b"same")
    script, log = notify_script(tmp_path)
    audit = tmp_path / "audit.log"
    policy = tmp_path / "policy"
    policy.write_text("tls/*  allow_uid=0  on_change=%s\n" % script)   # not tls.new/* nor tls.old/*
    m = mount_factory(src, "allow_uid=0,settle=1,policy=%s,audit=%s" % (policy, audit))
    assert m.wait_log("versions of 3 secrets noted", timeout=10), m.log()
    assert open(m.file("tls/key"), "rb").read() == b"key-1"
    (src / "tls.new").mkdir()
    put(kms, src / "tls.new" / "key.encrypted", b"key-2")
    put(kms, src / "tls.new" / "a,b.encrypted", b"ab-2")
    os.link(src / "tls" / "same.encrypted", src / "tls.new" / "same.encrypted")
    time.sleep(1.5)                                      # tls.new's own changes settle first (nobody to tell)
    os.rename(src / "tls", src / "tls.old")
    os.rename(src / "tls.new", src / "tls")
    assert eventually(lambda: log.exists() and "tls/key" in log.read_text(), 15), m.log()
    time.sleep(1.5)
    told = sorted(p for line in log.read_text().splitlines() for p in line.split())
    assert told == ["tls/a,b", "tls/key"], told
    assert open(m.file("tls/key"), "rb").read() == b"key-2"
    records = [l for l in audit.read_text().splitlines() if "result=notified" in l]
    assert sorted(re.search(r"path=(\S+)", l).group(1) for l in records) == ["tls/a,b", "tls/key"], records


def test_an_on_change_program_others_may_write_is_not_run(tmp_path, kms, kmsfs_bin, mount_factory):
    """The daemon runs it as root: a program its owner's group or anyone
    may rewrite would hand them root, so it is refused, as the policy file
    is: at mount, with one line, and at each rotation (made so after the
    mount), logged."""
    src = tmp_path / "src"
    src.mkdir()
    script, _ = notify_script(tmp_path)
    script.chmod(0o777)
    assert "may be written by anyone" in refused_at_mount(kmsfs_bin, kms.env, tmp_path, "on_change=%s" % script)
    script.chmod(0o644)
    assert "is not executable; chmod 755 it" in refused_at_mount(kmsfs_bin, kms.env, tmp_path, "on_change=%s" % script)
    # A missing one may come later (installed, or its file system mounted,
    # after kmsfs): a warning, and each rotation looks again.
    m = mount_factory(src, "allow_uid=0,on_change=%s" % (tmp_path / "nope"))
    assert m.wait_log("on_change=%s does not exist (yet)" % (tmp_path / "nope"), timeout=10), m.log()
    m.stop()
    src.rmdir()
    src, m, log = one_secret_told_to_a_program(tmp_path, kms, mount_factory)
    script.chmod(0o777)
    put(kms, src / "db.encrypted", b"two")
    assert m.wait_log("not running on_change=%s" % (tmp_path / "on-change"), timeout=15), m.log()
    assert "may be written by anyone" in m.log()
    assert not log.exists()


def test_an_open_parked_across_a_rotation_gets_the_new_version(tmp_path, kms, proxy, mount_factory, kmsfs_bin):
    """A cold open waits on KMS; meanwhile the file is replaced. The open
    was answered with the old plaintext seconds after `--wait-rotated` had
    said no handle held it (a parked open is no handle yet): the operator
    was told the rotation was done while an open was about to hand out
    the old secret. Now the open decrypts the new version before it
    answers, so the promise holds."""
    from kmsproxy import Fault
    src = tmp_path / "src"
    src.mkdir()
    put(kms, src / "db.password.encrypted", b"password-one")
    m = mount_factory(src, "allow_uid=0,settle=0.2", env=kms.base_env(endpoint=proxy.url))
    proxy.delay = 4.0
    proxy.policy = lambda n, target: Fault.SLOW if n == 0 else None   # only the first Decrypt is slow
    t, out = read_in_background(m.file("db.password"))
    try:
        time.sleep(0.7)   # parked, its KMS call in flight
        put(kms, src / "db.password.encrypted", b"password-two")
        time.sleep(1.0)   # the watcher has seen it
        r = subprocess.run([kmsfs_bin, "status", m.path, "--wait-rotated", "db.password", "--timeout", "15"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        t.join(20)
    assert out["data"] == b"password-two"
    assert status(kmsfs_bin, m)["handles"]["stale"] == []
    assert m.wait_log("db.password was replaced while it was decrypted")
    # One open, one audit record (the first decryption's handle was never given out).
    assert m.wait_log("comm=python3 path=db.password result=allowed")
    time.sleep(0.5)   # a second record, were there one, is written by now
    opens = [l for l in m.log().splitlines() if "audit " in l and "comm=python3" in l and "path=db.password" in l]
    assert len(opens) == 1, opens
