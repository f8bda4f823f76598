"""Issue 13 (A6, A7, A8, A13): what an attacker controls - SOURCE names,
the names a local user looks up, option values - stays data. No forged log
or audit line, no injected FUSE option, no trapped daemon, no log written
through a symlink or into another user's file."""
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import Mount, force_unmount, mounted, run_as, seccomp_python

FORGED = "kmsfs: error: FORGED"
HOSTILE = "x\r\n" + FORGED            # a SOURCE name, then "x\r\n...FORGED.encrypted"


def lines(data):
    """Lines as a log reader or a terminal sees them: CR ends one too."""
    if isinstance(data, str):
        data = data.encode()
    return re.split(rb"\r\n|\r|\n", data)


def assert_not_forged(data, what):
    forged = [l for l in lines(data) if l.startswith(FORGED.encode())]
    assert forged == [], "%s holds a forged line: %r" % (what, forged)


def hostile_source(kms, base):
    """A SOURCE whose names try to forge lines: one decrypts, one fails
    (so its name is logged with the error), one is not UTF-8 at all."""
    src = base / "src"
    src.mkdir()
    (src / (HOSTILE + ".encrypted")).write_bytes(kms.encrypt_blob(b"hostile-ok"))
    (src / ("y\r\n" + FORGED + ".encrypted")).write_bytes(b"not a ciphertext at all")
    (src / "plain.encrypted").write_bytes(kms.encrypt_blob(b"plain"))
    with open(os.path.join(os.fsencode(str(src)), b"bad\xff\x1b[2J.encrypted"), "wb") as f:
        f.write(kms.encrypt_blob(b"not utf-8"))
    return src


def test_hostile_source_names_forge_no_log_or_audit_line(public_tmp, kms, kmsfs_bin, users, tmp_path):
    base = public_tmp / "hostile-log"
    base.mkdir()
    src = hostile_source(kms, base)
    (base / "mnt").mkdir()
    audit = base / "audit.log"
    m = Mount(src, base / "mnt", "allow_uid=0,audit=%s" % audit, kms.env, base / "kmsfs.log", extra_args=["-d"])
    try:
        names = os.listdir(m.path)
        assert HOSTILE in names and "plain" in names
        assert open(m.file(HOSTILE), "rb").read() == b"hostile-ok"
        with pytest.raises(OSError):
            open(m.file("y\r\n" + FORGED), "rb").read()
        # An unprivileged user looks up a name of its own making, with -d on.
        r = run_as("kmsfs-bob", ["stat", m.path + "/zz\r\n" + FORGED])
        assert r.returncode != 0
        assert m.wait_log("name=zz")              # the lookup was logged (-d)
        assert m.wait_log(FORGED + ": ")          # and the failed open

    finally:
        m.stop()
    log = m.log_path.read_bytes()
    assert_not_forged(log, "the daemon log")
    assert b"name=zz\\r\\n" + FORGED.encode() in log             # escaped, byte by byte
    assert b"y\\r\\n" + FORGED.encode() + b": " in log
    assert log.decode("utf-8", errors="strict")
    assert b"\x1b" not in log
    # libfuse's own -d lines go through the same log: tagged and escaped,
    # so every line of the file is one of the daemon's.
    assert b"kmsfs: debug: libfuse: unique: " in log
    strays = [l for l in log.splitlines() if not l.startswith(b"kmsfs: ")]
    assert strays == [], strays[:5]
    record = audit.read_bytes()
    assert_not_forged(record, "the audit file")
    assert b"\r" not in record and b"\x1b" not in record
    assert b'path="x\\r\\n' + FORGED.encode() + b'"' in record


def test_status_escapes_hostile_names_and_its_json_stays_valid(public_tmp, kms, kmsfs_bin):
    base = public_tmp / "hostile-status"
    base.mkdir()
    src = hostile_source(kms, base)
    (base / "mnt").mkdir()
    m = Mount(src, base / "mnt", "allow_uid=0", kms.env, base / "kmsfs.log")
    try:
        assert open(m.file(HOSTILE), "rb").read() == b"hostile-ok"
        # The text has no forged line; the JSON is valid and carries the
        # name exactly.
        r = subprocess.run([kmsfs_bin, "status", m.path], capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert_not_forged(r.stdout, "kmsfs status")
        assert b"x\\r\\n" + FORGED.encode() in r.stdout
        r = subprocess.run([kmsfs_bin, "status", "--json", m.path], capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert b"\r" not in r.stdout and r.stdout.count(b"\n") == 1
        doc = json.loads(r.stdout.decode("utf-8", errors="strict"))
        assert HOSTILE in [e["path"] for e in doc["cache"]["entries"]]
    finally:
        m.stop()


def test_check_output_escapes_hostile_names(kms, kmsfs_bin, tmp_path):
    src = hostile_source(kms, tmp_path)
    r = subprocess.run([kmsfs_bin, "check", str(src)], env=kms.env, capture_output=True, timeout=120)
    assert r.returncode == 1     # the bad ciphertext and the unreadable name fail
    assert_not_forged(r.stdout, "kmsfs check")
    out = r.stdout.decode("utf-8", errors="strict")
    assert "OK   x\\r\\n%s format=kms-blob" % FORGED in out, out
    assert "FAIL y\\r\\n%s:" % FORGED in out, out
    assert "\x1b" not in out and "\r" not in out


def mountinfo_entry(path):
    """(mount options, source, super options) of the mount at `path`."""
    def unescape(s):
        return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if unescape(fields[4]) == str(path):
                dash = fields.index("-")
                return fields[5], unescape(fields[dash + 2]), fields[dash + 3]
    return None


@pytest.mark.parametrize("name", ["srcx\\,default_permissions", "src\\\\,allow_root\\054dev"])
def test_source_path_cannot_inject_fuse_options(kms, mount_factory, tmp_path, name):
    src = tmp_path / name
    src.mkdir()
    (src / "s.encrypted").write_bytes(kms.encrypt_blob(b"s"))
    m = mount_factory(src, "allow_uid=0")
    entry = mountinfo_entry(m.path)
    assert entry is not None
    options, source, super_options = entry
    assert "default_permissions" not in options + "," + super_options, entry
    assert source == str(src), entry
    assert open(m.file("s"), "rb").read() == b"s"


def failed_mount(kmsfs_bin, kms, src, mnt, options):
    """`kmsfs SRC MNT -o OPTIONS` in the background form fstab uses: it must
    exit non-zero with one line and leave nothing mounted."""
    try:
        r = subprocess.run([kmsfs_bin, str(src), str(mnt), "-o", options], env=kms.env,
                           capture_output=True, timeout=60)
        was_mounted = mounted(str(mnt))
    finally:
        force_unmount(str(mnt))
    assert not was_mounted, "mounted with -o " + options
    assert r.returncode != 0
    err = r.stderr.decode().strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def plain_source(kms, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "s.encrypted").write_bytes(kms.encrypt_blob(b"s"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    return src, mnt


@pytest.mark.parametrize("option", ["ttl=1e30", "ttl=nan", "stale=inf", "timeout=0x10", "cache_max=99999999999999999999",
                                    "max_size=-1", "threads=+5", "retries=21", "ttl=366d"])
def test_out_of_range_numbers_are_refused_with_one_line(kms, kmsfs_bin, plain_source, option):
    src, mnt = plain_source
    err = failed_mount(kmsfs_bin, kms, src, mnt, "allow_uid=0," + option)
    assert err.startswith("kmsfs: option '%s'" % option), err


def test_a_remount_with_a_huge_ttl_is_refused_and_the_daemon_lives(kms, kmsfs_bin, mount_factory, plain_source):
    src, _ = plain_source
    m = mount_factory(src, "allow_uid=0,ttl=5m")
    r = subprocess.run([kmsfs_bin, str(src), m.path, "-o", "remount,ttl=1e30"], env=kms.env,
                       capture_output=True, timeout=30)
    assert r.returncode != 0 and len(r.stderr.decode().strip().splitlines()) == 1, r.stderr
    assert b"ttl=1e30" in r.stderr
    assert open(m.file("s"), "rb").read() == b"s"
    doc = json.loads(subprocess.run([kmsfs_bin, "status", "--json", m.path], capture_output=True, timeout=30).stdout)
    assert doc["ttl_s"] == 300


def test_file_times_out_of_nanosecond_range_are_shown_not_a_trap(kms, kmsfs_bin, mount_factory, plain_source):
    """Whoever writes SOURCE sets a file's times at will; one past 2262 (or
    before 1677) does not fit 64 bits of nanoseconds and trapped the daemon
    at the next ls -l, for every service."""
    src, _ = plain_source
    (src / "old.encrypted").write_bytes(kms.encrypt_blob(b"old"))
    m = mount_factory(src, "allow_uid=0,prefetch")
    os.utime(src / "s.encrypted", ns=(10413792000 * 10**9, 10413792000 * 10**9))
    os.utime(src / "old.encrypted", ns=(-10413792000 * 10**9, -10413792000 * 10**9))
    assert sorted(os.listdir(m.path)) == ["old", "s"]
    assert int(os.stat(m.file("s")).st_mtime) == 10413792000
    assert open(m.file("s"), "rb").read() == b"s" and open(m.file("old"), "rb").read() == b"old"
    r = subprocess.run([kmsfs_bin, "check", str(src)], env=kms.env, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert m.proc.poll() is None, m.log()


def test_a_huge_sparse_ciphertext_is_shown_not_a_trap(kms, mount_factory, tmp_path):
    """Whoever writes SOURCE sets a file's size at will: a sparse file of
    2^63-1 bytes (tmpfs takes it) overflowed the block count and trapped
    the daemon at the first stat, for every service. It is shown, and
    opening it is refused for its size."""
    src = tmp_path / "src"
    src.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "kmsfs-test-src", str(src)], check=True)
    try:
        (src / "s.encrypted").write_bytes(kms.encrypt_blob(b"s"))
        with open(src / "huge.encrypted", "wb") as f:
            f.truncate(2**63 - 1)
        m = mount_factory(src, "allow_uid=0")
        assert os.stat(m.file("huge")).st_size == 2**63 - 1
        assert sorted(os.listdir(m.path)) == ["huge", "s"]
        with pytest.raises(OSError) as e:
            open(m.file("huge"), "rb").read()
        assert e.value.errno == errno.EIO
        assert open(m.file("s"), "rb").read() == b"s"
        assert m.proc.poll() is None, m.log()
        m.stop()
    finally:
        while os.path.ismount(src):
            subprocess.run(["umount", "-l", str(src)], check=True)


@pytest.mark.parametrize("which", ["log", "audit"])
def test_a_log_or_audit_symlink_is_refused(kms, kmsfs_bin, plain_source, tmp_path, which):
    src, mnt = plain_source
    target = tmp_path / "target"
    target.write_bytes(b"")
    link = tmp_path / "link"
    link.symlink_to(target)
    err = failed_mount(kmsfs_bin, kms, src, mnt, "allow_uid=0,%s=%s" % (which, link))
    assert "%s is a symbolic link" % link in err, err
    assert target.read_bytes() == b""


@pytest.mark.parametrize("which", ["log", "audit"])
def test_a_log_or_audit_file_under_a_directory_another_user_may_change_is_refused(kms, kmsfs_bin, plain_source, public_tmp, which):
    """O_NOFOLLOW guards the last component only: a user's link in a
    directory on the way (their `logs` pointing at another directory) had
    root create the file wherever it led."""
    src, mnt = plain_source
    base = public_tmp / ("logdir-" + which)
    userdir, victim = base / "userdir", base / "victim"
    victim.mkdir(parents=True)
    userdir.mkdir()
    os.chown(userdir, 65534, 65534)
    subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                    "ln", "-s", str(victim), str(userdir / "logs")], check=True, timeout=30)
    # A directory of root's that its group may write, as Ubuntu's /var/log
    # (root:syslog 0775), is where logs go: accepted. One anyone may write
    # without the sticky bit is not.
    grouplogs, open_dir = base / "grouplogs", base / "open"
    grouplogs.mkdir()
    os.chown(grouplogs, 0, 65534)
    os.chmod(grouplogs, 0o775)
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    try:
        err = failed_mount(kmsfs_bin, kms, src, mnt, "allow_uid=0,%s=%s" % (which, userdir / "logs" / "k.log"))
        assert "belongs to uid 65534" in err, err
        assert os.listdir(victim) == []
        err = failed_mount(kmsfs_bin, kms, src, mnt, "allow_uid=0,%s=%s" % (which, open_dir / "k.log"))
        assert "may be written by anyone" in err, err
        m = Mount(src, mnt, "allow_uid=0,%s=%s" % (which, grouplogs / "k.log"), kms.env, base / "daemon.log")
        try:
            open(m.file("s"), "rb").read()
        finally:
            m.stop()
        assert (grouplogs / "k.log").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


ENOSYS_OPENAT2 = r"""
import os, sys, seccomp
f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
f.add_rule(seccomp.ERRNO(38), "openat2")         # as systemd's RestrictSUIDSGID= (the shipped unit): ENOSYS
f.load()
os.execvp(sys.argv[1], sys.argv[1:])
"""

SWAPPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
a, b, until = sys.argv[1].encode(), sys.argv[2].encode(), time.time() + float(sys.argv[3])
n = 0
while time.time() < until:
    if libc.renameat2(-100, a, -100, b, 2) != 0:     # AT_FDCWD, RENAME_EXCHANGE
        sys.exit("renameat2: errno %d" % ctypes.get_errno())
    n += 1
if n % 2:
    libc.renameat2(-100, a, -100, b, 2)              # the directory back where it was
print(n)
"""


def test_a_directory_its_group_swaps_for_a_link_is_not_followed_without_openat2(kms, kmsfs_bin, plain_source, public_tmp):
    """Where openat2 answers ENOSYS (the shipped unit, RestrictSUIDSGID=),
    the file was opened with a plain open(2), and O_NOFOLLOW guards the
    last component only: a member of the directory's group (Ubuntu's
    /var/log is root:syslog 0775) who swapped a directory on the way for
    a link between the check and the open, at start or at any SIGHUP
    (logrotate's), had root create and append to a file wherever the link
    led. The directory is now reached one component at a time, no link
    followed. The member swaps as fast as it can while the daemon reopens."""
    py = seccomp_python()
    if py is None:
        pytest.skip("no Python with the seccomp module (apt-get install python3-seccomp)")
    src, mnt = plain_source
    base = public_tmp / "swap"
    grouplogs, victim = base / "grouplogs", base / "victim"
    victim.mkdir(parents=True)
    grouplogs.mkdir()
    os.chown(grouplogs, 0, 65534)
    os.chmod(grouplogs, 0o775)
    (grouplogs / "kmsfs").mkdir()
    subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                    "ln", "-s", str(victim), str(grouplogs / "elsewhere")], check=True, timeout=30)
    m = Mount(src, mnt, "allow_uid=0,audit=%s" % (grouplogs / "kmsfs" / "k.log"), kms.env, base / "daemon.log",
              wrapper=[py, "-c", ENOSYS_OPENAT2])
    try:
        swapper = subprocess.Popen(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                                    py, "-c", SWAPPER, str(grouplogs / "kmsfs"), str(grouplogs / "elsewhere"), "3"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while swapper.poll() is None:
            os.kill(m.pid, signal.SIGHUP)
            time.sleep(0.002)
        out, err = swapper.communicate()
        assert swapper.returncode == 0 and int(out) > 0, err
        assert m.proc.poll() is None, m.log()
        os.kill(m.pid, signal.SIGHUP)
        open(m.file("s"), "rb").read()
    finally:
        m.stop()
    assert os.listdir(victim) == [], m.log()
    assert (grouplogs / "kmsfs" / "k.log").exists()
    # Some reopens met the link, and were refused, with one line each.
    assert "audit=: cannot reopen" in m.log(), m.log()
    assert "still writing to the previous file" in m.log()


@pytest.mark.parametrize("which", ["log", "audit"])
def test_a_log_or_audit_file_another_user_owns_is_refused(kms, kmsfs_bin, plain_source, tmp_path, users, which):
    src, mnt = plain_source
    theirs = tmp_path / "theirs.log"
    theirs.write_bytes(b"")
    bob = users["kmsfs-bob"]
    os.chown(theirs, bob.pw_uid, bob.pw_gid)
    err = failed_mount(kmsfs_bin, kms, src, mnt, "allow_uid=0,%s=%s" % (which, theirs))
    assert "%s belongs to uid %d" % (theirs, bob.pw_uid) in err, err
    assert theirs.read_bytes() == b""


@pytest.mark.parametrize("which", ["log", "audit"])
def test_a_log_or_audit_fifo_or_hard_link_is_refused_at_once(kms, kmsfs_bin, plain_source, tmp_path, which):
    """A FIFO nobody reads, planted at the path, blocked the open (the mount
    at start, the signal thread at SIGHUP); a hard link pointed the lines
    into another file of the daemon's user."""
    src, mnt = plain_source
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    err = failed_mount(kmsfs_bin, kms, src, mnt, "allow_uid=0,%s=%s" % (which, fifo))
    assert "%s is a FIFO nobody reads" % fifo in err, err
    assert time.monotonic() - t0 < 30
    other = tmp_path / "other-file"
    other.write_bytes(b"keep")
    linked = tmp_path / "linked.log"
    os.link(other, linked)
    err = failed_mount(kmsfs_bin, kms, src, mnt, "allow_uid=0,%s=%s" % (which, linked))
    assert "%s has 2 hard links" % linked in err, err
    assert other.read_bytes() == b"keep"


def test_a_name_that_is_not_utf8_finds_nothing_not_its_repaired_twin(kms, mount_factory, plain_source):
    """Repaired as a String, a looked-up `\\xff` became U+FFFD and served
    the secret whose name is U+FFFD, audited under the other name. A name
    that is not UTF-8 is never shown, so it finds nothing."""
    src, mnt = plain_source
    (src / "\ufffd.encrypted").write_bytes(kms.encrypt_blob(b"twin"))
    m = mount_factory(src, "allow_uid=0")
    assert open(os.path.join(m.path, "\ufffd"), "rb").read() == b"twin"
    for name in (b"\xff", b"a\xff", b"\xef\xbf"):
        with pytest.raises(OSError) as e:
            open(os.path.join(m.path.encode(), name), "rb")
        assert e.value.errno == errno.ENOENT, name
    assert m.proc.poll() is None


def test_a_mount_that_names_nobody_admits_root_alone_and_says_so_once(kms, kmsfs_bin, mount_factory, plain_source):
    """An fstab line that lost its allow_uid= mounts a tree only root may
    open, which a service sees only as EACCES: the daemon says so in one
    line. Root is the default, not an extra: once a list names someone
    else, root is refused too."""
    src, _ = plain_source
    m = mount_factory(src, "ttl=5m")
    assert m.wait_log("only root may open these files"), m.log()
    assert open(m.file("s"), "rb").read() == b"s"
    r = subprocess.run([kmsfs_bin, str(src), m.path, "-o", "remount,allow_uid=nobody"], env=kms.env,
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    with pytest.raises(PermissionError):
        open(m.file("s"), "rb")
    assert len([l for l in m.log().splitlines() if "only root may open" in l]) == 1, m.log()


def test_log_to_stderr_in_the_background_is_refused_and_serves_in_the_foreground(kms, kmsfs_bin, mount_factory, plain_source):
    """In the background the daemon's standard error is /dev/null: with
    log=stderr every line, and with the default audit=stderr every audit
    record, went nowhere. The mount now fails with one line that says what
    to use; in the foreground (-f) the log is where asked."""
    src, mnt = plain_source
    err = failed_mount(kmsfs_bin, kms, src, mnt, "allow_uid=0,log=stderr")
    assert err == ("kmsfs: option 'log=stderr': in the background the daemon has no standard error (it is /dev/null once "
                   "the mount command returns), so its log and audit records would be lost; add -f to stay in the "
                   "foreground, or use log=syslog or log=FILE"), err
    m = mount_factory(src, "allow_uid=0,log=stderr")
    assert open(m.file("s"), "rb").read() == b"s"
    assert m.wait_log("path=s result=allowed"), m.log()
