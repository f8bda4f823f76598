#!/usr/bin/env python3
"""Writes the golden AWS Encryption SDK messages in this directory.

Run once (python3 make_fixtures.py) with the aws-encryption-sdk package
(the library under aws-encryption-cli); the outputs are committed and read
by Tests/KMSTests/EncryptionSDKTests.swift.

KMS keys in the test emulator differ on every run, so these messages use a
stand-in "aws-kms" master key with a FIXED data key: the unit tests answer
KMS Decrypt from a fake transport. Each encrypted data key is the text
"fixture-key-N" (N = data key length); the fake KMS returns the first N
bytes of DATA_KEY for it, and refuses "fixture-deny".

Every file decrypts to plaintext.txt (0578-exact-frames: its first 256
bytes) and, unless named otherwise, carries the context
{"purpose": "golden", "kmsfs:path": "golden/<file name without .esdk>"}.
"""
import os
import sys

import aws_encryption_sdk
from aws_encryption_sdk.exceptions import DecryptKeyError
from aws_encryption_sdk.identifiers import Algorithm, CommitmentPolicy
from aws_encryption_sdk.key_providers.base import MasterKey, MasterKeyConfig, MasterKeyProvider, MasterKeyProviderConfig
from aws_encryption_sdk.structures import DataKey, EncryptedDataKey

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_KEY = bytes(range(0x40, 0x60))        # 32 bytes; suites use a prefix
KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000001"
DENY_ARN = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000002"
# 300 bytes: with 128-byte frames, two full frames and a 44-byte final frame.
PLAINTEXT = b"".join(b"line %02d of the kmsfs golden plaintext.\n" % i for i in range(1, 10))[:300]
assert len(PLAINTEXT) == 300


class FixtureKeyConfig(MasterKeyConfig):
    provider_id = "aws-kms"


class FixtureKey(MasterKey):
    """Stands in for the KMS master key: same provider ID and key info,
    a known data key, an EDK that names its length (or denial)."""

    provider_id = "aws-kms"
    _config_class = FixtureKeyConfig

    def _edk(self, n):
        return b"fixture-deny" if self.key_id == DENY_ARN.encode() else b"fixture-key-%d" % n

    def _generate_data_key(self, algorithm, encryption_context=None):
        n = algorithm.data_key_len
        return DataKey(key_provider=self.key_provider, data_key=DATA_KEY[:n], encrypted_data_key=self._edk(n))

    def _encrypt_data_key(self, data_key, algorithm, encryption_context=None):
        return EncryptedDataKey(key_provider=self.key_provider, encrypted_data_key=self._edk(len(data_key.data_key)))

    def _decrypt_data_key(self, encrypted_data_key, algorithm, encryption_context=None):
        if encrypted_data_key.encrypted_data_key == b"fixture-deny":
            raise DecryptKeyError("refused, as the fake KMS in the unit tests refuses it")
        n = int(encrypted_data_key.encrypted_data_key.rsplit(b"-", 1)[1])
        return DataKey(key_provider=self.key_provider, data_key=DATA_KEY[:n],
                       encrypted_data_key=encrypted_data_key.encrypted_data_key)


class FixtureProvider(MasterKeyProvider):
    """Several fixture keys: the first generates the data key, the others
    encrypt it too, so the header lists one EDK per key."""

    provider_id = "aws-kms"
    _config_class = MasterKeyProviderConfig

    def _new_master_key(self, key_id):
        return FixtureKey(key_id=key_id)


def write(name, algorithm, frame_length, keys=(KEY_ARN,), context=None, plaintext=PLAINTEXT):
    policy = (CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT if algorithm.is_committing()
              else CommitmentPolicy.FORBID_ENCRYPT_ALLOW_DECRYPT)
    client = aws_encryption_sdk.EncryptionSDKClient(commitment_policy=policy)
    provider = FixtureProvider()
    provider.add_master_keys_from_list(list(keys))
    if context is None:
        context = {"purpose": "golden", "kmsfs:path": "golden/" + name}
    ct, header = client.encrypt(source=plaintext, key_provider=provider, algorithm=algorithm,
                                frame_length=frame_length, encryption_context=context)
    # Round trip through the SDK before committing anything.
    pt, _ = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_ALLOW_DECRYPT).decrypt(source=ct, key_provider=provider)
    assert pt == plaintext, name
    if name == "0578-two-keys" and ct.find(b"fixture-deny") > ct.find(b"fixture-key"):
        # The SDK lists EDKs in set order, which follows the hash seed:
        # run again under the next seed until the refused key comes first.
        seed = int(os.environ["PYTHONHASHSEED"]) + 1
        assert seed < 64
        os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, PYTHONHASHSEED=str(seed)))
    with open(os.path.join(HERE, name + ".esdk"), "wb") as f:
        f.write(ct)
    print("%-40s v%d suite 0x%04x frame %4d  %5d bytes" % (name, header.version.value, algorithm.algorithm_id,
                                                            frame_length, len(ct)))


def main():
    if "PYTHONHASHSEED" not in os.environ:
        os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, PYTHONHASHSEED="0"))
    with open(os.path.join(HERE, "plaintext.txt"), "wb") as f:
        f.write(PLAINTEXT)
    for alg in Algorithm:
        write("%04x-framed" % alg.algorithm_id, alg, 128)
        write("%04x-unframed" % alg.algorithm_id, alg, 0)
    # The first 256 bytes in 128-byte frames: an exact multiple, so the SDK
    # writes two full frames and an empty final frame.
    write("0578-exact-frames", Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384, 128, plaintext=PLAINTEXT[:256])
    # Two "aws-kms" data keys; KMS refuses the first one the reader tries.
    write("0578-two-keys", Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384, 128, keys=(DENY_ARN, KEY_ARN))
    # No context beyond what the SDK adds (no path binding).
    write("0478-no-context", Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY, 4096, context={})
    return 0


if __name__ == "__main__":
    sys.exit(main())
