"""Issue 15 item 3: systemd units as principals. Two processes running as
the same user, each in its own unit's cgroup (made by the test, as systemd
would): `allow_unit=` (mount option or policy field) admits only the named
unit's process, read from the caller's cgroup through a pidfd."""
import os
import pathlib
import subprocess
import uuid

import pytest

from conftest import Mount, refused_at_mount

UNIFIED = pathlib.Path("/sys/fs/cgroup/unified") if pathlib.Path("/sys/fs/cgroup/unified/cgroup.procs").exists() \
    else pathlib.Path("/sys/fs/cgroup")


@pytest.fixture
def units():
    """Two fresh units' cgroups under a test slice (removed afterwards)."""
    if not (UNIFIED / "cgroup.procs").exists():
        pytest.skip("no cgroup v2 hierarchy to place processes in units")
    tag = uuid.uuid4().hex[:8]
    slice_ = UNIFIED / ("kmsfs-test-%s.slice" % tag)
    made = {}
    try:
        slice_.mkdir()
        for name in ("web", "batch"):
            unit = "kmsfs-%s-%s.service" % (name, tag)
            (slice_ / unit).mkdir()
            made[name] = (unit, slice_ / unit)
        yield made
    finally:
        for unit, path in made.values():
            for pid in (path / "cgroup.procs").read_text().split():
                subprocess.run(["kill", "-9", pid], capture_output=True)
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except OSError:
                    import time
                    time.sleep(0.05)
        if slice_.exists():
            slice_.rmdir()


def read_in_unit(cgroup, user, path):
    """Moves a shell into the unit's cgroup (as systemd does at exec), then
    reads `path` as `user`."""
    script = 'echo $$ > "$1/cgroup.procs" && exec setpriv --reuid "$2" --regid "$2" --init-groups cat "$3"'
    return subprocess.run(["sh", "-c", script, "sh", str(cgroup), user, path], capture_output=True, timeout=30)


def test_allow_unit_admits_the_named_units_process_and_not_another_of_the_same_user(
        tmp_path, kms, kmsfs_bin, public_tmp, users, units):
    web, web_cg = units["web"]
    batch, batch_cg = units["batch"]
    src = tmp_path / "src"
    (src / "app").mkdir(parents=True)
    (src / "app" / "token.encrypted").write_bytes(kms.encrypt_blob(b"web-token"))
    (src / "shared.encrypted").write_bytes(kms.encrypt_blob(b"shared"))
    policy = tmp_path / "policy"
    policy.write_text("app/*  allow_unit=%s\n" % batch)
    base = public_tmp / ("units-" + uuid.uuid4().hex[:8])
    base.mkdir()
    os.chmod(base, 0o755)
    (base / "mnt").mkdir()
    audit = tmp_path / "audit.log"
    # The mount-wide list names the web unit (without its .service: systemd's default type).
    m = Mount(src, base / "mnt", "allow_unit=%s,policy=%s,audit=%s" % (web[:-len(".service")], policy, audit),
              kms.env, tmp_path / "kmsfs.log")
    try:
        r = read_in_unit(web_cg, "kmsfs-alice", m.file("shared"))
        assert r.returncode == 0 and r.stdout == b"shared", r.stderr
        r = read_in_unit(batch_cg, "kmsfs-alice", m.file("shared"))
        assert r.returncode != 0 and b"Permission denied" in r.stderr
        # The policy rule for app/* names the batch unit instead.
        r = read_in_unit(batch_cg, "kmsfs-alice", m.file("app/token"))
        assert r.returncode == 0 and r.stdout == b"web-token", r.stderr
        r = read_in_unit(web_cg, "kmsfs-alice", m.file("app/token"))
        assert r.returncode != 0 and b"Permission denied" in r.stderr
        # The same user outside any unit, and root, are not admitted by a unit list.
        r = subprocess.run(["setpriv", "--reuid", "kmsfs-alice", "--regid", "kmsfs-alice", "--init-groups",
                            "cat", m.file("shared")], capture_output=True, timeout=30)
        assert r.returncode != 0
        with pytest.raises(PermissionError):
            open(m.file("shared"), "rb")
    finally:
        m.stop()
    text = audit.read_text()
    assert text.count("result=denied") >= 3 and text.count("result=allowed") == 2


@pytest.mark.parametrize("option", ["allow_unit=-evil", "allow_unit=a;b", "allow_unit=", "allow_unit=ok.service::x"])
def test_a_bad_unit_name_is_refused_with_one_line(tmp_path, kms, kmsfs_bin, option):
    assert "allow_unit=" in refused_at_mount(kmsfs_bin, kms.env, tmp_path, option)
