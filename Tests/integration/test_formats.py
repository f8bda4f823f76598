"""Issue 6: AWS Encryption SDK messages written by the real aws-encryption-cli
(against moto, signature checking on) read byte for byte through one mount:
every algorithm suite the CLI offers, framed over several frames and
unframed, base64-encoded; the mount's required context; and damaged copies
(header, commitment, frame, signature, truncation) that each give EIO and a
log line naming what is wrong while every other file keeps working."""
import errno
import io
import os
import subprocess
import sys
import time

import pytest

# (CLI algorithm name, suite ID). The v1 suites need the commitment policy
# that still allows writing non-committing messages.
SUITES = [
    ("AES_128_GCM_IV12_TAG16", 0x0014),
    ("AES_192_GCM_IV12_TAG16", 0x0046),
    ("AES_256_GCM_IV12_TAG16", 0x0078),
    ("AES_128_GCM_IV12_TAG16_HKDF_SHA256", 0x0114),
    ("AES_192_GCM_IV12_TAG16_HKDF_SHA256", 0x0146),
    ("AES_256_GCM_IV12_TAG16_HKDF_SHA256", 0x0178),
    ("AES_128_GCM_IV12_TAG16_HKDF_SHA256_ECDSA_P256", 0x0214),
    ("AES_192_GCM_IV12_TAG16_HKDF_SHA384_ECDSA_P384", 0x0346),
    ("AES_256_GCM_IV12_TAG16_HKDF_SHA384_ECDSA_P384", 0x0378),
    ("AES_256_GCM_HKDF_SHA512_COMMIT_KEY", 0x0478),
    ("AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384", 0x0578),
]
UNFRAMED = [0x0014, 0x0178, 0x0214, 0x0478, 0x0578]
FRAME = 1024

PLAINTEXTS = {
    "empty": b"",
    "one": b"x",
    "exact": os.urandom(2 * FRAME),            # two full frames and an empty final frame
    "multi": os.urandom(9 * FRAME + 784),      # ten frames
    "cert.pem": b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n",
}
BIG = os.urandom(3 * 1024 * 1024 + 17)        # the CLI's default 4096-byte frames: 769 of them


# The aws-encryption-cli console script is `aws_encryption_sdk_cli:cli`;
# each start of it costs about a second of Python imports, so a batch of
# invocations runs through that same entry point in one interpreter.
BATCH_DRIVER = """
import json, sys
import aws_encryption_sdk_cli
failures = []
for args in json.load(sys.stdin):
    message = aws_encryption_sdk_cli.cli(args)
    if message is not None:
        failures.append("aws-encryption-cli %s: %s" % (" ".join(args), message))
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


def cli_batch(kms, invocations):
    """Runs each argument list as one aws-encryption-cli invocation."""
    import json
    r = subprocess.run([sys.executable, "-c", BATCH_DRIVER], input=json.dumps([["-S"] + a for a in invocations]).encode(),
                       env=kms.env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")


def cli_args(kms, src, out, algorithm=None, frame=None, context=("purpose=test",), extra=()):
    args = ["-e", "-i", str(src), "-o", str(out), "-w", "key=" + kms.key_id, "-c"] + list(context)
    if os.path.isdir(src):
        args.append("-r")
    if algorithm:
        args += ["--algorithm", algorithm]
        if not algorithm.endswith("COMMIT_KEY") and "COMMIT_KEY_" not in algorithm:
            args += ["--commitment-policy", "forbid-encrypt-allow-decrypt"]
    if frame is not None:
        args += ["--frame-length", str(frame)]
    return [str(a) for a in args + list(extra)]


def header_length(message):
    """The header's length (body and authentication tag) by the Python SDK."""
    from aws_encryption_sdk.internal.formatting.deserialize import deserialize_header
    header, raw = deserialize_header(io.BytesIO(message))
    return len(raw) + (16 if header.version.value == 2 else 12 + 16), len(raw)


@pytest.fixture(scope="module")
def cli_tree(tmp_path_factory, kms):
    base = tmp_path_factory.mktemp("formats")
    plain, src = base / "plain", base / "src"
    plain.mkdir()
    for name, data in PLAINTEXTS.items():
        (plain / name).write_bytes(data)
    (base / "big").write_bytes(BIG)
    (base / "other").write_bytes(b"context says other\n")
    jobs = []
    for alg, sid in SUITES:
        out = src / ("%04x" % sid) / "framed"
        out.mkdir(parents=True)
        jobs.append((plain, out, alg, FRAME, ("purpose=test",), ()))
        if sid in UNFRAMED:
            out = src / ("%04x" % sid) / "unframed"
            out.mkdir(parents=True)
            jobs.append((plain, out, alg, 0, ("purpose=test",), ()))
    (src / "more").mkdir()
    jobs.append((base / "big", src / "more" / "big.encrypted", None, None, ("purpose=test",), ()))
    jobs.append((plain / "cert.pem", src / "more" / "encoded.encrypted", None, None, ("purpose=test",), ("--encode",)))
    jobs.append((base / "other", src / "more" / "other.encrypted", None, None, ("purpose=other",), ()))
    start = time.monotonic()
    cli_batch(kms, [cli_args(kms, *job) for job in jobs])
    print("aws-encryption-cli: %d runs in %.1f s" % (len(jobs), time.monotonic() - start))

    # Damaged copies, each with one thing wrong.
    dmg = src / "damaged"
    dmg.mkdir()
    signed = (src / "0578" / "framed" / "multi.encrypted").read_bytes()
    committing = (src / "0478" / "framed" / "multi.encrypted").read_bytes()
    v1 = (src / "0178" / "framed" / "multi.encrypted").read_bytes()

    def flip(data, i, bit=0x01):
        b = bytearray(data)
        b[i] ^= bit
        return bytes(b)

    c_len, c_body = header_length(committing)
    frame_size = 4 + 12 + FRAME + 16
    (dmg / "v1-header.encrypted").write_bytes(flip(v1, 6))                       # message ID byte
    (dmg / "suite.encrypted").write_bytes(flip(v1, 2, 0x08))                     # suite 0x0178 -> 0x0978
    (dmg / "commitment.encrypted").write_bytes(flip(committing, c_body - 1))     # last commitment byte
    (dmg / "frame.encrypted").write_bytes(flip(committing, c_len + 2 * frame_size + 4 + 12 + 100))  # frame 3
    (dmg / "signature.encrypted").write_bytes(flip(signed, len(signed) - 3))
    (dmg / "signed-body.encrypted").write_bytes(flip(signed, len(signed) // 2))
    (dmg / "truncated.encrypted").write_bytes(signed[:-200])
    (dmg / "trailing.encrypted").write_bytes(committing + b"\0")
    (dmg / "garbage.encrypted").write_bytes(os.urandom(300))
    # What an attacker who may write SOURCE can make of a good message
    # without any key: cut it where a frame ends, reorder its frames, or
    # strip its signature and call it an unsigned suite.
    (dmg / "frame-cut.encrypted").write_bytes(committing[:c_len + 5 * frame_size])
    frames = [committing[c_len + i * frame_size:c_len + (i + 1) * frame_size] for i in range(3)]
    (dmg / "frames-swapped.encrypted").write_bytes(committing[:c_len] + frames[0] + frames[2] + frames[1]
                                                   + committing[c_len + 3 * frame_size:])
    sig_len = next(n for n in range(64, 140) if int.from_bytes(signed[-(n + 2):-n], "big") == n)
    unsigned = bytearray(signed[:-(sig_len + 2)])
    assert unsigned[1:3] == b"\x05\x78"
    unsigned[1:3] = b"\x04\x78"
    (dmg / "downgraded.encrypted").write_bytes(bytes(unsigned))
    return src


@pytest.fixture(scope="module")
def formats_mount(cli_tree, kms, kmsfs_bin, tmp_path_factory):
    from conftest import Mount
    d = tmp_path_factory.mktemp("formatsmnt")
    (d / "mnt").mkdir()
    m = Mount(cli_tree, d / "mnt", "allow_uid=0,context=purpose=test", kms.env, d / "kmsfs.log")
    yield m
    m.stop()


def read(m, path):
    with open(m.file(path), "rb") as f:
        data = f.read()
        assert os.fstat(f.fileno()).st_size == len(data)
    return data


@pytest.mark.parametrize("alg,sid", SUITES, ids=["%04x" % s for _, s in SUITES])
def test_every_cli_suite_reads_byte_for_byte(formats_mount, alg, sid):
    layouts = ["framed"] + (["unframed"] if sid in UNFRAMED else [])
    for layout in layouts:
        for name, data in PLAINTEXTS.items():
            assert read(formats_mount, "%04x/%s/%s" % (sid, layout, name)) == data, (alg, layout, name)


def test_large_message_of_many_frames(formats_mount):
    start = time.monotonic()
    assert read(formats_mount, "more/big") == BIG
    print("3 MiB, 769 frames, first open and read: %.3f s" % (time.monotonic() - start))


def test_base64_encoded_message(formats_mount):
    assert read(formats_mount, "more/encoded") == PLAINTEXTS["cert.pem"]


def test_required_context_refuses_other_context(formats_mount):
    with pytest.raises(OSError) as e:
        read(formats_mount, "more/other")
    assert e.value.errno == errno.EIO
    assert formats_mount.wait_log("more/other: encryption context check failed: the mount requires "
                                  "purpose=test but the file carries purpose=other"), formats_mount.log()


DAMAGE = {
    "v1-header": "integrity check failed: bad header: the header authentication tag does not verify",
    "suite": "damaged ciphertext: bad header: unknown algorithm suite 0x978",
    "commitment": "integrity check failed: commitment mismatch",
    "frame": "integrity check failed: bad frame 3 of 10: authentication failed",
    "signature": "integrity check failed: signature mismatch",
    "signed-body": "integrity check failed: signature mismatch",
    "truncated": "damaged ciphertext: truncated: the file ends in",
    "trailing": "damaged ciphertext: 1 unexpected bytes after the end of the message",
    "garbage": "KMS Decrypt failed: InvalidCiphertextException",
    "frame-cut": "damaged ciphertext: truncated: the file ends in frame 6",
    "frames-swapped": "damaged ciphertext: bad frame 2: sequence number 3 out of order",
    "downgraded": "damaged ciphertext: bad header: unsigned suite 0x0478 but the encryption context carries aws-crypto-public-key",
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_damaged_message_gives_eio_and_names_the_damage(formats_mount, name):
    with pytest.raises(OSError) as e:
        read(formats_mount, "damaged/" + name)
    assert e.value.errno == errno.EIO
    assert formats_mount.wait_log("damaged/%s: %s" % (name, DAMAGE[name])), formats_mount.log()
    # Everything else keeps working, and the daemon lives.
    assert read(formats_mount, "0578/framed/multi") == PLAINTEXTS["multi"]
    assert formats_mount.proc.poll() is None


def test_no_plaintext_or_key_material_in_the_log(formats_mount):
    read(formats_mount, "0578/framed/cert.pem")
    log = formats_mount.log().encode()
    assert PLAINTEXTS["cert.pem"][:20] not in log
    assert PLAINTEXTS["multi"][:16] not in log


def test_require_commitment_refuses_the_version_1_suites(cli_tree, kms, kmsfs_bin, tmp_path):
    """`-o require_commitment`, as aws-encryption-cli decrypts by default:
    a message under a suite without key commitment (every version 1 suite)
    gives EIO and one line naming the suite; the committing suites, which
    the CLI writes by default, read as before."""
    from conftest import Mount
    (tmp_path / "mnt").mkdir()
    m = Mount(cli_tree, tmp_path / "mnt", "allow_uid=0,context=purpose=test,require_commitment", kms.env,
              tmp_path / "kmsfs.log")
    try:
        for alg, sid in SUITES:
            path = "%04x/framed/one" % sid
            if sid in (0x0478, 0x0578):
                assert read(m, path) == b"x"
                continue
            with pytest.raises(OSError) as e:
                read(m, path)
            assert e.value.errno == errno.EIO
            assert m.wait_log("%s: refused: the message's algorithm suite 0x%04x (%s) has no key commitment and the "
                              "mount has require_commitment; re-encrypt it with kmsfs encrypt or aws-encryption-cli's "
                              "default suite" % (path, sid, alg)), m.log()
        assert read(m, "more/big") == BIG          # the CLI's default suite
    finally:
        m.stop()
    # kmsfs decrypt --require-commitment, as the mount.
    for sid, ok in ((0x0178, False), (0x0578, True)):
        f = cli_tree / ("%04x" % sid) / "framed" / "one.encrypted"
        r = subprocess.run([kmsfs_bin, "decrypt", "--context", "purpose=test", "--require-commitment", str(f)],
                           env=kms.env, capture_output=True, timeout=60)
        if ok:
            assert r.returncode == 0 and r.stdout == b"x", r.stderr
        else:
            assert r.returncode == 1 and r.stdout == b""
            assert b"has no key commitment" in r.stderr and r.stderr.count(b"\n") == 1, r.stderr
