"""Issue 16, the request loop (kmsfs_fuse_session_loop in CFuse/include/shim.h):
one worker reads /dev/fuse at a time and answers open, read and release
itself; a request that touches SOURCE (lookup, getattr, readdir) goes to
a worker of its own first. So a SOURCE whose disk hangs holds up the
requests that need it, and nothing else."""
import concurrent.futures
import os
import signal
import time

from conftest import Mount, stop_process

SECRET = os.urandom(512)


def test_a_hung_source_holds_up_only_the_requests_that_touch_it(public_tmp, kms, tmp_path, transport):
    # Under -o io_uring, the ring's thread hands these requests to helpers.
    # SOURCE/sub is the mountpoint of a second kmsfs, which is then stopped
    # (SIGSTOP): reading that directory waits until it runs again, as on a
    # disk that does not answer.
    base = public_tmp / ("loop-%s" % tmp_path.name)
    src = base / "src"
    (src / "sub").mkdir(parents=True)
    (src / "s.encrypted").write_bytes(kms.encrypt_blob(SECRET))
    (base / "inner-src").mkdir()
    (base / "mnt").mkdir()
    inner = Mount(base / "inner-src", src / "sub", "allow_uid=0,audit=off", kms.env, tmp_path / "inner.log")
    outer = None
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)   # 3 hung listings, 1 for the rest
    try:
        outer = Mount(src, base / "mnt", "allow_uid=0,audit=off" + transport, kms.env, tmp_path / "outer.log")
        path = outer.file("s")
        with open(path, "rb") as f:
            assert f.read() == SECRET                 # decrypted: opens are cache hits from here
        held = os.open(path, os.O_RDONLY)
        stop_process(inner.pid)
        # Three listings of the hung directory through the outer mount: each
        # opendir reads SOURCE/sub and holds a worker of the outer daemon.
        hung = [pool.submit(os.listdir, os.path.join(outer.path, "sub")) for _ in range(3)]
        time.sleep(1.0)
        done = [f.exception() or f.result() for f in hung if f.done()]
        assert not done, "listing the stopped mount should wait: %r\nouter:\n%s\ninner:\n%s" % (
            done, outer.log(), inner.log())

        def others():
            for _ in range(50):
                with open(path, "rb") as f:
                    assert f.read() == SECRET
                assert os.pread(held, 4096, 0) == SECRET
                assert os.stat(path).st_size > 0
        t0 = time.monotonic()
        pool.submit(others).result(timeout=10)
        assert time.monotonic() - t0 < 10
        os.kill(inner.pid, signal.SIGCONT)
        for f in hung:
            assert f.result(timeout=20) is not None
        os.close(held)
        assert outer.proc.poll() is None
    finally:
        os.kill(inner.pid, signal.SIGCONT)
        if outer is not None:
            outer.stop()
        inner.stop()
        pool.shutdown(wait=False, cancel_futures=True)
        os.system("rm -rf '%s'" % base)


def test_the_reader_is_taken_over_again_once_the_cap_frees(public_tmp, kms, tmp_path, transport):
    """threads=4: three listings of one hung directory and one of another
    fill every worker, and the reader itself is held up by the last. When
    the first directory answers again, its workers are free: the standby
    must hand the reader's role on (to a worker left idle, or a new one).
    It slept on a timer that had fired and was never re-armed, and idle
    workers were never used again: every request, cached opens included,
    waited for the second directory. Over io_uring the cap is threads=
    helpers for all CPUs' queues: a request whose queue had none free and
    could start none waited there, though other queues' helpers idled
    (test_uring's cannot-staff test pins that case down)."""
    base = public_tmp / ("cap-%s" % tmp_path.name)
    src = base / "src"
    for d in ("sub1", "sub2"):
        (src / d).mkdir(parents=True)
        (base / ("inner-" + d)).mkdir()
    (src / "s.encrypted").write_bytes(kms.encrypt_blob(SECRET))
    (base / "mnt").mkdir()
    inners = [Mount(base / ("inner-" + d), src / d, "allow_uid=0,audit=off", kms.env, tmp_path / ("%s.log" % d))
              for d in ("sub1", "sub2")]
    outer = None
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=6)
    try:
        outer = Mount(src, base / "mnt", "allow_uid=0,audit=off,threads=4" + transport, kms.env,
                      tmp_path / "outer.log")
        path = outer.file("s")
        with open(path, "rb") as f:
            assert f.read() == SECRET
        for m in inners:
            stop_process(m.pid)
        first = [pool.submit(os.listdir, os.path.join(outer.path, "sub1")) for _ in range(3)]
        time.sleep(0.5)
        second = pool.submit(os.listdir, os.path.join(outer.path, "sub2"))
        time.sleep(0.5)
        assert not any(f.done() for f in first + [second])
        os.kill(inners[0].pid, signal.SIGCONT)
        for f in first:
            assert f.result(timeout=20) is not None

        def cached_open():
            with open(path, "rb") as f:
                return f.read()
        t0 = time.monotonic()
        assert pool.submit(cached_open).result(timeout=5) == SECRET, outer.log()
        assert time.monotonic() - t0 < 5
        assert not second.done()                          # the second directory still hangs
        os.kill(inners[1].pid, signal.SIGCONT)
        assert second.result(timeout=20) is not None
        assert outer.proc.poll() is None
    finally:
        for m in inners:
            os.kill(m.pid, signal.SIGCONT)
        if outer is not None:
            outer.stop()
        for m in inners:
            m.stop()
        pool.shutdown(wait=False, cancel_futures=True)
        os.system("rm -rf '%s'" % base)
