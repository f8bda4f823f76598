"""KMS over https: certificate verification always on, the CA bundle from
AWS_CA_BUNDLE or -o ca_bundle=, and no plaintext (or its base64) left in
the daemon's readable memory on the TLS path (OpenSSL cleanses decrypted
records, curl's buffer is wiped)."""
import base64
import errno
import pathlib
import secrets
import ssl
import subprocess

import pytest

from kmsproxy import KMSProxy
from test_memory import scan
from conftest import SANITIZED


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A test CA and a server certificate for 127.0.0.1 it signed."""
    d = tmp_path_factory.mktemp("pki")
    def openssl(*args):
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True, cwd=d)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=kmsfs test CA")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "other.key", "-out", "other.pem", "-days", "2", "-subj", "/CN=kmsfs unrelated CA")
    return d


@pytest.fixture
def tls_proxy(kms, pki):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
    p = KMSProxy(kms.port, tls_context=ctx)
    yield p
    p.close()


@pytest.fixture
def tree(tmp_path, kms):
    src = tmp_path / "src"
    src.mkdir()
    plain = ("tls-plaintext-%s" % secrets.token_hex(20)).encode()
    (src / "s.encrypted").write_bytes(kms.encrypt_blob(plain))
    return src, plain


def test_https_with_the_ca_bundle_from_the_environment(tree, kms, tls_proxy, pki, mount_factory, tmp_path):
    src, plain = tree
    env = kms.base_env(endpoint=tls_proxy.url)
    env["AWS_CA_BUNDLE"] = str(pki / "ca.pem")
    # libcurl would write every session's TLS keys here: kmsfs unsets it.
    env["SSLKEYLOGFILE"] = str(tmp_path / "tls-keys.log")
    m = mount_factory(src, "allow_uid=0", env=env)
    assert tls_proxy.url.startswith("https://")
    assert open(m.file("s"), "rb").read() == plain
    assert tls_proxy.count("Decrypt") == 1
    assert not (tmp_path / "tls-keys.log").exists()
    if SANITIZED:
        return   # a scan of every mapping cannot finish reading a sanitizer's shadow memory
    found, read = scan(m.pid, [plain, base64.b64encode(plain)])
    assert read > 1 << 20
    assert not found, found


def test_https_with_the_ca_bundle_option(tree, kms, tls_proxy, pki, mount_factory):
    src, plain = tree
    m = mount_factory(src, "allow_uid=0,ca_bundle=%s" % (pki / "ca.pem"), env=kms.base_env(endpoint=tls_proxy.url))
    assert open(m.file("s"), "rb").read() == plain


def test_an_unknown_certificate_is_refused(tree, kms, tls_proxy, mount_factory):
    src, _ = tree
    m = mount_factory(src, "allow_uid=0", env=kms.base_env(endpoint=tls_proxy.url))
    with pytest.raises(OSError) as e:
        open(m.file("s"), "rb").read()
    assert e.value.errno == errno.EIO
    assert tls_proxy.count("Decrypt") == 0
    assert m.wait_log("CA bundle"), m.log()


def test_the_ca_bundle_replaces_the_system_store(tree, kms, tls_proxy, pki, mount_factory):
    """ca_bundle= names the only CAs trusted, as botocore's bundle does: with
    the server's CA in the system's hashed directory (/etc/ssl/certs, which
    libcurl also reads by default) and an unrelated CA as the bundle, the
    server is refused."""
    src, _ = tree
    digest = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(pki / "ca.pem")], check=True,
                            capture_output=True, text=True).stdout.strip()
    certs = pathlib.Path("/etc/ssl/certs")
    if not certs.is_dir():
        pytest.skip("no /etc/ssl/certs here")
    link = next(certs / ("%s.%d" % (digest, n)) for n in range(10) if not (certs / ("%s.%d" % (digest, n))).exists())
    link.symlink_to(pki / "ca.pem")
    try:
        m = mount_factory(src, "allow_uid=0,ca_bundle=%s" % (pki / "other.pem"), env=kms.base_env(endpoint=tls_proxy.url))
        with pytest.raises(OSError) as e:
            open(m.file("s"), "rb").read()
        assert e.value.errno == errno.EIO
        assert tls_proxy.count("Decrypt") == 0
    finally:
        link.unlink()
