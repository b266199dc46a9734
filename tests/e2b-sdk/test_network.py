"""The SDK's network options through e2b-local on Docker, performed: `network` on create,
`update_network` live, `allow_internet_access=False`, and what e2b-local refuses.

The destinations are a network namespace this module makes (root only): two addresses, each
answering on port 8080 with where it was reached. Sandboxes reach it as they reach the
internet, routed and masqueraded by the host.
"""

import time

import pytest
from e2b import ALL_TRAFFIC, Sandbox
from e2b.exceptions import SandboxException

from conftest import namespace

SERVER = r"""
import asyncio
async def serve(reader, writer):
    here = writer.get_extra_info('sockname')
    try:
        while await reader.read(4096):
            writer.write(('reached %s:%d\n' % here[:2]).encode())
            await writer.drain()
    except Exception:
        pass
    writer.close()
async def main():
    s = await asyncio.start_server(serve, '0.0.0.0', 8080)
    print('ready', flush=True)
    await s.serve_forever()
asyncio.run(main())
"""

PROBE = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], 8080), timeout=3)
    s.sendall(b'ping\n')
    got = s.recv(200)
    print(got.decode().strip() if got else 'blocked: closed')
except Exception as e:
    print('blocked:', type(e).__name__)
"""


@pytest.fixture(scope="module")
def internet():
    with namespace("sbxp", 204, SERVER) as (a, b, _):
        yield a, b


def probe(sandkit, ip):
    sandkit.files.write("/tmp/probe.py", PROBE)
    return sandkit.commands.run(f"python3 /tmp/probe.py {ip}").stdout.strip()


def test_create_with_allow_and_deny_lists(server, internet):
    a, b = internet
    sandkit = Sandbox.create(network={"deny_out": [ALL_TRAFFIC], "allow_out": [a]})
    try:
        assert probe(sandkit, a) == f"reached {a}:8080"
        assert probe(sandkit, b).startswith("blocked")
        info = sandkit.get_info()
        assert info.network is not None
        assert info.network["allow_out"] == [a], info.network
        assert info.network["deny_out"] == [ALL_TRAFFIC], info.network
    finally:
        sandkit.kill()


def test_update_network_applies_live_and_replaces_whole(server, internet):
    a, b = internet
    sandkit = Sandbox.create()
    try:
        assert probe(sandkit, b) == f"reached {b}:8080"
        sandkit.update_network({"deny_out": [f"{b}/32"]})
        assert probe(sandkit, b).startswith("blocked")
        assert probe(sandkit, a) == f"reached {a}:8080"
        assert sandkit.get_info().network["deny_out"] == [f"{b}/32"]
        # The update replaces every rule: an empty one opens it again.
        sandkit.update_network({})
        assert probe(sandkit, b) == f"reached {b}:8080"
        # allow_internet_access=False in an update denies all but allow_out.
        sandkit.update_network({"allow_out": [a], "allow_internet_access": False})
        assert probe(sandkit, b).startswith("blocked")
        assert probe(sandkit, a) == f"reached {a}:8080"
    finally:
        sandkit.kill()


def test_no_internet_access_means_no_network(server, internet):
    a, _ = internet
    sandkit = Sandbox.create(allow_internet_access=False)
    try:
        assert probe(sandkit, a).startswith("blocked")
        assert sandkit.get_info().allow_internet_access is False
    finally:
        sandkit.kill()


def test_no_internet_access_keeps_the_allow_list(server, internet):
    a, b = internet
    sandkit = Sandbox.create(allow_internet_access=False, network={"allow_out": [a]})
    try:
        assert probe(sandkit, a) == f"reached {a}:8080"
        assert probe(sandkit, b).startswith("blocked")
    finally:
        sandkit.kill()


@pytest.mark.parametrize("network, says", [
    ({"deny_out": ["example.com"]}, "deny_out"),
    ({"allow_out": ["example.com"]}, "ALL_TRAFFIC"),
    ({"egress_proxy": {"address": "proxy.example.com:1080", "password": "x"}}, "user name"),
    ({"mask_request_host": "a b"}, "mask request host"),
    ({"https_ports": [3000]}, "httpsPorts"),
])
def test_what_cannot_be_honoured_is_refused(server, network, says):
    before = len(Sandbox.list().next_items())
    with pytest.raises(SandboxException) as e:
        Sandbox.create(network=network)
    assert "400" in str(e.value) and says in str(e.value), str(e.value)
    time.sleep(0.2)
    assert len(Sandbox.list().next_items()) == before, "no sandbox is left behind"
