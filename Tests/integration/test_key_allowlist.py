"""Issue 13 A3 and A4, against moto (signature checking on), through real
mounts and the tools:

- A3: an Encryption SDK message listing 300 encrypted data keys is refused
  on open (EIO, one log line naming the count and the limit) before any KMS
  Decrypt reaches KMS (counted by the proxy), while other files keep
  working; max_encrypted_data_keys= moves the limit.
- A4: kms_key= (key ARN or alias) lets a mount decrypt only under the listed
  keys: raw, base64 and aws-encryption-cli files under the other key give
  EIO and a log line naming the refusal; kmsfs check -o kms_key= and
  kmsfs decrypt --kms-key behave the same; a malformed list refuses to
  mount with one line.
"""
import errno
import json
import os
import subprocess
import time
import uuid

import pytest

from conftest import KMSFS
from test_formats import cli_batch

PLAIN = {
    "raw-a": b"raw secret under key A\n",
    "raw-b": b"raw secret under key B\n",
    "b64-a": b"base64 secret under key A\n",
    "b64-b": b"base64 secret under key B\n",
    "sdk-a": b"sdk message under key A\n" * 10,
    "sdk-b": b"sdk message under key B\n" * 10,
    "sdk-ba": b"sdk message under keys B and A\n" * 10,
}
MANY = 300
FAKE_ARN = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-%012d"


def kmsfs(kms, *args, env=None):
    return subprocess.run([str(KMSFS)] + [str(a) for a in args], env=env or kms.env, capture_output=True, timeout=120)


def many_keys_message(n):
    """A valid Encryption SDK message (the Python SDK writes it) whose
    header lists n "aws-kms" encrypted data keys, none a real KMS
    ciphertext: about 21 KB for 300 keys, as in the issue."""
    import aws_encryption_sdk
    from aws_encryption_sdk.exceptions import DecryptKeyError
    from aws_encryption_sdk.identifiers import CommitmentPolicy
    from aws_encryption_sdk.key_providers.base import MasterKey, MasterKeyConfig, MasterKeyProvider, MasterKeyProviderConfig
    from aws_encryption_sdk.structures import DataKey, EncryptedDataKey

    class Config(MasterKeyConfig):
        provider_id = "aws-kms"

    class Key(MasterKey):
        provider_id = "aws-kms"
        _config_class = Config

        def _generate_data_key(self, algorithm, encryption_context=None):
            return DataKey(key_provider=self.key_provider, data_key=os.urandom(algorithm.data_key_len),
                           encrypted_data_key=os.urandom(8))

        def _encrypt_data_key(self, data_key, algorithm, encryption_context=None):
            return EncryptedDataKey(key_provider=self.key_provider, encrypted_data_key=os.urandom(8))

        def _decrypt_data_key(self, encrypted_data_key, algorithm, encryption_context=None):
            raise DecryptKeyError("not a KMS key")

    class Provider(MasterKeyProvider):
        provider_id = "aws-kms"
        _config_class = MasterKeyProviderConfig

        def _new_master_key(self, key_id):
            return Key(key_id=key_id)

    provider = Provider()
    provider.add_master_keys_from_list([FAKE_ARN % i for i in range(n)])
    client = aws_encryption_sdk.EncryptionSDKClient(commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
    ct, header = client.encrypt(source=b"never decrypted", key_provider=provider, encryption_context={"purpose": "test"})
    assert len(header.encrypted_data_keys) == n
    return ct


@pytest.fixture(scope="module")
def keys(kms):
    """Key A (the session's key), key B, and an alias of A."""
    boto = kms.boto()
    a = boto.describe_key(KeyId=kms.key_id)["KeyMetadata"]["Arn"]
    b = boto.describe_key(KeyId=kms.create_key("kmsfs allow-list key B"))["KeyMetadata"]["Arn"]
    alias = "alias/kmsfs-allow-%s" % uuid.uuid4().hex[:8]
    boto.create_alias(AliasName=alias, TargetKeyId=kms.key_id)
    return {"A": a, "B": b, "alias": alias}


@pytest.fixture(scope="module")
def tree(tmp_path_factory, kms, keys):
    base = tmp_path_factory.mktemp("allowlist")
    plain, src = base / "plain", base / "src"
    plain.mkdir()
    src.mkdir()
    for name, data in PLAIN.items():
        (plain / name).write_bytes(data)
    for name in ("raw-a", "raw-b", "b64-a", "b64-b"):
        key = keys["A"] if name.endswith("-a") else keys["B"]
        kms.seed_encrypt(plain / name, src / (name + ".encrypted"), key_id=key, decode=name.startswith("raw"))
    jobs = []
    for name, wrapping in (("sdk-a", ["A"]), ("sdk-b", ["B"]), ("sdk-ba", ["B", "A"])):
        jobs.append(["-e", "-i", str(plain / name), "-o", str(src / (name + ".encrypted")),
                     "-w"] + ["key=" + keys[k] for k in wrapping] + ["-c", "purpose=test"])
    cli_batch(kms, jobs)
    (src / "many-keys.encrypted").write_bytes(many_keys_message(MANY))
    return src


def read(m, name):
    with open(m.file(name), "rb") as f:
        return f.read()


def eio(m, name):
    with pytest.raises(OSError) as e:
        read(m, name)
    assert e.value.errno == errno.EIO, name


def decrypt_bodies(proxy):
    """Records the JSON body of each Decrypt that reaches the proxy."""
    bodies = []

    def record(n, target, body):
        if target.endswith(".Decrypt"):
            bodies.append(json.loads(body))
        return None
    proxy.body_policy = record
    return bodies


def test_many_data_keys_give_eio_before_any_kms_call(tree, kms, proxy, mount_factory):
    m = mount_factory(tree, "allow_uid=0", env=kms.base_env(endpoint=proxy.url))
    assert read(m, "raw-a") == PLAIN["raw-a"]
    proxy.reset()
    start = time.monotonic()
    eio(m, "many-keys")
    elapsed = time.monotonic() - start
    assert proxy.count("Decrypt") == 0
    assert m.wait_log("many-keys: refused: the message lists %d encrypted data keys, more than the limit of 10 "
                      "(max_encrypted_data_keys=); no KMS call was made" % MANY), m.log()
    print("300-key message refused in %.3f s" % elapsed)
    # Other files keep working, and the daemon lives.
    assert read(m, "sdk-a") == PLAIN["sdk-a"]
    assert read(m, "sdk-ba") == PLAIN["sdk-ba"]
    assert m.proc.poll() is None


def test_max_encrypted_data_keys_moves_the_limit(tree, kms, proxy, mount_factory):
    m = mount_factory(tree, "allow_uid=0,max_encrypted_data_keys=1", env=kms.base_env(endpoint=proxy.url))
    proxy.reset()
    eio(m, "sdk-ba")
    assert proxy.count("Decrypt") == 0
    assert m.wait_log("sdk-ba: refused: the message lists 2 encrypted data keys, more than the limit of 1 "
                      "(max_encrypted_data_keys=); no KMS call was made"), m.log()
    assert read(m, "sdk-a") == PLAIN["sdk-a"]


def test_without_kms_key_any_key_decrypts(tree, mount_factory):
    m = mount_factory(tree, "allow_uid=0")
    for name in ("raw-b", "b64-b", "sdk-b"):
        assert read(m, name) == PLAIN[name]


def test_kms_key_arn_allows_only_that_key(tree, kms, keys, proxy, mount_factory):
    m = mount_factory(tree, "allow_uid=0,kms_key=" + keys["A"], env=kms.base_env(endpoint=proxy.url))
    bodies = decrypt_bodies(proxy)
    for name in ("raw-a", "b64-a", "sdk-a"):
        assert read(m, name) == PLAIN[name]
    # Every Decrypt named key A: KMS enforces the list.
    assert len(bodies) == 3 and all(b.get("KeyId") == keys["A"] for b in bodies), bodies

    # A message under B and A: only A's data key is sent, once.
    del bodies[:]
    assert read(m, "sdk-ba") == PLAIN["sdk-ba"]
    assert [b.get("KeyId") for b in bodies] == [keys["A"]]

    # Raw and base64 blobs under B: KMS refuses the KeyId (moto answers
    # AccessDeniedException, real KMS IncorrectKeyException).
    for name in ("raw-b", "b64-b"):
        del bodies[:]
        eio(m, name)
        assert [b.get("KeyId") for b in bodies] == [keys["A"]]
        assert m.wait_log("%s: refused: KMS refused to decrypt it under %s, the key kms_key= allows: KMS Decrypt failed: "
                          % (name, keys["A"])), m.log()

    # A message under B only: refused locally, no Decrypt at all.
    del bodies[:]
    eio(m, "sdk-b")
    assert bodies == []
    assert m.wait_log("sdk-b: refused: no encrypted data key of the message is under a key kms_key= allows "
                      "(its AWS KMS keys: %s); no KMS call was made" % keys["B"]), m.log()
    assert m.proc.poll() is None


def test_kms_key_alias_is_enforced_by_kms(tree, kms, keys, proxy, mount_factory):
    m = mount_factory(tree, "allow_uid=0,kms_key=" + keys["alias"], env=kms.base_env(endpoint=proxy.url))
    bodies = decrypt_bodies(proxy)
    for name in ("raw-a", "b64-a", "sdk-a", "sdk-ba"):
        assert read(m, name) == PLAIN[name]
    assert bodies and all(b.get("KeyId") == keys["alias"] for b in bodies), bodies
    for name in ("raw-b", "b64-b"):
        eio(m, name)
        assert m.wait_log("%s: refused: KMS refused to decrypt it under %s, the key kms_key= allows" % (name, keys["alias"])), m.log()
    eio(m, "sdk-b")
    assert m.wait_log("sdk-b: refused: KMS refused the data key of %s under %s, which kms_key= allows: KMS Decrypt failed: "
                      % (keys["B"], keys["alias"])), m.log()


def test_several_keys_are_tried_in_turn(tree, kms, keys, proxy, mount_factory):
    m = mount_factory(tree, "allow_uid=0,kms_key=%s+%s" % (keys["B"], keys["alias"]), env=kms.base_env(endpoint=proxy.url))
    bodies = decrypt_bodies(proxy)
    assert read(m, "raw-a") == PLAIN["raw-a"]
    assert [b.get("KeyId") for b in bodies] == [keys["B"], keys["alias"]]
    for name in ("raw-b", "sdk-b", "sdk-a"):
        assert read(m, name) == PLAIN[name]


def test_check_takes_the_same_list(tree, kms, keys):
    r = kmsfs(kms, "check", tree, "-o", "kms_key=" + keys["A"])
    assert r.returncode == 1, r.stderr
    lines = r.stdout.decode().splitlines()
    status = {line.split()[1].rstrip(":"): line for line in lines[:-1]}
    for name in ("raw-a", "b64-a", "sdk-a", "sdk-ba"):
        assert status[name].startswith("OK   %s format=" % name) and " key=%s " % keys["A"] in status[name], status[name]
    for name in ("raw-b", "b64-b"):
        assert status[name].startswith("FAIL %s: refused: KMS refused to decrypt it under %s, the key kms_key= allows: "
                                       % (name, keys["A"])), status[name]
    assert status["sdk-b"] == ("FAIL sdk-b: refused: no encrypted data key of the message is under a key kms_key= "
                               "allows (its AWS KMS keys: %s); no KMS call was made" % keys["B"])
    assert status["many-keys"] == ("FAIL many-keys: refused: the message lists %d encrypted data keys, more than the "
                                   "limit of 10 (max_encrypted_data_keys=); no KMS call was made" % MANY)
    assert lines[-1] == "4 of 8 secrets decrypted, 4 failed"
    r = kmsfs(kms, "check", tree, "-o", "kms_key=1234abcd")
    assert r.returncode == 2 and r.stdout == b""
    assert r.stderr.decode() == ("kmsfs: option 'kms_key=1234abcd': '1234abcd' is neither a key ARN, an alias ARN nor "
                                 "alias/NAME (a bare key ID would name that key in any account: give its ARN)\n")


def test_decrypt_takes_kms_key(tree, kms, keys):
    r = kmsfs(kms, "decrypt", "--kms-key", keys["A"], tree / "raw-a.encrypted")
    assert (r.returncode, r.stdout, r.stderr) == (0, PLAIN["raw-a"], b"")
    r = kmsfs(kms, "decrypt", "--kms-key", keys["A"], tree / "raw-b.encrypted")
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr.decode().startswith("kmsfs: %s: refused: KMS refused to decrypt it under %s, the key kms_key= allows: "
                                        % (tree / "raw-b.encrypted", keys["A"])), r.stderr
    r = kmsfs(kms, "decrypt", "--kms-key", keys["A"], tree / "sdk-b.encrypted")
    assert r.returncode == 1 and r.stdout == b""
    assert "refused: no encrypted data key of the message is under a key kms_key= allows" in r.stderr.decode()
    # Repeatable and '+'-separated alike.
    r = kmsfs(kms, "decrypt", "--kms-key", keys["B"], "--kms-key", keys["A"], tree / "raw-a.encrypted")
    assert (r.returncode, r.stdout) == (0, PLAIN["raw-a"])
    r = kmsfs(kms, "decrypt", "--kms-key", keys["B"] + "+" + keys["alias"], tree / "sdk-a.encrypted")
    assert (r.returncode, r.stdout) == (0, PLAIN["sdk-a"])
    r = kmsfs(kms, "decrypt", tree / "many-keys.encrypted")
    assert r.returncode == 1
    assert "refused: the message lists 300 encrypted data keys, more than the limit of 10" in r.stderr.decode()
    r = kmsfs(kms, "decrypt", "--max-encrypted-data-keys", "1", tree / "sdk-ba.encrypted")
    assert r.returncode == 1 and "more than the limit of 1 (max_encrypted_data_keys=)" in r.stderr.decode()
    r = kmsfs(kms, "decrypt", "--kms-key", "alias/", tree / "raw-a.encrypted")
    assert r.returncode == 2 and r.stdout == b""
    assert r.stderr.decode().count("\n") == 1 and "--kms-key alias/: 'alias/' is not an alias name" in r.stderr.decode()


@pytest.mark.parametrize("option,message", [
    ("kms_key=arn:aws:kms:us-east-1:1234:key/x",
     "option 'kms_key=arn:aws:kms:us-east-1:1234:key/x': 'arn:aws:kms:us-east-1:1234:key/x' is not a KMS key or alias ARN"),
    ("max_encrypted_data_keys=0", "option 'max_encrypted_data_keys=0': expected a whole number from 1 to 100"),
])
def test_bad_options_refuse_to_mount_with_one_line(tree, kms, tmp_path, option, message):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run([str(KMSFS), str(tree), str(mnt), "-f", "-o", option], env=kms.env, capture_output=True, timeout=30)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("kmsfs: " + message), err
    assert not os.path.ismount(mnt)


def test_a_live_remount_cannot_change_the_list(tree, kms, keys, mount_factory):
    m = mount_factory(tree, "allow_uid=0,kms_key=" + keys["A"])
    eio(m, "raw-b")

    def remount(opts):
        return subprocess.run([str(KMSFS), str(tree), m.path, "-o", "remount," + opts], capture_output=True, timeout=30)

    for change in ("kms_key=" + keys["B"], "max_encrypted_data_keys=50"):
        r = remount(change)
        name = change.split("=")[0]
        assert r.returncode != 0
        assert r.stderr.decode().strip().endswith("option '%s' cannot change on a live mount (nothing was changed); "
                                                  "unmount and mount again to change it" % name), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    # Naming the same list again changes nothing and is accepted.
    r = remount("kms_key=%s,ttl=1h" % keys["A"])
    assert r.returncode == 0, r.stderr
    eio(m, "raw-b")
    assert read(m, "raw-a") == PLAIN["raw-a"]
