#!/usr/bin/python3
"""forge-credential.py UNIT ID SOCKET: what any root process could try,
connecting to a credential socket from the abstract address systemd would
use for UNIT's credential ID (`\\0RANDOM/unit/UNIT/ID`) while running in
another unit. Prints how many bytes came back, how many of them were not
zero, and how the connection ended (kmsfs answers a refusal with zeros, one
byte more than systemd accepts as a credential)."""
import os
import socket
import sys

unit, cred, path = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(b"\0" + os.urandom(8).hex().encode() + ("/unit/%s/%s" % (unit, cred)).encode())
s.settimeout(30)
s.connect(path)
got, nonzero, how = 0, 0, "eof"
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += len(chunk)
        nonzero += len(chunk) - chunk.count(0)
except ConnectionResetError:
    how = "reset"
except socket.timeout:
    how = "timeout"
print("forged %s/%s bytes=%d nonzero=%d end=%s" % (unit, cred, got, nonzero, how), flush=True)
