"""Issue 16 item 4: daemons sharing one KMS quota. The proxy enforces a
token bucket on Decrypt (ThrottlingException "Rate exceeded" above it, as
KMS answers); several mounts prefetch at once through it. Every secret must
decrypt with no failed read, and the requests the quota refused must stay a
small share of those it served: each daemon paces itself once throttled
(RateAdapter) instead of retrying into the limit. Bounds are generous and
nothing is timed (the figures are `make bench`'s fleet section)."""
import json
import os
import subprocess
import time

import pytest

from kmsproxy import TokenBucket

HOSTS = 3
SECRETS = 20
QUOTA = 10.0      # Decrypt/s: 60 Decrypts take 6 s at best


@pytest.fixture
def fleet(tmp_path, kms):
    plaintext = os.urandom(512)
    blob = kms.encrypt_blob(plaintext)    # raw blobs carry no path: every copy is its own Decrypt
    sources = []
    for h in range(HOSTS):
        src = tmp_path / ("host%d" % h)
        src.mkdir()
        for i in range(SECRETS):
            (src / ("s%02d.encrypted" % i)).write_bytes(blob)
        sources.append(src)
    return plaintext, sources


def test_mounts_sharing_a_quota_prefetch_everything_without_hammering_it(fleet, kms, proxy, mount_factory, kmsfs_bin):
    plaintext, sources = fleet
    proxy.quota = TokenBucket(QUOTA, 3)
    env = kms.base_env(endpoint=proxy.url)
    mounts = [mount_factory(src, "allow_uid=0,audit=off,prefetch,kms_rate=adaptive", env=env) for src in sources]
    done = ("prefetch: %d secrets decrypted in" % SECRETS, "prefetch: the rest decrypted")
    deadline = time.time() + 180
    for m in mounts:
        while not any(d in m.log() for d in done):
            assert time.time() < deadline, m.log()
            time.sleep(0.2)
    failed = 0
    for m in mounts:
        for i in range(SECRETS):
            try:
                with open(m.file("s%02d" % i), "rb") as f:
                    assert f.read() == plaintext
            except OSError:
                failed += 1
    assert failed == 0
    sent = sum(1 for t in proxy.requests if t == "TrentService.Decrypt")
    served = proxy.answered("Decrypt", 200)
    # Every secret decrypted exactly once (the reads above were cache hits) ...
    assert served == HOSTS * SECRETS
    # ... the quota was really in the way (three daemons start 8 calls each at once) ...
    assert proxy.quota.throttled > 0
    # ... and the daemons slowed down to it rather than retrying into it:
    # without pacing this ratio was 3-5 (the retries' jittered backoff alone).
    assert sent / served <= 2.0, (sent, served)
    # Each daemon says it paced itself (kmsfs status: the rate it cut to).
    for m in mounts:
        st = json.loads(subprocess.run([kmsfs_bin, "status", "--json", m.path], capture_output=True, text=True,
                                       timeout=30, check=True).stdout)
        assert st["kms"]["rate_cuts"] >= 1, st["kms"]
        assert st["kms"]["paced_rate"] is None or 0.5 <= st["kms"]["paced_rate"] <= 10 * QUOTA, st["kms"]
