"""Issue 5: access control and audit, with real users and groups created by
the test (see the `users` fixture) reading through setpriv."""
import errno
import grp
import os
import pwd
import re
import signal
import stat
import subprocess
import time

import pytest

from conftest import run_as, mounted, force_unmount

SECRETS = {
    "tls/ssl.pem": b"tls-key-7c1e",
    "db/main.password": b"db-pass-93ab",
    "app/token": b"app-token-55d0",
    "own/primary": b"primary-group-0f3a",
}

POLICY = """\
# first match wins
tls/*       allow_uid=kmsfs-alice              uid=kmsfs-alice mode=0400
db/*        allow_gid=kmsfs-readers            # alice and carol through a supplementary group
own/*       allow_gid=kmsfs-bob                # bob through his primary group
"""


def cat_as(user, path):
    return run_as(user, ["cat", path])


def denied(r):
    return r.returncode != 0 and b"Permission denied" in r.stderr


@pytest.fixture(scope="module")
def access_mount(public_tmp, kms, users, kmsfs_bin):
    from conftest import Mount
    base = public_tmp / "access"
    base.mkdir()
    src = base / "src"
    for name, data in SECRETS.items():
        p = src / (name + ".encrypted")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(kms.encrypt_blob(data))
    policy = base / "policy"
    policy.write_text(POLICY)
    (base / "mnt").mkdir()
    audit = base / "audit.log"
    m = Mount(src, base / "mnt", "allow_uid=kmsfs-bob,policy=%s,audit=%s" % (policy, audit), kms.env, base / "kmsfs.log")
    m.policy = policy
    m.audit = audit
    yield m
    m.stop()


def audit_lines(m):
    return m.audit.read_text().splitlines() if m.audit.exists() else []


def test_allowed_uid_reads(access_mount):
    r = cat_as("kmsfs-alice", access_mount.file("tls/ssl.pem"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == SECRETS["tls/ssl.pem"]


def test_supplementary_group_admits(access_mount):
    for user in ["kmsfs-alice", "kmsfs-carol"]:
        r = cat_as(user, access_mount.file("db/main.password"))
        assert r.stdout == SECRETS["db/main.password"], (user, r.stderr)
    assert denied(cat_as("kmsfs-bob", access_mount.file("db/main.password")))


def test_primary_group_admits(access_mount):
    assert cat_as("kmsfs-bob", access_mount.file("own/primary")).stdout == SECRETS["own/primary"]
    assert denied(cat_as("kmsfs-alice", access_mount.file("own/primary")))


def test_mount_lists_cover_paths_no_rule_matches(access_mount):
    assert cat_as("kmsfs-bob", access_mount.file("app/token")).stdout == SECRETS["app/token"]
    assert denied(cat_as("kmsfs-alice", access_mount.file("app/token")))


def test_root_follows_the_lists(access_mount):
    with pytest.raises(PermissionError):
        open(access_mount.file("tls/ssl.pem"), "rb")


def test_denied_right_after_an_allowed_read_with_an_audit_record(access_mount, users):
    assert cat_as("kmsfs-alice", access_mount.file("tls/ssl.pem")).returncode == 0
    r = cat_as("kmsfs-bob", access_mount.file("tls/ssl.pem"))
    assert denied(r)
    assert r.stdout == b""
    bob = users["kmsfs-bob"].pw_uid
    deadline = time.time() + 5
    while time.time() < deadline:
        hits = [l for l in audit_lines(access_mount)
                if "uid=%d " % bob in l and "path=tls/ssl.pem" in l and "result=denied" in l]
        if hits:
            break
        time.sleep(0.05)
    assert hits, audit_lines(access_mount)
    assert "comm=cat" in hits[-1] and re.search(r"pid=\d+", hits[-1]) and "time=" in hits[-1]


def test_audit_records_cache_hits_and_kms_calls_without_plaintext(access_mount, users):
    cat_as("kmsfs-carol", access_mount.file("db/main.password"))
    cat_as("kmsfs-carol", access_mount.file("db/main.password"))
    carol = users["kmsfs-carol"].pw_uid

    def carols():
        return [l for l in audit_lines(access_mount) if "uid=%d " % carol in l and "result=allowed" in l]
    deadline = time.time() + 5   # records are written by the audit thread, a moment later
    while time.time() < deadline and not any("source=cache" in l for l in carols()):
        time.sleep(0.05)
    lines = carols()
    assert any("source=cache" in l for l in lines), lines
    kms_lines = [l for l in audit_lines(access_mount) if "source=kms" in l]
    assert kms_lines and all(re.search(r"kms_ms=\d+", l) for l in kms_lines)
    text = access_mount.audit.read_bytes() + access_mount.log().encode()
    for data in SECRETS.values():
        assert data not in text


def test_stat_shows_the_configured_owner_group_and_mode(access_mount, users):
    st = os.stat(access_mount.file("tls/ssl.pem"))
    assert st.st_uid == users["kmsfs-alice"].pw_uid and stat.S_IMODE(st.st_mode) == 0o400
    st = os.stat(access_mount.file("db/main.password"))
    assert st.st_gid == grp.getgrnam("kmsfs-readers").gr_gid and stat.S_IMODE(st.st_mode) == 0o440
    st = os.stat(access_mount.file("app/token"))
    assert st.st_uid == users["kmsfs-bob"].pw_uid and stat.S_IMODE(st.st_mode) == 0o400
    # Every user can list; nobody sees write bits.
    r = run_as("kmsfs-carol", ["ls", "-lR", access_mount.path])
    assert r.returncode == 0, r.stderr
    modes = [l.split()[0] for l in r.stdout.decode().splitlines() if re.match(r"^[-d][-rwxsStT]{9}", l)]
    assert len(modes) >= 8 and not any("w" in m for m in modes), modes


def test_access_syscall_tells_the_truth(access_mount):
    r = run_as("kmsfs-alice", ["test", "-r", access_mount.file("tls/ssl.pem")])
    assert r.returncode == 0
    r = run_as("kmsfs-bob", ["test", "-r", access_mount.file("tls/ssl.pem")])
    assert r.returncode != 0
    r = run_as("kmsfs-alice", ["test", "-w", access_mount.file("tls/ssl.pem")])
    assert r.returncode != 0


# Every way into a file's bytes that a local user has, each tried once and
# printed as NAME RESULT (ok, or the errno's name), with the bytes it got.
SYSCALL_PROBE = r"""
import ctypes, errno, mmap, os, sys
path = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
def fd_of(flags=os.O_RDONLY):
    return os.open(path, flags)
def reopen_o_path():             # an O_PATH descriptor is opened without an open request
    p = os.open(path, os.O_PATH)
    try:
        return os.read(os.open("/proc/self/fd/%d" % p, os.O_RDONLY), 1 << 16)
    finally:
        os.close(p)
def with_fd(f):
    def g():
        fd = fd_of()
        try:
            return f(fd)
        finally:
            os.close(fd)
    return g
def splice(fd):
    r, w = os.pipe()
    try:
        n = os.splice(fd, w, 1 << 16)
        return os.read(r, n)
    finally:
        os.close(r); os.close(w)
def sendfile(fd):
    r, w = os.pipe()
    try:
        n = os.sendfile(w, fd, 0, 1 << 16)
        return os.read(r, n)
    finally:
        os.close(r); os.close(w)
def readahead(fd):
    if libc.readahead(fd, ctypes.c_longlong(0), ctypes.c_size_t(1 << 20)) != 0:
        raise OSError(ctypes.get_errno(), "readahead")
    return os.read(fd, 1 << 16)
calls = {
    "read": with_fd(lambda fd: os.read(fd, 1 << 16)),
    "read_nonblock": lambda: os.read(fd_of(os.O_RDONLY | os.O_NONBLOCK), 1 << 16),
    "read_direct": lambda: os.read(fd_of(os.O_RDONLY | os.O_DIRECT), 1 << 16),
    "reopen_o_path": reopen_o_path,
    "pread_past_end": with_fd(lambda fd: os.pread(fd, 100, 1 << 40)),
    "mmap_private": with_fd(lambda fd: mmap.mmap(fd, 0, mmap.MAP_PRIVATE, mmap.PROT_READ)[:]),
    "mmap_shared": with_fd(lambda fd: mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)[:]),
    "splice": with_fd(splice),
    "sendfile": with_fd(sendfile),
    "readahead": with_fd(readahead),
    "open_write": lambda: os.open(path, os.O_WRONLY),
    "open_rdwr": lambda: os.open(path, os.O_RDWR),
    "open_trunc": lambda: os.open(path, os.O_RDONLY | os.O_TRUNC),
    "truncate": lambda: os.truncate(path, 0),
    "setxattr": lambda: os.setxattr(path, "user.k", b"1"),
    "getxattr": lambda: os.getxattr(path, "user.k"),
    "listxattr": lambda: os.listxattr(path),
    "chmod": lambda: os.chmod(path, 0o777),
    "rename": lambda: os.rename(path, path + ".moved"),
    "unlink": lambda: os.unlink(path),
    "link": lambda: os.link(path, path + ".link"),
}
for name, call in calls.items():
    try:
        got = call()
        data = got if isinstance(got, bytes) else b""
        print(name, "ok", data.hex())
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, str(e.errno)), "")
"""


def probe_syscalls(user, path):
    r = run_as(user, ["python3", "-c", SYSCALL_PROBE, path])
    assert r.returncode == 0, r.stderr
    out = {}
    for line in r.stdout.decode().splitlines():
        name, result, data = (line.split(" ") + [""])[:3]
        out[name] = (result, bytes.fromhex(data))
    assert len(out) == 21, r.stdout
    return out


def test_no_syscall_takes_an_unlisted_user_or_root_past_the_lists(access_mount):
    """The open check is the one gate: every call that reads bytes needs an
    open, and the kernel sends the daemon one for each, however the file
    was reached. An O_PATH descriptor is made with no open request at all,
    but reopening it through /proc/self/fd asks again, as the caller. A
    listed user gets the plaintext every way the kernel serves it (a
    shared mapping is refused: direct I/O) and changes nothing."""
    path = access_mount.file("tls/ssl.pem")
    plaintext = SECRETS["tls/ssl.pem"]
    read_calls = ["read", "read_nonblock", "read_direct", "reopen_o_path", "pread_past_end", "mmap_private",
                  "mmap_shared", "splice", "sendfile", "readahead"]
    change_calls = ["open_write", "open_rdwr", "open_trunc", "truncate", "setxattr", "chmod", "rename", "unlink", "link"]
    for user in ["kmsfs-bob", "kmsfs-carol", "root"]:
        got = probe_syscalls(user, path)
        for name in read_calls:
            assert got[name] == ("EACCES", b""), (user, name, got[name])
        for name in change_calls:
            assert got[name] == ("EROFS", b""), (user, name, got[name])
        assert got["getxattr"][0] in ("ENOTSUP", "ENODATA") and got["listxattr"] == ("ENOTSUP", b""), (user, got)
    got = probe_syscalls("kmsfs-alice", path)
    for name in ["read", "read_nonblock", "read_direct", "reopen_o_path", "mmap_private", "splice", "sendfile", "readahead"]:
        assert got[name] == ("ok", plaintext), (name, got[name])
    assert got["mmap_shared"] == ("ENODEV", b""), got["mmap_shared"]
    assert got["pread_past_end"] == ("ok", b""), got["pread_past_end"]
    for name in change_calls:
        assert got[name] == ("EROFS", b""), (name, got[name])
    with pytest.raises(FileNotFoundError):
        os.stat(path + ".moved")
    # The mapping, splice and sendfile read through the page cache, which
    # leaves the exact size in the inode for about a second (docs/security.md,
    # Other users); it goes back to the bound, for every user, by itself. A
    # lookup that crossed the page drop (this loop's own, by a refused user)
    # once kept it there for the entry timeout, 10 s, in 3 of 16 runs.
    deadline = time.time() + 5
    while True:
        r = run_as("kmsfs-bob", ["stat", "--cached=always", "-c", "%s", path])
        if r.returncode == 0 and int(r.stdout) == 64 << 20:
            break
        assert time.time() < deadline, ("the inode still holds the size", r.stdout, r.stderr)
        time.sleep(0.1)


def test_sighup_reloads_a_good_policy_and_keeps_the_old_on_a_bad_one(access_mount):
    m = access_mount
    try:
        # Good: tls now belongs to carol.
        m.policy.write_text(POLICY.replace("tls/*       allow_uid=kmsfs-alice              uid=kmsfs-alice",
                                           "tls/*       allow_uid=kmsfs-carol              uid=kmsfs-carol"))
        os.kill(m.pid, signal.SIGHUP)
        assert m.wait_log("reloaded"), m.log()
        assert cat_as("kmsfs-carol", m.file("tls/ssl.pem")).stdout == SECRETS["tls/ssl.pem"]
        assert denied(cat_as("kmsfs-alice", m.file("tls/ssl.pem")))
        # Bad: a syntax error on line 2 keeps the previous policy.
        m.policy.write_text("tls/* allow_uid=kmsfs-alice\ndb/* allow_uid=kmsfs-alice frobnicate\n")
        os.kill(m.pid, signal.SIGHUP)
        assert m.wait_log("%s:2:" % m.policy), m.log()
        assert "keeping the previous configuration" in m.log()
        assert cat_as("kmsfs-carol", m.file("tls/ssl.pem")).stdout == SECRETS["tls/ssl.pem"]
        assert denied(cat_as("kmsfs-alice", m.file("tls/ssl.pem")))
    finally:
        m.policy.write_text(POLICY)
        os.kill(m.pid, signal.SIGHUP)
        m.wait_log("reloaded")


@pytest.mark.parametrize("policy,needle", [
    ("tls/* allow_uid=no-such-user-kmsfs\n", ":1: no such user 'no-such-user-kmsfs'"),
    ("# ok\ntls/[ab allow_uid=0\n", ":2: pattern 'tls/[ab': unterminated"),
    ("x allow_uid=0 mode=0644\n", ":1: mode 0644 has write bits"),
    ("x allow_uid=0 color=blue\n", ":1: unknown key 'color'"),
    ("# only comments\r\n\r\n   # and blanks\r\n", ": no rules (every line is blank or a comment)"),
    ("tls/* allow_uid=0\rdb/* allow_uid=0\n", ":1: a carriage return inside the line"),
])
def test_a_bad_policy_is_refused_with_file_line_and_reason(tmp_path, kms, kmsfs_bin, users, policy, needle):
    src = tmp_path / "src"
    mnt = tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    p = tmp_path / "policy"
    p.write_bytes(policy.encode())
    try:
        r = subprocess.run([kmsfs_bin, str(src), str(mnt), "-o", "policy=%s" % p], env=kms.env,
                           capture_output=True, timeout=30)
        lines = r.stderr.decode().strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1, lines
        assert str(p) + needle in lines[0], lines
        assert not mounted(str(mnt))
    finally:
        force_unmount(str(mnt))


def test_a_crlf_policy_keeps_every_rule(public_tmp, kms, users, kmsfs_bin):
    """Issue 13 A1: a CRLF policy file was one comment line, so every path
    fell back to the mount-wide allow_uid= (bob could read tls/)."""
    from conftest import Mount
    base = public_tmp / "crlf"
    base.mkdir()
    src = base / "src"
    for name in ["tls/ssl.pem", "app/token"]:
        p = src / (name + ".encrypted")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(kms.encrypt_blob(SECRETS[name]))
    policy = base / "policy"
    policy.write_bytes(POLICY.replace("\n", "\r\n").encode())
    (base / "mnt").mkdir()
    m = Mount(src, base / "mnt", "allow_uid=kmsfs-bob,policy=%s" % policy, kms.env, base / "kmsfs.log")
    try:
        assert cat_as("kmsfs-alice", m.file("tls/ssl.pem")).stdout == SECRETS["tls/ssl.pem"]
        assert denied(cat_as("kmsfs-bob", m.file("tls/ssl.pem")))
        assert cat_as("kmsfs-bob", m.file("app/token")).stdout == SECRETS["app/token"]   # no rule: the mount's list
        assert denied(cat_as("kmsfs-alice", m.file("app/token")))
        # SIGHUP with a policy that has no rule left keeps the old one, with one line.
        policy.write_bytes(b"# tls/* allow_uid=kmsfs-bob\r\n\r\n")
        os.kill(m.pid, signal.SIGHUP)
        assert m.wait_log("no rules"), m.log()
        assert "keeping the previous configuration" in m.log()
        assert len([l for l in m.log().splitlines() if "no rules" in l]) == 1, m.log()
        assert denied(cat_as("kmsfs-bob", m.file("tls/ssl.pem")))
        assert cat_as("kmsfs-alice", m.file("tls/ssl.pem")).stdout == SECRETS["tls/ssl.pem"]
    finally:
        m.stop()


def stat_size(user, path):
    r = run_as(user, ["stat", "-c", "%s", path])
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


FSTAT_MMAP = """
import mmap, os, sys
with open(sys.argv[1], "rb") as f:
    n = os.fstat(f.fileno()).st_size
    m = mmap.mmap(f.fileno(), n, mmap.MAP_PRIVATE, mmap.PROT_READ)
    sys.stdout.write("%d %s" % (n, m[:].decode()))
"""


def test_an_unlisted_user_learns_no_size_after_an_allowed_read(access_mount):
    """Issue 13 A12: after an allowed read, `ls -l` by anyone showed the
    plaintext's exact size (a password's length)."""
    m = access_mount
    path = m.file("tls/ssl.pem")
    secret = SECRETS["tls/ssl.pem"]
    assert cat_as("kmsfs-alice", path).stdout == secret
    assert stat_size("kmsfs-alice", path) == len(secret)
    assert stat_size("kmsfs-bob", path) == 0
    r = run_as("kmsfs-bob", ["ls", "-l", path])
    assert r.returncode == 0 and r.stdout.split()[4] == b"0", r.stdout
    assert os.stat(path).st_size == 0                      # root is not listed for tls/ either
    st = os.stat(path)
    assert st.st_uid == pwd.getpwnam("kmsfs-alice").pw_uid and stat.S_IMODE(st.st_mode) == 0o400
    # Nor from what the kernel keeps for the inode, read without asking the
    # daemon (statx AT_STATX_DONT_SYNC): the same bound (max_size=) for all.
    for user in ["kmsfs-bob", "kmsfs-alice"]:
        r = run_as(user, ["stat", "--cached=always", "-c", "%s", path])
        assert r.returncode == 0 and int(r.stdout) == 64 << 20, (user, r.stdout)
    # The allowed user still gets the exact size, from stat and from fstat
    # after open, and a private mmap of that size reads.
    assert stat_size("kmsfs-alice", path) == len(secret)
    r = run_as("kmsfs-alice", ["python3", "-c", FSTAT_MMAP, path])
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"%d %s" % (len(secret), secret)
    assert stat_size("kmsfs-bob", path) == 0
    assert stat_size("kmsfs-carol", path) == 0
    assert stat_size("kmsfs-alice", path) == len(secret)
    # The mmap read through the page cache ended short at the plaintext's
    # end, and the kernel recorded that as the inode's size (sendfile needs
    # it to stop there): the daemon forgets the name once the pages are
    # dropped (at the release), and bob's own lookup stores the bound again.
    assert cached_size_settles("kmsfs-bob", path) == 64 << 20


SEEK_END_HOLD = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
print(os.lseek(fd, 0, os.SEEK_END), flush=True)
time.sleep(float(sys.argv[2]))
"""


def cached_size_settles(user, path, within=4.0):
    """The size the kernel keeps for the inode, as `user` reads it without
    asking the daemon: polled until it is the bound (max_size=, 64 MiB) or
    `within` seconds pass, the last value read."""
    deadline = time.time() + within
    seen = None
    while True:
        r = run_as(user, ["stat", "--cached=always", "-c", "%s", path])
        assert r.returncode == 0, r.stderr
        seen = int(r.stdout)
        if seen == 64 << 20 or time.time() > deadline:
            return seen
        time.sleep(0.1)


O_PATH_WATCH = r"""
import ctypes, os, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(sys.argv[1], os.O_PATH)     # no open request: the lists are never asked
buf = ctypes.create_string_buffer(256)
AT_EMPTY_PATH, AT_STATX_DONT_SYNC, STATX_SIZE, SYS_statx = 0x1000, 0x4000, 0x200, 332
def cached():                             # what the kernel holds; no lookup, no getattr
    assert libc.syscall(SYS_statx, fd, b"", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_SIZE, buf) == 0
    return struct.unpack_from("<Q", buf.raw, 40)[0]
print(cached(), flush=True)
sys.stdin.readline()                      # the admitted reader has done
first, start = cached(), time.time()
while cached() != 64 << 20 and time.time() - start < float(sys.argv[2]):
    time.sleep(0.02)
print(first, cached(), round(time.time() - start, 2), flush=True)
"""


def test_a_refused_users_o_path_descriptor_shows_the_bound_again_though_nobody_looks_the_name_up(access_mount):
    """A refused user holding an O_PATH descriptor (which needs no open)
    read a secret's exact size through it after an admitted user's private
    mapping or seek to the end, for as long as nobody looked the name up
    again: 15 s and counting in a probe, where the documented second was
    bounded only by someone else's lookup. The daemon now looks the name up
    itself a moment after the page drop, so the bound is back within it."""
    m = access_mount
    path = m.file("tls/ssl.pem")
    secret = SECRETS["tls/ssl.pem"]
    for how in (["python3", "-c", FSTAT_MMAP, path], ["python3", "-c", SEEK_END_HOLD, path, "0"]):
        watcher = subprocess.Popen(["setpriv", "--reuid", "kmsfs-bob", "--regid", "kmsfs-bob", "--init-groups",
                                    "python3", "-c", O_PATH_WATCH, path, "8"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert int(watcher.stdout.readline()) == 64 << 20
            r = run_as("kmsfs-alice", how)
            assert r.returncode == 0 and r.stdout.startswith(b"%d" % len(secret)), (how, r.stdout, r.stderr)
            watcher.stdin.write("done\n")
            watcher.stdin.flush()
            first, last, took = watcher.stdout.readline().split()
            # The reader's size reached the inode (or the probe shows nothing)...
            assert int(first) == len(secret), (how, first)
            # ...and left it by itself: within the page drop (at the release,
            # or a second after the seek) and the lookup 0.2 s after it.
            assert int(last) == 64 << 20 and float(took) < 3.0, (how, last, took)
        finally:
            watcher.kill()
            watcher.wait()


def test_kmsfs_status_by_another_user_says_whose_mount_it_is(access_mount, kmsfs_bin):
    """A user other than root looked for the control socket in their own
    directory and was told no daemon answered for a live mount."""
    r = run_as("kmsfs-alice", [str(kmsfs_bin), "status", access_mount.path])
    assert r.returncode != 0
    assert b"is a kmsfs mount whose daemon this user does not run; kmsfs status is for root" in r.stderr, r.stderr


def test_an_openers_seek_to_the_end_leaves_its_size_in_the_inode_for_a_second_at_most(access_mount):
    """lseek(SEEK_END) asks getattr with the handle and the kernel stores
    the exact size it answers, where any user could read it back until the
    name was next looked up (seen for 10 s by a user polling once a second).
    A second later the daemon forgets the name, so the next lookup, the
    prying user's own, stores the bound again, while the opener still
    holds the file."""
    m = access_mount
    path = m.file("tls/ssl.pem")
    secret = SECRETS["tls/ssl.pem"]
    holder = subprocess.Popen(["runuser", "-u", "kmsfs-alice", "--", "python3", "-c", SEEK_END_HOLD, path, "6"],
                              stdout=subprocess.PIPE)
    try:
        assert int(holder.stdout.readline()) == len(secret)
        start = time.time()
        assert cached_size_settles("kmsfs-bob", path) == 64 << 20
        assert time.time() - start < 4.0
        assert holder.poll() is None           # still open all along
    finally:
        holder.kill()
        holder.wait()
