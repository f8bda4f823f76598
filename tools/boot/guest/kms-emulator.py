#!/usr/bin/python3
"""The boot test's KMS: moto's server on the guest's loopback, with one
symmetric key whose id and key material are fixed, so ciphertexts made
while the image was prepared decrypt on every boot (moto keeps its keys in
memory and draws new material for each key it creates).

    kms-emulator.py serve PORT           serve KMS on 127.0.0.1:PORT
    kms-emulator.py encrypt IN OUT       raw CiphertextBlob of IN into OUT

The key material comes from /etc/kms-emulator/key (64 hex digits), the key
id from /etc/kms-emulator/key-id. Test data only: no real secret is ever
under this key.
"""
import os
import sys

sys.path.insert(0, "/opt/kms-emulator")

from moto.kms.models import kms_backends  # noqa: E402

ACCOUNT = "123456789012"
REGION = "us-east-1"
CONF = os.environ.get("KMS_EMULATOR_CONF", "/etc/kms-emulator")


def fixed_key():
    material = bytes.fromhex(open(os.path.join(CONF, "key")).read().strip())
    key_id = open(os.path.join(CONF, "key-id")).read().strip()
    backend = kms_backends[ACCOUNT][REGION]
    key = backend.create_key(None, "ENCRYPT_DECRYPT", "SYMMETRIC_DEFAULT", "kmsfs boot test", None)
    del backend.keys[key.id]
    key.id = key_id
    key.arn = "arn:aws:kms:%s:%s:key/%s" % (REGION, ACCOUNT, key_id)
    key.key_material = material
    backend.keys[key_id] = key
    return backend, key


def main():
    backend, key = fixed_key()
    if sys.argv[1:2] == ["encrypt"]:
        blob, _ = backend.encrypt(key.id, open(sys.argv[2], "rb").read(), {})
        with open(sys.argv[3], "wb") as f:
            f.write(blob)
        return
    if sys.argv[1:2] != ["serve"] or len(sys.argv) != 3:
        sys.exit(__doc__)
    from moto.server import main as moto_main
    moto_main(["-H", "127.0.0.1", "-p", sys.argv[2]])


if __name__ == "__main__":
    main()
