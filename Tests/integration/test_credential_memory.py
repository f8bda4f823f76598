"""Issue 13 A14: AWS credentials are secrets too. The same memory scan that
proves plaintext absent (test_memory.py) finds no copy of the secret access
key or the session token in the daemon's readable memory after KMS calls,
with temporary credentials from a credential_process (the helper's output,
the parse, the SigV4 signing key derivation, the header that carries the
token, and curl's copies of it), from environment variables (wiped in
the process environment once copied into secure memory) or from the shared
credentials file (read into secure memory, its secret values taken out
before the text is parsed)."""
import json
import time

import pytest

from test_credentials import bare_env, role  # noqa: F401  (role is a fixture)
from test_memory import scan
from conftest import unsanitized_only

pytestmark = unsanitized_only

HELPER = """#!/usr/bin/env python3
import sys
sys.stdout.write(open(%r).read())
"""


@pytest.mark.parametrize("source", ["credential_process", "environment", "credentials file"])
def test_no_copy_of_the_secret_key_or_session_token_in_readable_memory(tmp_path, kms, role, mount_factory, source):  # noqa: F811
    c = role.mint()
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"Version": 1, "AccessKeyId": c["AccessKeyId"],
                                 "SecretAccessKey": c["SecretAccessKey"], "SessionToken": c["SessionToken"],
                                 "Expiration": c["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ")}))
    helper = tmp_path / "helper.py"
    helper.write_text(HELPER % str(creds))
    helper.chmod(0o700)
    config = tmp_path / "config"
    config.write_text("[default]\ncredential_process = %s\n" % helper)
    src = tmp_path / "src"
    src.mkdir()
    plains = {"s%d" % i: ("plain %d" % i).encode() for i in range(6)}
    for name, data in plains.items():
        (src / (name + ".encrypted")).write_bytes(kms.encrypt_blob(data))
    if source == "credential_process":
        env = bare_env(kms, AWS_CONFIG_FILE=str(config))
    elif source == "credentials file":
        # Read into secure memory, the secret values taken out before any
        # String is made of the text (CRLF, as a file edited on Windows).
        shared = tmp_path / "credentials"
        shared.write_bytes(("[default]\r\naws_access_key_id = %s\r\naws_secret_access_key = %s\r\n"
                            "aws_session_token=%s\r\n" % (c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"])).encode())
        env = bare_env(kms, AWS_SHARED_CREDENTIALS_FILE=str(shared), AWS_CONFIG_FILE=str(tmp_path / "none"))
    else:
        # The variables sit at the top of the daemon's initial stack until
        # it copies them into secure memory and wipes them there.
        env = bare_env(kms, AWS_ACCESS_KEY_ID=c["AccessKeyId"], AWS_SECRET_ACCESS_KEY=c["SecretAccessKey"],
                       AWS_SESSION_TOKEN=c["SessionToken"])
    m = mount_factory(src, "allow_uid=0", env=env)
    for name, data in plains.items():
        with open(m.file(name), "rb") as f:
            assert f.read() == data
    if source == "credential_process":
        assert "credential_process (profile default)" in m.log()
    time.sleep(0.5)   # let the audit and log threads settle
    secret, token, key_id = (c["SecretAccessKey"].encode(), c["SessionToken"].encode(), c["AccessKeyId"].encode())
    # Whole values, and parts (a copy split or partly overwritten still
    # shows), the token's head included: a fragment of the sent header
    # ("Token: " and the first 48 characters) was once seen in freed heap.
    needles = {"secret": secret, "secret tail": secret[-20:], "token": token, "token head": token[:24],
               "token tail": token[-32:], "token middle": token[64:96], "access key id": key_id}
    found, read = scan(m.pid, list(needles.values()))
    assert read > 1 << 20   # the scan really read the daemon's memory
    # The access key ID is not secret (it is logged, redacted, and sent in
    # clear): the scan that sees it proves it sees ordinary heap.
    assert key_id in found
    leaked = sorted(k for k, v in needles.items() if v in found and k != "access key id")
    assert not leaked, leaked
