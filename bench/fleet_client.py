#!/usr/bin/env python3
"""One simulated host of the fleet storm's reference (bench.py, section
fleet): COUNT KMS Decrypts of one ciphertext, one after another as a boot
script makes them, by boto3 in botocore's MODE retry mode (standard or
adaptive, its default of 3 attempts).

    fleet_client.py MODE COUNT CIPHERTEXT_FILE RETRY_MS

The endpoint and credentials come from the environment (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, ...). It imports boto3 and makes its client first, says
"ready" on stdout, and starts on a line on stdin, so that every host starts
at once and Python's start-up is not counted. A call that still fails after
botocore's retries is counted and made again RETRY_MS later (a unit
restarted by systemd), so every host ends with all its plaintexts. Prints
one JSON line: {"ok": N, "failed": F, "wall": seconds}.
"""
import json
import sys
import time

import boto3
from botocore.config import Config


def main():
    mode, count, path, retry_ms = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    blob = open(path, "rb").read()
    client = boto3.client("kms", config=Config(retries={"mode": mode}))
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.monotonic()
    ok = failed = 0
    for _ in range(count):
        while True:
            try:
                client.decrypt(CiphertextBlob=blob)
                ok += 1
                break
            except Exception:  # noqa: BLE001  (throttled past the retries, or any other failure)
                failed += 1
                time.sleep(retry_ms / 1000.0)
    print(json.dumps({"ok": ok, "failed": failed, "wall": time.monotonic() - t0}), flush=True)


if __name__ == "__main__":
    main()
