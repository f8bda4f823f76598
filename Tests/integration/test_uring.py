"""Issue 16 item 2's stretch: FUSE over io_uring (`-o io_uring`, Linux 6.14+
with the fuse module's enable_uring=Y). Requests come over one ring queue
per CPU, answered by a thread on that CPU; /dev/fuse still carries INIT,
FORGET, INTERRUPT and notifications, and serves everything when the kernel
does not offer the ring. These tests switch enable_uring on for the module
(and restore it), then check what the transport must keep: every byte of
every read, EOF, private mappings, access checks, the daemon's
independence from a slow KMS and from a hung SOURCE, no plaintext left in
the ring's buffers, and a clean stop. The rest of the suite runs under it
with `make test-uring` (KMSFS_EXTRA_OPTS=io_uring)."""
import concurrent.futures
import contextlib
import mmap
import os
import signal
import threading
import time

import pytest

from conftest import Mount, run_as, unsanitized_only
from test_formats import cli_args, cli_batch
from test_memory import needles_for, scan, unique_secret

PARAM = "/sys/module/fuse/parameters/enable_uring"
SERVING = "serving through FUSE over io_uring"


def set_param(value):
    with open(PARAM, "w") as f:
        f.write(value)


@pytest.fixture(scope="module")
def uring():
    if not os.path.exists(PARAM):
        pytest.skip("SKIP: this kernel has no FUSE over io_uring (%s is missing; Linux 6.14+ built with "
                    "CONFIG_FUSE_IO_URING)" % PARAM)
    before = open(PARAM).read().strip()
    try:
        set_param("Y")
    except OSError as e:
        pytest.skip("SKIP: cannot switch on FUSE over io_uring (%s): %s" % (PARAM, e))
    yield
    set_param(before)


@pytest.fixture(scope="module")
def tree(tmp_path_factory, kms):
    """Secrets of several sizes: one byte, a KMS-sized one, and envelope
    (Encryption SDK) ones that take several 128 KiB read requests."""
    base = tmp_path_factory.mktemp("uring")
    src = base / "src"
    src.mkdir()
    plains = {"one": b"x", "small": unique_secret(), "page": os.urandom(4096)}
    for name, data in plains.items():
        (src / (name + ".encrypted")).write_bytes(kms.encrypt_blob(data))
    jobs = []
    for name, size in (("big", 300 * 1024 + 17), ("edge", 128 * 1024)):
        plains[name] = os.urandom(size)
        (base / name).write_bytes(plains[name])
        jobs.append(cli_args(kms, base / name, src / (name + ".encrypted")))
    cli_batch(kms, jobs)                                  # aws-encryption-cli, the real client
    (src / "sub").mkdir()
    return src, plains


def test_every_read_over_the_ring_returns_the_plaintext(uring, tree, mount_factory):
    src, plains = tree
    m = mount_factory(src, "allow_uid=0,audit=off,io_uring")
    assert m.wait_log(SERVING), m.log()
    for name, data in plains.items():
        with open(m.file(name), "rb") as f:
            assert f.read() == data, name
            assert f.read() == b""                         # EOF: a request of its own, answered 0 bytes
        fd = os.open(m.file(name), os.O_RDONLY)
        try:
            for off in (0, 1, 4095, 128 * 1024 - 1, 128 * 1024, len(data) - 1, len(data), len(data) + 5):
                assert os.pread(fd, 200 * 1024, off) == data[off:off + 200 * 1024], (name, off)
        finally:
            os.close(fd)
        assert os.stat(m.file(name)).st_size > 0
    with open(m.file("big"), "rb") as f:
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ, flags=mmap.MAP_PRIVATE) as mm:
            assert mm[:len(plains["big"])] == plains["big"]
    assert sorted(os.listdir(m.path)) == sorted(list(plains) + ["sub"])
    assert [line for line in m.log().splitlines() if "io_uring: " in line and SERVING not in line] == []


def test_open_still_checks_who_asks(uring, public_tmp, kms, users, tmp_path):
    base = public_tmp / "uring-access"
    (base / "src").mkdir(parents=True)
    (base / "mnt").mkdir()
    (base / "src" / "s.encrypted").write_bytes(kms.encrypt_blob(b"for readers only"))
    m = Mount(base / "src", base / "mnt", "allow_gid=kmsfs-readers,audit=off,io_uring", kms.env,
              tmp_path / "access.log")
    try:
        assert m.wait_log(SERVING), m.log()
        ok = run_as("kmsfs-carol", ["cat", m.file("s")])
        assert ok.returncode == 0 and ok.stdout == b"for readers only", ok.stderr
        denied = run_as("kmsfs-bob", ["cat", m.file("s")])
        assert denied.returncode != 0 and b"Permission denied" in denied.stderr, denied
    finally:
        m.stop()


def test_many_readers_on_every_cpu_at_once(uring, tree, mount_factory):
    src, plains = tree
    m = mount_factory(src, "allow_uid=0,audit=off,io_uring")
    names = list(plains)

    def reader(i):
        for k in range(60):
            name = names[(i + k) % len(names)]
            with open(m.file(name), "rb") as f:
                assert f.read() == plains[name], name
            os.stat(m.file(name))
        return i
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        assert sorted(pool.map(reader, range(16))) == list(range(16))
    assert m.proc.poll() is None


def test_without_the_kernel_s_offer_dev_fuse_serves(uring, tree, mount_factory):
    src, plains = tree
    set_param("N")
    try:
        m = mount_factory(src, "allow_uid=0,audit=off,io_uring")
    finally:
        set_param("Y")
    assert m.wait_log("the kernel does not offer FUSE over io_uring"), m.log()
    assert SERVING not in m.log()
    assert open(m.file("small"), "rb").read() == plains["small"]


@unsanitized_only
def test_no_plaintext_is_left_in_the_ring_buffers(uring, tmp_path, kms, mount_factory):
    src = tmp_path / "src"
    src.mkdir()
    plains = [unique_secret() for _ in range(4)]
    for i, p in enumerate(plains):
        (src / ("s%d.encrypted" % i)).write_bytes(kms.encrypt_blob(p))
    m = mount_factory(src, "allow_uid=0,audit=off,io_uring")
    assert m.wait_log(SERVING), m.log()
    for _ in range(3):
        for i, p in enumerate(plains):
            with open(m.file("s%d" % i), "rb") as f:
                assert f.read() == p
    time.sleep(0.2)                                       # the last reply's wipe follows its commit
    needles = [n for p in plains for n in needles_for(p)]
    found, read = scan(m.pid, needles)
    assert read > 1 << 20
    assert not found, found                               # memfd_secret holds the cache; the ring holds nothing


def test_cold_opens_on_a_slow_kms_leave_the_rest_alone(uring, tmp_path, kms, proxy, mount_factory):
    # An entry stays with a parked open until KMS answers: 150 of them, and
    # stat, readdir and cached opens still answer at once.
    from kmsproxy import Fault
    src = tmp_path / "src"
    (src / "cold").mkdir(parents=True)
    blob = kms.encrypt_blob(b"cold-secret")
    for i in range(150):
        (src / "cold" / ("s%03d.encrypted" % i)).write_bytes(blob)
    (src / "warm.encrypted").write_bytes(kms.encrypt_blob(b"warm-secret"))
    m = mount_factory(src, "allow_uid=0,threads=2,timeout=120,io_uring", env=kms.base_env(endpoint=proxy.url))
    assert m.wait_log(SERVING), m.log()
    assert open(m.file("warm"), "rb").read() == b"warm-secret"
    os.listdir(m.file("cold"))
    proxy.delay = 1.0
    proxy.policy = lambda n, target: Fault.SLOW
    results = {}

    def cold(i):
        try:
            with open(m.file("cold/s%03d" % i), "rb") as f:
                results[i] = f.read()
        except OSError as e:
            results[i] = e
    threads = [threading.Thread(target=cold, args=(i,)) for i in range(150)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    worst = 0.0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        os.stat(m.file("warm"))
        os.listdir(m.path)
        assert open(m.file("warm"), "rb").read() == b"warm-secret"
        worst = max(worst, time.monotonic() - t0)
        time.sleep(0.05)
    still_waiting = sum(1 for t in threads if t.is_alive())
    for t in threads:
        t.join(120)
    assert worst < 0.5, "stat+readdir+cached open took %.3f s while KMS was slow" % worst
    assert still_waiting > 50, still_waiting
    assert all(results[i] == b"cold-secret" for i in range(150)), [r for r in results.values() if r != b"cold-secret"][:3]


def test_a_hung_source_holds_up_only_what_touches_it(uring, public_tmp, kms, tmp_path):
    # As test_loop's test: SOURCE/sub is the mountpoint of a stopped kmsfs.
    secret = os.urandom(512)
    base = public_tmp / ("uring-loop-%d" % os.getpid())
    src = base / "src"
    (src / "sub").mkdir(parents=True)
    (src / "s.encrypted").write_bytes(kms.encrypt_blob(secret))
    (base / "inner-src").mkdir()
    (base / "mnt").mkdir()
    inner = Mount(base / "inner-src", src / "sub", "allow_uid=0,audit=off", kms.env, tmp_path / "inner.log")
    outer = None
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)
    try:
        outer = Mount(src, base / "mnt", "allow_uid=0,audit=off,io_uring", kms.env, tmp_path / "outer.log")
        assert outer.wait_log(SERVING), outer.log()
        path = outer.file("s")
        assert open(path, "rb").read() == secret
        held = os.open(path, os.O_RDONLY)
        os.kill(inner.pid, signal.SIGSTOP)
        hung = [pool.submit(os.listdir, os.path.join(outer.path, "sub")) for _ in range(3)]
        time.sleep(1.0)
        assert not any(f.done() for f in hung), "listing the stopped mount should wait"

        def others():
            for _ in range(50):
                assert open(path, "rb").read() == secret
                assert os.pread(held, 4096, 0) == secret
                assert os.stat(path).st_size > 0
        pool.submit(others).result(timeout=10)
        os.kill(inner.pid, signal.SIGCONT)
        for f in hung:
            assert f.result(timeout=20) is not None
        os.close(held)
        assert outer.proc.poll() is None
    finally:
        os.kill(inner.pid, signal.SIGCONT)
        pool.shutdown(wait=False)
        if outer is not None:
            outer.stop()
        inner.stop()


def test_sigterm_stops_a_ring_daemon_cleanly(uring, tree, mount_factory):
    src, plains = tree
    m = mount_factory(src, "allow_uid=0,audit=off,io_uring")
    assert m.wait_log(SERVING), m.log()
    held = open(m.file("small"), "rb")               # an open handle across the stop
    assert held.read() == plains["small"]
    t0 = time.monotonic()
    assert m.stop() == 0, m.log()
    assert time.monotonic() - t0 < 10
    assert "SIGTERM: wiping cached secrets" in m.log()
    with pytest.raises(OSError):                     # the connection went with the daemon
        held.read()
    with contextlib.suppress(OSError):
        held.close()
