#!/usr/bin/python3
"""silent-kms.py PORT: a KMS that accepts every connection on
127.0.0.1:PORT and never answers (a KMS, proxy or network path that
hangs). Scenario g of the boot test: the shipped kmsfs.service, with
prefetch, must still report ready within TimeoutStartSec.

silent-kms.py wait PORT: returns once the port accepts (its unit's
ExecStartPost=, so that units ordered after it meet a silent KMS, never a
refusing one), fails after 120 s."""
import socket
import sys
import time

if sys.argv[1] == "wait":
    deadline = time.monotonic() + 120
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", int(sys.argv[2]))) == 0:
                sys.exit(0)
        if time.monotonic() > deadline:
            sys.exit("port %s did not open within 120 s" % sys.argv[2])
        time.sleep(0.1)

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(256)
held = []
while True:
    conn, _ = srv.accept()
    held.append(conn)  # kept open, never read from or answered
