#!/usr/bin/env python3
"""Writes the hand-made seed corpora under fuzz/corpus/TARGET/ (run once;
the files are committed). Encryption SDK seeds are the unit-test fixtures
in Tests/Fixtures/esdk. Inputs that split into parts use 0xFF as the
separator, and an HTTP answer's first byte picks its status (0 = 200,
4 = 400, 7 = 404, 9 = 500: see fuzz/Support.swift)."""
import base64, os, shutil, sys

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "Tests", "Fixtures", "esdk")
SEP = b"\xff"
OK, BAD, MISSING, FAIL = b"\x00", b"\x04", b"\x07", b"\x09"

def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

key32 = base64.b64encode(bytes(range(32))).decode()
kms_ok = '{"KeyId":"arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab","Plaintext":"%s","EncryptionAlgorithm":"SYMMETRIC_DEFAULT"}' % key32
kms_err = '{"__type":"AccessDeniedException","message":"User is not authorized"}'

# esdk: every fixture, one in base64 text, a raw KMS blob.
for name in sorted(os.listdir(FIX)):
    if name.endswith(".esdk"):
        data = open(os.path.join(FIX, name), "rb").read()
        put("esdk", name, data)
put("esdk", "0578-framed.base64", base64.b64encode(open(os.path.join(FIX, "0578-framed.esdk"), "rb").read()))
put("esdk", "raw-blob", bytes([1, 2, 3, 0]) + bytes(range(60)))

# base64
for i, s in enumerate(["aGVsbG8=", "aGVsbG8", "aGVsbA==", "YQ==", "", "====", "a\nGVs\r\nbG8=",
                       base64.b64encode(bytes(range(256))).decode(), "AQIDBA==\n", "not base64!"]):
    put("base64", "seed%02d" % i, s)
put("base64", "binary", bytes(range(256)))

# json
for i, s in enumerate([kms_ok, kms_err,
                       '{"Code":"Success","AccessKeyId":"ASIA","SecretAccessKey":"s","Token":"t","Expiration":"2030-01-01T00:00:00Z"}',
                       '{"a":[1,-2.5e10,true,false,null,{"b":"\\u00e9\\ud83d\\ude00\\n\\"\\\\\\/"}]}',
                       '[]', '{}', '"x"', '0', '-0.0e-0', '[[[[[[[[[[]]]]]]]]]]', '{"a":1,"a":2}',
                       '{"KeyId":"\\u0041\\u00DF","Plaintext":""}', '  {"message" : "m", "__type":"x#Throttling"}\n']):
    put("json", "seed%02d" % i, s)

# policy
put("policy", "example", """# PATTERN       WHO MAY OPEN                     WHAT stat SHOWS
tls/*           allow_uid=root allow_gid=0   uid=root gid=0 mode=0440
db/*.password   allow_uid=app:1001           mode=0400
legacy/**       allow_gid=1500
[a-c]?/x        allow_uid=web
""")
put("policy", "one", "**\tallow_uid=0\n")
put("policy", "bad", "db/*  allow_uid=nobody-here mode=9999\n")

# mount options (several -o arguments)
for i, s in enumerate([b"allow_uid=0,ttl=300", b"allow_uid=root:app,allow_gid=0,uid=0,gid=0,mode=0440,dir_mode=0550",
                       b"region=us-east-1,endpoint=http://127.0.0.1:5000,profile=p,ttl=5m,stale_window=1m",
                       b"context=app=web,require_binding,max_ciphertext=64K,cache_max=1M,threads=8,prefetch",
                       b"policy=/etc/kmsfs/policy,audit=syslog,log=stderr,max_attempts=3,kms_timeout=10s",
                       b"remount,ttl=60" + SEP + b"allow_uid=1000", b"a\\,b,nofail,_netdev,defaults" + SEP + b"remount,ttl=1h",
                       b"insecure_allow_unlocked,no_memfd_secret,exec,ca_bundle=/etc/ssl/certs/ca.pem"]):
    put("mountopts", "seed%02d" % i, s)

# shared config + credentials
put("sharedconfig", "config-and-credentials", """[default]
region = us-east-1
s3_use_arn_region = true
[profile fuzz]
role_arn = arn:aws:iam::123456789012:role/r
source_profile = default
credential_process = /usr/bin/helper --profile "a b" 'c d' e\\ f
services = local
[services local]
kms =
  endpoint_url = http://127.0.0.1:5000
[sso-session s]
sso_region = us-east-1
""".encode() + SEP + b"""[default]
aws_access_key_id = AKIDEXAMPLE
aws_secret_access_key = secret
aws_session_token = token
[a]
aws_access_key_id=x
""")
put("sharedconfig", "comments", "# c\n; c\n[default] # c\nregion=eu-west-1 ; c\n  continued\n")
put("sharedconfig", "role-chain", b"[profile p0]\nrole_arn = arn:aws:iam::1:role/a\nsource_profile = p1\n"
    b"[profile p1]\nrole_arn = arn:aws:iam::1:role/b\nsource_profile = p2\n[profile p2]\naws_access_key_id = AKIA\n"
    b"aws_secret_access_key = s\nendpoint_url = http://127.0.0.1:4566\n" + SEP + SEP + OK + b"<AssumeRoleResponse/>")

# credentials: selector byte, then answers
cdoc = b'{"AccessKeyId":"ASIA","SecretAccessKey":"s","Token":"t","Expiration":"2030-01-01T00:00:00Z"}'
put("credentials", "container", b"\x00" + OK + cdoc)
put("credentials", "container-retry", b"\x00" + FAIL + b"oops" + SEP + OK + cdoc)
put("credentials", "imds", b"\x01" + OK + b"token" + SEP + OK + b"my-role\n" + SEP + OK + b'{"Code":"Success",' + cdoc[1:])
put("credentials", "imds-v1", b"\x01" + MISSING + SEP + OK + b"role" + SEP + OK + cdoc)
sts = b"""<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>ASIA</AccessKeyId>
<SecretAccessKey>s</SecretAccessKey><SessionToken>t</SessionToken><Expiration>2030-01-01T00:00:00.000Z</Expiration>
</Credentials></AssumeRoleResult></AssumeRoleResponse>"""
put("credentials", "sts", b"\x02" + OK + sts + SEP)
put("credentials", "sts-error", b"\x02" + BAD + b'<ErrorResponse><Error><Code>AccessDenied</Code><Message>no</Message></Error></ErrorResponse>')
put("credentials", "process", b"\x03" + b'{"Version":1,' + cdoc[1:])
put("credentials", "iso8601", b"\x04" + b"2024-02-29T23:59:60.123+05:30")

# KMS answers
put("kmsresponse", "ok", OK + kms_ok.encode())
put("kmsresponse", "denied", BAD + kms_err.encode())
put("kmsresponse", "throttled-then-ok", b"\x08" + b'{"__type":"ThrottlingException","message":"slow down"}' + SEP + OK + kms_ok.encode())
put("kmsresponse", "unavailable", FAIL + b"<html>")

# control channel requests
for i, s in enumerate([b"status\n", b"\n", b"remount ttl=60,allow_uid=1000\n", b"remount ttl=abc\n", b"remount region=x\n",
                       b"status", b"bogus\r\n", b"remount a\\,b\n"]):
    put("control", "seed%02d" % i, s)

# SOURCE names, and inotify records carrying them (struct inotify_event:
# wd, mask, cookie, len, then len bytes of NUL-padded name)
import struct
def inotify(wd, mask, name, pad=16):
    n = name + b"\0" * (-len(name) % pad or pad)
    return struct.pack("<iIII", wd, mask, 0, len(n)) + n
for i, s in enumerate([b"ssl.pem.encrypted", b".encrypted", b"a.encrypted.encrypted", "\u0600.encrypted".encode(),
                       b"..", b".", b"a/b.encrypted", b"caf\xc3\xa9.encrypted", b"cafe\xcc\x81.encrypted",
                       b"bad\xff.encrypted", b"tab\tand\x1b[31m'quote'\\.encrypted", b""]):
    put("sourcenames", "name%02d" % i, s)
put("sourcenames", "inotify-two", inotify(1, 0x8, b"db.password.encrypted") + inotify(2, 0x100, b"tls"))
put("sourcenames", "inotify-not-utf8", inotify(3, 0x200 | 0x400, b"x\xff.encrypted"))
put("sourcenames", "inotify-cut", inotify(1, 0x8, b"a-long-name.encrypted")[:30])
put("sourcenames", "inotify-len-past-end", struct.pack("<iIII", 1, 0x8, 0, 0xFFFFFFFF) + b"name")
put("sourcenames", "inotify-overflow", struct.pack("<iIII", -1, 0x4000, 0, 0))
