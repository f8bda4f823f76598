"""Issue 16, the request loop (kmsfs_fuse_session_loop in CFuse/shim.h):
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
