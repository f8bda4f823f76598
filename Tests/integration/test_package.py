"""Runs where the guide says it runs (issue 15, item 0): the built binary
needs no Swift toolchain, the background daemon keeps the name `kmsfs`
(ps, pgrep, pidof), its log lines reach the journal tagged `kmsfs` however
it was started, and `make deb` packs it all.

No systemd runs here: the journal is a datagram socket the test binds and
names in KMSFS_JOURNAL_SOCKET, read back in journald's native format.
The package is built from the binary already built (`make deb` does not
build), and checked with dpkg-deb and a `dpkg --root` install into a
throwaway directory, never into this machine's root.
"""
import contextlib
import errno
import json
import os
import pathlib
import re
import shutil
import socket
import struct
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import ROOT, force_unmount, mounted, unsanitized_only  # noqa: E402

pytestmark = unsanitized_only

SECRET = b"correct horse battery staple\n"
# A name that tries to forge journal fields and a second line.
EVIL = "evil\nPRIORITY=0\nSYSLOG_IDENTIFIER=sshd\rx"
REBUILD = "build it with `make build` (swift build -c release --static-swift-stdlib --disable-local-rpath)"


def source_version():
    text = (ROOT / "Sources/AWS/Version.swift").read_text()
    return re.search(r'^public let kmsfsVersion = "(.*)"$', text, re.M).group(1)


def dynamic_section(binary):
    return subprocess.run(["readelf", "-d", binary], capture_output=True, text=True, check=True).stdout


def needed(binary):
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.*)\]", dynamic_section(binary))


@pytest.fixture(scope="module")
def static_bin(kmsfs_bin):
    """The built binary, which must be the one `make build` makes."""
    swift = [n for n in needed(kmsfs_bin) if re.match(r"lib(swift|Foundation|dispatch|BlocksRuntime)", n)]
    assert swift == [], "%s loads the Swift runtime (%s): %s" % (kmsfs_bin, ", ".join(swift), REBUILD)
    return kmsfs_bin


@pytest.fixture
def source(kms, tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    (d / "db-password.encrypted").write_bytes(kms.encrypt_blob(SECRET))
    (d / (EVIL + ".encrypted")).write_bytes(b"\x01not a ciphertext KMS would take" * 4)
    return d


@contextlib.contextmanager
def background_mount(binary, source, mnt, env, stderr=None, argv0=None, options="allow_uid=root"):
    """`kmsfs SOURCE MNT -o ...` without -f: returns once the mount answers;
    yields the daemon's pid, unmounts afterwards."""
    r = subprocess.run([argv0 or binary, str(source), str(mnt), "-o", options], env=env, stdout=subprocess.DEVNULL,
                       stderr=stderr if stderr is not None else subprocess.PIPE, timeout=30,
                       executable=binary if argv0 else None)
    assert r.returncode == 0, r.stderr
    try:
        st = subprocess.run([binary, "status", "--json", str(mnt)], capture_output=True, text=True, timeout=10)
        assert st.returncode == 0, st.stderr
        yield json.loads(st.stdout)["pid"]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)
        force_unmount(mnt)


# ---- the binary needs nothing from the toolchain ----

def test_binary_links_the_swift_runtime_in(static_bin):
    libs = needed(static_bin)
    # What the guide lists (libfuse3, libcurl, libssl) and the C runtime.
    assert set(libs) <= {"libfuse3.so.3", "libcurl.so.4", "libssl.so.3", "libcrypto.so.3", "libc.so.6", "libm.so.6",
                         "libstdc++.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"}, libs
    assert not re.search(r"R(UN)?PATH", dynamic_section(static_bin)), "a run path is left: " + REBUILD
    ldd = subprocess.run(["ldd", static_bin], capture_output=True, text=True, env={"PATH": os.environ["PATH"]}).stdout
    assert "not found" not in ldd and "/opt/swift" not in ldd, ldd


def test_binary_runs_with_the_toolchain_hidden(static_bin, tmp_path):
    """/opt/swift covered by an empty directory (in a mount namespace of the
    test's own): what a machine without Swift sees."""
    toolchain = pathlib.Path("/opt/swift")
    if not toolchain.is_dir():
        pytest.skip("no toolchain at /opt/swift to hide")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        'mount -t tmpfs none /opt/swift && [ -z "$(ls /opt/swift)" ] && exec "$0" --version',
                        static_bin], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=30)
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, "kmsfs " + source_version(), "")


# ---- the daemon keeps its name ----

def comm(pid):
    return pathlib.Path("/proc/%d/comm" % pid).read_text().strip()


def test_background_daemon_is_named_kmsfs(static_bin, kms, source, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with background_mount(static_bin, source, mnt, kms.env) as pid:
        assert comm(pid) == "kmsfs"
        assert str(pid) in subprocess.run(["pgrep", "-x", "kmsfs"], capture_output=True, text=True).stdout.split()
        if shutil.which("pidof"):
            assert str(pid) in subprocess.run(["pidof", "kmsfs"], capture_output=True, text=True).stdout.split()
        assert os.readlink("/proc/%d/exe" % pid) == os.path.realpath(static_bin)
        with open("/proc/%d/stat" % pid) as f:
            assert f.read().split()[1] == "(kmsfs)"        # what ps and top show
        assert open(mnt / "db-password", "rb").read() == SECRET


def test_daemon_started_through_a_path_named_exe_renames_itself(static_bin, kms, source, tmp_path):
    """The kernel names a process after the file exec'd: when the daemon
    must be started through /proc/self/exe (its binary replaced since the
    parent started), it takes the name `kmsfs` back. A link named `exe` is
    the same case without racing an upgrade."""
    link = tmp_path / "exe"
    link.symlink_to(static_bin)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r, w = os.pipe()
    proc = subprocess.Popen([str(link), str(source), str(mnt), "-o", "allow_uid=root"], pass_fds=(w,),
                            env=dict(kms.env, KMSFS_READY_FD=str(w)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as ready:
            assert ready.readline() == b"READY\n"
        assert comm(proc.pid) == "kmsfs"
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)
        force_unmount(mnt)
        proc.wait(10)


# ---- the journal ----

def parse_entry(data):
    """One datagram of journald's native protocol, as [(name, bytes)]."""
    fields, i = [], 0
    while i < len(data):
        nl = data.index(b"\n", i)
        eq = data.find(b"=", i, nl)
        if eq >= 0:
            fields.append((data[i:eq].decode(), data[eq + 1:nl]))
            i = nl + 1
        else:
            name = data[i:nl].decode()
            (size,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            value = data[nl + 9:nl + 9 + size]
            assert data[nl + 9 + size:nl + 10 + size] == b"\n"
            fields.append((name, value))
            i = nl + 10 + size
    return fields


@pytest.fixture
def journal(tmp_path):
    path = str(tmp_path / "journal.socket")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)

    def entries():
        out = []
        s.settimeout(0.5)
        with contextlib.suppress(socket.timeout):
            while True:
                out.append(parse_entry(s.recv(1 << 16)))
        return out

    yield path, entries
    s.close()


LOG_FIELDS = ["MESSAGE", "PRIORITY", "SYSLOG_FACILITY", "SYSLOG_IDENTIFIER"]
AUDIT_FIELDS = sorted(LOG_FIELDS + ["MESSAGE_ID", "KMSFS_PATH", "KMSFS_UID", "KMSFS_GID", "KMSFS_PID", "KMSFS_COMM",
                                    "KMSFS_RESULT", "KMSFS_SOURCE"])
AUDIT_ID = b"b67d0b4cdae54961a38b202bea9a2ce6"


@pytest.mark.parametrize("started_by", ["mount unit", "shell"])
def test_background_daemon_logs_to_the_journal_tagged_kmsfs(static_bin, kms, source, public_tmp, tmp_path, journal,
                                                            started_by):
    """Under a mount unit, mount(8)'s stderr is the unit's journal stream
    (JOURNAL_STREAM names it) and journald tags each line of it `mount`;
    from a shell on a machine running journald, there is no stream at all.
    Either way each line goes as a native entry tagged `kmsfs`, and each
    audit record carries its fields (journalctl KMSFS_RESULT=denied)."""
    path, entries = journal
    mnt = public_tmp / ("journal-" + started_by.replace(" ", "-"))
    mnt.mkdir()
    stream = open(tmp_path / "stream", "wb")
    env = dict(kms.env, KMSFS_JOURNAL_SOCKET=path)
    if started_by == "mount unit":
        st = os.fstat(stream.fileno())
        env["JOURNAL_STREAM"] = "%d:%d" % (st.st_dev, st.st_ino)
    with stream, background_mount(static_bin, source, mnt, env, stderr=stream) as pid:
        assert open(mnt / "db-password", "rb").read() == SECRET
        with pytest.raises(OSError) as e:
            open(mnt / EVIL, "rb").read()
        assert e.value.errno == errno.EIO
        r = subprocess.run(["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
                            "cat", str(mnt / "db-password")], capture_output=True, timeout=10)
        assert r.returncode != 0 and b"Permission denied" in r.stderr
    got = entries()
    assert got, "no journal entries"
    logs, audits = [], []
    for fields in got:
        names = sorted(n for n, _ in fields)
        assert names in (LOG_FIELDS, AUDIT_FIELDS, sorted(AUDIT_FIELDS + ["KMSFS_KMS_MS"]),
                         sorted(AUDIT_FIELDS + ["KMSFS_REASON"]), sorted(AUDIT_FIELDS + ["KMSFS_KMS_MS", "KMSFS_REASON"])), fields
        f = dict(fields)
        assert f["SYSLOG_IDENTIFIER"] == b"kmsfs"
        assert f["PRIORITY"] in (b"3", b"4", b"5", b"6", b"7")
        assert f["SYSLOG_FACILITY"] == b"3"
        assert not re.search(rb"[\x00-\x1f\x7f]", f["MESSAGE"]), f["MESSAGE"]   # one line, nothing forged
        (audits if "MESSAGE_ID" in f else logs).append(f)
    messages = [(int(f["PRIORITY"]), f["MESSAGE"].decode()) for f in logs]
    mounted_line = "mounted %s on %s" % (source, mnt)
    assert any(p == 5 and m.startswith(mounted_line) for p, m in messages), messages
    # The failed open of EVIL is logged, its name on the one line.
    assert any("evil" in m and "PRIORITY=0" in m for _, m in messages), messages

    by_path = {}
    for f in audits:
        assert f["MESSAGE_ID"] == AUDIT_ID and f["MESSAGE"].startswith(b"audit ")
        assert int(f["KMSFS_PID"]) > 0 and f["KMSFS_GID"].isdigit()
        by_path.setdefault(f["KMSFS_PATH"].decode(), []).append(f)
    ok, = [f for f in by_path["db-password"] if f["KMSFS_UID"] == b"0"]
    assert (ok["KMSFS_RESULT"], ok["KMSFS_SOURCE"], ok["PRIORITY"]) == (b"allowed", b"kms", b"5")
    assert ok["KMSFS_KMS_MS"].isdigit()
    denied, = [f for f in by_path["db-password"] if f["KMSFS_UID"] != b"0"]
    assert (denied["KMSFS_RESULT"], denied["KMSFS_SOURCE"], denied["PRIORITY"]) == (b"denied", b"denied", b"4")
    assert denied["KMSFS_COMM"] == b"cat"
    failed, = by_path[EVIL]                                   # the exact name, sized in the datagram
    assert (failed["KMSFS_RESULT"], failed["KMSFS_SOURCE"]) == (b"allowed", b"failed")
    assert (tmp_path / "stream").read_bytes() == b""          # nothing tagged `mount`
    assert pid > 0


def test_foreground_daemon_keeps_logging_to_stderr(mount_factory, kms, source, journal):
    """-f with a standard error that is not the journal (a terminal, the
    tests' log files) logs there even where a journal socket exists."""
    path, entries = journal
    m = mount_factory(source, "allow_uid=root", env=dict(kms.env, KMSFS_JOURNAL_SOCKET=path))
    assert open(os.path.join(m.path, "db-password"), "rb").read() == SECRET
    assert m.wait_log("mounted %s on %s" % (source, m.path))
    m.stop()
    assert entries() == []


def start_on_the_journal(kmsfs_bin, kms, source, mnt, journal_path, stream_path, options="allow_uid=root"):
    """`kmsfs -f` as kmsfs.service runs it: standard error on the journal's
    stream (JOURNAL_STREAM), journald's socket at `journal_path`. Returns
    the daemon once mounted (or exited, or 30 s on)."""
    mnt.mkdir()
    with open(stream_path, "wb") as stream:
        st = os.fstat(stream.fileno())
        env = dict(kms.env, KMSFS_JOURNAL_SOCKET=journal_path, JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino))
        proc = subprocess.Popen([kmsfs_bin, str(source), str(mnt), "-f", "-o", options], env=env,
                                stdout=subprocess.DEVNULL, stderr=stream, start_new_session=True)
    deadline = time.time() + 30
    while not mounted(mnt) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    return proc


def test_foreground_daemon_on_the_journal_sends_native_entries(kmsfs_bin, kms, source, tmp_path, journal):
    """-f with standard error on the journal (kmsfs.service): native entries,
    so audit records carry their fields there too; the stream stays empty."""
    path, entries = journal
    mnt = tmp_path / "mnt"
    proc = start_on_the_journal(kmsfs_bin, kms, source, mnt, path, tmp_path / "stream")
    try:
        assert open(mnt / "db-password", "rb").read() == SECRET
    finally:
        proc.terminate()
        proc.wait(15)
        force_unmount(mnt)
    got = [dict(f) for f in entries()]
    assert all(f["SYSLOG_IDENTIFIER"] == b"kmsfs" for f in got)
    assert any(f["MESSAGE"].startswith(b"mounted %s on %s" % (bytes(source), bytes(mnt))) for f in got), got
    assert any(f.get("KMSFS_PATH") == b"db-password" and f["KMSFS_RESULT"] == b"allowed" for f in got), got
    assert (tmp_path / "stream").read_bytes() == b""


def test_a_stuck_journal_costs_log_lines_not_service(kmsfs_bin, kms, source, tmp_path):
    """A journald that takes nothing (stuck, its queue full) also serves
    /dev/log, where syslog(3) would block without a bound. A log line the
    journal did not take within 2 s went to syslog(3), and the next waited
    2 s again, each on the FUSE request that logged it. Now it is dropped
    and counted, later ones are not waited for, and the first entry the
    journal takes again is followed by one saying how many were lost.
    (Audit records are never dropped: audit=off here, so that only log
    lines meet the stuck journal.)"""
    path = str(tmp_path / "stuck.socket")
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(path)
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    filler.setblocking(False)
    queued = 0
    with contextlib.suppress(BlockingIOError):
        while queued < 100000:
            filler.sendto(b"MESSAGE=filler\n", path)
            queued += 1
    assert 0 < queued < 100000
    mnt = tmp_path / "mnt"
    proc = start_on_the_journal(kmsfs_bin, kms, source, mnt, path, tmp_path / "stream", "allow_uid=root,audit=off")
    try:
        started = time.monotonic()
        for _ in range(20):   # each a log line ("not a ciphertext") into the stuck journal
            with pytest.raises(OSError) as e:
                open(mnt / EVIL, "rb").read()
            assert e.value.errno == errno.EIO
        # The first waited its 2 s (the mount's own lines may have too);
        # the rest were dropped at once, not 2 s each.
        assert time.monotonic() - started < 15
        journal.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                journal.recv(1 << 16)
        journal.settimeout(10)
        with pytest.raises(OSError):
            open(mnt / EVIL, "rb").read()
        messages = []
        deadline = time.time() + 10
        while time.time() < deadline and not any(b"log entries were dropped" in m for m in messages):
            with contextlib.suppress(socket.timeout):
                messages.append(dict(parse_entry(journal.recv(1 << 16))).get("MESSAGE", b""))
        lost = [m for m in messages if b"log entries were dropped" in m]
        assert lost, messages
        assert int(lost[0].split()[0]) >= 20, lost
    finally:
        proc.terminate()
        proc.wait(15)
        force_unmount(mnt)
        journal.close()
        filler.close()


# ---- make deb ----

def make_deb(outdir):
    r = subprocess.run(["make", "-s", "-C", str(ROOT), "deb", "DEBDIR=%s" % outdir], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    debs = list(pathlib.Path(outdir).glob("kmsfs_*.deb"))
    assert [str(d) for d in debs] == [r.stdout.strip()]
    return debs[0]


@pytest.fixture(scope="module")
def deb(static_bin, tmp_path_factory):
    return make_deb(tmp_path_factory.mktemp("deb"))


def deb_field(deb, name):
    return subprocess.run(["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()


def library_packages(binary):
    """The Debian package holding each library the binary names, as dpkg -S says."""
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    where = dict(re.findall(r"^\s*(\S+) => (/\S+)", ldd, re.M))
    out = set()
    for lib in needed(binary):
        if lib.startswith("ld-linux"):
            continue
        r = subprocess.run(["dpkg", "-S", where[lib]], capture_output=True, text=True)
        if r.returncode != 0:
            r = subprocess.run(["dpkg", "-S", os.path.realpath(where[lib])], capture_output=True, text=True, check=True)
        out.add(r.stdout.split(":")[0])
    return out


def test_deb_control(deb, static_bin):
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    assert deb.name == "kmsfs_%s_%s.deb" % (source_version(), arch)
    assert deb_field(deb, "Package") == "kmsfs"
    assert deb_field(deb, "Version") == source_version()
    assert deb_field(deb, "Architecture") == arch
    depends = set(d.strip() for d in deb_field(deb, "Depends").split(","))
    # The guide's list, and exactly the packages of the libraries loaded.
    assert {"fuse3", "libfuse3-3", "libcurl4", "libssl3"} <= depends
    assert depends == {"fuse3"} | library_packages(static_bin)
    info = subprocess.run(["dpkg-deb", "--info", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "md5sums" in info and "postinst" not in info and "prerm" not in info


def deb_contents(deb):
    """{path: (mode string, owner, link target)} from dpkg-deb --contents."""
    out = {}
    for line in subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        mode, owner, _size, _date, _time, name = line.split(None, 5)
        target = None
        if " -> " in name:
            name, target = name.split(" -> ")
        if not mode.startswith("d"):
            out[name.lstrip(".")] = (mode, owner, target)
    return out


def test_deb_contents(deb):
    files = deb_contents(deb)
    docs = sorted(["README.md"] + [p.name for p in (ROOT / "docs").glob("*.md")])
    units = sorted(p.name for p in (ROOT / "docs" / "systemd").iterdir())
    want = {"/usr/bin/kmsfs": ("-rwxr-xr-x", "root/root", None),
            "/sbin/mount.kmsfs": ("-rwxr-xr-x", "root/root", None),
            "/sbin/mount.fuse.kmsfs": ("lrwxrwxrwx", "root/root", "mount.kmsfs"),
            "/usr/share/man/man8/kmsfs.8.gz": ("-rw-r--r--", "root/root", None)}
    want.update({"/usr/share/doc/kmsfs/" + d: ("-rw-r--r--", "root/root", None) for d in docs})
    want.update({"/usr/share/doc/kmsfs/systemd/" + u: ("-rw-r--r--", "root/root", None) for u in units})
    assert files == want


def test_deb_tree_runs_without_the_toolchain_and_names_usr(deb, static_bin, tmp_path):
    root = tmp_path / "x"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    binary = root / "usr/bin/kmsfs"
    # Debug sections are left out of the package; the code is the build's.
    assert "debug_info" not in subprocess.run(["readelf", "-S", str(binary)], capture_output=True, text=True).stdout
    assert not re.search(r"R(UN)?PATH", dynamic_section(str(binary)))
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        "mount -t tmpfs none /opt/swift && exec \"$0\" --version", str(binary)],
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=30)
    assert (r.returncode, r.stdout.strip()) == (0, "kmsfs " + source_version()), r.stderr
    assert "kmsfs_bin='/usr/bin/kmsfs'" in (root / "sbin/mount.kmsfs").read_text()
    service = (root / "usr/share/doc/kmsfs/systemd/kmsfs.service").read_text()
    assert "ExecStart=/usr/bin/kmsfs " in service and "/usr/local" not in service
    man = subprocess.run(["gzip", "-dc", str(root / "usr/share/man/man8/kmsfs.8.gz")], capture_output=True,
                         text=True, check=True).stdout
    assert "/usr/share/doc/kmsfs" in man and "/usr/local/share/doc" not in man


def test_deb_installs_and_removes_cleanly_in_a_throwaway_root(deb, tmp_path):
    """dpkg --root: the package's own install and removal, not this host's."""
    root = tmp_path / "root"
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"]:
        (root / d).mkdir(parents=True)
    (root / "var/lib/dpkg/status").touch()
    base = ["dpkg", "--root=%s" % root, "--force-depends", "--force-script-chrootless", "--log=/dev/null"]
    r = subprocess.run(base + ["-i", str(deb)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (root / "usr/bin/kmsfs").exists() and os.path.islink(root / "sbin/mount.fuse.kmsfs")
    r = subprocess.run(base + ["--purge", "kmsfs"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    left = [str(p.relative_to(root)) for p in root.rglob("*")
            if not str(p.relative_to(root)).startswith("var/lib/dpkg") and not p.is_dir()]
    assert left == []


def test_deb_refuses_a_binary_that_needs_the_toolchain(tmp_path):
    """A plain `swift build` links the Swift runtime from /opt/swift: such a
    binary must never be packed."""
    swiftc = shutil.which("swiftc") or "/opt/swift/usr/bin/swiftc"
    if not os.path.exists(swiftc):
        pytest.skip("no swiftc to build a dynamically linked binary with")
    prog = tmp_path / "main.swift"
    prog.write_text('print("kmsfs %s")\n' % source_version())
    fake = tmp_path / "kmsfs"
    subprocess.run([swiftc, "-o", str(fake), str(prog)], check=True, capture_output=True, timeout=300)
    assert any(n.startswith("libswiftCore") for n in needed(str(fake)))
    r = subprocess.run(["make", "-s", "-C", str(ROOT), "deb", "BIN=%s" % fake, "DEBDIR=%s" % tmp_path],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and list(tmp_path.glob("*.deb")) == []
    assert r.stderr.startswith("make deb: %s loads the Swift runtime" % fake), r.stderr
