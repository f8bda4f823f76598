"""Issue 16 items 2 and 3: what the hot path's shortcuts must keep. Reads
answer without the attribute invalidation unless they come through the page
cache (a private mmap), releases drop cached pages only for handles that
used it, the audit writer batches records off the open's path and writes
every one of them by the time the daemon has unmounted, and an opener's name
is remembered for a second without mixing up processes."""
import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import signal
import re
import subprocess
import time

import pytest

from conftest import run_as

SECRET = bytes((i * 7 + 3) % 256 for i in range(2048))   # 2 KB, every page offset distinct

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
PROT_READ, MAP_PRIVATE, MAP_FAILED = 1, 2, ctypes.c_void_p(-1).value
PAGE = os.sysconf("SC_PAGE_SIZE")


def map_private(fd, size):
    addr = libc.mmap(None, size, PROT_READ, MAP_PRIVATE, fd, 0)
    assert addr != MAP_FAILED, os.strerror(ctypes.get_errno())
    return addr


class CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class Cachestat(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in
                ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")]


SYS_CACHESTAT = 451     # x86_64 and aarch64 (Linux 6.5)


def cached_pages(fd):
    """Pages of the open file `fd` in the kernel's page cache (cachestat(2)).
    Not by opening or mapping the file again: every open of a kmsfs file
    (no FOPEN_KEEP_CACHE) and every mmap of a direct-I/O file drops the
    inode's cached pages, so only a release with no open after it could
    leave them there."""
    r, c = CachestatRange(0, 0), Cachestat()
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(ctypes.c_long(SYS_CACHESTAT), ctypes.c_uint(fd), ctypes.byref(r), ctypes.byref(c), ctypes.c_uint(0))
    if rc != 0:
        pytest.skip("cachestat(2): %s" % os.strerror(ctypes.get_errno()))
    return c.nr_cache


def secret_source(public_tmp, kms, tag):
    """base/src holding the one secret `s`, and base/mnt."""
    base = public_tmp / ("%s-%d" % (tag, os.getpid()))
    (base / "src").mkdir(parents=True)
    (base / "src" / "s.encrypted").write_bytes(kms.encrypt_blob(SECRET))
    (base / "mnt").mkdir()
    return base, base / "src"


@pytest.fixture
def hot_mount(public_tmp, kms, kmsfs_bin, tmp_path):
    from conftest import Mount
    base, src = secret_source(public_tmp, kms, "hot")
    audit = base / "audit.log"
    m = Mount(src, base / "mnt", "allow_uid=0,audit=%s" % audit, kms.env, tmp_path / "kmsfs.log")
    m.audit = audit
    m.kms, m.bin = kms, kmsfs_bin
    try:
        yield m
    finally:
        m.stop()
        subprocess.run(["rm", "-rf", str(base)])


def test_reads_at_and_past_the_end_return_nothing(hot_mount):
    path = hot_mount.file("s")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 65536, 0) == SECRET
        assert os.pread(fd, 10, len(SECRET) - 1) == SECRET[-1:]
        for offset in (len(SECRET), len(SECRET) + 1, 4096, 1 << 20, 1 << 40):
            assert os.pread(fd, 4096, offset) == b"", offset
        # As cat(1) reads: chunks until read(2) returns 0.
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while True:
            b = os.read(fd, 1000)
            if not b:
                break
            chunks.append(b)
        assert b"".join(chunks) == SECRET and [len(c) for c in chunks] == [1000, 1000, 48]
        assert os.fstat(fd).st_size == len(SECRET)
    finally:
        os.close(fd)
    assert hot_mount.proc.poll() is None


def test_a_private_mapping_leaves_no_page_behind_and_plain_reads_bring_none(hot_mount):
    path = hot_mount.file("s")
    probe = os.open(path, os.O_RDONLY)      # opened first: later opens drop nothing it should see
    try:
        # read(2) goes around the page cache (direct I/O): nothing is cached.
        for _ in range(3):
            with open(path, "rb") as f:
                assert f.read() == SECRET
        assert os.pread(probe, 4096, 0) == SECRET
        assert cached_pages(probe) == 0
        # A private mapping is served through the page cache: while it
        # lives the plaintext page is there (which shows the probe sees it;
        # the probe fd was opened before the mapping, whose open and mmap
        # drop cached pages)...
        fd = os.open(path, os.O_RDONLY)
        addr = map_private(fd, len(SECRET))
        assert ctypes.string_at(addr, len(SECRET)) == SECRET
        assert cached_pages(probe) >= 1      # readahead may bring more
        # ... and once it is unmapped and closed, its release drops it.
        libc.munmap(addr, len(SECRET))
        os.close(fd)
        deadline = time.time() + 5
        while cached_pages(probe) and time.time() < deadline:
            time.sleep(0.05)
        assert cached_pages(probe) == 0
    finally:
        os.close(probe)
    with open(path, "rb") as f:
        assert f.read() == SECRET


def test_sendfile_leaves_no_page_behind_while_the_file_stays_open(hot_mount):
    """sendfile(2) and splice(2) read through the page cache even on a
    direct-I/O file (Linux 6.5 on), and a server may keep the file open for
    days: the pages go a second after the reads, not at the close."""
    path = hot_mount.file("s")
    probe = os.open(path, os.O_RDONLY)
    fd = os.open(path, os.O_RDONLY)
    out = os.open("/dev/null", os.O_WRONLY)
    try:
        assert os.sendfile(out, fd, 0, len(SECRET)) == len(SECRET)
        if cached_pages(probe) == 0:
            pytest.skip("this kernel's splice read of a direct-I/O FUSE file bypasses the page cache")
        deadline = time.time() + 5
        while cached_pages(probe) and time.time() < deadline:
            time.sleep(0.05)
        assert cached_pages(probe) == 0
        assert os.pread(fd, 4096, 0) == SECRET   # still open, still readable
    finally:
        for f in (out, fd, probe):
            os.close(f)


def test_sendfile_and_copyfile_stop_at_the_plaintexts_end(hot_mount, tmp_path):
    """sendfile(2) reads through the page cache, which ends at the size the
    kernel holds for the inode. Held at the bound every lookup shows (64 MiB),
    a sendfile loop until 0 returned the secret and then zeros to 64 MiB:
    Python's shutil.copyfile (sendfile on Linux), Go's io.Copy to a socket,
    and any copy loop made a 64 MiB file of one 2 KB secret."""
    # And one of many pages (a keystore), read by several requests.
    big = bytes((i * 13 + 5) % 251 for i in range((1 << 20) + 4097))
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "big").write_bytes(big)
    r = subprocess.run([str(hot_mount.bin), "encrypt", "--key-id", hot_mount.kms.key_id, "--root", plain, plain / "big"],
                       env=hot_mount.kms.env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    os.rename(plain / "big.encrypted", os.path.join(hot_mount.source, "big.encrypted"))
    for name, want in (("s", SECRET), ("big", big)):
        copied_exactly(hot_mount.file(name), want, tmp_path)


def copied_exactly(path, want, tmp_path, attempts=3, pause=1.2, readahead=0):
    """sendfile(2) until 0, then shutil.copyfile, each `attempts` times,
    `pause` seconds apart (fresh pages each time: dropped in between);
    `readahead` bytes are asked for first (POSIX_FADV_WILLNEED), which sends
    their reads to the daemon all at once."""
    for attempt in range(attempts):
        fd = os.open(path, os.O_RDONLY)
        out = os.open(tmp_path / "sent", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if readahead:
                os.posix_fadvise(fd, 0, readahead, os.POSIX_FADV_WILLNEED)
            offset = 0
            while True:
                n = os.sendfile(out, fd, offset, 1 << 20)
                if n == 0:
                    break
                offset += n
                assert offset <= len(want), (path, attempt, offset)
        finally:
            os.close(out)
            os.close(fd)
        assert (tmp_path / "sent").read_bytes() == want, (path, attempt)
        shutil.copyfile(path, tmp_path / "copy")
        assert (tmp_path / "copy").read_bytes() == want, (path, attempt)
        time.sleep(pause)


def audit_lines(m):
    return [l for l in m.audit.read_text().splitlines() if l.startswith("audit ")]


def test_every_audit_record_is_written_by_the_time_the_daemon_unmounts(hot_mount):
    path = hot_mount.file("s")
    n = 3000
    for _ in range(n):
        with open(path, "rb") as f:
            f.read()
    # Unmounted from outside (fusermount3 -u): the daemon flushes the
    # records still queued before it exits.
    subprocess.run(["fusermount3", "-u", hot_mount.path], check=True)
    hot_mount.proc.wait(10)
    lines = audit_lines(hot_mount)
    mine = [l for l in lines if " pid=%d " % os.getpid() in l and " path=s " in l]
    assert len(mine) == n, (len(mine), n)
    # In order: their times never go back.
    times = [re.search(r"time=(\S+)", l).group(1) for l in mine]
    assert times == sorted(times)


def test_a_remembered_name_is_never_another_processs(hot_mount, users):
    path = hot_mount.file("s")
    for _ in range(200):                       # this process, many times a second
        with open(path, "rb") as f:
            f.read()
    # Other processes right after: each is named for itself, and the one
    # that is not allowed is still refused (the access check stays).
    r = subprocess.run(["cat", path], capture_output=True)
    assert r.returncode == 0 and r.stdout == SECRET
    r = run_as("kmsfs-bob", ["head", "-c", "10", path])
    assert r.returncode != 0 and b"Permission denied" in r.stderr
    hot_mount.stop()
    lines = audit_lines(hot_mount)
    bob = users["kmsfs-bob"].pw_uid
    cat = [l for l in lines if " comm=cat " in l]
    head = [l for l in lines if " comm=head " in l]
    assert len(cat) == 1 and " uid=0 " in cat[0] and "result=allowed" in cat[0], cat
    assert len(head) == 1 and " uid=%d " % bob in head[0] and "result=denied" in head[0], head
    me = open("/proc/self/comm").read().strip()
    assert sum(1 for l in lines if " pid=%d " % os.getpid() in l and " comm=%s " % me in l) == 200


def test_a_stuck_audit_writer_holds_up_opens_only(public_tmp, kms, tmp_path):
    """The FUSE reader answers opens itself and must never wait: with the
    audit writer stuck (its file a FIFO nobody reads), more opens than the
    daemon has workers (threads=16) pile up in the open pool, while stat,
    readdir and reads of a file already open keep answering; once the FIFO
    is read again every open completes and every record is written."""
    from conftest import Mount
    import concurrent.futures
    base, src = secret_source(public_tmp, kms, "stuck")
    fifo = base / "audit.fifo"
    os.mkfifo(fifo, 0o600)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)     # so the daemon's open does not block
    m = Mount(src, base / "mnt", "allow_uid=0,threads=16,audit=%s" % fifo, kms.env, tmp_path / "kmsfs.log")
    openers = concurrent.futures.ThreadPoolExecutor(max_workers=48)
    checks = concurrent.futures.ThreadPoolExecutor(max_workers=4)
    n = 3000
    try:
        path = m.file("s")
        held = os.open(path, os.O_RDONLY)          # opened before the jam
        opened = [0]

        def open_once():
            with open(path, "rb") as f:
                assert f.read() == SECRET
            opened[0] += 1

        # Nobody reads the FIFO: its 64 KiB fill, then the 1,024-record
        # queue; from then on opens wait, 48 at a time, three times the
        # daemon's workers.
        futures = [openers.submit(open_once) for _ in range(n)]
        last, still = -1, 0
        deadline = time.time() + 120
        while still < 10 and time.time() < deadline:
            time.sleep(0.2)
            still = still + 1 if opened[0] == last else 0
            last = opened[0]
        assert opened[0] < n, "opens never stopped: the audit writer was not stuck"
        assert m.proc.poll() is None
        # Meanwhile everything else answers at once (from threads, so that
        # a daemon that stalls fails the test instead of hanging it).
        def others():
            for _ in range(20):
                assert os.path.isfile(path)
                assert os.listdir(m.path) == ["s"]
                assert os.pread(held, 4096, 0) == SECRET
        checks.submit(others).result(timeout=10)
        # Read the FIFO again: every open completes and writes its record.
        got = bytearray()
        deadline = time.time() + 120
        while time.time() < deadline and not all(f.done() for f in futures):
            try:
                got += os.read(reader, 1 << 16)
            except BlockingIOError:
                time.sleep(0.02)
        waiting = sum(not f.done() for f in futures)
        assert waiting == 0, "%d opens still waiting" % waiting
        errors = [f.exception() for f in futures if f.exception()]
        assert not errors, errors[:3]
        os.close(held)
        subprocess.run(["fusermount3", "-u", m.path], check=True)
        m.proc.wait(10)
        while True:
            try:
                chunk = os.read(reader, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            got += chunk
        # (The opens ran in threads: a record's pid is the thread's id.)
        mine = [l for l in got.decode(errors="replace").splitlines() if l.startswith("audit ") and " path=s " in l]
        assert len(mine) == n + 1, len(mine)
    finally:
        # Unblocks whatever still waits on the daemon before the executors go.
        m.stop()
        openers.shutdown(wait=False, cancel_futures=True)
        checks.shutdown(wait=False, cancel_futures=True)
        os.close(reader)
        subprocess.run(["rm", "-rf", str(base)])


@contextlib.contextmanager
def audit_on_a_small_disk(kms, tmp_path):
    """A mount of the one secret `s` whose audit=FILE is on a 64 KiB tmpfs,
    and `fill()`, which fills that tmpfs to ENOSPC (the filler is
    disk/filler). Unmounted and the tmpfs detached even on failure."""
    from conftest import Mount
    src = tmp_path / "src"
    src.mkdir()
    (src / "s.encrypted").write_bytes(kms.encrypt_blob(SECRET))
    disk = tmp_path / "disk"
    disk.mkdir()
    (tmp_path / "mnt").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(disk)], check=True)

    def fill():
        filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(filler, b"f" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        finally:
            os.close(filler)

    m = None
    try:
        m = Mount(src, tmp_path / "mnt", "allow_uid=0,audit=%s" % (disk / "audit.log"), kms.env, tmp_path / "kmsfs.log")
        yield m, disk, fill
    finally:
        if m is not None:
            m.stop()
        subprocess.run(["umount", "-l", str(disk)])


def test_a_full_disk_holds_audit_records_until_there_is_room(kms, tmp_path):
    """audit=FILE on a file system that fills up: the records written then
    used to be dropped without a word (and a write cut short left a line
    with no end, the next batch went on after it). Now the writer says so
    in the log, waits, and once there is room writes every record, each
    line whole."""
    with audit_on_a_small_disk(kms, tmp_path) as (m, disk, fill):
        with open(m.file("s"), "rb") as f:
            assert f.read() == SECRET
        fill()
        n = 200                                        # well inside the 1,024-record queue: no open waits
        for _ in range(n):
            with open(m.file("s"), "rb") as f:
                assert f.read() == SECRET
        assert m.wait_log("cannot write (No space left on device)", timeout=10), m.log()
        os.unlink(disk / "filler")
        deadline = time.time() + 20
        while time.time() < deadline and "writing again after" not in m.log():
            time.sleep(0.1)
        assert "no record was lost" in m.log(), m.log()
        m.stop()
        lines = (disk / "audit.log").read_text().splitlines()
        mine = [l for l in lines if " pid=%d " % os.getpid() in l and " path=s " in l]
        assert len(mine) == n + 1, (len(mine), n + 1)
        assert all(l.startswith("audit time=") and l.count(" time=") == 1 for l in lines), lines


def test_a_reload_behind_a_stuck_audit_sink_never_holds_up_the_stop(kms, tmp_path):
    """SIGHUP flushes the audit queue before reopening its file. With the
    sink stuck (its disk full) the flush waited on the signal thread, so a
    SIGTERM after it was never acted on: no wipe, no unmount, the mount
    served on until SIGKILL. Now the reload runs on its own thread and
    waits a bounded time, and the stop's own flush is bounded too and says
    how many records it could not write."""
    from conftest import mounted
    with audit_on_a_small_disk(kms, tmp_path) as (m, disk, fill):
        fill()
        for _ in range(20):
            with open(m.file("s"), "rb") as f:
                assert f.read() == SECRET
        assert m.wait_log("cannot write (No space left on device)", timeout=10), m.log()
        m.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        m.proc.send_signal(signal.SIGTERM)
        assert m.wait_log("SIGTERM: wiping cached secrets", timeout=5), m.log()
        assert m.proc.wait(30) == 0, m.log()
        assert not mounted(m.path)
        assert "audit records could not be written before the daemon exits" in m.log(), m.log()
