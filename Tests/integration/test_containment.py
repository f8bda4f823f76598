"""Containment (issue 13 B3). A daemon that dies of a trap (SIGILL, as a
Swift runtime trap raises it, or SIGSEGV) leaves a dead mount behind that
answers ENOTCONN. Under the shipped unit (docs/systemd/kmsfs.service)
systemd restarts it (Restart=on-failure, RestartSec=), and the new daemon
mounts over the dead one by itself. No systemd runs as PID 1 here, so the
test plays its part from the unit's own lines: ExecStart; on the crash
ExecStopPost, RestartSec, ExecStart again."""

import errno
import os
import re
import shlex
import signal
import subprocess
import time

import pytest

from conftest import ROOT, EXTRA_OPTS, mounted, force_unmount

UNIT = ROOT / "docs" / "systemd" / "kmsfs.service"


def setting(text, key):
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]


def seconds(value):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|min)?", value.strip())
    assert m, value
    return float(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "min": 60}[m.group(2)]


def command(line, kmsfs_bin, src, mnt):
    line = line.lstrip("-")
    line = line.replace("/usr/local/bin/kmsfs", kmsfs_bin).replace("/var/lib/kmsfs", str(src))
    line = line.replace("/etc/secrets", str(mnt))
    argv = shlex.split(line)
    if "-o" in argv:
        i = argv.index("-o") + 1
        argv[i] = "allow_uid=0" + ("," + EXTRA_OPTS if EXTRA_OPTS else "")
    return argv


def wait_answering(proc, mnt, log, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError("kmsfs exited (%s):\n%s" % (proc.returncode, log.read_text(errors="replace")))
        if mounted(str(mnt)):
            try:
                os.listdir(mnt)
                return
            except OSError:
                pass
        time.sleep(0.02)
    raise AssertionError("kmsfs did not mount within %d s:\n%s" % (timeout, log.read_text(errors="replace")))


def test_unit_restarts_a_trapped_daemon_and_it_remounts_within_seconds(tmp_path, kms, kmsfs_bin):
    unit = UNIT.read_text()
    assert setting(unit, "Restart") == ["on-failure"]
    assert setting(unit, "StartLimitIntervalSec") == ["0"]   # no crash count ends the restarts
    restart_sec = seconds(setting(unit, "RestartSec")[0])
    assert restart_sec <= 5
    start = command(setting(unit, "ExecStart")[0], kmsfs_bin, tmp_path / "src", tmp_path / "mnt")
    stop_post = [command(line, kmsfs_bin, tmp_path / "src", tmp_path / "mnt") for line in setting(unit, "ExecStopPost")]
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "s.encrypted").write_bytes(kms.encrypt_blob(b"still here"))
    procs = []
    try:
        # Round 1: SIGILL (a Swift trap), then what systemd does for the unit.
        # Round 2: SIGSEGV and no ExecStopPost: the daemon alone recovers.
        for n, (sig, run_stop_post) in enumerate([(signal.SIGILL, True), (signal.SIGSEGV, False)]):
            log = tmp_path / ("kmsfs%d.log" % n)
            proc = subprocess.Popen(start, env=kms.env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                                    start_new_session=True)
            procs.append(proc)
            wait_answering(proc, mnt, log)
            assert open(mnt / "s", "rb").read() == b"still here"
            os.kill(proc.pid, sig)
            # A death by signal is a failure: Restart=on-failure applies.
            assert proc.wait(10) == -sig
            with pytest.raises(OSError) as e:
                os.listdir(mnt)
            assert e.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
            died = time.time()
            if run_stop_post:
                for argv in stop_post:
                    subprocess.run(argv, capture_output=True, timeout=30)
            time.sleep(restart_sec)
        # The last restart: over the dead mount SIGSEGV left.
        log = tmp_path / "kmsfs-last.log"
        proc = subprocess.Popen(start, env=kms.env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                                start_new_session=True)
        procs.append(proc)
        wait_answering(proc, mnt, log)
        assert open(mnt / "s", "rb").read() == b"still here"
        assert time.time() - died < restart_sec + 10
        assert "stale FUSE mount" in log.read_text(errors="replace")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        force_unmount(str(mnt))
