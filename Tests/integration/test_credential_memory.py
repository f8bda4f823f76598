"""Issue 13 A14: AWS credentials are secrets too. The same memory scan that
proves plaintext absent (test_memory.py) finds no copy of the secret access
key or the session token in the daemon's readable memory after KMS calls,
with temporary credentials from a credential_process (the helper's output,
the parse, the SigV4 signing key derivation, the header that carries the
token, and curl's copies of it), from environment variables (wiped in
the process environment once copied into secure memory) or from the shared
credentials file (read into secure memory, its secret values taken out
before the text is parsed). Nor of the bearer tokens that fetch
credentials (IMDS, container, web identity)."""
import json
import secrets
import time

import pytest

from test_credentials import bare_env, role, servers  # noqa: F401  (role and servers are fixtures)
from test_memory import scan
from conftest import REGION, unsanitized_only
from fake_credential_servers import FakeContainerCredentials, FakeIMDS, FakeSTS

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


@pytest.mark.parametrize("source", ["imds", "container token file", "container token variable", "web identity"])
def test_no_copy_of_a_bearer_token_in_readable_memory(tmp_path, kms, role, mount_factory, servers, source):  # noqa: F811
    """The tokens that fetch credentials are bearer tokens: the IMDS session
    token (cached for six hours), the container authorization token (from
    its file or its variable) and the web identity token (from its file).
    After fetching with one, the daemon's readable memory holds no copy of
    it or of a part of it."""
    token = secrets.token_urlsafe(72)   # unreserved characters only: the form body carries it as it is
    src = tmp_path / "src"
    src.mkdir()
    (src / "s.encrypted").write_bytes(kms.encrypt_blob(b"plain"))
    if source == "imds":
        fake = FakeIMDS(role.mint(), region=REGION, require_token=True)
        fake.TOKEN = token
        imds = servers(fake)
        env = bare_env(kms, AWS_EC2_METADATA_DISABLED=None, AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url)
    elif source == "web identity":
        token_file = tmp_path / "web-identity-token"
        token_file.write_text(token + "\n")
        sts = servers(FakeSTS(role.mint(), role.arn, token))
        env = bare_env(kms, AWS_WEB_IDENTITY_TOKEN_FILE=str(token_file), AWS_ROLE_ARN=role.arn,
                       AWS_ENDPOINT_URL_STS=sts.url)
    else:
        agent = servers(FakeContainerCredentials(role.mint(), token=token))
        env = bare_env(kms, AWS_CONTAINER_CREDENTIALS_FULL_URI=agent.url + "/v1/credentials",
                       AWS_EC2_METADATA_SERVICE_ENDPOINT="http://127.0.0.1:9")
        if source == "container token file":
            token_file = tmp_path / "token"
            token_file.write_text(token + "\n")
            env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = str(token_file)
        else:
            env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = token
    m = mount_factory(src, "allow_uid=0", env=env)
    with open(m.file("s"), "rb") as f:
        assert f.read() == b"plain"
    time.sleep(0.5)   # let the audit and log threads settle
    t = token.encode()
    needles = {"token": t, "token head": t[:24], "token middle": t[40:64], "token tail": t[-24:]}
    found, read = scan(m.pid, list(needles.values()))
    assert read > 1 << 20   # the scan really read the daemon's memory
    leaked = sorted(k for k, v in needles.items() if v in found)
    assert not leaked, leaked
