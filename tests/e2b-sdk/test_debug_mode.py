"""E2B_DEBUG=true: the SDK makes no API call and sends envd traffic for `debug_sandbox_id` to
localhost:49983. e2b-local started with --debug serves it from a sandbox made on first use, killed
on shutdown. (Without --debug that id is an unknown sandbox: see crates/e2b-local/tests/security.rs.)"""

import socket

import pytest
from e2b import Sandbox

from conftest import LocalServer, our_containers


def port_free(port: int) -> bool:
    with socket.socket() as s:
        # As the server binds: a port in TIME_WAIT is free for it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_debug_mode(monkeypatch):
    if not (port_free(3000) and port_free(49983)):
        pytest.skip("ports 3000 and 49983 (fixed by the SDK's debug mode) are in use")
    before = set(our_containers("anonymous"))
    srv = LocalServer("--debug")
    srv.api_port, srv.envd_port = 3000, 49983
    srv.api_url, srv.envd_url = "http://127.0.0.1:3000", "http://127.0.0.1:49983"
    srv.start()
    try:
        monkeypatch.setenv("E2B_DEBUG", "true")
        monkeypatch.setenv("E2B_API_KEY", srv.key)
        monkeypatch.delenv("E2B_API_URL", raising=False)
        monkeypatch.delenv("E2B_SANDBOX_URL", raising=False)
        sandkit = Sandbox.create()
        assert sandkit.sandbox_id == "debug_sandbox_id"
        assert sandkit.commands.run("echo debug; whoami").stdout == "debug\nuser\n"
        sandkit.files.write("/home/user/d.txt", "kept between calls")
        again = Sandbox.create()
        assert again.files.read("/home/user/d.txt") == "kept between calls"
    finally:
        assert srv.stop() == 0
    left = set(our_containers("anonymous")) - before
    assert not left, f"the debug sandbox was not killed on shutdown: {left}"
