"""The README's first command: `make demo` (tools/demo.sh) runs the whole job
and leaves nothing behind. Run here so that a change to the daemon that breaks
the demo fails CI, not the first person who tries kmsfs."""
import os
import pathlib
import pwd
import subprocess

import pytest

from conftest import KMSFS, unsanitized_only

pytestmark = unsanitized_only

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_demo_reads_as_the_allowed_user_refuses_another_and_cleans_up():
    before = set(os.listdir("/tmp"))
    r = subprocess.run(["bash", str(ROOT / "tools" / "demo.sh")], capture_output=True, timeout=300,
                       env=dict(os.environ, KMSFS=str(KMSFS)))
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    assert "s3cr3t-db-password" in out                                  # the allowed user's read
    assert "Permission denied" in r.stderr.decode() + out              # nobody is refused
    audit = [line for line in out.splitlines() if line.startswith("audit ")]
    assert any("result=allowed source=kms" in line for line in audit)
    assert any("uid=65534" in line and "result=denied" in line for line in audit)
    assert not any("s3cr3t" in line for line in audit)
    assert "wiping cached secrets" in out
    # Nothing left: no mount, no demo user, no work directory.
    assert "kmsfs-demo" not in open("/proc/mounts").read()
    with pytest.raises(KeyError):
        pwd.getpwnam("kmsfs-demo")
    assert not [d for d in set(os.listdir("/tmp")) - before if d.startswith("kmsfs-demo.")]
