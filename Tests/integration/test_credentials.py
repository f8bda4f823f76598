"""Issue 3: kmsfs gets its credentials wherever AWS puts them.

Each credential source is faked on loopback (or is moto's real STS) and
serves assumed-role credentials minted for real by moto's STS AssumeRole, so
moto, which checks signatures and session tokens, accepts what kmsfs signs
with them. Every case mounts kmsfs with that source alone and reads files.
"""
import errno
import json
import os
import signal
import subprocess
import sys
import time
import types

import pytest

from conftest import KMSFS, REGION, force_unmount, mounted
from fake_credential_servers import FakeContainerCredentials, FakeIMDS, FakeSTS

SECRETS = {"db.password": b"hunter2-but-longer", "tls/key.pem": b"-----BEGIN KEY-----\nabc\n-----END KEY-----\n"}


@pytest.fixture(scope="module")
def role(kms):
    """An IAM role in moto that may do anything, and a way to mint its
    temporary credentials (AccessKeyId ASIA..., SecretAccessKey, SessionToken)."""
    import boto3
    kw = dict(region_name=REGION, endpoint_url=kms.endpoint,
              aws_access_key_id=kms.access_key, aws_secret_access_key=kms.secret_key)
    iam = boto3.client("iam", **kw)
    trust = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": ["sts:AssumeRole", "sts:AssumeRoleWithWebIdentity"]}]})
    try:
        arn = iam.create_role(RoleName="kmsfs-credentials-test", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:
        arn = iam.get_role(RoleName="kmsfs-credentials-test")["Role"]["Arn"]
    iam.put_role_policy(RoleName="kmsfs-credentials-test", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    sts = boto3.client("sts", **kw)

    def mint(session="kmsfs-integration"):
        return sts.assume_role(RoleArn=arn, RoleSessionName=session)["Credentials"]

    return types.SimpleNamespace(arn=arn, mint=mint)


@pytest.fixture(scope="module")
def tree(tmp_path_factory, kms):
    src = tmp_path_factory.mktemp("credsrc")
    for name, data in SECRETS.items():
        p = src / (name + ".encrypted")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(kms.encrypt_blob(data))
    return src


def bare_env(kms, **extra):
    """No credentials anywhere: no keys, no files, no metadata service. KMS
    is moto (AWS_ENDPOINT_URL_KMS, so other services are not redirected)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_REGION=REGION, AWS_ENDPOINT_URL_KMS=kms.endpoint, AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def read_all(m):
    for name, data in SECRETS.items():
        with open(m.file(name), "rb") as f:
            assert f.read() == data, name


@pytest.fixture
def servers():
    started = []

    def start(server):
        started.append(server)
        return server

    yield start
    for s in started:
        s.close()


def test_imdsv2_credentials_and_region(tree, kms, role, mount_factory, servers):
    imds = servers(FakeIMDS(role.mint(), region=REGION, require_token=True))
    env = bare_env(kms, AWS_EC2_METADATA_DISABLED=None, AWS_REGION=None,
                   AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url)
    m = mount_factory(tree, "allow_uid=0", env=env)
    read_all(m)
    puts = imds.requests("PUT")
    assert puts and all(h.get("X-aws-ec2-metadata-token-ttl-seconds") == "21600" for _, _, h, _ in puts)
    gets = imds.requests("GET")
    assert {p for _, p, _, _ in gets} >= {"/latest/meta-data/placement/region",
                                          "/latest/meta-data/iam/security-credentials/",
                                          "/latest/meta-data/iam/security-credentials/kmsfs-instance-role"}
    assert all(h.get("X-aws-ec2-metadata-token") == FakeIMDS.TOKEN for _, _, h, _ in gets)
    assert len(puts) == 1, "the session token is reused"
    assert "instance role kmsfs-instance-role" in m.log()
    assert "region us-east-1 (from instance metadata)" in m.log()


def test_imds_behind_a_hop_limit_of_one_falls_back_quickly(tree, kms, role, mount_factory, servers):
    imds = servers(FakeIMDS(role.mint(), require_token=False, hop_limit_1=True))
    env = bare_env(kms, AWS_EC2_METADATA_DISABLED=None, AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url)
    t0 = time.monotonic()
    m = mount_factory(tree, "allow_uid=0", env=env)
    elapsed = time.monotonic() - t0
    read_all(m)
    assert len(imds.requests("PUT")) == 1
    assert elapsed < 4, "the token request must time out after about 1 s, once (took %.1f s)" % elapsed
    # IMDSv1 forbidden: the same instance gives no credentials, and says why.
    env = dict(env, AWS_EC2_METADATA_V1_DISABLED="true")
    m2 = mount_factory(tree, "allow_uid=0", env=env)
    with pytest.raises(OSError) as e:
        open(m2.file("db.password"), "rb").read()
    assert e.value.errno == errno.EIO
    assert m2.wait_log("IMDSv1 is disabled")


def test_container_credentials_with_a_token_file(tree, kms, role, mount_factory, servers, tmp_path):
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text("pod-identity-token-1")
    agent = servers(FakeContainerCredentials(role.mint(), path="/v1/credentials", token="pod-identity-token-1"))
    env = bare_env(kms, AWS_CONTAINER_CREDENTIALS_FULL_URI=agent.url + "/v1/credentials",
                   AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(token_file),
                   AWS_CONTAINER_AUTHORIZATION_TOKEN="ignored-when-the-file-is-set",
                   AWS_EC2_METADATA_DISABLED=None, AWS_EC2_METADATA_SERVICE_ENDPOINT="http://127.0.0.1:9")
    m = mount_factory(tree, "allow_uid=0", env=env)
    read_all(m)
    (_, path, headers, _), = agent.requests("GET")   # one fetch: cached, and IMDS never asked
    assert headers.get("Authorization") == "pod-identity-token-1"
    assert "container credentials 127.0.0.1" in m.log()


class CountingProxy:
    """A listener that stands where http_proxy and friends point: it counts
    the connections it gets and answers none of them."""

    def __init__(self):
        import socket
        import threading
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.connections = 0
        self.closed = False

        def accept():
            while not self.closed:
                try:
                    c, _ = self.sock.accept()
                except OSError:
                    return
                self.connections += 1
                c.close()
        threading.Thread(target=accept, daemon=True).start()

    def close(self):
        self.closed = True
        self.sock.close()


@pytest.mark.parametrize("spelling", ["127.0.0.1", "[::ffff:127.0.0.1]"])
def test_proxy_variables_never_carry_local_and_metadata_requests(tree, kms, role, mount_factory, servers, spelling):
    """A proxy in the environment (common on corporate hosts) must not see
    the container token, the credentials or a loopback KMS endpoint's
    signed calls and plaintext answers: loopback and link-local go direct,
    also written as an IPv4-mapped address, which curl's no-proxy list
    does not match."""
    agent = servers(FakeContainerCredentials(role.mint(), path="/v1/credentials", token="direct-token"))
    proxy = servers(CountingProxy())
    env = bare_env(kms, AWS_CONTAINER_CREDENTIALS_FULL_URI=agent.url.replace("127.0.0.1", spelling) + "/v1/credentials",
                   AWS_CONTAINER_AUTHORIZATION_TOKEN="direct-token",
                   http_proxy=proxy.url, HTTPS_PROXY=proxy.url, ALL_PROXY=proxy.url, all_proxy=proxy.url,
                   no_proxy="example.com", NO_PROXY=None)
    m = mount_factory(tree, "allow_uid=0", env=env)
    read_all(m)
    assert len(agent.requests("GET")) == 1
    assert proxy.connections == 0


def test_container_full_uri_must_be_loopback_or_documented_over_http(tree, kms, mount_factory):
    """Configured but unusable: the mount starts with a warning, opens fail
    and the log says why."""
    env = bare_env(kms, AWS_CONTAINER_CREDENTIALS_FULL_URI="http://192.0.2.10/creds")
    m = mount_factory(tree, "allow_uid=0", env=env)
    assert m.wait_log("credentials are not available yet")
    assert "is not allowed over http" in m.log()
    with pytest.raises(OSError) as e:
        open(m.file("db.password"), "rb").read()
    assert e.value.errno == errno.EIO


def test_wrong_session_token_is_refused_by_kms(tree, kms, role, mount_factory, servers):
    creds = dict(role.mint(), SessionToken="not-the-real-session-token")
    agent = servers(FakeContainerCredentials(creds))
    env = bare_env(kms, AWS_CONTAINER_CREDENTIALS_FULL_URI=agent.url + "/v1/credentials")
    m = mount_factory(tree, "allow_uid=0", env=env)
    with pytest.raises(OSError) as e:
        open(m.file("db.password"), "rb").read()
    assert e.value.errno == errno.EIO
    assert m.wait_log("InvalidClientTokenId")
    assert m.wait_log("check which credentials are in use")


def test_web_identity_through_sts(tree, kms, role, mount_factory, servers, tmp_path):
    token_file = tmp_path / "web-identity-token"
    token_file.write_text("eyJhbGciOiJSUzI1NiJ9.fake.jwt\n")
    sts = servers(FakeSTS(role.mint(), role.arn, "eyJhbGciOiJSUzI1NiJ9.fake.jwt"))
    env = bare_env(kms, AWS_WEB_IDENTITY_TOKEN_FILE=str(token_file), AWS_ROLE_ARN=role.arn,
                   AWS_ROLE_SESSION_NAME="kmsfs-irsa", AWS_ENDPOINT_URL_STS=sts.url)
    m = mount_factory(tree, "allow_uid=0", env=env)
    read_all(m)
    (_, _, headers, body), = sts.requests("POST")
    assert b"RoleSessionName=kmsfs-irsa" in body
    assert "Authorization" not in headers
    assert "web identity " + role.arn in m.log()


def test_profile_role_with_source_profile_against_real_sts(tree, kms, role, mount_factory, tmp_path):
    """-o profile=app: role_arn + source_profile, region and endpoints from the
    profile's services section; kmsfs calls moto's STS AssumeRole itself."""
    config = tmp_path / "config"
    config.write_text("""
[profile base]
aws_access_key_id = {ak}
aws_secret_access_key = {sk}

[profile app]
role_arn = {arn}
source_profile = base
role_session_name = kmsfs-profile-test
region = {region}
services = local-moto

[services local-moto]
kms =
  endpoint_url = {ep}
sts =
  endpoint_url = {ep}
""".format(ak=kms.access_key, sk=kms.secret_key, arn=role.arn, region=REGION, ep=kms.endpoint))
    env = bare_env(kms, AWS_REGION=None, AWS_ENDPOINT_URL_KMS=None, AWS_CONFIG_FILE=str(config),
                   # explicit profile= wins over keys in the environment
                   AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG0", AWS_SECRET_ACCESS_KEY="wrong")
    m = mount_factory(tree, "allow_uid=0,profile=app", env=env)
    read_all(m)
    assert "profile app (role %s)" % role.arn in m.log()
    assert "region %s (from profile app)" % REGION in m.log()
    assert "(from the kms endpoint_url of profile 'app' services section)" in m.log()


def credential_process_config(role, tmp_path):
    """A config file whose default profile's credential_process (a path
    with a blank, quoted, and an argument) prints the role's fresh keys."""
    c = role.mint()
    script = tmp_path / "creds helper.py"
    script.write_text("#!/usr/bin/env python3\nimport json\nprint(json.dumps(%r))\n" % {
        "Version": 1, "AccessKeyId": c["AccessKeyId"], "SecretAccessKey": c["SecretAccessKey"],
        "SessionToken": c["SessionToken"], "Expiration": c["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ")})
    script.chmod(0o700)
    config = tmp_path / "config"
    config.write_text('[default]\ncredential_process = "%s" --ignored-arg\n' % script)
    return config


def test_credential_process(tree, kms, role, mount_factory, tmp_path):
    config = credential_process_config(role, tmp_path)
    m = mount_factory(tree, "allow_uid=0", env=bare_env(kms, AWS_CONFIG_FILE=str(config)))
    read_all(m)
    assert "credential_process (profile default)" in m.log()


def test_signals_a_parent_left_ignored_are_the_daemons_again(tree, kms, role, mount_factory, tmp_path):
    """A launcher may leave signals ignored (`nohup`, a supervisor that
    ignores SIGCHLD), and an ignored disposition survives exec. With SIGCHLD
    ignored the kernel reaps children itself, so waitpid failed and a
    credential_process that succeeded counted as failed (status -1); an
    ignored SIGHUP or SIGTERM is discarded, blocked or not, so reloads and
    stops went unheard."""
    config = credential_process_config(role, tmp_path)
    ignoring = [sys.executable, "-c",
                "import os, signal, sys\n"
                "for s in (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):\n"
                "    signal.signal(s, signal.SIG_IGN)\n"
                "os.execv(sys.argv[1], sys.argv[1:])\n"]
    m = mount_factory(tree, "allow_uid=0", env=bare_env(kms, AWS_CONFIG_FILE=str(config)), wrapper=ignoring)
    read_all(m)
    assert "credential_process (profile default)" in m.log(), m.log()
    m.proc.send_signal(signal.SIGHUP)
    assert m.wait_log("reloaded: users, groups and policy re-read"), m.log()
    assert m.stop() == 0, m.log()


def failed_mount_line(tree, kms, kmsfs_bin, tmp_path, options):
    """Mounts with no credentials in the environment; the mount must fail
    and leave nothing mounted. Returns its stderr, which must be one line."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run([kmsfs_bin, str(tree), str(mnt), "-o", options], env=bare_env(kms),
                       capture_output=True, timeout=30)
    force_unmount(str(mnt))
    assert r.returncode != 0
    err = r.stderr.decode().strip()
    assert len(err.splitlines()) == 1, err
    assert not mounted(str(mnt))
    return err


def test_no_credentials_anywhere_fails_the_mount_with_one_line(tree, kms, kmsfs_bin, tmp_path):
    err = failed_mount_line(tree, kms, kmsfs_bin, tmp_path, "allow_uid=0")
    assert "no AWS credentials" in err


@pytest.mark.parametrize("what", ["config file", "credentials file", "CA bundle", "web identity token file"])
def test_a_file_another_user_may_change_is_named_in_a_warning(tree, kms, mount_factory, tmp_path, what):
    """The config file names the endpoints kmsfs signs requests for and the
    credential_process it runs; the CA bundle decides who may answer for
    KMS (and be sent signed Decrypt requests to replay); the web identity
    token file, the role kmsfs assumes. Read whoever owns them, as the AWS
    CLI reads them, but the operator is told. (Here the environment's keys
    come first in the chain, so the token file is only named.)"""
    f = tmp_path / what.replace(" ", "-")
    f.write_text("[default]\nregion = us-east-1\n" if what != "CA bundle" else open("/etc/ssl/certs/ca-certificates.crt").read())
    os.chmod(f, 0o666)
    var = {"config file": "AWS_CONFIG_FILE", "credentials file": "AWS_SHARED_CREDENTIALS_FILE", "CA bundle": "AWS_CA_BUNDLE",
           "web identity token file": "AWS_WEB_IDENTITY_TOKEN_FILE"}[what]
    m = mount_factory(tree, "allow_uid=0", env=dict(kms.env, **{var: str(f)}))
    read_all(m)
    assert m.wait_log("%s may be written by anyone (mode 666)" % f), m.log()


def test_missing_named_profile_fails_the_mount(tree, kms, kmsfs_bin, tmp_path):
    err = failed_mount_line(tree, kms, kmsfs_bin, tmp_path, "allow_uid=0,profile=nope")
    assert "profile 'nope'" in err, err


def test_configured_source_down_at_start_warns_then_recovers(tree, kms, role, mount_factory, servers):
    agent = servers(FakeContainerCredentials(role.mint()))
    agent.down = True
    env = bare_env(kms, AWS_CONTAINER_CREDENTIALS_FULL_URI=agent.url + "/v1/credentials")
    m = mount_factory(tree, "allow_uid=0", env=env)
    assert m.wait_log("credentials are not available yet")
    t0 = time.monotonic()
    with pytest.raises(OSError) as e:
        open(m.file("db.password"), "rb").read()
    assert e.value.errno == errno.EIO
    assert time.monotonic() - t0 < 1, "a source that just failed is not asked again at once"
    agent.down = False
    deadline = time.monotonic() + 15
    while True:
        try:
            read_all(m)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
