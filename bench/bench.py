#!/usr/bin/env python3
"""`make bench`: kmsfs figures, each beside a reference measured in the same run.

Not a test: nothing here is timed in CI. It needs root, a built release
binary (KMSFS_BIN, default .build/release/kmsfs), gcc, pkg-config and
libfuse3-dev (for libfuse's example filesystems, compiled here from
/usr/share/doc/libfuse3-dev/examples), curl, and the integration suite's
tools (moto_server, boto3). It writes docs/benchmarks.md and
docs/benchmarks-hotpath.png from the run and prints the table.

Sections (BENCH_SECTIONS=hot,cold,storm,scale,soak,fleet picks some; a run
of some sections replaces only theirs in docs/benchmarks.md):
  hot    open+read+close of a cached 2 KB secret vs hello_ll and ramfs
         (BENCH_HOT_BASELINE=path/to/kmsfs adds another build to the rounds;
         where the kernel has FUSE over io_uring, -o io_uring daemons join
         them, with enable_uring on for the run; BENCH_HOT_URING=0: not)
  cold   first open of a secret vs a bare KMS Decrypt by curl
  storm  64 readers over 1,000 cold secrets vs 1,000 sequential Decrypts,
         then the same with a KMS that throttles every other call
  scale  10,000-file SOURCE: mount to ready, ls -lR vs passthrough_ll, RSS
  soak   bursts of N readers for M seconds, each followed by a rest, without
         and with KMS faults: RSS after each burst, fds and threads
  fleet  32 daemons of 100-300 secrets each started at once against a KMS
         quota (token bucket, 100 Decrypt/s), with -o prefetch and without,
         vs the same Decrypts by boto3 in botocore's standard and adaptive
         retry modes: time to ready vs ideal, amplification, fairness

BENCH_QUICK=1 runs every section with tiny sizes (a smoke check of the
harness; it writes its report under the work directory, not docs/).
Sizes: BENCH_HOT_ROUNDS, BENCH_HOT_BLOCK, BENCH_COLD_N, BENCH_STORM_N,
BENCH_STORM_READERS, BENCH_SCALE_N, BENCH_SCALE_ROUNDS, BENCH_SOAK_READERS,
BENCH_SOAK_SECONDS (one burst), BENCH_SOAK_BURSTS, BENCH_FLEET_N, BENCH_FLEET_MIN,
BENCH_FLEET_MAX, BENCH_FLEET_QUOTA, BENCH_FLEET_BURST, BENCH_FLEET_RUNS, BENCH_FLEET_VARIANTS
(some of prefetch,boot,standard,adaptive: for tuning, the report wants all).
BENCH_HOT_PIN=CPUS (a taskset list, such as 0) runs the hot section's loop and
daemons on those CPUs only: what each request costs, without the scheduler's
choice of where to wake a thread (see bench/notes.md). BENCH_DOC=path overrides where the report goes;
BENCH_KEEP=1 keeps the work directory (daemon logs) for a look afterwards.
"""
import contextlib
import datetime
import atexit
import json
import os
import pathlib
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "Tests" / "integration"))
import conftest  # noqa: E402  (the integration suite's KMS emulator)
from kmsproxy import Fault, KMSProxy, TokenBucket  # noqa: E402

KMSFS = pathlib.Path(os.environ.get("KMSFS_BIN", ROOT / ".build" / "release" / "kmsfs")).resolve()
EXAMPLES = pathlib.Path("/usr/share/doc/libfuse3-dev/examples")
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
ALL_SECTIONS = ("hot", "cold", "storm", "scale", "soak", "fleet")
SECTIONS = [s for s in os.environ.get("BENCH_SECTIONS", ",".join(ALL_SECTIONS)).split(",") if s]
SECRET_BYTES = 2048


def knob(name, full, quick):
    v = os.environ.get("BENCH_" + name)
    if v is None:
        return quick if QUICK else full
    return type(full)(v)


# Blocks of 200: in blocks of 20 each block began after ~10 ms of the other
# daemons' work, and kmsfs (a larger working set than hello_ll's) spent much
# of a short block refilling caches: that measured a cold daemon, which
# bench/notes.md covers apart, not the hot path.
HOT_ROUNDS = knob("HOT_ROUNDS", 50, 4)
HOT_BLOCK = knob("HOT_BLOCK", 200, 10)
HOT_WARMUP = knob("HOT_WARMUP", 200, 10)
COLD_N = knob("COLD_N", 200, 10)
COLD_BATCH = knob("COLD_BATCH", 10, 5)
STORM_N = knob("STORM_N", 1000, 40)
STORM_READERS = knob("STORM_READERS", 64, 16)
STORM_RETRIES = 20
SCALE_N = knob("SCALE_N", 10000, 100)
SCALE_ROUNDS = knob("SCALE_ROUNDS", 5, 1)
SOAK_READERS = knob("SOAK_READERS", 8, 4)
SOAK_SECONDS = knob("SOAK_SECONDS", 10.0, 2.0)     # one burst
SOAK_BURSTS = knob("SOAK_BURSTS", 10, 2)           # without faults, then 3 with
SOAK_FILES = 32
SOAK_TTL = 5
FLEET_N = knob("FLEET_N", 32, 4)
FLEET_MIN = knob("FLEET_MIN", 100, 5)
FLEET_MAX = knob("FLEET_MAX", 300, 15)
FLEET_QUOTA = knob("FLEET_QUOTA", 100.0, 20.0)
FLEET_BURST = knob("FLEET_BURST", 10, 5)
FLEET_RUNS = knob("FLEET_RUNS", 2, 1)
FLEET_TIMEOUT = knob("FLEET_TIMEOUT", 900.0, 120.0)


# ---- statistics ------------------------------------------------------------

def pct(values, p):
    """Nearest-rank percentile (p in 0..100)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def median(values):
    s = sorted(values)
    n = len(s)
    if n == 0:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2.0


def fmt_time(seconds):
    if seconds != seconds:
        return "n/a"
    if seconds < 1e-3:
        return "%.1f µs" % (seconds * 1e6)
    if seconds < 1:
        return "%.2f ms" % (seconds * 1e3)
    return "%.2f s" % seconds


def fmt_bytes(n):
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0


# ---- results ----------------------------------------------------------------

class Results:
    """Rows of the report: each kmsfs figure with its reference and ratio."""

    def __init__(self):
        self.sections = []   # (title, notes, rows)
        self.extra = {}

    def section(self, title, notes=""):
        rows = []
        self.sections.append((title, notes, rows))
        return rows

    @staticmethod
    def row(rows, figure, value, ref_name="", ref_value="", ratio="", target="", met=None):
        rows.append(dict(figure=figure, value=value, ref_name=ref_name, ref_value=ref_value,
                         ratio=ratio, target=target, met=met))

    def table(self, rows):
        head = "| figure | kmsfs | reference | reference value | ratio | target | met |\n|---|---|---|---|---|---|---|\n"
        lines = []
        for r in rows:
            met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
            lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                r["figure"], r["value"], r["ref_name"], r["ref_value"], r["ratio"], r["target"], met))
        return head + "\n".join(lines) + "\n"


def ratio(a, b):
    return "%.2f×" % (a / b) if b else "n/a"


# ---- processes and mounts ----------------------------------------------------

def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1].replace("\\040", " ") == path for line in f if len(line.split()) > 2)



def terminate(proc):
    """SIGTERM (the daemon wipes and unmounts), then SIGKILL after 15 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

def unmount(path):
    for cmd in (["fusermount3", "-u", path], ["fusermount3", "-uz", path], ["umount", "-l", path]):
        if not is_mounted(path):
            return
        subprocess.run(cmd, capture_output=True)


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            v = v.split()
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmLck", "VmPTE", "VmHWM") and v:
                out[k] = int(v[0]) * 1024
            elif k == "Threads":
                out[k] = int(v[0])
    out["fds"] = len(os.listdir("/proc/%d/fd" % pid))
    return out


def cpu_times(pid):
    """(user, system) CPU seconds of a process, its threads (live and gone) included."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = float(os.sysconf("SC_CLK_TCK"))
    return int(fields[11]) / tick, int(fields[12]) / tick


def fd_kinds(pid):
    """What the daemon's open file descriptors are, by kind."""
    kinds = {}
    sockets = {}
    states = {"01": "ESTABLISHED", "06": "TIME_WAIT", "08": "CLOSE_WAIT", "0A": "LISTEN", "07": "CLOSE"}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in open("/proc/%d/net/%s" % (pid, table)).readlines()[1:]:
                f = line.split()
                sockets[f[9]] = "tcp %s" % states.get(f[3], f[3])
    with contextlib.suppress(OSError):
        for line in open("/proc/%d/net/unix" % pid).readlines()[1:]:
            f = line.split()
            if len(f) >= 7:
                sockets[f[6]] = "unix socket"
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:"):
            k = sockets.get(target[8:-1], "socket")
        elif target.startswith("anon_inode:"):
            k = target
        elif target.startswith("pipe:"):
            k = "pipe"
        elif "secretmem" in target or target.startswith("/memfd:"):
            k = "memfd " + target.split(" ")[0]
        else:
            k = target
        kinds[k] = kinds.get(k, 0) + 1
    return kinds


def fd_growth(before, after):
    """What changed between two fd_kinds() results, e.g. "tcp ESTABLISHED +5"."""
    keys = sorted(set(before) | set(after))
    diff = ["%s %+d" % (k, after.get(k, 0) - before.get(k, 0)) for k in keys if after.get(k, 0) != before.get(k, 0)]
    return ", ".join(diff) if diff else "no change"


class FuseProcess:
    """A FUSE daemon in the foreground (-f); stop() unmounts and reaps it."""

    def __init__(self, argv, mountpoint, log_path, env=None, notify=False, timeout=60.0):
        self.path = str(mountpoint)
        self.log_path = pathlib.Path(log_path)
        os.makedirs(self.path, exist_ok=True)
        env = dict(env or os.environ)
        sock = None
        if notify:
            sock_path = str(self.log_path) + ".notify"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sock_path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(sock_path)
            env["NOTIFY_SOCKET"] = sock_path
        t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log_path, "wb"), start_new_session=True)
        BENCH.processes.append(self)
        try:
            if sock is not None:
                # Ready is the daemon's own READY=1 (sd_notify), sent once it
                # serves (and after -o prefetch has finished).
                deadline = t0 + timeout
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0 or self.proc.poll() is not None:
                        raise RuntimeError("%s did not become ready:\n%s" % (argv[0], self.log()[-3000:]))
                    sock.settimeout(min(left, 0.5))
                    try:
                        msg = sock.recv(4096)
                    except socket.timeout:
                        continue
                    if b"READY=1" in msg:
                        break
            else:
                # No notification from the C examples: poll the mount table.
                while not (is_mounted(self.path) and self._answers()):
                    if self.proc.poll() is not None or time.monotonic() - t0 > timeout:
                        raise RuntimeError("%s did not mount:\n%s" % (argv[0], self.log()[-3000:]))
                    time.sleep(0.001)
            self.ready_s = time.monotonic() - t0
        finally:
            if sock is not None:
                sock.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(env["NOTIFY_SOCKET"])

    def _answers(self):
        try:
            os.stat(self.path)
            return True
        except OSError:
            return False

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self):
        terminate(self.proc)
        unmount(self.path)
        if self in BENCH.processes:
            BENCH.processes.remove(self)


class JournalSink:
    """A stand-in for journald's native socket: counts the entries, and the
    audit records among them (kmsfs's MESSAGE_ID)."""

    AUDIT = b"MESSAGE_ID=b67d0b4cdae54961a38b202bea9a2ce6\n"

    def __init__(self, path):
        self.path = pathlib.Path(path)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.entries = self.audit = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError:
                return
            self.entries += 1
            if self.AUDIT in data:
                self.audit += 1

    def close(self):
        self.stopping.set()
        self.thread.join(2)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Bench:
    def __init__(self):
        self.processes = []
        self.journals = []
        self.ramfs = []
        self.work = pathlib.Path(tempfile.mkdtemp(prefix="kmsfs-bench-", dir="/tmp"))
        os.chmod(self.work, 0o755)
        self.kms = None
        self.proxy = None
        self.results = Results()
        self.hot_samples = {}

    def close(self):
        for p in list(self.processes):
            with contextlib.suppress(Exception):
                p.stop()
        for d in self.ramfs:
            unmount(d)
        for j in self.journals:
            j.close()
        if self.proxy:
            self.proxy.close()
        if self.kms:
            self.kms.close()
        with open("/proc/mounts") as f:
            for line in f:
                mp = line.split()[1]
                if mp.startswith(str(self.work)):
                    unmount(mp)
        if os.environ.get("BENCH_KEEP"):
            print("bench: kept %s (BENCH_KEEP)" % self.work, file=sys.stderr)
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- building the C parts ---------------------------------------------------
    def build_tools(self):
        cflags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], check=True,
                                capture_output=True, text=True).stdout.split()
        self.fsloop = str(self.work / "fsloop")
        self.loop_prefix = []
        subprocess.run(["gcc", "-O2", "-Wall", "-pthread", "-o", self.fsloop, str(HERE / "fsloop.c")], check=True)
        for name in ("hello_ll", "passthrough_ll"):
            src = EXAMPLES / (name + ".c")
            if not src.exists():
                raise SystemExit("bench: %s is missing (apt-get install libfuse3-dev)" % src)
            out = str(self.work / name)
            subprocess.run(["gcc", "-O2", "-Wall", "-I", str(EXAMPLES), "-o", out, str(src)] + cflags, check=True,
                           capture_output=True)
            setattr(self, name, out)

    # -- KMS --------------------------------------------------------------------
    def start_kms(self):
        kd = self.work / "moto"
        kd.mkdir()
        self.kms = conftest.KMSEmulator(kd)
        self.proxy = KMSProxy(self.kms.port)
        # The proxy writes headers and body in two sends; with Nagle on, each
        # answer then waits for the client's delayed ACK (~40 ms). Off here
        # (its handler class is this instance's own), so the proxy adds ~1 ms.
        self.proxy.server.RequestHandlerClass.disable_nagle_algorithm = True
        self.plaintext = os.urandom(SECRET_BYTES)
        self.blob = self.kms.encrypt_blob(self.plaintext)
        import base64
        self.body_path = self.work / "decrypt-body.json"
        self.body_path.write_text(json.dumps({"CiphertextBlob": base64.b64encode(self.blob).decode()}))

    def source(self, name, count, per_dir=None, prefix="s"):
        """A SOURCE of `count` copies of one raw ciphertext (raw blobs carry no
        path binding, so every name decrypts, each on its own)."""
        d = self.work / name
        d.mkdir()
        paths = []
        for i in range(count):
            sub = d / ("d%03d" % (i // per_dir)) if per_dir else d
            if per_dir and i % per_dir == 0:
                sub.mkdir()
            p = sub / ("%s%05d.encrypted" % (prefix, i))
            p.write_bytes(self.blob)
            paths.append(p)
        return d, paths

    def kmsfs(self, source, name, options, endpoint=None, timeout=120.0, env_extra=None, binary=None):
        env = self.kms.base_env(endpoint=endpoint or self.kms.endpoint)
        env.update(env_extra or {})
        mnt = self.work / ("mnt-" + name)
        opts = "allow_uid=0" + ("," + options if options else "")
        return FuseProcess([str(binary or KMSFS), str(source), str(mnt), "-f", "-o", opts], mnt,
                           self.work / ("kmsfs-%s.log" % name), env=env, notify=True, timeout=timeout)

    def kmsfs_as_service(self, source, name, options, binary=None):
        """kmsfs as kmsfs.service runs it: in the foreground with stderr on
        the journal (JOURNAL_STREAM names it) and journald's socket there,
        so the default audit=stderr sends one native journal entry per
        record. The journal is a datagram socket this process drains."""
        log = self.work / ("kmsfs-%s.log" % name)
        log.touch()
        st = os.stat(log)
        journal = JournalSink(self.work / ("journal-%s.sock" % name))
        self.journals.append(journal)
        k = self.kmsfs(source, name, options, binary=binary,
                       env_extra={"JOURNAL_STREAM": "%d:%d" % (st.st_dev, st.st_ino),
                                  "KMSFS_JOURNAL_SOCKET": str(journal.path)})
        k.journal = journal
        return k

    def kmsfs_status(self, mnt):
        r = subprocess.run([str(KMSFS), "status", "--json", mnt.path], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            return {}
        return json.loads(r.stdout)

    def curl(self, count, endpoint, parallel=0, warmup=1):
        """`count` KMS Decrypts of the bench ciphertext by curl (SigV4 signed in
        native code), one connection reused where the server keeps it open
        (or `parallel` transfers at once). Returns (per-request seconds without
        the warm-up ones, wall seconds); self.curl_connects counts the
        connections those requests opened."""
        conf = self.work / "curl.conf"
        block = ('silent\nshow-error\naws-sigv4 = "aws:amz:%s:kms"\nuser = "%s:%s"\n'
                 'header = "X-Amz-Target: TrentService.Decrypt"\n'
                 'header = "Content-Type: application/x-amz-json-1.1"\n'
                 'data = "@%s"\noutput = "/dev/null"\n'
                 'write-out = "%%{http_code} %%{time_total} %%{num_connects}\\n"\nurl = "%s/"\n'
                 % (conftest.REGION, self.kms.access_key, self.kms.secret_key, self.body_path, endpoint))
        conf.write_text("next\n".join([block] * (count + warmup)))
        args = ["curl", "-K", str(conf)]
        if parallel:
            args[1:1] = ["--parallel", "--parallel-max", str(parallel)]
        t0 = time.monotonic()
        r = subprocess.run(args, capture_output=True, text=True, timeout=3600)
        wall = time.monotonic() - t0
        lines = r.stdout.split()
        codes, times, connects = lines[0::3], [float(x) for x in lines[1::3]], [int(x) for x in lines[2::3]]
        bad = [c for c in codes if c != "200"]
        if r.returncode != 0 or bad or len(times) != count + warmup:
            raise RuntimeError("curl reference failed (rc %d, %d non-200): %s" % (r.returncode, len(bad), r.stderr[-500:]))
        self.curl_connects = sum(connects[warmup:])
        return times[warmup:], wall

    def run_loop(self, *args):
        r = subprocess.run(self.loop_prefix + [self.fsloop] + [str(a) for a in args], capture_output=True, text=True, timeout=3600)
        if r.returncode != 0:
            raise RuntimeError("fsloop %s failed: %s" % (args[0], r.stderr[-1000:]))
        return r.stdout


BENCH = None


# ---- 1. hot path -------------------------------------------------------------

URING_PARAM = "/sys/module/fuse/parameters/enable_uring"


def enable_uring(b):
    """Switches FUSE over io_uring on for this run (restored at the end);
    False where the kernel lacks it or BENCH_HOT_URING=0."""
    if os.environ.get("BENCH_HOT_URING", "1") == "0" or not os.path.exists(URING_PARAM):
        return False
    if not hasattr(b, "uring_before"):
        with open(URING_PARAM) as f:
            b.uring_before = f.read().strip()
        atexit.register(lambda: open(URING_PARAM, "w").write(b.uring_before))
    try:
        with open(URING_PARAM, "w") as f:
            f.write("Y")
    except OSError:
        return False
    return True


def section_hot(b):
    src, _ = b.source("hot-src", 1, prefix="hot")
    secret = "hot00000"
    audit_log = b.work / "audit.log"
    k_audit = b.kmsfs(src, "hot-audit", "audit=%s" % audit_log)
    k_default = b.kmsfs_as_service(src, "hot-default", "")
    k_off = b.kmsfs(src, "hot-off", "audit=off")
    hello = FuseProcess([b.hello_ll, "-f", str(b.work / "mnt-hello")], b.work / "mnt-hello", b.work / "hello.log")
    ram = b.work / "ramfs"
    ram.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "bench-ramfs", str(ram)], check=True)
    b.ramfs.append(str(ram))
    (ram / "hot").write_bytes(b.plaintext)
    targets = {
        "kmsfs audit=file": os.path.join(k_audit.path, secret),
        "kmsfs default audit": os.path.join(k_default.path, secret),
        "kmsfs audit=off": os.path.join(k_off.path, secret),
        "hello_ll": os.path.join(hello.path, "hello"),
        "ramfs": str(ram / "hot"),
    }
    daemons = {"kmsfs audit=file": k_audit, "kmsfs default audit": k_default, "kmsfs audit=off": k_off, "hello_ll": hello}
    # BENCH_HOT_BASELINE=path/to/another/kmsfs adds it (audit=off and default
    # audit) to the same interleaved rounds: a change measured against the
    # binary before it, in the same minutes.
    baseline = os.environ.get("BENCH_HOT_BASELINE")
    if baseline:
        bo = b.kmsfs(src, "hot-base-off", "audit=off", binary=baseline)
        bd = b.kmsfs_as_service(src, "hot-base-default", "", binary=baseline)
        targets["baseline audit=off"] = os.path.join(bo.path, secret)
        targets["baseline default audit"] = os.path.join(bd.path, secret)
        daemons["baseline audit=off"] = bo
        daemons["baseline default audit"] = bd
    # FUSE over io_uring (-o io_uring) beside them, where the kernel has it:
    # enable_uring is switched on for the section and restored after.
    uring = enable_uring(b)
    if uring:
        uo = b.kmsfs(src, "hot-uring-off", "audit=off,io_uring")
        ud = b.kmsfs_as_service(src, "hot-uring-default", "io_uring")
        targets["kmsfs io_uring audit=off"] = os.path.join(uo.path, secret)
        targets["kmsfs io_uring default audit"] = os.path.join(ud.path, secret)
        daemons["kmsfs io_uring audit=off"] = uo
        daemons["kmsfs io_uring default audit"] = ud
    pin = os.environ.get("BENCH_HOT_PIN")
    if pin:
        # Every thread of every daemon (threads started later inherit it), and the loop.
        for p in daemons.values():
            subprocess.run(["taskset", "-a", "-p", "-c", pin, str(p.pid)], check=True, capture_output=True)
        b.loop_prefix = ["taskset", "-c", pin]
    for path in targets.values():        # decrypt once: the loop measures the cache
        with open(path, "rb") as f:
            data = f.read()
        assert data, path
    with open(targets["kmsfs audit=off"], "rb") as f:
        assert f.read() == b.plaintext
    audit_before = sum(1 for _ in open(audit_log)) if audit_log.exists() else 0
    time.sleep(0.1)
    journal_before = k_default.journal.audit
    cpu_before = {t: cpu_times(p.pid) for t, p in daemons.items()}
    modes = ("read1", "eof")
    names = list(targets)
    combos = [(t, m) for m in modes for t in names]
    out = b.run_loop("hot", HOT_ROUNDS, HOT_BLOCK, HOT_WARMUP, *["%s:%s" % (m, targets[t]) for t, m in combos])
    b.loop_prefix = []
    samples = {c: [] for c in combos}
    per_round = {c: {} for c in combos}
    for line in out.splitlines():
        k, r, ns = line.split()
        c = combos[int(k)]
        x = int(ns) / 1e9
        samples[c].append(x)
        per_round[c].setdefault(int(r), []).append(x)
    round_medians = {c: [median(per_round[c][r]) for r in range(HOT_ROUNDS)] for c in combos}
    cpu_after = {t: cpu_times(p.pid) for t, p in daemons.items()}
    opens = len(modes) * (HOT_ROUNDS * HOT_BLOCK + HOT_WARMUP)
    # Every record must arrive: the audit writer batches them off the path.
    deadline = time.monotonic() + 5
    while k_default.journal.audit - journal_before < opens and time.monotonic() < deadline:
        time.sleep(0.05)
    journal_records = k_default.journal.audit - journal_before
    audit_after = sum(1 for _ in open(audit_log))
    b.hot_samples = samples

    rows = b.results.section(
        "1. Hot path: open+read+close of a cached 2 KB secret",
        "The C loop (bench/fsloop.c, compiled at bench time) times open(2)+read(2)+close(2) with "
        "clock_gettime around each iteration. The %d series (%d targets × two ways of reading) take turns "
        "in one process: %d rounds, each running %d iterations of every series in turn (in a random order "
        "each round), after %d warm-up iterations each, so a slow moment of the shared machine falls on all alike. %s"
        "`read1` is one read(2) of 4 KiB (open+read+close, 3 FUSE requests on both filesystems); `eof` reads "
        "until read(2) returns 0, as cat(1) does: kmsfs serves with direct I/O (the page cache never holds "
        "plaintext), so its EOF read is a 4th request, where hello_ll's page cache answers it from i_size. "
        "hello_ll is libfuse's example, unmodified and multi-threaded (-f), serving its 13-byte file; ramfs "
        "holds the same 2 KB. Medians and p99 are over all iterations; the ratio is kmsfs's median over "
        "hello_ll's, with the interquartile range of the per-round ratios in brackets, then the ratio of "
        "the p99s. Daemon CPU is from /proc/PID/stat over the whole loop, divided by that daemon's opens "
        "(read1 and eof together: 3.5 FUSE requests per open on kmsfs, 3 on hello_ll). Audit: "
        "`audit=file` appends one line per open to a file (%d records for %d opens in this run); "
        "`default audit` is no audit= option, as kmsfs.service runs it: the default audit=stderr with "
        "stderr on the journal (JOURNAL_STREAM set, journald's socket a datagram socket the bench drains), "
        "so one native journal entry per open (%d received for %d opens)."
        % (len(combos), len(names), HOT_ROUNDS, HOT_BLOCK, HOT_WARMUP,
           ("The loop and every daemon ran on CPUs %s only (BENCH_HOT_PIN): what each request costs, without "
            "the scheduler's choice of CPU. " % pin) if pin else "", audit_after - audit_before, opens,
           journal_records, opens))
    targeted = ("kmsfs audit=off", "kmsfs default audit")
    for mode in modes:
        ref = samples[("hello_ll", mode)]
        limit = 1.2 if mode == "read1" else 1.3
        for t in names:
            xs = samples[(t, mode)]
            if t == "hello_ll":
                Results.row(rows, "%s, %s: median / p99" % (t, mode), "%s / %s" % (fmt_time(median(xs)), fmt_time(pct(xs, 99))),
                            "(the reference)", "", "1.00×")
                continue
            pr = [a / c for a, c in zip(round_medians[(t, mode)], round_medians[("hello_ll", mode)])]
            rr = "%s [%.2f–%.2f]" % (ratio(median(xs), median(ref)), pct(pr, 25), pct(pr, 75))
            is_target = t in targeted
            rr += "; p99 %s" % ratio(pct(xs, 99), pct(ref, 99))
            Results.row(rows, "%s, %s: median / p99" % (t, mode), "%s / %s" % (fmt_time(median(xs)), fmt_time(pct(xs, 99))),
                        "hello_ll", "%s / %s" % (fmt_time(median(ref)), fmt_time(pct(ref, 99))), rr,
                        "≤ %.2f×" % limit if is_target else "", (median(xs) / median(ref) <= limit) if is_target else None)
    # Where the time goes: each daemon serves only its own two series, so its CPU time over the run,
    # divided by its opens, is its cost per open+read+close (read1 and eof mixed).
    per_daemon_ops = len(modes) * (HOT_ROUNDS * HOT_BLOCK + HOT_WARMUP)

    def cpu_per_op(t):
        (u0, s0), (u1, s1) = cpu_before[t], cpu_after[t]
        return (u1 - u0) / per_daemon_ops, (s1 - s0) / per_daemon_ops
    hu, hs = cpu_per_op("hello_ll")
    for t in daemons:
        if t == "hello_ll":
            continue
        u, s_ = cpu_per_op(t)
        Results.row(rows, "%s: daemon CPU per open (user + system)" % t, "%s + %s" % (fmt_time(u), fmt_time(s_)),
                    "hello_ll", "%s + %s" % (fmt_time(hu), fmt_time(hs)), ratio(u + s_, hu + hs))
    Results.row(rows, "default audit: journal entries received / opens", "%d / %d" % (journal_records, opens),
                "", "", "", "every record", journal_records == opens)
    b.results.extra["audit_records"] = (audit_after - audit_before, opens)
    for p in daemons.values():
        p.stop()
    unmount(str(ram))
    b.ramfs.remove(str(ram))


def hot_chart(b, png):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib is missing (pip install matplotlib); no chart", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colors = {"kmsfs audit=file": "#d62728", "kmsfs default audit": "#9467bd", "kmsfs audit=off": "#ff7f0e",
              "kmsfs io_uring audit=off": "#8c564b", "hello_ll": "#1f77b4", "ramfs": "#2ca02c"}
    for ax, mode in zip(axes, ("read1", "eof")):
        for t, c in colors.items():
            xs = sorted(x * 1e6 for x in b.hot_samples.get((t, mode), []))
            if not xs:
                continue
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.plot(xs, ys, label="%s (median %.1f µs)" % (t, median(xs)), color=c, linewidth=1.5)
        ax.set_xscale("log")
        ax.set_xlabel("open+read+close latency, µs (log)")
        ax.set_title("%s: %s" % (mode, "one read(2) of 4 KiB" if mode == "read1" else "read until EOF"))
        ax.grid(True, which="both", alpha=0.3)
        ax.axhline(0.99, color="grey", linestyle=":", linewidth=1)
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_ylabel("fraction of iterations (CDF)")
    fig.suptitle("kmsfs hot path vs libfuse hello_ll and ramfs, same run, interleaved rounds")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


# ---- 2. cold path ------------------------------------------------------------

def section_cold(b):
    rows = b.results.section(
        "2. Cold path: first open of a secret vs a bare KMS Decrypt",
        "%d distinct secrets (2 KB each) per endpoint, each opened once (open+read to EOF+close, fsloop "
        "`once`), in batches of %d alternating with batches of as many Decrypt calls by curl "
        "(`--aws-sigv4`, `-w %%{time_total}`; the first request of each curl batch is not counted). Two "
        "endpoints, each used by both clients: moto_server itself, which answers every request with "
        "`Connection: close` (so both clients connect for every call), and the counting proxy in front of it, "
        "which keeps connections open (so both reuse theirs; the proxy adds its own ~1–2 ms)."
        % (COLD_N, COLD_BATCH))
    variants = [("moto direct", b.kms.endpoint), ("keep-alive proxy", b.proxy.url)]
    state = {}
    for i, (label, endpoint) in enumerate(variants):
        src, paths = b.source("cold-src%d" % i, COLD_N + 1, prefix="c")
        k = b.kmsfs(src, "cold%d" % i, "audit=%s" % (b.work / "audit-cold.log"), endpoint=endpoint)
        files = [os.path.join(k.path, p.name[:-len(".encrypted")]) for p in paths]
        b.run_loop("once", "eof", files[0])      # first connection, credentials: not what is measured
        state[label] = dict(k=k, files=files[1:], ours=[], ref=[], connects=0, endpoint=endpoint,
                            cpu=cpu_times(k.pid))
    b.proxy.reset()
    batches = range(0, COLD_N, COLD_BATCH)
    for i, start in enumerate(batches):
        for label, _ in (variants if i % 2 == 0 else variants[::-1]):
            v = state[label]
            batch = v["files"][start:start + COLD_BATCH]

            def run_kmsfs():
                v["ours"].extend(int(x) / 1e9 for x in b.run_loop("once", "eof", *batch).split())

            def run_ref():
                v["ref"].extend(b.curl(len(batch), v["endpoint"])[0])
                v["connects"] += b.curl_connects
                v["curl_runs"] = v.get("curl_runs", 0) + 1
            for f in ((run_kmsfs, run_ref) if i % 2 == 0 else (run_ref, run_kmsfs)):
                f()
    for label, _ in variants:
        v = state[label]
        st = b.kmsfs_status(v["k"])
        (u0, s0), (u1, s1) = v["cpu"], cpu_times(v["k"].pid)
        v["k"].stop()
        ours, ref = v["ours"], v["ref"]
        m, rm = median(ours), median(ref)
        target = 1.1 * rm + 1e-3
        Results.row(rows, "%s: first open, median" % label, fmt_time(m), "curl Decrypt, median", fmt_time(rm),
                    ratio(m, rm), "≤ 1.1× + 1 ms (%s)" % fmt_time(target), m <= target)
        Results.row(rows, "%s: first open, p99" % label, fmt_time(pct(ours, 99)), "curl Decrypt, p99",
                    fmt_time(pct(ref, 99)), ratio(pct(ours, 99), pct(ref, 99)))
        Results.row(rows, "%s: first open minus Decrypt (medians)" % label, fmt_time(m - rm),
                    "allowed: 0.1× Decrypt + 1 ms", fmt_time(0.1 * rm + 1e-3), "")
        Results.row(rows, "%s: daemon CPU per first open (user + system)" % label,
                    "%s + %s" % (fmt_time((u1 - u0) / len(ours)), fmt_time((s1 - s0) / len(ours))), "", "", "")
        conns = ""
        if v["endpoint"] == b.proxy.url:
            # The proxy counts every connection; curl's are one per batch (its warm-up request).
            conns = ", %d new connections" % (b.proxy.connections - v.get("curl_runs", 0) - v["connects"])
        Results.row(rows, "%s: KMS calls%s" % (label, " and connections" if conns else ""),
                    "%s calls for %d opens%s" % ((st.get("kms") or {}).get("calls", "?"), len(ours) + 1, conns),
                    "curl connections (first of each batch excluded)", "%d for %d calls" % (v["connects"], len(ref)), "")


# ---- 3. boot storm -----------------------------------------------------------

def section_storm(b):
    src, paths = b.source("storm-src", STORM_N + 1, prefix="s")
    paths, probe_src = paths[1:], paths[0]     # the probe: a cached secret opened during the storm
    proxy = b.proxy
    probe_seconds = 0.5 if QUICK else 3.0
    listfile = b.work / "storm.list"
    rows = b.results.section(
        "3. Boot storm: %d readers over %d cold secrets" % (STORM_READERS, STORM_N),
        "kmsfs and the references all go through the counting proxy (Tests/integration/kmsproxy.py) in "
        "front of moto_server, which counts the Decrypt calls that reached KMS and the connections opened. "
        "The readers are %d threads of fsloop `storm` sharing one list of %d files, each file read once "
        "(open+read to EOF+close), on a fresh mount (every secret cold). The first reference is %d "
        "sequential Decrypts by curl on one connection (sum of per-request time_total); the second makes "
        "the same calls with curl `--parallel-max %d` (wall time): what the emulator behind the proxy "
        "sustains under that concurrency. Both run before and after the storms; the figures are the means. "
        "Throttled: the proxy answers every other request (by arrival order) with 400 ThrottlingException; "
        "kmsfs runs with its defaults (the AWS SDKs' standard retry mode, 3 attempts), then with "
        "`-o retries=%d`, the most it accepts. Meanwhile one more thread keeps opening a secret cached "
        "before the storm (fsloop `soak`, %s), against the same loop on the idle mount just before: a FUSE "
        "worker blocked on KMS must not hold up the others."
        % (STORM_READERS, STORM_N, STORM_N, STORM_READERS, STORM_RETRIES, fmt_time(probe_seconds)))
    ref_runs = []

    par_runs = []

    def reference():
        proxy.reset()
        times, _ = b.curl(STORM_N, proxy.url)
        ref_runs.append(sum(times))
        # The same calls with the storm's concurrency: what the emulator itself manages under it.
        proxy.reset()
        par_runs.append(b.curl(STORM_N, proxy.url, parallel=STORM_READERS)[1])
    reference()
    outcome, probes = {}, {}
    every_other = lambda n, t: Fault.THROTTLE if n % 2 == 1 else None  # noqa: E731
    variants = (("plain", "", None), ("throttled", "", every_other),
                ("throttled, retries=%d" % STORM_RETRIES, ",retries=%d" % STORM_RETRIES, every_other))
    for label, extra, policy in variants:
        k = b.kmsfs(src, "storm%d" % len(outcome), "audit=%s%s" % (b.work / "audit-storm.log", extra),
                    endpoint=proxy.url)
        names = [os.path.join(k.path, p.name[:-len(".encrypted")]) for p in paths]
        random.Random(7).shuffle(names)
        listfile.write_text("\n".join(names) + "\n")
        probe_list = b.work / "storm-probe.list"
        probe_list.write_text(os.path.join(k.path, probe_src.name[:-len(".encrypted")]) + "\n")
        b.run_loop("once", "eof", probe_list.read_text().strip())       # decrypted and cached before the storm
        proxy.reset()
        if policy:
            proxy.policy = policy
        idle = b.run_loop("soak", 1, probe_seconds / 2, probe_list).split()
        # One thread keeps opening the cached probe while the storm's readers wait on KMS.
        probe = subprocess.Popen([b.fsloop, "soak", "1", str(probe_seconds), str(probe_list)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out = b.run_loop("storm", STORM_READERS, listfile).split("\n")
        busy = probe.communicate()[0].split()
        head = out[0].split()
        wall, ok, failed = int(head[1]) / 1e9, int(head[3]), int(head[5])
        lat = [int(x) / 1e9 for x in out[1:] if x]
        with proxy.lock:
            decrypts = proxy.counts.get("TrentService.Decrypt", 0)
            total = len(proxy.requests)
            connections = proxy.connections
        st = b.kmsfs_status(k)
        st["connections"] = connections
        proxy.reset()
        k.stop()
        outcome[label] = (wall, ok, failed, decrypts, total, lat, st)
        probes[label] = (int(idle[5]) / 1e9, int(idle[7]) / 1e9, int(busy[5]) / 1e9, int(busy[7]) / 1e9,
                         int(busy[1]), int(busy[3]))
    reference()
    ref = sum(ref_runs) / len(ref_runs)
    for label, _, _ in variants:
        wall, ok, failed, decrypts, total, lat, st = outcome[label]
        kst = st.get("kms") or {}
        Results.row(rows, "%s: wall time" % label, fmt_time(wall), "%d sequential Decrypts (curl)" % STORM_N,
                    "%s (runs: %s)" % (fmt_time(ref), ", ".join(fmt_time(x) for x in ref_runs)),
                    ratio(wall, ref), "< 1.00× (readers do not wait on each other)" if label == "plain" else "",
                    (wall < ref) if label == "plain" else None)
        par = sum(par_runs) / len(par_runs)
        Results.row(rows, "%s: wall time, against concurrent curl" % label, fmt_time(wall),
                    "the same Decrypts by curl, %d at a time" % STORM_READERS,
                    "%s (runs: %s)" % (fmt_time(par), ", ".join(fmt_time(x) for x in par_runs)), ratio(wall, par))
        ip50, ip99, bp50, bp99, bops, bfailed = probes[label]
        Results.row(rows, "%s: a cached secret opened during the storm, p50 / p99" % label,
                    "%s / %s (%d opens, %d failed)" % (fmt_time(bp50), fmt_time(bp99), bops, bfailed),
                    "the same, mount idle", "%s / %s" % (fmt_time(ip50), fmt_time(ip99)), ratio(bp50, ip50))
        Results.row(rows, "%s: Decrypt calls answered by KMS" % label, "%d" % decrypts, "secrets", "%d" % STORM_N,
                    ratio(decrypts, STORM_N), "exactly 1 per secret", decrypts == STORM_N)
        Results.row(rows, "%s: TCP connections kmsfs opened to KMS" % label, "%d" % st["connections"],
                    "KMS calls", "%d" % total, "", "", None)
        if label != "plain":
            Results.row(rows, "%s: requests sent (throttled answers)" % label, "%d (%d)" % (total, total - decrypts),
                        "", "", "", "", None)
            Results.row(rows, "%s: kmsfs retries / throttled (its counters)" % label,
                        "%s / %s" % (kst.get("retries", "?"), kst.get("throttled", "?")), "", "", "", "", None)
        Results.row(rows, "%s: failed reads" % label, "%d of %d" % (failed, ok + failed), "", "", "", "0", failed == 0)
        Results.row(rows, "%s: per-reader latency median / p99" % label,
                    "%s / %s" % (fmt_time(median(lat)), fmt_time(pct(lat, 99))), "", "", "", "", None)


# ---- 4. scale ------------------------------------------------------------------

def rss_row(rows, label, st, ref=None, ref_label=""):
    fields = "VmRSS %s (RssAnon %s, RssFile %s, RssShmem %s), VmLck %s, VmPTE %s" % (
        fmt_bytes(st["VmRSS"]), fmt_bytes(st.get("RssAnon", 0)), fmt_bytes(st.get("RssFile", 0)),
        fmt_bytes(st.get("RssShmem", 0)), fmt_bytes(st.get("VmLck", 0)), fmt_bytes(st.get("VmPTE", 0)))
    Results.row(rows, label, fields, ref_label, fmt_bytes(ref["VmRSS"]) if ref else "", "")


def time_ls(path):
    t0 = time.monotonic()
    r = subprocess.run(["ls", "-lR", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError("ls -lR %s: %s" % (path, r.stderr[-500:]))
    return dt, r.stdout.count(b"\n-r")


def section_scale(b):
    per_dir = 100 if SCALE_N >= 1000 else 10
    src, paths = b.source("scale-src", SCALE_N, per_dir=per_dir, prefix="f")
    rows = b.results.section(
        "4. Scale: a %d-file SOURCE" % SCALE_N,
        "SOURCE holds %d copies of one raw ciphertext in %d directories of %d. Mount to ready is from "
        "spawning `kmsfs SOURCE MNT -f` to its READY=1 (sd_notify, sent once it serves, and after "
        "prefetch when asked); passthrough_ll (libfuse's example, default options, over the same SOURCE) "
        "is timed from spawn until the mount answers (polled every 1 ms). `ls -lR` is the first listing "
        "after a fresh mount (cold) and the one right after it (warm), %d round(s), kmsfs and "
        "passthrough_ll alternating; medians. The prefetch reference is the same number of Decrypts by "
        "curl, 8 at a time (`--parallel-max 8`, as kmsfs prefetches 8 at a time). Memory is read from "
        "/proc/PID/status of the daemon."
        % (SCALE_N, (SCALE_N + per_dir - 1) // per_dir, per_dir, SCALE_ROUNDS))
    one_src, _ = b.source("scale-one-src", 1, prefix="f")
    ready, pready, lsc, lsw, plsc, plsw, ready_one = [], [], [], [], [], [], []
    last = None
    for r in range(SCALE_ROUNDS):
        def ours():
            k = b.kmsfs(src, "scale%d" % r, "audit=off")
            ready.append(k.ready_s)
            return k

        def theirs():
            p = FuseProcess([b.passthrough_ll, "-f", "-o", "source=%s" % src, str(b.work / ("mnt-pt%d" % r))],
                            b.work / ("mnt-pt%d" % r), b.work / "passthrough.log")
            pready.append(p.ready_s)
            return p
        if r % 2 == 0:
            k, p = ours(), theirs()
        else:
            p, k = theirs(), ours()
        if r == SCALE_ROUNDS - 1:
            empty = proc_status(k.pid)
        for path, cold, warm in ((k.path, lsc, lsw), (p.path, plsc, plsw)) if r % 2 == 0 else \
                ((p.path, plsc, plsw), (k.path, lsc, lsw)):
            dt, n = time_ls(path)
            if n != SCALE_N:
                raise RuntimeError("ls -lR %s listed %d files, not %d" % (path, n, SCALE_N))
            cold.append(dt)
            warm.append(time_ls(path)[0])
        p.stop()
        one = b.kmsfs(one_src, "scale-one%d" % r, "audit=off")
        ready_one.append(one.ready_s)
        one.stop()
        if r < SCALE_ROUNDS - 1:
            k.stop()
        else:
            last = k
    Results.row(rows, "mount to ready (no prefetch), median", fmt_time(median(ready)), "passthrough_ll mount",
                fmt_time(median(pready)), ratio(median(ready), median(pready)))
    Results.row(rows, "the same, against a 1-file SOURCE", fmt_time(median(ready)), "kmsfs on a 1-file SOURCE",
                fmt_time(median(ready_one)), ratio(median(ready), median(ready_one)))
    Results.row(rows, "ls -lR, cold, median", fmt_time(median(lsc)), "passthrough_ll", fmt_time(median(plsc)),
                ratio(median(lsc), median(plsc)))
    Results.row(rows, "ls -lR, warm, median", fmt_time(median(lsw)), "passthrough_ll", fmt_time(median(plsw)),
                ratio(median(lsw), median(plsw)))

    # Memory: the empty daemon (just mounted); after ls -lR (the inode table); after a first tenth of the
    # secrets read by 64 readers (which also brings up the FUSE worker threads and the connection pool);
    # after the rest. The marginal cost of a secret is the last step over the number of secrets in it.
    listed = proc_status(last.pid)
    names = [os.path.join(last.path, os.path.relpath(str(p), str(src))[:-len(".encrypted")]) for p in paths]
    first = max(64, SCALE_N // 10) if SCALE_N >= 256 else SCALE_N // 2

    def read_all(subset, tag):
        listfile = b.work / ("scale-%s.list" % tag)
        listfile.write_text("\n".join(subset) + "\n")
        out = b.run_loop("storm", 64, listfile).split("\n")[0].split()
        return int(out[1]) / 1e9, int(out[5])
    _, failed1 = read_all(names[:first], "first")
    warm = proc_status(last.pid)
    read_wall, failed2 = read_all(names[first:], "rest")
    full = proc_status(last.pid)
    st = b.kmsfs_status(last)
    cached = len(((st.get("cache") or {}).get("entries")) or [])
    rest = SCALE_N - first
    rss_row(rows, "daemon memory, empty (mounted, nothing looked up)", empty)
    rss_row(rows, "daemon memory after ls -lR (%d inodes known)" % SCALE_N, listed, empty, "empty VmRSS")
    rss_row(rows, "daemon memory with %d secrets cached (threads and connections up)" % first, warm, empty, "empty VmRSS")
    rss_row(rows, "daemon memory with all %d secrets cached (%d in cache, %d failed reads)"
            % (SCALE_N, cached, failed1 + failed2), full, empty, "empty VmRSS")
    per_all = (full["VmRSS"] - empty["VmRSS"]) / float(SCALE_N)
    per = (full["VmRSS"] - warm["VmRSS"]) / float(rest)
    Results.row(rows, "VmRSS per cached secret, marginal (the last %d secrets)" % rest, fmt_bytes(per),
                "plaintext size", fmt_bytes(SECRET_BYTES), ratio(per, SECRET_BYTES))
    Results.row(rows, "VmRSS per cached secret, everything included (all − empty) / %d" % SCALE_N, fmt_bytes(per_all),
                "plaintext size", fmt_bytes(SECRET_BYTES), ratio(per_all, SECRET_BYTES))
    Results.row(rows, "reading the last %d secrets (64 readers, cold)" % rest, fmt_time(read_wall), "", "", "")
    b.results.extra["scale_memory"] = dict(empty=warm, full=full, count=rest,
                                           secure=(st.get("secure_buffers"), st.get("secure_bytes")),
                                           memory=st.get("memory"))
    last.stop()

    # Prefetch: ready once every secret is decrypted; against curl doing the same Decrypts 8 at a time.
    def ref_run():
        times, wall = b.curl(SCALE_N, b.kms.endpoint, parallel=8)
        return wall
    ref1 = ref_run()
    k = b.kmsfs(src, "scale-prefetch", "audit=off,prefetch", timeout=3600)
    pf = k.ready_s
    pst = proc_status(k.pid)
    kst = b.kmsfs_status(k)
    k.stop()
    ref2 = ref_run()
    ref = (ref1 + ref2) / 2
    Results.row(rows, "mount to ready with -o prefetch (%d decrypts)" % SCALE_N, fmt_time(pf),
                "%d Decrypts by curl, 8 in parallel" % SCALE_N,
                "%s (runs: %s, %s)" % (fmt_time(ref), fmt_time(ref1), fmt_time(ref2)), ratio(pf, ref))
    rss_row(rows, "daemon memory after prefetch (%s cached)" % len(((kst.get("cache") or {}).get("entries")) or []),
            pst, empty, "empty VmRSS")


# ---- 5. soak -------------------------------------------------------------------

# The daemon gives back what a burst took once it is idle: KMS connections
# unused for 15 s are closed by a check every 5 s, and freed heap is returned
# once no open has come for a check or two (KmsfsKit/Daemon.swift). "Before"
# and "after" a soak phase are measured after that much rest.
IDLE_REST = 21.0


def rest(pid):
    time.sleep(0 if QUICK else IDLE_REST)
    return settle(pid)


def settle(pid, seconds=15.0):
    """Waits until the daemon's thread count holds still for 1 s."""
    deadline = time.monotonic() + seconds
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        n = proc_status(pid)["Threads"]
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= 1.0:
            break
        time.sleep(0.1)
    return proc_status(pid)


def section_soak(b):
    src, paths = b.source("soak-src", SOAK_FILES, prefix="k")
    proxy = b.proxy
    proxy.reset()
    k = b.kmsfs(src, "soak", "audit=%s,ttl=%d" % (b.work / "audit-soak.log", SOAK_TTL), endpoint=proxy.url)
    names = [os.path.join(k.path, p.name[:-len(".encrypted")]) for p in paths]
    listfile = b.work / "soak.list"
    listfile.write_text("\n".join(names) + "\n")
    for n in names:
        with open(n, "rb") as f:
            f.read()
    start = rest(k.pid)
    before_kinds = fd_kinds(k.pid)
    fault_bursts = max(1, min(3, SOAK_BURSTS))
    rows = b.results.section(
        "5. Soak: bursts of %d readers for %s, each followed by a rest" % (SOAK_READERS, fmt_time(SOAK_SECONDS)),
        "%d secrets behind the counting proxy, ttl=%ds (so the cache expires and decrypts recur throughout); "
        "fsloop `soak` runs %d reader threads, each picking files at random (open+read to EOF+close), for %s: "
        "one burst. %d bursts without faults, then %d with the proxy failing one request in four, cycling "
        "through ThrottlingException, 503, connection reset and a 0.5 s delay. After every burst the daemon "
        "rests %.0f s (it closes KMS connections idle for 15 s and returns freed heap when opens stop) until its "
        "thread count holds still for 1 s, and then its memory is read: memory that creeps grows from burst to "
        "burst, where memory a burst needs is taken in the first and reused. Before = after mounting and reading "
        "every file once, rested the same way. Lengthen with BENCH_SOAK_SECONDS, BENCH_SOAK_BURSTS and "
        "BENCH_SOAK_READERS."
        % (SOAK_FILES, SOAK_TTL, SOAK_READERS, fmt_time(SOAK_SECONDS), SOAK_BURSTS, fault_bursts, IDLE_REST))
    faults = [Fault.THROTTLE, Fault.UNAVAILABLE, Fault.RESET, Fault.SLOW]
    proxy.delay = 0.5
    before = start
    for label, policy, bursts in (("no faults", None, SOAK_BURSTS),
                                  ("KMS faults", lambda n, t: faults[(n // 4) % 4] if n % 4 == 3 else None, fault_bursts)):
        with proxy.lock:
            proxy.requests.clear()
            proxy.counts.clear()
        during = {"VmRSS": 0, "fds": 0, "Threads": 0}
        afters = []
        ops = failed = 0
        p50s, p99s, maxes = [], [], []
        for burst in range(bursts):
            proxy.policy = policy or (lambda n, t: None)
            stop_sampling = threading.Event()

            def sample():
                while not stop_sampling.wait(0.25):
                    with contextlib.suppress(Exception):
                        st = proc_status(k.pid)
                        for key in during:
                            during[key] = max(during[key], st[key])
            sampler = threading.Thread(target=sample)
            sampler.start()
            out = b.run_loop("soak", SOAK_READERS, SOAK_SECONDS, listfile).split()
            stop_sampling.set()
            sampler.join()
            proxy.policy = lambda n, t: None
            ops += int(out[1])
            failed += int(out[3])
            p50s.append(int(out[5]) / 1e9)
            p99s.append(int(out[7]) / 1e9)
            maxes.append(int(out[9]) / 1e9)
            afters.append(rest(k.pid))
            if os.environ.get("BENCH_KEEP"):     # what grew, mapping by mapping, for a look afterwards
                tag = "%s-%d" % (label.replace(" ", "-"), burst + 1)
                shutil.copyfile("/proc/%d/smaps" % k.pid, b.work / ("smaps-%s.txt" % tag))
                with contextlib.suppress(OSError):
                    (b.work / ("threads-%s.txt" % tag)).write_text("".join(
                        open("/proc/%d/task/%s/comm" % (k.pid, t)).read() for t in sorted(os.listdir("/proc/%d/task" % k.pid))))
            print("bench: soak %s burst %d: VmRSS %s" % (label, burst + 1, fmt_bytes(afters[-1]["VmRSS"])),
                  file=sys.stderr, flush=True)
        with proxy.lock:
            sent = len(proxy.requests)
            answered = proxy.counts.get("TrentService.Decrypt", 0)
        after = afters[-1]
        seconds = SOAK_SECONDS * bursts
        Results.row(rows, "%s: reads (failed), %d bursts" % (label, bursts), "%d (%d failed), %.0f/s" % (ops, failed, ops / seconds),
                    "", "", "", "0 failed" if label == "no faults" else "", (failed == 0) if label == "no faults" else None)
        Results.row(rows, "%s: read latency p50 / p99 / max (median p50, highest p99 and max of the bursts)" % label,
                    "%s / %s / %s" % (fmt_time(median(p50s)), fmt_time(max(p99s)), fmt_time(max(maxes))), "", "", "", "", None)
        Results.row(rows, "%s: KMS requests (answered)" % label, "%d (%d)" % (sent, answered), "", "", "", "", None)
        first = afters[0]["VmRSS"]
        last = after["VmRSS"]
        if label == "no faults":
            Results.row(rows, "%s: VmRSS after burst %d" % (label, bursts), fmt_bytes(last),
                        "after burst 1", fmt_bytes(first), ratio(last, first),
                        "the same (≤ +2% or 256 KiB)", last <= first * 1.02 + 256 * 1024)
        else:
            Results.row(rows, "%s: VmRSS after burst %d" % (label, bursts), fmt_bytes(last),
                        "before (after the bursts without faults)", fmt_bytes(before["VmRSS"]), ratio(last, before["VmRSS"]),
                        "the same (≤ +2% or 256 KiB)", last <= before["VmRSS"] * 1.02 + 256 * 1024)
        Results.row(rows, "%s: VmRSS after each burst (peak during any)" % label,
                    "%s (%s)" % (" → ".join(fmt_bytes(a["VmRSS"]) for a in afters), fmt_bytes(during["VmRSS"])),
                    "before", fmt_bytes(before["VmRSS"]), ratio(last, before["VmRSS"]), "", None)
        after_kinds = fd_kinds(k.pid)
        Results.row(rows, "%s: open fds after (peak during)" % label, "%d (%d); %s" % (
                        after["fds"], during.get("fds", 0), fd_growth(before_kinds, after_kinds)),
                    "before", "%d" % before["fds"], "", "back to before", after["fds"] <= before["fds"])
        Results.row(rows, "%s: threads after each burst (peak during any)" % label, "%s (%d)" % (
                        " → ".join(str(a["Threads"]) for a in afters), during.get("Threads", 0)),
                    "before", "%d" % before["Threads"], "", "back to before", after["Threads"] <= before["Threads"])
        before, before_kinds = after, after_kinds
    Results.row(rows, "whole soak: VmRSS / fds / threads, start → end",
                "%s → %s / %d → %d / %d → %d" % (fmt_bytes(start["VmRSS"]), fmt_bytes(before["VmRSS"]), start["fds"],
                                                 before["fds"], start["Threads"], before["Threads"]),
                "", "", "", "", None)
    k.stop()


# ---- 6. fleet storm -------------------------------------------------------------

class FleetHost:
    """One simulated host: a kmsfs daemon over its own SOURCE, started in
    the foreground with its own NOTIFY_SOCKET, and the reader that, once
    the daemon says READY=1, reads every secret as services at boot do."""

    def __init__(self, b, index, source, names, options, t0):
        self.b, self.index, self.names, self.t0 = b, index, names, t0
        self.mnt = b.work / ("mnt-fleet%02d" % index)
        self.mnt.mkdir(exist_ok=True)
        self.log_path = b.work / ("kmsfs-fleet%02d.log" % index)
        self.sock_path = str(self.log_path) + ".notify"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock_path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.sock_path)
        env = b.kms.base_env(endpoint=b.proxy.url)
        env["NOTIFY_SOCKET"] = self.sock_path
        self.proc = subprocess.Popen([str(KMSFS), str(source), str(self.mnt), "-f", "-o", "allow_uid=0,audit=off" +
                                      ("," + options if options else "")],
                                     env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log_path, "wb"), start_new_session=True)
        self.notified = self.ready = self.reader = None
        self.ok = self.failed = 0
        self.error = None

    def run(self, timeout):
        """Waits for READY=1, then reads every secret (a failed read is
        counted and tried again 1 s later, as a unit restarted by systemd)."""
        try:
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError("daemon %d did not become ready" % self.index)
                self.sock.settimeout(min(left, 0.5))
                try:
                    if b"READY=1" in self.sock.recv(4096):
                        break
                except socket.timeout:
                    continue
            self.notified = time.monotonic() - self.t0
            listfile = self.b.work / ("fleet%02d.list" % self.index)
            listfile.write_text("".join(os.path.join(str(self.mnt), n) + "\n" for n in self.names))
            self.reader = subprocess.Popen([self.b.fsloop, "fleet", "1000", str(listfile)], stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)
            stdout, stderr = self.reader.communicate(timeout=max(1.0, deadline - time.monotonic()))
            if self.reader.returncode != 0:
                raise RuntimeError("reader %d: %s" % (self.index, stderr.strip()[-500:]))
            out = stdout.split()
            self.ok, self.failed = int(out[1]), int(out[3])
            self.ready = time.monotonic() - self.t0
        except Exception as e:  # noqa: BLE001  (reported as the host's error)
            self.error = str(e)
        finally:
            self.sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.sock_path)

    def stop(self):
        if self.reader is not None and self.reader.poll() is None:
            self.reader.kill()
        terminate(self.proc)
        unmount(str(self.mnt))


def fleet_counts(proxy):
    with proxy.lock:
        sent = sum(1 for t in proxy.requests if t == "TrentService.Decrypt")
        served = proxy.statuses.get("TrentService.Decrypt", {}).get(200, 0)
        proxy.fleet_undelivered = proxy.undelivered
    return sent, served


def fleet_kmsfs(b, hosts, options):
    """Every daemon started at once; returns per-host (ready s, failed reads) and the proxy's counts."""
    b.proxy.reset()
    b.proxy.quota = TokenBucket(FLEET_QUOTA, FLEET_BURST)
    t0 = time.monotonic()
    fleet = []
    try:
        for i, (src, names) in enumerate(hosts):
            fleet.append(FleetHost(b, i, src, names, options, t0))
        threads = [threading.Thread(target=h.run, args=(FLEET_TIMEOUT,), daemon=True) for h in fleet]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent, served = fleet_counts(b.proxy)
        errors = [h.error for h in fleet if h.error]
        if errors:
            logs = fleet[[h.error is not None for h in fleet].index(True)].log_path.read_text(errors="replace")
            raise RuntimeError("fleet: %d hosts failed (%s):\n%s" % (len(errors), errors[0], logs[-2000:]))
        return dict(ready=[h.ready for h in fleet], notified=[h.notified for h in fleet],
                    failed=sum(h.failed for h in fleet), sent=sent, served=served, late=b.proxy.fleet_undelivered)
    finally:
        b.proxy.quota = None
        for h in fleet:
            with contextlib.suppress(Exception):
                h.stop()


def fleet_boto(b, hosts, mode):
    """The same Decrypts by one boto3 process per host, all released at once."""
    b.proxy.reset()
    env = b.kms.base_env(endpoint=b.proxy.url)
    procs = [subprocess.Popen([sys.executable, str(HERE / "fleet_client.py"), mode, str(len(names)),
                               str(b.blob_path), "1000"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _, names in hosts]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("fleet client did not start: %s" % p.stderr.read()[-2000:])
        b.proxy.quota = TokenBucket(FLEET_QUOTA, FLEET_BURST)
        for p in procs:
            p.stdin.write("go\n")
        for p in procs:
            p.stdin.flush()
        t0 = time.monotonic()
        ready, failed = [None] * len(procs), 0
        done = {}

        def wait(i, p):
            line = p.stdout.readline()
            done[i] = time.monotonic() - t0
            p.wait()
            return line
        results = {}
        threads = [threading.Thread(target=lambda i=i, p=p: results.__setitem__(i, wait(i, p)), daemon=True)
                   for i, p in enumerate(procs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(FLEET_TIMEOUT)
        for i in range(len(procs)):
            r = json.loads(results[i])
            ready[i] = done[i]
            failed += r["failed"]
        sent, served = fleet_counts(b.proxy)
        return dict(ready=ready, failed=failed, sent=sent, served=served, late=b.proxy.fleet_undelivered)
    finally:
        b.proxy.quota = None
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def section_fleet(b):
    rnd = random.Random(16)
    hosts = []
    for i in range(FLEET_N):
        count = rnd.randint(FLEET_MIN, FLEET_MAX)
        src, paths = b.source("fleet-src%02d" % i, count, prefix="f")
        hosts.append((src, [p.name[:-len(".encrypted")] for p in paths]))
    total = sum(len(n) for _, n in hosts)
    ideal = total / FLEET_QUOTA
    b.blob_path = b.work / "fleet-blob.bin"
    b.blob_path.write_bytes(b.blob)
    # kms_rate=adaptive: the fleet setting the guide gives (pacing is opt-in).
    variants = [("kmsfs -o prefetch", "kmsfs", "kms_rate=adaptive,prefetch"), ("botocore standard", "boto", "standard"),
                ("kmsfs, read at boot", "kmsfs", "kms_rate=adaptive"), ("botocore adaptive", "boto", "adaptive")]
    # BENCH_FLEET_VARIANTS=prefetch,boot,standard,adaptive picks some (for tuning; the report needs all).
    picked = os.environ.get("BENCH_FLEET_VARIANTS")
    if picked:
        keys = dict(zip(("prefetch", "standard", "boot", "adaptive"), variants))
        variants = [keys[k] for k in picked.split(",") if k]
    runs = []
    for run in range(FLEET_RUNS):
        res = {}
        for label, kind, arg in variants:
            print("bench: fleet run %d: %s" % (run + 1, label), file=sys.stderr, flush=True)
            with LoadSampler() as ls:
                res[label] = fleet_kmsfs(b, hosts, arg) if kind == "kmsfs" else fleet_boto(b, hosts, arg)
            res[label]["load"] = ls.summary()
        runs.append(res)
    rows = b.results.section(
        "6. Fleet storm: %d hosts, %d Decrypts, a quota of %g Decrypt/s" % (FLEET_N, total, FLEET_QUOTA),
        "%d simulated hosts, each a kmsfs daemon over its own SOURCE of %d–%d secrets (%d in all, 2 KB raw "
        "ciphertexts, each decrypted on its own), all started at once against the counting proxy "
        "(Tests/integration/kmsproxy.py), which enforces a token-bucket quota on Decrypt in front of one "
        "moto_server: %g calls a second, a burst of %d, and above it 400 ThrottlingException \"Rate exceeded\" as "
        "KMS answers. (moto_server behind the proxy sustained 180–200 Decrypt/s with 8–32 clients on this "
        "machine while other jobs ran, so the quota, not the emulator, is what limits.) "
        "Every daemon mounts with `kms_rate=adaptive`, the fleet setting the guide gives (pacing is opt-in; the default only retries throttles with backoff). `-o prefetch`: each daemon decrypts its SOURCE before READY=1; \"read at boot\": no prefetch, and "
        "once READY=1 one reader per host reads every secret in turn (fsloop `fleet`), as services started "
        "at boot would. In both, a host is ready when its reader has read every secret; a failed read is "
        "counted and tried again 1 s later. The time runs from the first daemon's start (daemon start-up "
        "included). The references make the same Decrypts: one boto3 process per host, calls one after "
        "another, botocore %s with its default of 3 attempts; a call that fails anyway is counted and made "
        "again 1 s later; their clock starts once all have imported boto3 and made their client. "
        "Ideal time = Decrypts ÷ quota (%s); amplification = Decrypt requests the proxy received ÷ Decrypts "
        "it answered 200 (a Decrypt KMS made but answered after the client had given up on the attempt, which "
        "the machine's load can cause, is counted apart, not as served); fairness = the slowest host's time ÷ the median host's. Runs: %d (each figure is given "
        "per run, run 1 / run 2, ...); kmsfs is better than botocore when it beats both modes in every run."
        % (FLEET_N, FLEET_MIN, FLEET_MAX, total, FLEET_QUOTA, FLEET_BURST,
           "`standard` and `adaptive` retry modes", fmt_time(ideal), FLEET_RUNS))

    def fig(r, name):
        ready = r["ready"]
        return {"time": max(ready), "amp": r["sent"] / float(max(r["served"], 1)), "failed": r["failed"],
                "fair": max(ready) / median(ready)}

    figs = [{label: fig(res[label], None) for label, _, _ in variants} for res in runs]

    def per_run(label, key, f):
        return " / ".join(f(x[label][key]) for x in figs)
    fmt = {"time": lambda v: "%.1f s (%.2f×)" % (v, v / ideal), "amp": lambda v: "%.2f×" % v,
           "failed": lambda v: "%d" % v, "fair": lambda v: "%.2f×" % v}
    names = {"time": "time until every host is ready (÷ ideal %s)" % fmt_time(ideal), "amp": "amplification (requests ÷ served)",
             "failed": "failed reads (calls)", "fair": "fairness (slowest ÷ median host)"}
    targets = {"time": ("≤ 1.25× ideal", lambda v: v <= 1.25 * ideal), "amp": ("≤ 1.5×", lambda v: v <= 1.5),
               "failed": ("0", lambda v: v == 0), "fair": ("", lambda v: True)}
    boto = [label for label, kind, _ in variants if kind == "boto"]
    for label, kind, _ in variants:
        if kind != "kmsfs":
            continue
        for key in ("time", "amp", "failed", "fair"):
            ref = "; ".join("%s %s" % (bl.split()[1], per_run(bl, key, fmt[key])) for bl in boto)
            better = bool(boto) and all(x[label][key] < min(x[bl][key] for bl in boto) or
                         (key == "failed" and x[label][key] == 0) for x in figs)
            tgt, ok = targets[key]
            met = all(ok(x[label][key]) for x in figs) and better
            Results.row(rows, "%s: %s" % (label, names[key]), per_run(label, key, fmt[key]), "botocore", ref, "",
                        ("%s, and " % tgt if tgt else "") + "better than both botocore modes", met)
    for label in boto:
        for key in ("time", "amp", "failed", "fair"):
            Results.row(rows, "%s: %s" % (label, names[key]), per_run(label, key, fmt[key]), "", "", "", "", None)
    for label, kind, _ in variants:
        extra = ""
        if kind == "kmsfs":
            extra = "; READY=1 after %s (median) / %s (slowest)" % (
                " / ".join("%.1f s" % median(r[label]["notified"]) for r in runs),
                " / ".join("%.1f s" % max(r[label]["notified"]) for r in runs))
        Results.row(rows, "%s: Decrypt requests (served; answered after the client gave up)%s" % (
                        label, "; daemon READY=1" if extra else ""),
                    " / ".join("%d (%d; %d)" % (r[label]["sent"], r[label]["served"], r[label]["late"]) for r in runs) + extra,
                    "machine while it ran", " / ".join(r[label]["load"] for r in runs), "", "", None)


# ---- the report ------------------------------------------------------------------

def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = fmt_bytes(int(line.split()[1]) * 1024)
    osname = "?"
    with contextlib.suppress(OSError):
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip().strip('"')

    def out(*cmd):
        with contextlib.suppress(Exception):
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        return "?"
    return dict(cpu=cpu, cores=os.cpu_count(), kernel=platform.release(), uname=" ".join(platform.uname()[:3]),
                memory=mem, os=osname, fuse=out("pkg-config", "--modversion", "fuse3"),
                curl=" ".join((out("curl", "--version").split() or ["?"])[:2]))


def binary_build():
    """What is measured: the binary, when it was built, and the tree's HEAD when the run began."""
    def git(*args):
        with contextlib.suppress(Exception):
            return subprocess.run(["git", "-C", str(ROOT)] + list(args), capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        return ""
    built = datetime.datetime.fromtimestamp(KMSFS.stat().st_mtime, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    head = git("log", "-1", "--format=%h %s") or "?"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "Sources", "Package.swift"))
    return "%s, built %s UTC; the tree's HEAD when the run began: %s%s" % (
        KMSFS, built, head, " (Sources had uncommitted changes)" if dirty else "")


def write_report(b, doc, png_name, started, load_start, load_end, duration, chart, section_loads, build):
    m = machine()
    if os.environ.get("MAKELEVEL"):
        cmd = "make bench"
    else:
        cmd = "python3 bench/bench.py"
        if os.environ.get("KMSFS_BIN"):
            cmd = "KMSFS_BIN=%s %s" % (os.environ["KMSFS_BIN"], cmd)
    knobs = " ".join("%s=%s" % (k, v) for k, v in sorted(os.environ.items()) if k.startswith("BENCH_") and k != "BENCH_DOC")
    if knobs:
        cmd = knobs + " " + cmd
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (bench/bench.py) from its last run: every figure of kmsfs stands beside a "
        "reference measured in the same run, on the same machine, interleaved with it, and the ratio of the two. "
        "The benchmark is not a test: nothing in CI is timed (`BENCH_QUICK=1 make bench` runs every section with "
        "tiny sizes to check the harness).",
        "",
        "## Run",
        "",
        "| | |",
        "|---|---|",
        "| command | `%s` |" % cmd,
        "| date (UTC) | %s |" % started,
        "| duration | %s |" % fmt_time(duration),
        "| machine | %s, %s cores, %s RAM |" % (m["cpu"], m["cores"], m["memory"]),
        "| kernel (`uname -r`) | %s (%s) |" % (m["kernel"], m["uname"]),
        "| OS | %s |" % m["os"],
        "| load average (1/5/15 min) at start / end | %s / %s |" % (load_start, load_end),
        "| each section: 1-min load average (lowest–highest, sampled every 5 s); CPUs busy, machine-wide, the bench included | %s |"
        % "; ".join("%s: %s" % x for x in section_loads),
        "| kmsfs | %s |" % build,
        "| references | libfuse %s examples (hello_ll, passthrough_ll) built with gcc -O2; %s; moto_server on loopback as KMS |"
        % (m["fuse"], m["curl"]),
        "",
        "The machine is shared (2 cores; other jobs were running): the load average above is part of every "
        "figure, which is why each comes with a reference taken in the same minutes and the ratio is the "
        "figure to read.",
        "",
    ]
    if QUICK:
        lines += ["**Quick mode (BENCH_QUICK=1): tiny sizes, the figures mean nothing.**", ""]
    targeted = [(title, r) for title, _, rows in b.results.sections for r in rows if r["met"] is not None]
    if targeted:
        lines += ["## Targets", "",
                  "| section | figure | kmsfs | reference | ratio | target | met |", "|---|---|---|---|---|---|---|"]
        for title, r in targeted:
            lines.append(target_row(title, r))
        lines += ["", "Misses are explained, with what in the daemon costs the time, under "
                  "[Where the time goes](#where-the-time-goes) at the end.", ""]
    for title, notes, rows in b.results.sections:
        lines += ["## " + title, "", notes, "", b.results.table(rows)]
        if title.startswith("1.") and chart:
            lines += ["![hot-path latency distribution](%s)" % png_name, ""]
        if title.startswith("4.") and "scale_memory" in b.results.extra:
            sm = b.results.extra["scale_memory"]
            e, f, n = sm["empty"], sm["full"], sm["count"]

            def d(key):
                return fmt_bytes((f.get(key, 0) - e.get(key, 0)) / float(n))
            lines += [
                "What was counted: VmRSS of the daemon (/proc/PID/status), the sum of RssAnon, RssFile and "
                "RssShmem. The cached plaintexts live in %s pages (with every secret cached the daemon reported "
                "%s secure buffers holding %s bytes). Per cached secret, over the last %d secrets read: "
                "RssAnon %s, RssFile %s, RssShmem %s, page tables (VmPTE) %s.%s VmLck is locked *virtual* "
                "memory: the daemon calls mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT), so every mapping "
                "(thread stacks, malloc arenas) counts in full while only touched pages are resident."
                % (sm.get("memory") or "?", sm["secure"][0], sm["secure"][1], n,
                   d("RssAnon"), d("RssFile"), d("RssShmem"), d("VmPTE"),
                   " memfd_secret pages are file pages of the secretmem inode, off the LRU and out of the "
                   "kernel's direct map: Linux counts them in RssFile (not RssShmem) and in VmLck, and each "
                   "secret takes at least one whole page." if sm.get("memory") == "memfd_secret" else ""),
                "",
            ]
    notes = HERE / "notes.md"
    notes_text = notes.read_text().rstrip() if notes.exists() else ""
    if notes_text:
        lines += [notes_text, ""]
    if set(SECTIONS) != set(ALL_SECTIONS) and doc.exists() and not QUICK:
        # Some sections only: replace theirs in the report of the last full
        # run, and say so beside them; the rest stays as it was measured.
        run_note = ("*This section was regenerated alone: `%s`, %s UTC, %s; load average at start / end %s / %s; %s; "
                    "kmsfs %s. Its rows of the Targets table are from this run too; the other sections, their rows "
                    "and the Run table are from the run described under [Run](#run).*" % (cmd, started, fmt_time(duration), load_start, load_end,
                                            "; ".join("%s: %s" % x for x in section_loads), build))
        doc.write_text(splice_sections(doc.read_text(), b.results.sections, run_note, notes_text, b))
        return
    doc.write_text("\n".join(lines))


def target_row(title, r):
    """A row of the Targets table for row `r` of section `title`."""
    return "| %s | %s | %s | %s | %s | %s | %s |" % (
        title.split(":")[0], r["figure"], r["value"], r["ref_value"] or r["ref_name"], r["ratio"],
        r["target"], "yes" if r["met"] else "**no**")


def splice_sections(text, sections, run_note, notes_text, b):
    """`text` (a report) with each of `sections` put in place of the section
    of the same number (or before the notes when it has none), its rows of
    the Targets table replaced too, and the notes brought up to date."""
    out = text.split("\n")
    for title, _, rows in sections:
        prefix = "| %s |" % title.split(":")[0]
        new = [target_row(title, r) for r in rows if r["met"] is not None]
        at = [i for i, l in enumerate(out) if l.startswith(prefix)]
        if at and new:
            out[at[0]:at[-1] + 1] = new
    where_notes = "## Where the time goes"
    for title, notes, rows in sections:
        number = title.split(".")[0] + "."
        block = ["## " + title, "", run_note, "", notes, "", b.results.table(rows)]
        start = next((i for i, l in enumerate(out) if l.startswith("## " + number)), None)
        if start is None:
            start = next((i for i, l in enumerate(out) if l.startswith(where_notes)), len(out))
            end = start
        else:
            end = next((i for i in range(start + 1, len(out)) if out[i].startswith("## ")), len(out))
        out[start:end] = "\n".join(block).split("\n")
    if notes_text:
        start = next((i for i, l in enumerate(out) if l.startswith(where_notes)), None)
        if start is not None:
            out[start:] = notes_text.split("\n") + [""]
    return "\n".join(out)


def print_table(b):
    for title, _, rows in b.results.sections:
        print("\n== " + title)
        w = max([len(r["figure"]) for r in rows] + [10])
        for r in rows:
            met = "" if r["met"] is None else ("  [met]" if r["met"] else "  [MISSED]")
            ref = ("   vs %s %s" % (r["ref_name"], r["ref_value"])) if (r["ref_name"] or r["ref_value"]) else ""
            rat = ("   = %s" % r["ratio"]) if r["ratio"] else ""
            tgt = ("   (target %s)" % r["target"]) if r["target"] else ""
            print("  %-*s  %s%s%s%s%s" % (w, r["figure"], r["value"], ref, rat, tgt, met))


class LoadSampler:
    """The 1-minute load average every 5 s while a section runs, and the
    share of CPU time the whole machine spent busy."""

    def __enter__(self):
        self.samples, self.stop = [float(loadavg().split()[0])], threading.Event()
        self.cpu0 = self._cpu()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop.wait(5):
            self.samples.append(float(loadavg().split()[0]))

    @staticmethod
    def _cpu():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]    # total, idle + iowait

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.samples.append(float(loadavg().split()[0]))
        self.cpu1 = self._cpu()

    def summary(self):
        total, idle = self.cpu1[0] - self.cpu0[0], self.cpu1[1] - self.cpu0[1]
        busy = 100.0 * (total - idle) / total if total else 0.0
        return "load %.2f–%.2f, CPUs %.0f%% busy" % (min(self.samples), max(self.samples), busy)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main():
    global BENCH
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (it mounts FUSE filesystems and ramfs)")
    if not KMSFS.exists():
        raise SystemExit("bench: %s is missing: run `make build` first (or give KMSFS_BIN)" % KMSFS)
    unknown = set(SECTIONS) - set(ALL_SECTIONS)
    if unknown:
        raise SystemExit("bench: unknown section(s) %s; BENCH_SECTIONS takes %s" % (",".join(sorted(unknown)), ",".join(ALL_SECTIONS)))
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    load_start = loadavg()
    section_loads = []
    build = binary_build()
    t0 = time.monotonic()
    BENCH = Bench()
    b = BENCH
    # Interrupted or terminated (even when started with SIGINT ignored, as a
    # background job): unwind through the finally below, which unmounts.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        b.build_tools()
        b.start_kms()
        for name in SECTIONS:
            print("bench: %s ... (load %s)" % (name, loadavg()), file=sys.stderr, flush=True)
            with LoadSampler() as ls:
                globals()["section_" + name](b)
            section_loads.append((name, ls.summary()))
        duration = time.monotonic() - t0
        # Quick runs report beside /tmp, never over the committed figures.
        default_doc = (pathlib.Path(tempfile.gettempdir()) / "kmsfs-bench-quick" / "benchmarks.md") if QUICK \
            else (ROOT / "docs" / "benchmarks.md")
        doc = pathlib.Path(os.environ.get("BENCH_DOC", default_doc))
        doc.parent.mkdir(parents=True, exist_ok=True)
        png = doc.parent / "benchmarks-hotpath.png"
        chart = bool(b.hot_samples) and hot_chart(b, png)
        print_table(b)
        write_report(b, doc, png.name, started, load_start, loadavg(), duration, chart, section_loads, build)
        print("\nbench: wrote %s%s" % (doc, " and " + str(png) if chart else ""))
    finally:
        b.close()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("bench: interrupted; mounts and servers removed", file=sys.stderr)
        sys.exit(130)
