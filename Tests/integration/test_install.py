"""Packaging and boot integration: `make install` (into a DESTDIR, and for
real), the mount(8) helper, fstab lines, the man page and the example
systemd units.

The real install goes to PREFIX=/usr/local and /sbin, and is uninstalled
afterwards even when a test fails. mount(8) passes its environment (except
HOME and PATH) to the helper, so the `kms` fixture's AWS_* settings reach
the daemon.
"""
import contextlib
import errno
import json
import os
import pwd
import pathlib
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import KMSFS, ROOT, force_unmount, memfd_secret_available, mounted, seccomp_python, unsanitized_only  # noqa: E402
from kmsproxy import Fault  # noqa: E402

pytestmark = unsanitized_only

HELPER = ROOT / "mount-helper" / "mount.kmsfs"
UNITS = sorted(p.name for p in (ROOT / "docs" / "systemd").iterdir())
DOCS = sorted(["README.md"] + [p.name for p in (ROOT / "docs").glob("*.md")])
SECRETS = {"db-password": b"correct horse battery staple\n", "tls/key.pem": b"-----BEGIN PRIVATE KEY-----\nMIIB\n"}


def make(*args, check=True):
    r = subprocess.run(["make", "-s", "-C", str(ROOT)] + list(args), capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError("make %s failed (%d):\n%s%s" % (" ".join(args), r.returncode, r.stdout, r.stderr))
    return r


def tree(root):
    """Every file and link under root, as {relative path: (kind, mode, link target)}."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", None, os.readlink(p))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), None)
    return out


def expected_layout(prefix, sbindir="sbin"):
    p = prefix.strip("/")
    layout = {
        p + "/bin/kmsfs": ("file", 0o755, None),
        sbindir + "/mount.kmsfs": ("file", 0o755, None),
        sbindir + "/mount.fuse.kmsfs": ("link", None, "mount.kmsfs"),
        p + "/share/man/man8/kmsfs.8": ("file", 0o644, None),
    }
    for d in DOCS:
        layout[p + "/share/doc/kmsfs/" + d] = ("file", 0o644, None)
    for u in UNITS:
        layout[p + "/share/doc/kmsfs/systemd/" + u] = ("file", 0o644, None)
    return layout


# ---- the helper's argument handling (a stand-in kmsfs records its argv) ----

@pytest.fixture
def fake_kmsfs(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "argv"
    script = bindir / "kmsfs"
    script.write_text('#!/bin/sh\nfor a in "$@"; do printf "%%s\\n" "$a"; done > %s\nexit ${FAKE_STATUS:-0}\n' % log)
    script.chmod(0o755)

    def run(*args, status=0):
        with contextlib.suppress(FileNotFoundError):
            log.unlink()
        env = dict(os.environ, PATH="%s:/usr/bin:/bin" % bindir, FAKE_STATUS=str(status))
        r = subprocess.run(["sh", str(HELPER)] + list(args), env=env, capture_output=True, text=True, timeout=10)
        argv = log.read_text().splitlines() if log.exists() else None
        return r.returncode, argv, r.stderr

    return run


def test_helper_passes_options_and_drops_fstab_ones(fake_kmsfs):
    rc, argv, err = fake_kmsfs(
        "/src", "/mnt", "-o",
        r"rw,allow_uid=a:b,_netdev,nofail,x-systemd.requires=network-online.target,user,users,defaults,"
        r"auto,noauto,comment=boot,context=k=v\,w,x=a\\,nouser")
    assert (rc, err) == (0, "")
    assert argv == ["-o", r"rw,allow_uid=a:b,context=k=v\,w,x=a\\", "--", "/src", "/mnt"]


def test_helper_refuses_a_backslash_that_escapes_nothing(fake_kmsfs):
    # Joined to the next -o it would have escaped that one's comma:
    # context=k=a\ then ttl=5 became one option, context "a,ttl=5".
    for args in (["-o", "context=k=a\\", "-o", "ttl=5"], ["-o", "ttl=5,context=k=a\\\\\\"]):
        rc, argv, err = fake_kmsfs("/src", "/mnt", *args)
        assert rc != 0 and argv is None, (args, argv)
        assert err.strip().endswith("ends in a backslash that escapes nothing; write \\\\ for a backslash"), err
    # An escaped backslash before the end, or before a comma, is kept.
    rc, argv, err = fake_kmsfs("/src", "/mnt", "-o", "context=k=a\\\\", "-o", "ttl=5")
    assert (rc, argv, err) == (0, ["-o", "context=k=a\\\\,ttl=5", "--", "/src", "/mnt"], "")


def test_helper_keeps_a_quoted_comma_inside_its_option(fake_kmsfs):
    # How mount(8) hands over a comma in a value: libmount keeps "a,b"
    # together but reorders options, so a \, could end up joined to
    # another (log=/x\,nodev,require_binding lost require_binding).
    rc, argv, err = fake_kmsfs("/src", "/mnt", "-o", 'rw,nodev,kms_context="k=v,ro",log="/tmp/a,b",require_binding')
    assert (rc, err) == (0, "")
    assert argv == ["-o", 'rw,nodev,context="k=v,ro",log="/tmp/a,b",require_binding', "--", "/src", "/mnt"]
    rc, argv, err = fake_kmsfs("/src", "/mnt", "-o", 'kms_context="k=v,ro')
    assert rc != 0 and argv is None
    assert "has a double quote that is not closed" in err, err


def test_helper_turns_kms_context_into_context(fake_kmsfs):
    # mount(8) drops context= (SELinux's) before calling a helper; fstab spells it kms_context=.
    rc, argv, _ = fake_kmsfs("/src", "/mnt", "-o", "kms_context=app=web,kms_context=env=prod,allow_uid=0")
    assert (rc, argv) == (0, ["-o", "context=app=web,context=env=prod,allow_uid=0", "--", "/src", "/mnt"])


def test_helper_merges_o_and_ignores_mount_flags(fake_kmsfs):
    rc, argv, err = fake_kmsfs("/src", "/mnt", "-n", "-s", "-o", "a", "-ob", "-t", "fuse.kmsfs")
    assert (rc, argv, err) == (0, ["-o", "a,b", "--", "/src", "/mnt"], "")
    rc, argv, _ = fake_kmsfs("/src", "/mnt", "-o", "_netdev,nofail")
    assert (rc, argv) == (0, ["--", "/src", "/mnt"])


def test_helper_passes_paths_that_begin_with_a_dash_as_paths(fake_kmsfs):
    rc, argv, err = fake_kmsfs("-o", "-mnt", "-o", "allow_uid=0")
    assert (rc, argv, err) == (0, ["-o", "allow_uid=0", "--", "-o", "-mnt"], "")


def test_a_source_that_begins_with_a_dash_mounts(tmp_path, kms, kmsfs_bin):
    """Through the helper and the real kmsfs: `-o` after `--` is SOURCE."""
    src = tmp_path / "-o"
    mnt = tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "d.encrypted").write_bytes(kms.encrypt_blob(b"dash"))
    env = dict(kms.env, PATH="%s:%s" % (os.path.dirname(kmsfs_bin), os.environ["PATH"]))
    r = subprocess.run(["sh", str(HELPER), "-o", str(mnt), "-o", "allow_uid=0"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    try:
        assert r.returncode == 0, r.stderr
        assert open(mnt / "d", "rb").read() == b"dash"
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_helper_fake_and_verbose(fake_kmsfs):
    rc, argv, err = fake_kmsfs("/src", "/mnt", "-sfnv", "-o", "allow_uid=0")
    assert rc == 0 and argv is None           # -f: nothing runs
    assert err.startswith("mount.kmsfs: ") and err.rstrip().endswith("kmsfs -o allow_uid=0 -- /src /mnt")


@pytest.mark.parametrize("args,status,want_rc,want_err", [
    (["/src", "/mnt", "-o", "bogus"], 2, 1, None),           # kmsfs: bad option -> mount's "incorrect invocation"
    (["/src", "/mnt"], 1, 32, None),                         # kmsfs: mount failed -> mount's "mount failure"
    (["/src", "/mnt", "-t", "nfs"], 0, 1, "type 'nfs' is not kmsfs"),
    (["/src", "/mnt", "-x"], 0, 1, "unexpected argument '-x'"),
    (["/src", "/mnt", "-o"], 0, 1, "option -o needs a value"),
    (["/src"], 0, 1, "usage: mount.kmsfs SOURCE MOUNTPOINT"),
    (["", "/mnt"], 0, 1, "empty SOURCE"),
])
def test_helper_exit_status(fake_kmsfs, args, status, want_rc, want_err):
    rc, argv, err = fake_kmsfs(*args, status=status)
    assert rc == want_rc
    if want_err:
        assert want_err in err and argv is None


# ---- make install into a DESTDIR ----

@pytest.mark.parametrize("prefix", [None, "/opt/kmsfs"])
def test_install_into_destdir_has_exact_layout(tmp_path, kmsfs_bin, prefix):
    dest = tmp_path / "root"
    args = ["install", "DESTDIR=%s" % dest, "BIN=%s" % kmsfs_bin] + (["PREFIX=%s" % prefix] if prefix else [])
    make(*args)
    prefix = prefix or "/usr/local"
    got = tree(dest)
    assert got == expected_layout(prefix)

    p = prefix.strip("/")
    assert (dest / p / "bin/kmsfs").read_bytes() == pathlib.Path(kmsfs_bin).read_bytes()
    helper = (dest / "sbin/mount.kmsfs").read_text()
    assert "kmsfs_bin='%s/bin/kmsfs'" % prefix in helper and "@KMSFS_BIN@" not in helper
    service = (dest / p / "share/doc/kmsfs/systemd/kmsfs.service").read_text()
    assert "ExecStart=%s/bin/kmsfs " % prefix in service
    man = (dest / p / "share/man/man8/kmsfs.8").read_text()
    assert "%s/share/doc/kmsfs" % prefix in man
    if prefix != "/usr/local":
        for text in (service, man, helper):
            assert "/usr/local/bin/kmsfs" not in text and "/usr/local/share" not in text

    uninstall = ["uninstall", "DESTDIR=%s" % dest] + (["PREFIX=%s" % prefix] if prefix != "/usr/local" else [])
    make(*uninstall)
    assert tree(dest) == {}


def test_install_refuses_a_missing_binary(tmp_path):
    r = make("install", "DESTDIR=%s" % tmp_path, "BIN=%s" % (tmp_path / "nope"), check=False)
    assert r.returncode != 0
    assert "is missing; run make first" in r.stderr
    assert tree(tmp_path) == {}


# ---- the man page ----

def mount_option_names():
    """Every spelling of every option in MountOptions' table (the parsed
    ones and those dropped as fstab's or mount(8)'s)."""
    src = (ROOT / "Sources/KmsfsKit/MountOptionTable.swift").read_text()
    names = set()
    for m in re.finditer(r'\.(?:option|fixed)\("([a-z_]+)"(?:, \[([^\]]*)\])?', src):
        names.add(m.group(1))
        names.update(re.findall(r'"([a-z_]+)"', m.group(2) or ""))
    for m in re.finditer(r'MountOptionSpec\.dropped\(\[([^\]]*)\]', src):
        names.update(re.findall(r'"([a-z_]+)"', m.group(1)))
    assert len(names) > 60, names
    return names


def render_man(path):
    r = subprocess.run(["groff", "-man", "-Tascii", "-ww", "-rLL=5000n", "-P-cbou", str(path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    assert r.stderr == "", r.stderr          # no warnings
    return r.stdout


def test_man_page_renders_without_warnings_and_documents_every_option(kmsfs_bin):
    if not shutil.which("groff"):
        pytest.skip("groff is not installed (apt-get install groff-base)")
    text = render_man(ROOT / "docs/kmsfs.8")
    missing = [n for n in sorted(mount_option_names()) if not re.search(r"(?<![a-z_])%s(?![a-z_])" % n, text)]
    assert missing == [], "mount options missing from kmsfs.8: %s" % missing
    for command in ["encrypt", "decrypt", "check", "status"]:
        assert re.search(r"^ {0,4}%s$" % command, text, re.M), "no section for " + command
        help_text = subprocess.run([kmsfs_bin, command, "--help"], capture_output=True, text=True).stdout
        for flag in set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", help_text)):
            assert flag in text, "kmsfs %s %s is not in kmsfs.8" % (command, flag)
    for flag in ["-f", "-d", "-o", "--version", "--help"]:
        assert flag in text
    if shutil.which("man"):
        r = subprocess.run(["man", "--warnings", "-l", str(ROOT / "docs/kmsfs.8")], capture_output=True, text=True,
                           env=dict(os.environ, MANPAGER="cat", MANWIDTH="100"), timeout=30)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert "kmsfs - serve KMS-encrypted secrets" in r.stdout.replace("\u2010", "-").replace("\u2212", "-")


# ---- a real install, and mounting through mount(8) ----

INSTALLED = ["/usr/local/bin/kmsfs", "/sbin/mount.kmsfs", "/sbin/mount.fuse.kmsfs",
             "/usr/local/share/man/man8/kmsfs.8", "/usr/local/share/doc/kmsfs"]


@pytest.fixture(scope="module")
def installed(kmsfs_bin):
    present = [p for p in INSTALLED if os.path.lexists(p)]
    if present:
        pytest.skip("kmsfs is already installed here (%s); not overwriting it" % ", ".join(present))
    try:
        make("install", "BIN=%s" % kmsfs_bin)
        yield "/usr/local/bin/kmsfs"
    finally:
        make("uninstall", check=False)
        left = [p for p in INSTALLED if os.path.lexists(p)]
        assert left == [], "make uninstall left %s" % left


@pytest.fixture(scope="module")
def source(kms, tmp_path_factory):
    """SOURCE with a secret from the seed pipeline and one from boto3."""
    d = tmp_path_factory.mktemp("install-src")
    plain = d / "db-password.plain"
    plain.write_bytes(SECRETS["db-password"])
    kms.seed_encrypt(plain, d / "db-password.encrypted")
    plain.unlink()
    (d / "tls").mkdir()
    (d / "tls/key.pem.encrypted").write_bytes(kms.encrypt_blob(SECRETS["tls/key.pem"]))
    return d


@pytest.fixture
def mountpoints(tmp_path):
    made = []

    def make_one():
        p = tmp_path / ("mnt%d" % len(made))
        p.mkdir()
        made.append(p)
        return p

    yield make_one
    for p in made:
        force_unmount(p)


def run_mount(args, env):
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)


def daemon_status(mnt):
    r = subprocess.run(["/usr/local/bin/kmsfs", "status", "--json", str(mnt)], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def daemon_pid(mnt):
    return daemon_status(mnt)["pid"]


def fstype(mnt):
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if parts[1] == str(mnt):
                return parts[0], parts[2]
    return None


def wait_gone(pid, timeout=5):
    """True once pid has exited (a zombie waiting for init to reap it counts)."""
    deadline = time.time() + timeout
    while True:
        try:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        if time.time() >= deadline:
            return False
        time.sleep(0.01)


@pytest.mark.parametrize("form", ["mount -t kmsfs", "mount -t fuse.kmsfs", "mount -t fuse kmsfs#SRC",
                                  "fstab kmsfs", "fstab fuse.kmsfs"])
def test_mount_through_mount8_then_umount(installed, kms, source, mountpoints, tmp_path, form):
    mnt = mountpoints()
    opts = "allow_uid=root,ttl=5m"
    if form == "mount -t kmsfs":
        args = ["mount", "-t", "kmsfs", str(source), str(mnt), "-o", opts]
    elif form == "mount -t fuse.kmsfs":
        args = ["mount", "-t", "fuse.kmsfs", str(source), str(mnt), "-o", opts]
    elif form == "mount -t fuse kmsfs#SRC":
        # mount.fuse3 itself (not our link): it runs `kmsfs` from mount's PATH.
        args = ["mount", "-t", "fuse", "kmsfs#%s" % source, str(mnt), "-o", opts]
    else:
        fstab = tmp_path / "fstab"
        fstab.write_text("# test fstab\n%s  %s  %s  %s,_netdev,nofail,x-systemd.requires=network-online.target  0  0\n"
                         % (source, mnt, form.split()[1], opts))
        args = ["mount", "-T", str(fstab), str(mnt)]
    r = run_mount(args, kms.env)
    assert r.returncode == 0, r.stderr
    # Live when mount(8) returns: no waiting.
    assert open(mnt / "db-password", "rb").read() == SECRETS["db-password"]
    assert open(mnt / "tls/key.pem", "rb").read() == SECRETS["tls/key.pem"]
    assert fstype(mnt) == (str(source), "fuse.kmsfs")
    pid = daemon_pid(mnt)
    assert os.readlink("/proc/%d/exe" % pid) == "/usr/local/bin/kmsfs"
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        assert b"_netdev" not in f.read()     # the helper drops fstab-only options

    # mount -o remount hands the live daemon new options (fstab's, when it has the line).
    if form.startswith("fstab"):
        fstab.write_text(fstab.read_text().replace("allow_uid=root", "allow_uid=nobody"))
        args = ["mount", "-T", str(fstab), "-o", "remount", str(mnt)]
    else:
        args = ["mount", "-o", "remount,allow_uid=nobody", str(mnt)]
    r = run_mount(args, kms.env)
    assert r.returncode == 0, r.stderr
    assert daemon_pid(mnt) == pid                             # the same daemon, not a new mount
    assert os.stat(mnt / "db-password").st_uid == pwd.getpwnam("nobody").pw_uid
    with pytest.raises(PermissionError):
        open(mnt / "db-password", "rb")
    r = run_mount(["mount", "-o", "remount,region=mars-1", str(mnt)], kms.env)
    assert r.returncode != 0 and "cannot change on a live mount" in r.stderr, r.stderr

    r = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert not mounted(mnt)
    assert wait_gone(pid), "the daemon did not exit after umount"


def test_mount_into_another_mount_namespace(installed, kms, source, tmp_path):
    """mount -N NS: the helper runs kmsfs inside that namespace (nsenter)."""
    nsdir, mnt = tmp_path / "ns", tmp_path / "nsmnt"
    nsdir.mkdir()
    mnt.mkdir()
    ns = nsdir / "mnt"
    pid = None
    try:
        subprocess.run(["mount", "--bind", str(nsdir), str(nsdir)], check=True)
        subprocess.run(["mount", "--make-private", str(nsdir)], check=True)
        ns.touch()
        subprocess.run(["unshare", "--mount=%s" % ns, "--propagation", "private", "true"], check=True)
        r = run_mount(["mount", "-N", str(ns), "-t", "kmsfs", str(source), str(mnt), "-o", "allow_uid=root"], kms.env)
        assert r.returncode == 0, r.stderr
        pid = daemon_pid(mnt)
        assert not mounted(mnt)                       # not here...
        r = subprocess.run(["nsenter", "--mount=%s" % ns, "cat", str(mnt / "db-password")], capture_output=True)
        assert r.stdout == SECRETS["db-password"]     # ...but there
        subprocess.run(["nsenter", "--mount=%s" % ns, "umount", str(mnt)], check=True, timeout=30)
        assert wait_gone(pid)
    finally:
        if pid is not None and not wait_gone(pid, timeout=0):
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["umount", str(ns)], capture_output=True)
        subprocess.run(["umount", str(nsdir)], capture_output=True)


def test_mount_failures_through_the_helper(installed, kms, source, mountpoints):
    mnt = mountpoints()
    r = run_mount(["mount", "-t", "kmsfs", str(source), str(mnt), "-o", "allow_uid=root,bogus"], kms.env)
    assert r.returncode == 1
    assert r.stderr.strip() == "kmsfs: unknown option 'bogus' (see kmsfs --help or man 8 kmsfs)"
    r = run_mount(["mount", "-t", "kmsfs", str(source / "nope"), str(mnt)], kms.env)
    assert r.returncode == 32
    assert "is not a directory; give the directory that holds the *.encrypted files" in r.stderr
    r = run_mount(["mount", "-f", "-t", "kmsfs", str(source), str(mnt), "-o", "allow_uid=root"], kms.env)
    assert r.returncode == 0
    assert not mounted(mnt)


def test_fstab_requires_a_context_with_kms_context(installed, kms, tmp_path, mountpoints):
    """A raw blob encrypted with a context decrypts only with that context:
    fstab gives it as kms_context= (a context= there never reaches kmsfs)."""
    src = tmp_path / "ctx-src"
    src.mkdir()
    plain = tmp_path / "plain"
    plain.write_bytes(b"bound to app=web\n")
    kms.seed_encrypt(plain, src / "token.encrypted", context={"app": "web"})
    good, dropped = mountpoints(), mountpoints()
    fstab = tmp_path / "fstab"
    fstab.write_text("%s %s kmsfs allow_uid=root,kms_context=app=web,_netdev 0 0\n"
                     "%s %s kmsfs allow_uid=root,context=app=web,_netdev 0 0\n" % (src, good, src, dropped))
    for mnt in (good, dropped):
        r = run_mount(["mount", "-T", str(fstab), str(mnt)], kms.env)
        assert r.returncode == 0, r.stderr
    assert open(good / "token", "rb").read() == b"bound to app=web\n"
    with pytest.raises(OSError) as e:
        open(dropped / "token", "rb").read()
    assert e.value.errno == errno.EIO
    for mnt in (good, dropped):
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)


def test_boot_without_kms_mounts_then_serves_once_kms_answers(installed, kms, proxy, source, mountpoints, tmp_path):
    """The fstab line of a machine whose KMS is unreachable at boot: the
    mount comes up, prefetch logs the failures, opens fail with EIO, and
    the first open after KMS answers again succeeds."""
    proxy.policy = lambda n, target: Fault.RESET
    mnt = mountpoints()
    log = tmp_path / "kmsfs.log"
    fstab = tmp_path / "fstab"
    fstab.write_text("%s %s kmsfs allow_uid=root,prefetch,retries=1,endpoint=%s,log=%s,_netdev,nofail 0 0\n"
                     % (source, mnt, proxy.url, log))
    t0 = time.time()
    r = run_mount(["mount", "-T", str(fstab), str(mnt)], kms.env)
    took = time.time() - t0
    assert r.returncode == 0, r.stderr
    assert took < 10, "mount took %.1f s with KMS down" % took
    assert "prefetch: 0 secrets decrypted, 2 failed" in log.read_text()
    with pytest.raises(OSError) as e:
        open(mnt / "db-password", "rb").read()
    assert e.value.errno == errno.EIO
    assert "db-password: KMS Decrypt failed" in log.read_text()

    proxy.reset()   # KMS is back
    assert open(mnt / "db-password", "rb").read() == SECRETS["db-password"]
    subprocess.run(["umount", str(mnt)], check=True, timeout=30)


# ---- the example systemd units ----

def unit_setting(text, key):
    values = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]
    return values


def test_units_verify(installed, tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    docs = pathlib.Path("/usr/local/share/doc/kmsfs/systemd")
    # A consumer with the drop-in, from a unit directory of its own.
    units = tmp_path / "units"
    (units / "consumer.service.d").mkdir(parents=True)
    (units / "consumer.service").write_text("[Service]\nExecStart=/bin/true\n")
    shutil.copy(docs / "consumer.conf", units / "consumer.service.d" / "kmsfs.conf")
    for unit in ["kmsfs.service", "etc-secrets.mount"]:
        shutil.copy(docs / unit, units / unit)
    env = dict(os.environ, SYSTEMD_UNIT_PATH="%s:" % units, MANPATH="/usr/local/share/man:")
    r = subprocess.run(["systemd-analyze", "verify", "--no-pager"] +
                       [str(units / u) for u in ["kmsfs.service", "etc-secrets.mount", "consumer.service"]],
                       capture_output=True, text=True, env=env, timeout=60)
    assert (r.returncode, r.stderr) == (0, "")
    service = (docs / "kmsfs.service").read_text()
    assert unit_setting(service, "Type") == ["notify"]
    assert unit_setting(service, "LimitMEMLOCK") == ["infinity"]
    assert unit_setting(service, "Restart") == ["on-failure"]
    assert unit_setting(service, "ExecStart")[0].startswith("/usr/local/bin/kmsfs ")
    assert " -f " in unit_setting(service, "ExecStart")[0]
    # Nothing that would give the service a mount namespace of its own.
    for key in ["ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc", "ReadOnlyPaths",
                "ReadWritePaths", "InaccessiblePaths", "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths",
                "PrivateMounts", "MountFlags", "PrivateUsers", "PrivateNetwork", "RootDirectory", "RootImage"]:
        assert unit_setting(service, key) == [], key
    assert unit_setting((docs / "consumer.conf").read_text(), "RequiresMountsFor") == ["/etc/secrets"]


SANDBOX = r'''
import ctypes, os, resource, socket, subprocess, sys
import seccomp
syscalls, families, argv = sys.argv[1].split(), sys.argv[2].split(), sys.argv[3:]
f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(1))          # SystemCallErrorNumber=EPERM
for name in syscalls:
    if name not in ("socket", "openat2"):
        try:
            f.add_rule(seccomp.ALLOW, name)
        except Exception:
            pass                                                 # not on this architecture
f.add_rule(seccomp.ERRNO(38), "openat2")                         # RestrictSUIDSGID=: ENOSYS, as systemd does
for fam in families:                                             # RestrictAddressFamilies=
    f.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, getattr(socket, fam)))
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:                              # PR_SET_MDWE: MemoryDenyWriteExecute=
    sys.exit("PR_SET_MDWE failed: errno %d" % ctypes.get_errno())
f.load()
os.execvp(argv[0], argv)
'''


def expand_syscall_filter(spec):
    """The system calls a SystemCallFilter= allow-list names, as systemd expands its @groups."""
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"], capture_output=True, text=True,
                         check=True).stdout
    groups, current = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.strip() and not line.strip().startswith("#") and current is not None:
            current.append(line.strip())

    def expand(name):
        return set().union(*(expand(m) for m in groups[name])) if name.startswith("@") else {name}

    return set().union(*(expand(n) for n in spec.split()))


def test_service_runs_in_the_units_sandbox_and_notifies(installed, kms, source, mountpoints, tmp_path):
    """ExecStart of kmsfs.service under what the unit asks of systemd:
    its capability bounding set, NoNewPrivileges, its system-call filter
    and address families (seccomp), MemoryDenyWriteExecute (PR_SET_MDWE),
    with NOTIFY_SOCKET and JOURNAL_STREAM as systemd sets them."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    py = seccomp_python()
    if py is None:
        pytest.skip("no Python with the seccomp module (apt-get install python3-seccomp)")
    service = pathlib.Path("/usr/local/share/doc/kmsfs/systemd/kmsfs.service").read_text()
    caps = unit_setting(service, "CapabilityBoundingSet")[0].split()
    syscalls = expand_syscall_filter(unit_setting(service, "SystemCallFilter")[0])
    families = unit_setting(service, "RestrictAddressFamilies")[0].split()
    assert unit_setting(service, "SystemCallErrorNumber") == ["EPERM"]
    assert unit_setting(service, "NoNewPrivileges") == ["yes"]
    assert unit_setting(service, "MemoryDenyWriteExecute") == ["yes"]
    # With it systemd answers openat2 with ENOSYS (seccomp cannot check its
    # flags), and kmsfs reads SOURCE without it (the boot test found SOURCE
    # empty under the real unit before).
    assert unit_setting(service, "RestrictSUIDSGID") == ["yes"]
    exec_start = unit_setting(service, "ExecStart")[0].split()
    binary, flags = exec_start[0], [a for a in exec_start if a in ("-f", "-d")]

    mnt = mountpoints()
    notify_path = str(tmp_path / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(20)
    journal = open(tmp_path / "journal", "wb")
    st = os.fstat(journal.fileno())
    # No journald socket (test_package.py checks the native entries): the
    # stream, with <N> prefixes, is what is left.
    env = dict(kms.env, NOTIFY_SOCKET=notify_path, JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino),
               KMSFS_JOURNAL_SOCKET=str(tmp_path / "no-journald"))
    bounding = "-all," + ",".join("+" + c.lower().replace("cap_", "") for c in caps)
    argv = [py, "-c", SANDBOX, " ".join(sorted(syscalls)), " ".join(families),
            "setpriv", "--bounding-set=" + bounding, "--inh-caps=-all", "--no-new-privs", "--",
            binary, str(source), str(mnt)] + flags + ["-o", "allow_uid=root,prefetch"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=journal, start_new_session=True)
    try:
        message = notify.recv(4096).decode()
        assert "READY=1" in message.split("\n"), message
        # READY means the mount answers.
        assert open(mnt / "db-password", "rb").read() == SECRETS["db-password"]
        status = pathlib.Path("/proc/%d/status" % proc.pid).read_text()
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M) and re.search(r"^Seccomp:\s+2$", status, re.M)
        assert int(re.search(r"^CapEff:\s+(\w+)$", status, re.M).group(1), 16) == (1 << 21) | (1 << 14)
        if memfd_secret_available():
            # The filter lets memfd_secret through: cached plaintext stays out of the direct map.
            shown = daemon_status(mnt)
            assert shown["memory"] == "memfd_secret"
            assert shown["memory_fallbacks"] == 0   # every buffer got memfd_secret pages
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in notify.recv(4096).decode()
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        notify.close()
        journal.close()
    assert not mounted(mnt)
    lines = (tmp_path / "journal").read_text().splitlines()
    assert lines and all(re.match(r"<[3-7]>kmsfs: ", line) for line in lines), lines
    assert any(line.startswith("<5>kmsfs: mounted %s on %s" % (source, mnt)) for line in lines), lines
    assert any(line.startswith("<5>kmsfs: prefetch: 2 secrets decrypted") for line in lines), lines
