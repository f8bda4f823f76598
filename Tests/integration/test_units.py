"""Issue 15 item 3: systemd units as principals. Two processes running as
the same user, each in its own unit's cgroup (made by the test, as systemd
would): `allow_unit=` (mount option or policy field) admits only the named
unit's process, read from the caller's cgroup through a pidfd."""
import os
import pathlib
import subprocess
import time
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
            remove_cgroup(path)
        if slice_.exists():
            slice_.rmdir()


def remove_cgroup(path):
    """Kills what is left in a test's cgroup and removes it (a cgroup goes
    once its last process has been reaped)."""
    if not path.exists():
        return
    for pid in (path / "cgroup.procs").read_text().split():
        subprocess.run(["kill", "-9", pid], capture_output=True)
    for _ in range(50):
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.05)


# Reads argv[1] from a second thread, and says so if that thread is its
# process's leader (then the test would prove nothing).
THREAD_READER = ["python3", "-c", """if True:
    import os, sys, threading
    out = []
    def read():
        assert threading.get_native_id() != os.getpid()
        with open(sys.argv[1], "rb") as f:
            out.append(f.read())
    t = threading.Thread(target=read)
    t.start()
    t.join()
    sys.stdout.buffer.write(out[0])
"""]


def read_in_unit(cgroup, user, path, reader=("cat",)):
    """Moves a shell into the unit's cgroup (as systemd does at exec), then
    reads `path` as `user` (with `cat`, or `reader`)."""
    script = 'cg=$1 user=$2; shift 2; echo $$ > "$cg/cgroup.procs" && exec setpriv --reuid "$user" --regid "$user" --init-groups "$@"'
    return subprocess.run(["sh", "-c", script, "sh", str(cgroup), user] + list(reader) + [str(path)],
                          capture_output=True, timeout=30)


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
        # FUSE names the calling thread: one that is not its process's leader
        # (a thread pool's) is its process's unit too.
        r = read_in_unit(web_cg, "kmsfs-alice", m.file("shared"), reader=THREAD_READER)
        assert r.returncode == 0 and r.stdout == b"shared", r.stderr
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
        # Below a unit the tree may be delegated (a user's manager, a
        # container), and whoever holds it names its sub-cgroups: one under
        # the batch unit named after the web unit is still the batch unit.
        nested = batch_cg / web
        nested.mkdir()
        try:
            r = read_in_unit(nested, "kmsfs-alice", m.file("shared"))
            assert r.returncode != 0 and b"Permission denied" in r.stderr, r.stdout
            r = read_in_unit(nested, "kmsfs-alice", m.file("app/token"))
            assert r.returncode == 0 and r.stdout == b"web-token", r.stderr
        finally:
            remove_cgroup(nested)
    finally:
        m.stop()
    text = audit.read_text()
    assert text.count("result=denied") >= 4 and text.count("result=allowed") == 4


@pytest.mark.parametrize("option", ["allow_unit=-evil", "allow_unit=a;b", "allow_unit=", "allow_unit=ok.service::x"])
def test_a_bad_unit_name_is_refused_with_one_line(tmp_path, kms, kmsfs_bin, option):
    assert "allow_unit=" in refused_at_mount(kmsfs_bin, kms.env, tmp_path, option)
