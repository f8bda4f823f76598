#!/usr/bin/python3
"""wait-port.py PORT SECONDS: returns once the KMS emulator on
127.0.0.1:PORT has answered a ListKeys, fails after SECONDS (its
ExecStartPost=, so that "started" means "answers"). moto loads a service's
code on its first request, which under software emulation takes seconds:
this request pays for it, not kmsfs's first Decrypt."""
import socket
import sys
import time
import urllib.request

port, limit = int(sys.argv[1]), float(sys.argv[2])
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    with socket.socket() as s:
        up = s.connect_ex(("127.0.0.1", port)) == 0
    if up:
        req = urllib.request.Request(
            "http://127.0.0.1:%d/" % port, data=b"{}", method="POST",
            headers={"X-Amz-Target": "TrentService.ListKeys", "Content-Type": "application/x-amz-json-1.1",
                     "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDWARMUP/20260101/us-east-1/kms/aws4_request, "
                                      "SignedHeaders=host, Signature=0"})
        try:
            with urllib.request.urlopen(req, timeout=max(1.0, deadline - time.monotonic())) as r:
                if b"Keys" in r.read():
                    sys.exit(0)
        except OSError:
            pass
    time.sleep(0.2)
sys.exit("port %d did not open within %gs" % (port, limit))
