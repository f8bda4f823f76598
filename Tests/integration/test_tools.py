"""Issue 6: `kmsfs encrypt`, `kmsfs decrypt` and `kmsfs check`, run as built
against moto (signature checking on): exact output lines and exit codes,
messages the real aws-encryption-cli decrypts, the path binding that makes a
renamed, copied or swapped ciphertext refuse to decrypt (in the tools and
through a mount), and the size limits."""
import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import time

import pytest

from conftest import KMSFS, unsanitized_only

PLAIN = {
    "app/db.password": b"correct horse battery staple\n",
    "ssl.pem": b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n",
    "empty": b"",
    "exact": os.urandom(4096),                         # one full frame and an empty final frame
    "app/deeper/keystore.p12": os.urandom(1024 * 1024 + 1),
}


def kmsfs(kms, *args, input=None):
    return subprocess.run([str(KMSFS)] + [str(a) for a in args], env=kms.env, input=input,
                          capture_output=True, timeout=120)


def key_arn(kms):
    return kms.boto().describe_key(KeyId=kms.key_id)["KeyMetadata"]["Arn"]


def listing(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory, kms):
    """SOURCE with PLAIN written and encrypted by one `kmsfs encrypt --root`."""
    src = tmp_path_factory.mktemp("tools") / "src"
    for name, data in PLAIN.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    files = [src / n for n in PLAIN]
    start = time.monotonic()
    r = kmsfs(kms, "encrypt", "--key-id", kms.key_id, "--root", src, "--context", "team=web", *files)
    elapsed = time.monotonic() - start
    print("kmsfs encrypt: %d files (%d bytes) in %.2f s" % (len(files), sum(map(len, PLAIN.values())), elapsed))
    return src, r


def test_encrypt_prints_one_line_per_file_and_writes_0600_messages(encrypted, kms):
    src, r = encrypted
    arn = key_arn(kms)
    assert r.returncode == 0, r.stderr
    assert r.stderr == b""
    assert r.stdout.decode().splitlines() == [
        "OK   %s -> %s.encrypted path=%s key=%s size=%d" % (src / n, src / n, n, arn, len(d)) for n, d in PLAIN.items()]
    for name, data in PLAIN.items():
        ct = (src / (name + ".encrypted")).read_bytes()
        assert ct[:3] == b"\x02\x05\x78"                     # v2, suite 0x0578
        assert stat.S_IMODE(os.stat(src / (name + ".encrypted")).st_mode) == 0o600
        if len(data) >= 16:
            assert data[:16] not in ct
    # Nothing but the ciphertexts was written: no temporary files left.
    assert listing(src) == sorted(set(PLAIN) | {n + ".encrypted" for n in PLAIN} | {"app", "app/deeper"})


def test_aws_encryption_cli_decrypts_what_kmsfs_encrypt_wrote(encrypted, kms, tmp_path):
    src, _ = encrypted
    runs = []
    for name in PLAIN:
        out = tmp_path / name.replace("/", "_")
        # -c on decrypt: the CLI itself requires these pairs in the message.
        runs.append(["-S", "-d", "-i", str(src / (name + ".encrypted")), "-o", str(out), "-w", "discovery=true",
                     "-c", "kmsfs:path=" + name, "team=web"])
    driver = ("import json, sys, aws_encryption_sdk_cli\n"
              "bad = [m for m in (aws_encryption_sdk_cli.cli(a) for a in json.load(sys.stdin)) if m]\n"
              "print(bad); sys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", driver], input=json.dumps(runs).encode(), env=kms.env,
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for name, data in PLAIN.items():
        assert (tmp_path / name.replace("/", "_")).read_bytes() == data, name


def test_decrypt_prints_the_plaintext(encrypted, kms):
    src, _ = encrypted
    for name, data in PLAIN.items():
        r = kmsfs(kms, "decrypt", src / (name + ".encrypted"))
        assert (r.returncode, r.stdout, r.stderr) == (0, data, b""), name
    r = kmsfs(kms, "decrypt", "--root", src, "--context", "team=web", src / "app/db.password.encrypted")
    assert (r.returncode, r.stdout) == (0, PLAIN["app/db.password"])


def test_decrypt_checks_the_binding_and_the_context(encrypted, kms, tmp_path):
    src, _ = encrypted
    f = src / "app/db.password.encrypted"
    r = kmsfs(kms, "decrypt", "--root", src / "app", f)
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr.decode() == (
        "kmsfs: %s: encryption context check failed: the file is bound to 'app/db.password' (kmsfs:path) but is "
        "served as 'db.password'; it was renamed, copied or swapped, or encrypted without --root SOURCE\n" % f)
    copy = tmp_path / "app" / "other.encrypted"
    copy.parent.mkdir()
    shutil.copy(f, copy)
    r = kmsfs(kms, "decrypt", copy)
    assert r.returncode == 1 and r.stdout == b""
    assert "is bound to 'app/db.password' (kmsfs:path) but is served as '%s'" % str(copy)[:-len(".encrypted")] in r.stderr.decode()
    r = kmsfs(kms, "decrypt", "--context", "team=db", f)
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr.decode() == ("kmsfs: %s: encryption context check failed: the mount requires team=db but the "
                                 "file carries team=web\n" % f)


def test_check_prints_one_status_line_per_secret(encrypted, kms, tmp_path):
    src, _ = encrypted
    tree = tmp_path / "tree"
    shutil.copytree(src, tree)
    # The seed pipeline's raw KMS blob sits beside the SDK messages.
    (tmp_path / "seed").write_bytes(b"seed-secret")
    kms.seed_encrypt(tmp_path / "seed", tree / "seed.encrypted")
    arn = key_arn(kms)
    r = kmsfs(kms, "check", tree, "-o", "context=team=web")
    out = r.stdout.decode().splitlines()
    assert r.returncode == 1   # the seed blob has no team=web context: KMS refuses
    expected = {
        name: "OK   %s format=aws-encryption-sdk-v2/0x0578/frame-4096 key=%s context=kmsfs:path=%s,team=web size=%d"
              % (name, arn, name, len(data)) for name, data in PLAIN.items()}
    for name, line in expected.items():
        assert line in out, (line, out)
    assert [l for l in out if l.startswith("FAIL seed:")][0].startswith("FAIL seed: KMS Decrypt failed: InvalidCiphertextException")
    assert out[-1] == "5 of 6 secrets decrypted, 1 failed"
    assert len(out) == 7
    r = kmsfs(kms, "check", tree)
    assert r.returncode == 0, r.stdout
    out = r.stdout.decode().splitlines()
    assert "OK   seed format=kms-blob key=%s context=- size=11" % arn in out
    assert out[-1] == "6 of 6 secrets decrypted"
    for data in list(PLAIN.values()) + [b"seed-secret"]:
        if len(data) >= 8:
            assert data[:8] not in r.stdout + r.stderr


def test_swap_attack_fails_in_check_and_through_the_mount(encrypted, kms, tmp_path, mount_factory):
    src, _ = encrypted
    tree = tmp_path / "swap"
    tree.mkdir()
    for n in ["a", "b", "c"]:
        (tree / n).write_bytes(b"plaintext-7f3e-" + n.encode())
    (tree / "sub").mkdir()
    (tree / "sub" / "d").write_bytes(b"plaintext-7f3e-d")
    r = kmsfs(kms, "encrypt", "--key-id", kms.key_id, "--root", tree, tree / "a", tree / "b", tree / "c")
    assert r.returncode == 0, r.stdout + r.stderr
    r = kmsfs(kms, "encrypt", "--key-id", kms.key_id, tree / "sub" / "d")   # no --root: bound to "d"
    assert r.returncode == 0 and b" path=d " in r.stdout
    for n in ["a", "b", "c", "sub/d"]:
        (tree / n).unlink()
    os.rename(tree / "a.encrypted", tree / "t.encrypted")             # swap a and b
    os.rename(tree / "b.encrypted", tree / "a.encrypted")
    os.rename(tree / "t.encrypted", tree / "b.encrypted")
    shutil.copy(tree / "c.encrypted", tree / "copy.encrypted")       # copy c under another name

    r = kmsfs(kms, "check", tree)
    assert r.returncode == 1
    lines = r.stdout.decode().splitlines()
    hint = "it was renamed, copied or swapped, or encrypted without --root SOURCE"
    assert lines == [
        "FAIL a: encryption context check failed: the file is bound to 'b' (kmsfs:path) but is served as 'a'; " + hint,
        "FAIL b: encryption context check failed: the file is bound to 'a' (kmsfs:path) but is served as 'b'; " + hint,
        lines[2],
        "FAIL copy: encryption context check failed: the file is bound to 'c' (kmsfs:path) but is served as 'copy'; " + hint,
        "FAIL sub/d: encryption context check failed: the file is bound to 'd' (kmsfs:path) but is served as 'sub/d'; " + hint,
        "1 of 5 secrets decrypted, 4 failed",
    ]
    assert lines[2].startswith("OK   c format=aws-encryption-sdk-v2/0x0578/frame-4096 ")

    m = mount_factory(tree, "allow_uid=0")
    for name, bound in [("a", "b"), ("b", "a"), ("copy", "c"), ("sub/d", "d")]:
        with pytest.raises(OSError) as e:
            open(m.file(name), "rb").read()
        assert e.value.errno == errno.EIO, name
        assert m.wait_log("%s: encryption context check failed: the file is bound to '%s' (kmsfs:path) but is "
                          "served as '%s'" % (name, bound, name)), m.log()
    assert open(m.file("c"), "rb").read() == b"plaintext-7f3e-c"
    assert b"plaintext-7f3e" not in m.log().encode()


def test_size_limits_are_enforced_before_reading(kms, tmp_path):
    big = tmp_path / "big"
    big.write_bytes(os.urandom(2048))
    small = tmp_path / "small"
    small.write_bytes(b"s")
    r = kmsfs(kms, "encrypt", "--key-id", kms.key_id, "--max-size", "1K", big, small)
    assert r.returncode == 1
    assert r.stdout.decode().splitlines()[0] == "FAIL %s: 2048 bytes is over the 1024-byte plaintext limit (--max-size)" % big
    assert r.stdout.decode().splitlines()[1].startswith("OK   %s -> %s.encrypted path=small " % (small, small))
    assert not (tmp_path / "big.encrypted").exists()
    size = os.path.getsize(tmp_path / "small.encrypted")
    r = kmsfs(kms, "decrypt", "--max-size", "100", tmp_path / "small.encrypted")
    assert (r.returncode, r.stdout) == (1, b"")
    assert r.stderr.decode() == "kmsfs: %s: %d bytes is over the 100-byte ciphertext limit (--max-size)\n" % (
        tmp_path / "small.encrypted", size)
    r = kmsfs(kms, "check", tmp_path, "-o", "max_size=100")
    assert r.returncode == 1
    assert r.stdout.decode().splitlines() == [
        "FAIL small: %d bytes is over the 100-byte ciphertext limit (max_size=)" % size,
        "0 of 1 secrets decrypted, 1 failed"]
    r = kmsfs(kms, "decrypt", "--max-size", "lots", tmp_path / "small.encrypted")
    assert r.returncode == 2 and b"--max-size lots" in r.stderr


def test_encrypt_reports_each_bad_file_and_goes_on(kms, tmp_path):
    good = tmp_path / "good"
    good.write_bytes(b"fine")
    already = tmp_path / "x.encrypted"
    already.write_bytes(b"not again")
    outside = tmp_path / "outside"
    outside.write_bytes(b"o")
    (tmp_path / "root").mkdir()
    r = kmsfs(kms, "encrypt", "--key-id", kms.key_id, tmp_path / "missing", already, good)
    assert r.returncode == 1
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "FAIL %s: No such file or directory" % (tmp_path / "missing")
    assert lines[1] == "FAIL %s: it already ends in .encrypted" % already
    assert lines[2].startswith("OK   %s -> %s.encrypted path=good " % (good, good))
    r = kmsfs(kms, "encrypt", "--key-id", kms.key_id, "--root", tmp_path / "root", outside)
    assert r.returncode == 1
    assert r.stdout.decode().startswith("FAIL %s: it is not under --root %s" % (outside, tmp_path / "root"))
    r = kmsfs(kms, "encrypt", "--key-id", "alias/no-such-key", good)
    assert r.returncode == 1 and "NotFoundException" in r.stdout.decode()
    r = kmsfs(kms, "encrypt", "--key-id", kms.key_id, "--context", "kmsfs:path=x", good)
    assert r.returncode == 2
    assert r.stderr.decode() == "kmsfs: --context kmsfs:path=...: 'kmsfs:path' is set by kmsfs encrypt itself\n"
    r = kmsfs(kms, "encrypt", "--key-id", kms.key_id, "--context", "novalue", good)
    assert r.returncode == 2 and r.stderr.decode() == "kmsfs: --context novalue: expected KEY=VALUE\n"


def test_encryption_context_keys_are_compared_by_bytes(kms, tmp_path):
    """A key given twice made a file no reader accepts (exit 0, "OK"); it is
    refused before KMS is asked. Keys that differ in bytes but not as
    Unicode (NFC and NFD) are two keys to the SDKs, and now to kmsfs's
    reader too, which had refused such a file as naming one key twice."""
    from test_formats import cli_args, cli_batch
    f = tmp_path / "dup"
    f.write_bytes(b"x")
    r = kmsfs(kms, "encrypt", "--key-id", kms.key_id, "--context", "a=1", "--context", "a=2", f)
    assert r.returncode == 2
    assert r.stderr.decode() == "kmsfs: --context a=...: 'a' is given twice (no reader would accept the file)\n"
    assert not (tmp_path / "dup.encrypted").exists()
    g = tmp_path / "nfc"
    g.write_bytes(b"two keys\n")
    cli_batch(kms, [cli_args(kms, g, tmp_path / "nfc.encrypted", context=("caf\u00e9=1", "cafe\u0301=2"))])
    r = kmsfs(kms, "decrypt", tmp_path / "nfc.encrypted")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"two keys\n"


def test_encrypt_replaces_an_older_ciphertext_atomically(kms, tmp_path):
    f = tmp_path / "rotating"
    f.write_bytes(b"v1")
    assert kmsfs(kms, "encrypt", "--key-id", kms.key_id, f).returncode == 0
    first = os.stat(tmp_path / "rotating.encrypted")
    f.write_bytes(b"v2")
    assert kmsfs(kms, "encrypt", "--key-id", kms.key_id, f).returncode == 0
    second = os.stat(tmp_path / "rotating.encrypted")
    assert first.st_ino != second.st_ino                               # renamed into place, not rewritten
    assert kmsfs(kms, "decrypt", tmp_path / "rotating.encrypted").stdout == b"v2"
    assert sorted(os.listdir(tmp_path)) == ["rotating", "rotating.encrypted"]


def test_require_binding_refuses_unbound_ciphertexts(encrypted, kms, tmp_path, mount_factory):
    src, _ = encrypted
    tree = tmp_path / "bound"
    tree.mkdir()
    (tree / "bound").write_bytes(b"plaintext-9c1d-bound")
    r = kmsfs(kms, "encrypt", "--key-id", kms.key_id, "--root", tree, tree / "bound")
    assert r.returncode == 0, r.stdout + r.stderr
    (tree / "bound").unlink()
    (tree / "raw.encrypted").write_bytes(kms.encrypt_blob(b"plaintext-9c1d-raw"))
    r = kmsfs(kms, "check", "-o", "require_binding", tree)
    lines = r.stdout.decode().splitlines()
    assert r.returncode == 1
    assert lines[0].startswith("OK   bound ")
    assert lines[1] == ("FAIL raw: encryption context check failed: a raw KMS ciphertext is not bound to its path "
                        "(kmsfs:path) and the mount has require_binding; re-encrypt it with kmsfs encrypt --root SOURCE")
    m = mount_factory(tree, "allow_uid=0,require_binding")
    assert open(m.file("bound"), "rb").read() == b"plaintext-9c1d-bound"
    with pytest.raises(OSError) as e:
        open(m.file("raw"), "rb").read()
    assert e.value.errno == errno.EIO
    assert m.wait_log("raw: encryption context check failed: a raw KMS ciphertext is not bound"), m.log()


def test_an_nfd_rename_of_a_bound_nfc_name_is_refused(kms, tmp_path, mount_factory):
    """Issue 13 A13: the kmsfs:path binding compared Swift Strings, which are
    equal under Unicode canonical equivalence, so a file bound to 'café'
    (NFC) was served as 'cafe\\u0301' (NFD), another name to the policy."""
    tree = tmp_path / "nfd"
    tree.mkdir()
    nfc, nfd = "caf\u00e9.password", "cafe\u0301.password"
    (tree / nfc).write_bytes(b"plaintext-nfc-91d2")
    r = kmsfs(kms, "encrypt", "--key-id", kms.key_id, "--root", tree, tree / nfc)
    assert r.returncode == 0, r.stdout + r.stderr
    (tree / nfc).unlink()
    os.rename(tree / (nfc + ".encrypted"), tree / (nfd + ".encrypted"))
    m = mount_factory(tree, "allow_uid=0,require_binding")
    assert os.listdir(m.path) == [nfd]
    with pytest.raises(OSError) as e:
        open(m.file(nfd), "rb").read()
    assert e.value.errno == errno.EIO
    assert m.wait_log("(kmsfs:path) but is served as"), m.log()
    assert b"plaintext-nfc-91d2" not in m.log().encode()


def test_check_walks_a_very_deep_source_without_recursion(kms, tmp_path):
    """SOURCE is anyone's to shape: check walks it with an explicit stack,
    reports what it cannot list (names past PATH_MAX) and goes on."""
    src = tmp_path / "deep"
    src.mkdir()
    (src / "top.encrypted").write_bytes(kms.encrypt_blob(b"top"))
    fds = [os.open(src, os.O_RDONLY | os.O_DIRECTORY)]
    try:
        for _ in range(2500):                    # 5,000 bytes of path: past PATH_MAX
            os.mkdir("d", dir_fd=fds[-1])
            fds.append(os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
        os.close(os.open("leaf.encrypted", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fds[-1]))
        r = kmsfs(kms, "check", src)
        out = r.stdout.decode()
        assert "OK   top " in out, out[-2000:]
        assert r.returncode == 1 and "FAIL d/d/d" in out              # the part too deep to name
        assert out.strip().splitlines()[-1].endswith("failed")           # and it reached the summary
    finally:
        # Removed bottom up through the open directories (shutil.rmtree and
        # pytest's own clean-up recurse, and would fail on this tree).
        with contextlib.suppress(FileNotFoundError):
            os.unlink("leaf.encrypted", dir_fd=fds[-1])
        for i in range(len(fds) - 1, 0, -1):
            os.close(fds[i])
            with contextlib.suppress(FileNotFoundError):
                os.rmdir("d", dir_fd=fds[i - 1])
        os.close(fds[0])


@unsanitized_only   # the sanitizers' mlock is a no-op that returns 0: nothing is ever unlocked there
def test_a_tool_says_when_plaintext_is_held_unlocked(kms, tmp_path, users, public_tmp):
    """A user whose locked-memory limit is below the plaintext's size: the
    tool still encrypts (best effort), and says the bytes may be swapped,
    once, rather than swap plaintext silently."""
    d = public_tmp / "unlocked-tool"
    d.mkdir()
    os.chmod(d, 0o777)
    big = d / "big.key"
    big.write_bytes(os.urandom(256 * 1024))
    os.chmod(big, 0o644)
    argv = ["prlimit", "--memlock=65536:65536", "setpriv", "--reuid", "kmsfs-alice", "--regid", "kmsfs-alice",
            "--init-groups", str(KMSFS), "encrypt", "--key-id", kms.key_id, str(big)]
    r = subprocess.run(argv, env=kms.env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert err.count("secret bytes are held in memory that is not locked") == 1, err
    assert (d / "big.key.encrypted").exists()
    # Root is not held to the limit (CAP_IPC_LOCK): no warning.
    small = tmp_path / "small.key"
    small.write_bytes(os.urandom(256 * 1024))
    r = subprocess.run(["prlimit", "--memlock=65536:65536", str(KMSFS), "encrypt", "--key-id", kms.key_id, str(small)],
                       env=kms.env, capture_output=True, timeout=120)
    assert r.returncode == 0 and b"not locked" not in r.stderr, r.stderr
