"""Issue 3: KMS is called the way the SDKs call it, in the standard retry
mode, with bounded timeouts and reused connections. A fault-injecting proxy
(kmsproxy.py) sits between the mount and moto; every read must still
succeed, and an open must never outlast the documented bound."""
import errno
import os
import threading
import time

import pytest

from kmsproxy import Fault

N = 8


@pytest.fixture(scope="module")
def secrets():
    return {"s%02d" % i: ("secret number %d " % i).encode() * (i + 1) for i in range(N)}


@pytest.fixture(scope="module")
def tree(tmp_path_factory, kms, secrets):
    src = tmp_path_factory.mktemp("retrysrc")
    for name, data in secrets.items():
        (src / (name + ".encrypted")).write_bytes(kms.encrypt_blob(data))
    return src


def mount_through(proxy, kms, mount_factory, tree, options=""):
    env = kms.base_env(endpoint=proxy.url)
    return mount_factory(tree, "allow_uid=0" + ("," + options if options else ""), env=env)


def read_parallel(m, names):
    """Reads every file at once from its own thread; returns name -> bytes or OSError."""
    out = {}

    def one(name):
        try:
            with open(m.file(name), "rb") as f:
                out[name] = f.read()
        except OSError as e:
            out[name] = e

    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def faults_per_call(*faults):
    """A body policy: the k-th attempt of each distinct request gets faults[k]
    (None once they run out), whatever the interleaving of parallel calls."""
    seen = {}

    def policy(n, target, body):
        k = seen.get(body, 0)
        seen[body] = k + 1
        return faults[k] if k < len(faults) else None

    return policy


@pytest.mark.parametrize("fault", [Fault.THROTTLE, Fault.UNAVAILABLE, Fault.RESET])
def test_every_read_succeeds_when_the_first_attempt_fails(tree, kms, proxy, mount_factory, secrets, fault):
    m = mount_through(proxy, kms, mount_factory, tree)
    proxy.body_policy = faults_per_call(fault)
    got = read_parallel(m, secrets)
    assert got == secrets
    assert len(proxy.requests) == 2 * N          # each call: one failed attempt, one retry
    assert proxy.count("Decrypt") == N


def test_every_read_succeeds_through_two_different_faults(tree, kms, proxy, mount_factory, secrets):
    """Three attempts (the default): throttled, then reset, then answered."""
    m = mount_through(proxy, kms, mount_factory, tree)
    proxy.body_policy = faults_per_call(Fault.THROTTLE, Fault.RESET)
    t0 = time.monotonic()
    assert read_parallel(m, secrets) == secrets
    assert len(proxy.requests) == 3 * N
    # Full-jitter backoff: at most 1 s, then at most 2 s.
    assert time.monotonic() - t0 < 3 + 2


def test_a_slow_answer_is_waited_for(tree, kms, proxy, mount_factory, secrets):
    m = mount_through(proxy, kms, mount_factory, tree)
    proxy.delay = 1.5
    proxy.body_policy = faults_per_call(Fault.SLOW)
    assert read_parallel(m, list(secrets)[:4]) == {k: secrets[k] for k in list(secrets)[:4]}
    assert len(proxy.requests) == 4               # slow is not failed: no retry


def test_a_hung_attempt_is_cut_off_and_retried(tree, kms, proxy, mount_factory, secrets):
    """timeout=4: each attempt gets at most 2 s; the first hangs 3 s, is cut
    off, and the retry answers within the call's 4 s."""
    m = mount_through(proxy, kms, mount_factory, tree, "timeout=4")
    proxy.delay = 3
    proxy.body_policy = faults_per_call(Fault.SLOW)
    names = list(secrets)[:3]
    t0 = time.monotonic()
    assert read_parallel(m, names) == {k: secrets[k] for k in names}
    assert time.monotonic() - t0 < 4 + 0.5
    assert len(proxy.requests) == 2 * len(names)


def test_an_open_never_outlasts_the_timeout(tree, kms, proxy, mount_factory, secrets):
    """KMS hangs for good: the open fails with EIO within the call deadline
    (timeout=2), not later. Each attempt may take half of it (1 s); when
    the random backoff leaves too little time for a second attempt, the
    call ends after the first, at about 1 s."""
    m = mount_through(proxy, kms, mount_factory, tree, "timeout=2")
    proxy.delay = 30
    proxy.policy = lambda n, target: Fault.SLOW
    t0 = time.monotonic()
    with pytest.raises(OSError) as e:
        open(m.file("s00"), "rb").read()
    elapsed = time.monotonic() - t0
    assert e.value.errno == errno.EIO
    assert 0.9 <= elapsed < 2 + 0.5, "open took %.2f s" % elapsed
    assert m.wait_log("did not answer in time")


def test_retries_option_sets_max_attempts(tree, kms, proxy, mount_factory, secrets):
    m = mount_through(proxy, kms, mount_factory, tree, "retries=1")
    proxy.body_policy = faults_per_call(Fault.UNAVAILABLE)
    with pytest.raises(OSError) as e:
        open(m.file("s01"), "rb").read()
    assert e.value.errno == errno.EIO
    assert len(proxy.requests) == 1               # no retry with one attempt
    assert m.wait_log("ServiceUnavailableException")


def test_sequential_calls_reuse_one_connection(tree, kms, proxy, mount_factory, secrets):
    m = mount_through(proxy, kms, mount_factory, tree)
    for name, data in secrets.items():
        with open(m.file(name), "rb") as f:
            assert f.read() == data
    assert proxy.count("Decrypt") == N
    assert proxy.connections < N
    assert proxy.connections == 1, "%d connections for %d sequential calls" % (proxy.connections, N)


def test_a_throttled_storm_loses_no_read(tmp_path, kms, proxy, mount_factory):
    """48 readers over 120 cold secrets while KMS throttles every other
    request (by arrival): kmsfs slows its calls down instead of failing,
    and makes exactly one successful Decrypt per secret."""
    src = tmp_path / "storm"
    src.mkdir()
    blob = kms.encrypt_blob(b"storm-secret")
    names = ["s%03d" % i for i in range(120)]
    for n in names:
        (src / (n + ".encrypted")).write_bytes(blob)
    m = mount_factory(src, "allow_uid=0", env=kms.base_env(endpoint=proxy.url))
    proxy.reset()
    proxy.policy = lambda n, target: Fault.THROTTLE if n % 2 == 0 else None
    todo = list(names)
    lock = threading.Lock()
    failures = []

    def reader():
        while True:
            with lock:
                if not todo:
                    return
                n = todo.pop()
            try:
                with open(m.file(n), "rb") as f:
                    if f.read() != b"storm-secret":
                        failures.append((n, "wrong bytes"))
            except OSError as e:
                failures.append((n, e))

    threads = [threading.Thread(target=reader) for _ in range(48)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == [], m.log()[-3000:]
    assert proxy.count("Decrypt") == len(names)          # successful calls: one per secret
    assert len(proxy.requests) > len(names)              # and KMS did throttle
