"""The SDK's secrets and `network.rules` through e2b-local on Docker, performed.

A network namespace of this module's own holds a server with a certificate from a CA made
here; a second e2b-local, configured to trust that CA for rule domains (`[docker]
egress_trust`) and to name the server `api.test` and `other.test` (`[docker.hosts]`), serves
the sandboxes. The server answers every request with a digest of the `Authorization` header
it got (never the value) and the address it was reached at.
"""

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from e2b import ALL_TRAFFIC, Sandbox, Secret
from e2b.exceptions import SecretException, SecretNotFoundException

from conftest import LocalServer, namespace

SERVER = r"""
import hashlib, ssl, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        a = self.headers.get('Authorization')
        digest = hashlib.sha256(a.encode()).hexdigest()[:16] if a else 'none'
        body = ('auth=%s at=%s\n' % (digest, self.connection.getsockname()[0])).encode()
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
tls = ThreadingHTTPServer(('0.0.0.0', 443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
print('ready', flush=True)
tls.serve_forever()
"""


def digest(value):
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=secrets test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=api.test",
            "-keyout", "server.key", "-out", "server.csr", cwd=d)
    (d / "ext").write_text("subjectAltName=DNS:api.test,DNS:other.test\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "ext", "-out", "server.pem", cwd=d)
    return d


@pytest.fixture(scope="module")
def internet(pki):
    with namespace("sbxs", 205, SERVER, str(pki / "server.pem"), str(pki / "server.key")) as net:
        yield net


@pytest.fixture(scope="module")
def rules_server(server, pki, internet):
    """A second e2b-local that trusts the test CA and names the namespace's addresses; the
    SDK points at it for this module."""
    a, b, _ = internet
    config = pki / "sandkit.toml"
    config.write_text(
        f'[docker]\negress_trust = "{pki / "ca.pem"}"\n\n'
        f'[docker.hosts]\n"api.test" = "{a}"\n"other.test" = "{b}"\n'
    )
    srv = LocalServer("--config", str(config))
    srv.start()
    saved = {k: os.environ.get(k) for k in
             ("E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL", "E2B_VOLUME_API_URL")}
    os.environ.update(E2B_API_KEY=srv.key, E2B_API_URL=srv.api_url,
                      E2B_SANDBOX_URL=srv.envd_url, E2B_VOLUME_API_URL=srv.api_url)
    try:
        yield srv
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        assert srv.stop() == 0


def test_secrets_are_kept_versioned_and_never_shown(server):
    name = "Test-Token-%06x" % random.getrandbits(24)
    value = "sk-%032x" % random.getrandbits(128)
    info = Secret.create(name, value, metadata={"team": "a"})
    try:
        assert info.name == name.lower()
        assert info.secret_id.startswith("sec_")
        assert info.version == 1
        assert info.metadata == {"team": "a"}
        assert Secret.exists(name) and Secret.exists(info.secret_id)
        assert Secret.get_info(name.lower()).secret_id == info.secret_id
        listed = [s.name for s in Secret.list().next_items()]
        assert name.lower() in listed
        # A second secret of the same name is refused.
        with pytest.raises(SecretException):
            Secret.create(name, "other")
        updated = Secret.update(info.secret_id, "sk-new", metadata={"team": "b"})
        assert updated.version == 2 and updated.metadata == {"team": "b"}
        # No answer carries a value.
        for shown in (info, updated, Secret.get_info(name)):
            assert value not in repr(shown) and "sk-new" not in repr(shown)
    finally:
        assert Secret.destroy(info.secret_id) is True
    assert Secret.destroy(info.secret_id) is False
    assert not Secret.exists(name)
    with pytest.raises(SecretNotFoundException):
        Secret.get_info(name)


def curl(sandkit, url, *flags):
    cmd = " ".join(["curl", "--noproxy", "'*'", "-sS", "-m", "10", *flags, url, "2>&1", "; true"])
    return sandkit.commands.run(cmd).stdout.strip()


def test_a_rule_sends_a_secret_the_sandbox_never_holds(rules_server, internet):
    a, b, _ = internet
    value = "sk-%032x" % random.getrandbits(128)
    secret = Secret.create("api-token", value)
    try:
        sandkit = Sandbox.create(network={
            "deny_out": [ALL_TRAFFIC],
            "allow_out": ["api.test", "other.test"],
            "rules": {"api.test": [{"transform": {"headers": {
                "Authorization": f"Bearer {Secret.fill('api-token')}"}}}]},
        })
        try:
            assert curl(sandkit, "https://api.test/") == \
                f"auth={digest('Bearer ' + value)} at={a}"
            # Python's own HTTPS client trusts the guard too (SSL_CERT_FILE).
            py = sandkit.commands.run(
                "python3 -c \"import urllib.request as u; "
                "print(u.urlopen('https://api.test/').read().decode())\"").stdout.strip()
            assert py == f"auth={digest('Bearer ' + value)} at={a}"
            # A domain without rules passes untouched (its own certificate, no header).
            assert curl(sandkit, "https://other.test/", "-k") == f"auth=none at={b}"
            # The value is not in the sandbox's environment.
            env = sandkit.commands.run("cat /proc/[0-9]*/environ | tr '\\0' '\\n'", user="root")
            assert value not in env.stdout
            assert "sk-" not in env.stdout
            info = sandkit.get_info()
            assert "api.test" in str(info.network), info.network
            # A new version reaches the running sandbox at once.
            Secret.update("api-token", "sk-second")
            assert curl(sandkit, "https://api.test/") == \
                f"auth={digest('Bearer sk-second')} at={a}"
            # A change made while the sandbox is paused reaches it when it is resumed.
            sandkit.pause()
            Secret.update("api-token", "sk-while-paused")
            sandkit = Sandbox.connect(sandkit.sandbox_id)
            assert curl(sandkit, "https://api.test/") == \
                f"auth={digest('Bearer sk-while-paused')} at={a}"
            # A secret's change keeps the policy in force: set with allow_internet_access=False,
            # the other address stays closed after the secret changes.
            sandkit.update_network({
                "allow_out": ["api.test"], "allow_internet_access": False,
                "rules": {"api.test": [{"transform": {"headers": {
                    "Authorization": f"Bearer {Secret.fill('api-token')}"}}}]},
            })
            assert "auth=" not in curl(sandkit, "https://other.test/", "-k")
            Secret.update("api-token", "sk-third")
            assert curl(sandkit, "https://api.test/") == \
                f"auth={digest('Bearer sk-third')} at={a}"
            assert "auth=" not in curl(sandkit, "https://other.test/", "-k")
            # A live rule change: the header goes away.
            sandkit.update_network({
                "deny_out": [ALL_TRAFFIC], "allow_out": ["api.test"],
                "rules": {"api.test": [{"transform": {"headers": {"X-Other": "1"}}}]},
            })
            assert curl(sandkit, "https://api.test/") == f"auth=none at={a}"
            # A rule naming a secret that does not exist fails the request, saying so.
            sandkit.update_network({
                "deny_out": [ALL_TRAFFIC], "allow_out": ["api.test"],
                "rules": {"api.test": [{"transform": {"headers": {
                    "Authorization": "Bearer ${e2b.secrets.nothing-here}"}}}]},
            })
            out = curl(sandkit, "https://api.test/")
            assert "nothing-here" in out and "not set" in out, out
            assert "auth=" not in out
        finally:
            sandkit.kill()
    finally:
        Secret.destroy(secret.secret_id)


def test_rules_that_cannot_be_held_are_refused(rules_server):
    from e2b.exceptions import SandboxException, InvalidArgumentException
    for bad in ({"*": []}, {"api.test": [{"transform": {"headers": {"Host": "x"}}}]}):
        with pytest.raises((SandboxException, InvalidArgumentException)) as e:
            Sandbox.create(network={"rules": bad})
        assert "400" in str(e.value) or "rule" in str(e.value), e.value
    with pytest.raises(SandboxException) as e:
        Sandbox.create(network={"egress_proxy": {"address": "no-port"}})
    assert "host:port" in str(e.value), e.value
    with pytest.raises(SandboxException) as e:
        Sandbox.create(network={"rules": {"api.test": [{"transform": {"headers": {
            "Authorization": "Bearer ${e2b.identity.tokens.aws}"}}}]}})
    assert "identity" in str(e.value), e.value


SOCKS = (Path(__file__).resolve().parents[1] / "fixtures" / "socks5.py").read_text()


def test_an_egress_proxy_carries_the_sandboxs_traffic(rules_server, internet, tmp_path):
    a, b, ns = internet
    log = tmp_path / "socks.log"
    log.write_text("")
    socks = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SOCKS, str(log),
                              f"api.test={a}", f"other.test={b}", "--auth", "me:pw"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert socks.stdout.readline() == "ready\n"
        value = "sk-%032x" % random.getrandbits(128)
        secret = Secret.create("proxied-token", value)
        sandkit = Sandbox.create(network={
            "deny_out": [ALL_TRAFFIC],
            "allow_out": ["api.test"],
            "rules": {"api.test": [{"transform": {"headers": {
                "Authorization": f"Bearer {Secret.fill('proxied-token')}"}}}]},
            "egress_proxy": {"address": f"{a}:1080", "username": "me", "password": "pw"},
        })
        try:
            assert curl(sandkit, "https://api.test/") == \
                f"auth={digest('Bearer ' + value)} at={a}"
            assert "auth=" not in curl(sandkit, "https://other.test/", "-k")
            asked = log.read_text().split()
            assert asked == ["api.test:443"], asked
            info = sandkit.get_info()
            assert "pw" not in str(info.network), info.network
            # Dropped live, with the rule: out directly again (the proxy sees nothing more;
            # the server's own certificate, which the sandbox does not trust, so -k).
            sandkit.update_network({"deny_out": [ALL_TRAFFIC], "allow_out": ["api.test"]})
            assert curl(sandkit, "https://api.test/", "-k").startswith("auth=none")
            assert log.read_text().split() == ["api.test:443"]
        finally:
            sandkit.kill()
            Secret.destroy(secret.secret_id)
    finally:
        socks.kill()
        socks.wait()
