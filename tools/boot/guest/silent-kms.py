#!/usr/bin/python3
"""silent-kms.py PORT: a KMS that accepts every connection on
127.0.0.1:PORT and never answers (a KMS, proxy or network path that
hangs). Scenario g of the boot test: the shipped kmsfs.service, with
prefetch, must still report ready within TimeoutStartSec."""
import socket
import sys

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(256)
held = []
while True:
    conn, _ = srv.accept()
    held.append(conn)  # kept open, never read from or answered
