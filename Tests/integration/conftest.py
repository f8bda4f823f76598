"""Integration harness: a real KMS emulator (moto_server) with signature
checking on, real FUSE mounts of the built binary, real users.

One emulator per test session; mounts and users are cleaned up even when a
test fails.
"""
import base64
import contextlib
import ctypes
import fcntl
import json
import os
import pathlib
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from kmsproxy import KMSProxy  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
KMSFS = pathlib.Path(os.environ.get("KMSFS_BIN", ROOT / ".build" / "release" / "kmsfs"))
# Options added to every Mount (make sanitize: insecure_allow_unlocked for
# sanitizer builds, whose shadow memory defeats the mlock budget).
EXTRA_OPTS = os.environ.get("KMSFS_EXTRA_OPTS", "")
# make sanitize sets KMSFS_SANITIZED (thread or address) when KMSFS_BIN is a
# sanitizer build. Tests that measure the daemon's memory (locked pages,
# scans of every mapping, core files) or the shipped artefacts (package,
# install, demo) measure the sanitizer there, not kmsfs: they skip.
SANITIZED = os.environ.get("KMSFS_SANITIZED", "")
unsanitized_only = pytest.mark.skipif(
    bool(SANITIZED), reason="measures memory or the shipped binary, not behaviour: "
    "meaningless against the %s sanitizer's build" % SANITIZED)
REGION = "us-east-1"


def memfd_secret_available():
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(447, 0)          # memfd_secret(0), x86_64 and arm64
    if fd >= 0:
        os.close(fd)
    return fd >= 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("port %d never opened" % port)


class KMSEmulator:
    """moto_server on loopback. INITIAL_NO_AUTH_ACTION_COUNT lets the first
    requests (creating an IAM user and its access key) through unsigned;
    every later request must carry a valid SigV4 signature by that user."""

    BOOTSTRAP_ACTIONS = 3

    def __init__(self, workdir):
        self.workdir = pathlib.Path(workdir)
        self.port = free_port()
        self.endpoint = "http://127.0.0.1:%d" % self.port
        self.log_path = self.workdir / "moto.log"
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(self.BOOTSTRAP_ACTIONS),
                   MOTO_ALLOW_NONEXISTENT_REGION="true")
        self.proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        wait_port(self.port)
        boot = self.base_env(access="bootstrap", secret="bootstrap")
        self.run_aws(["iam", "create-user", "--user-name", "kmsfs-test"], env=boot)
        policy = json.dumps({"Version": "2012-10-17",
                             "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
        self.run_aws(["iam", "put-user-policy", "--user-name", "kmsfs-test", "--policy-name", "all",
                      "--policy-document", policy], env=boot)
        key = json.loads(self.run_aws(["iam", "create-access-key", "--user-name", "kmsfs-test"], env=boot).stdout)
        self.access_key = key["AccessKey"]["AccessKeyId"]
        self.secret_key = key["AccessKey"]["SecretAccessKey"]
        self.key_id = self.create_key()

    def base_env(self, access=None, secret=None, endpoint=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=access or self.access_key,
                   AWS_SECRET_ACCESS_KEY=secret or self.secret_key,
                   AWS_DEFAULT_REGION=REGION, AWS_REGION=REGION,
                   AWS_ENDPOINT_URL=endpoint or self.endpoint,
                   AWS_EC2_METADATA_DISABLED="true",
                   AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
        return env

    @property
    def env(self):
        return self.base_env()

    def run_aws(self, args, env=None, input=None, check=True):
        r = subprocess.run(["aws"] + args, env=env or self.env, input=input, capture_output=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError("aws %s failed: %s" % (" ".join(args), r.stderr.decode(errors="replace")))
        return r

    def create_key(self, description="kmsfs test key"):
        out = self.run_aws(["kms", "create-key", "--description", description]).stdout
        return json.loads(out)["KeyMetadata"]["KeyId"]

    def seed_encrypt(self, plaintext_path, out_path, key_id=None, decode=True, context=None):
        """The pipeline kmsfs replaces, verbatim:
        aws kms encrypt --key-id K --plaintext fileb://F --query CiphertextBlob --output text | base64 --decode > F.encrypted"""
        cmd = "aws kms encrypt --key-id %s --plaintext fileb://%s --query CiphertextBlob --output text" % (
            key_id or self.key_id, plaintext_path)
        if context:
            cmd += " --encryption-context " + ",".join("%s=%s" % kv for kv in context.items())
        if decode:
            cmd += " | base64 --decode"
        cmd += " > %s" % out_path
        subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=self.env, check=True, timeout=60)

    def boto(self):
        import boto3
        return boto3.client("kms", region_name=REGION, endpoint_url=self.endpoint,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def encrypt_blob(self, plaintext, key_id=None, context=None):
        """Raw CiphertextBlob for bulk fixtures (boto3: the library under awscli)."""
        kw = {"KeyId": key_id or self.key_id, "Plaintext": plaintext}
        if context:
            kw["EncryptionContext"] = context
        return self.boto().encrypt(**kw)["CiphertextBlob"]

    def close(self):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def mounted(path):
    path = os.path.realpath(path)
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[1].replace("\\040", " ") == path and "kmsfs" in parts[2]:
                return True
    return False


def stop_process(pid, timeout=10):
    """SIGSTOP `pid` and wait until every thread of it has stopped. kill(2)
    returns once the signal is queued: until the thread it woke runs and
    stops the rest, another thread (a FUSE reader) may still answer
    requests, as it did on a loaded CI machine."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = []
        for tid in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:
                pass   # a thread that ended
        if states and all(s in ("T", "t") for s in states):
            return
        time.sleep(0.005)
    raise RuntimeError("process %d did not stop within %s s" % (pid, timeout))


def seccomp_python():
    """A Python with the seccomp module (python3-seccomp), or None."""
    for py in [sys.executable, "/usr/bin/python3"]:
        if os.path.exists(py) and subprocess.run([py, "-c", "import seccomp"], capture_output=True).returncode == 0:
            return py
    return None


def force_unmount(path):
    if mounted(path):
        subprocess.run(["fusermount3", "-uz", path], capture_output=True)
    if mounted(path):
        subprocess.run(["umount", "-l", path], capture_output=True)


class Mount:
    """One `kmsfs SOURCE MOUNTPOINT -f -o ...` daemon."""

    def __init__(self, source, mountpoint, options, env, log_path, extra_args=(), wrapper=()):
        self.source = str(source)
        self.path = str(mountpoint)
        self.options = options
        self.log_path = pathlib.Path(log_path)
        args = list(wrapper) + [str(KMSFS), self.source, self.path, "-f"] + list(extra_args)
        if EXTRA_OPTS:
            options = options + "," + EXTRA_OPTS if options else EXTRA_OPTS
        if options:
            args += ["-o", options]
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log_path, "wb"), start_new_session=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("kmsfs exited (%s) before mounting:\n%s" % (self.proc.returncode, self.log()))
            if mounted(self.path):
                try:
                    os.listdir(self.path)   # answered by a live daemon (stat may come from cache)
                    return
                except OSError:
                    pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("kmsfs did not mount within 20 s:\n" + self.log())

    def file(self, name):
        return os.path.join(self.path, name)

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, needle, timeout=5):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if needle in self.log():
                return True
            time.sleep(0.05)
        return False

    @property
    def pid(self):
        return self.proc.pid

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        force_unmount(self.path)
        return self.proc.returncode


@pytest.fixture(scope="session")
def kmsfs_bin():
    if not KMSFS.exists():
        pytest.fail("%s is missing: run `make build` first (make test does)" % KMSFS)
    return str(KMSFS)


@pytest.fixture(scope="session")
def kms(tmp_path_factory):
    emu = KMSEmulator(tmp_path_factory.mktemp("moto"))
    yield emu
    emu.close()


@pytest.fixture
def proxy(kms):
    p = KMSProxy(kms.port)
    yield p
    p.close()


@pytest.fixture
def mount_factory(tmp_path, kms, kmsfs_bin):
    mounts = []
    counter = [0]

    def make(source, options="", env=None, extra_args=(), wrapper=()):
        counter[0] += 1
        mnt = tmp_path / ("mnt%d" % counter[0])
        mnt.mkdir()
        m = Mount(source, mnt, options, env or kms.env, tmp_path / ("kmsfs%d.log" % counter[0]), extra_args, wrapper)
        mounts.append(m)
        return m

    yield make
    for m in mounts:
        m.stop()


@pytest.fixture(scope="session")
def public_tmp():
    """A directory every test user can traverse (pytest's own tmp is 0700),
    for mountpoints that other users read."""
    d = tempfile.mkdtemp(prefix="kmsfs-test-", dir="/tmp")
    os.chmod(d, 0o755)
    yield pathlib.Path(d)
    for line in open("/proc/mounts"):
        mp = line.split()[1]
        if mp.startswith(d):
            force_unmount(mp)
    shutil.rmtree(d, ignore_errors=True)


def refused_at_mount(kmsfs_bin, env, tmp_path, options):
    """Mounting an empty SOURCE with `options` fails with exactly one line
    on stderr and mounts nothing; returns that line."""
    src = tmp_path / "refused-src"
    mnt = tmp_path / "refused-mnt"
    src.mkdir(exist_ok=True)
    mnt.mkdir(exist_ok=True)
    try:
        r = subprocess.run([kmsfs_bin, str(src), str(mnt), "-o", options], capture_output=True, env=env, timeout=30)
        assert r.returncode != 0
        assert not mounted(mnt)
    finally:
        force_unmount(str(mnt))
    lines = r.stderr.decode(errors="replace").strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def read_in_background(path):
    """Starts a thread that opens and reads `path` (an open that may be
    parked on KMS); returns the thread and a dict whose "data" is what it
    read."""
    import threading
    out = {}

    def read():
        with open(path, "rb") as f:
            out["data"] = f.read()
    t = threading.Thread(target=read)
    t.start()
    return t, out


def run_as(user, argv, **kw):
    """Runs argv as `user` (name), with its groups, through setpriv."""
    return subprocess.run(["setpriv", "--reuid", user, "--regid", user, "--init-groups"] + list(argv),
                          capture_output=True, timeout=30, **kw)


MACHINE_LOCK = "/run/lock/kmsfs-integration.lock"


@pytest.fixture(scope="session", autouse=True)
def one_suite_per_machine(pytestconfig):
    """The suite changes what the whole machine shares: it deletes and
    recreates the users below, switches the fuse module's enable_uring and
    puts it back. Two sessions at once (a second `make test`, `make
    sanitize` beside it) deleted each other's users mid-test, and tests
    failed with `setpriv: failed to parse reuid`. A second session now
    waits for the first."""
    os.makedirs(os.path.dirname(MACHINE_LOCK), exist_ok=True)
    with open(MACHINE_LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
            with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
                print("\nwaiting for another integration run on this machine (%s)" % MACHINE_LOCK, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def users():
    """Creates test users and groups (removed afterwards):
    kmsfs-alice (primary group kmsfs-alice, also in kmsfs-readers),
    kmsfs-bob (only its own group), kmsfs-carol (in kmsfs-readers)."""
    created_users, created_groups = [], []

    def group(name):
        subprocess.run(["groupadd", "-f", name], check=True)
        created_groups.append(name)

    def user(name, groups=()):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            subprocess.run(["userdel", name], capture_output=True)
        args = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group"]
        if groups:
            args += ["--groups", ",".join(groups)]
        subprocess.run(args + [name], check=True)
        created_users.append(name)

    try:
        group("kmsfs-readers")
        user("kmsfs-alice", ["kmsfs-readers"])
        user("kmsfs-bob")
        user("kmsfs-carol", ["kmsfs-readers"])
        yield {n: pwd.getpwnam(n) for n in created_users}
    finally:
        for n in created_users:
            subprocess.run(["userdel", n], capture_output=True)
            subprocess.run(["groupdel", n], capture_output=True)
        for g in created_groups:
            subprocess.run(["groupdel", g], capture_output=True)


URING_PARAM = "/sys/module/fuse/parameters/enable_uring"


@contextlib.contextmanager
def uring_enabled():
    """FUSE over io_uring switched on for the fuse module (restored after);
    skips where this kernel has no such switch."""
    if not os.path.exists(URING_PARAM):
        pytest.skip("SKIP: this kernel has no FUSE over io_uring (%s is missing; Linux 6.14+ built with "
                    "CONFIG_FUSE_IO_URING)" % URING_PARAM)
    before = open(URING_PARAM).read().strip()
    try:
        with open(URING_PARAM, "w") as f:
            f.write("Y")
    except OSError as e:
        pytest.skip("SKIP: cannot switch on FUSE over io_uring (%s): %s" % (URING_PARAM, e))
    try:
        yield
    finally:
        with open(URING_PARAM, "w") as f:
            f.write(before)


@pytest.fixture(params=["dev_fuse", "io_uring"])
def transport(request):
    """Mount options for each way the daemon talks to the kernel: /dev/fuse,
    and FUSE over io_uring (-o io_uring, switched on for the test)."""
    if request.param == "dev_fuse":
        yield ""
    else:
        with uring_enabled():
            yield ",io_uring"
