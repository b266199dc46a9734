"""`get_host(port)` through e2b-local's port proxy: a server in the sandbox answers at the name
the SDK gives, private ports need the traffic access token (as on E2B), and maskRequestHost
changes the Host the sandbox sees."""

import socket
import time

import pytest
from e2b import Sandbox

SERVER = r"""
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"host": self.headers.get("Host"), "forwarded": self.headers.get("X-Forwarded-Host"), "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
"""


def get(host: str, path: str = "/", headers: dict = None):
    """GET http://<host><path>: connects to loopback (Python does not resolve *.localhost
    itself; browsers and curl do) and sends the name as Host. Returns (status, body)."""
    name, port = host.rsplit(":", 1)
    assert name.endswith(".localhost"), host
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def serve(sandkit):
    sandkit.files.write("/tmp/server.py", SERVER)
    sandkit.commands.run("python3 /tmp/server.py", background=True)
    host = sandkit.get_host(8000)
    deadline = time.time() + 20
    while True:
        status, body = get(host, "/ready")
        if status == 200 or time.time() > deadline:
            return host, status, body
        time.sleep(0.2)


def test_get_host_reaches_the_port(sandbox, server):
    host, status, body = serve(sandbox)
    assert host.startswith(f"8000-{sandbox.sandbox_id}.localhost:"), host
    assert status == 200, body
    assert '"path": "/ready"' in body
    # A port where nothing listens, and a sandbox that is not there.
    assert get(sandbox.get_host(8001))[0] == 502
    assert get(f"8000-nosuchsandbox.localhost:{server.ports_port}")[0] == 502


def test_private_ports_need_the_traffic_access_token(server):
    sandkit = Sandbox.create(network={"allow_public_traffic": False})
    try:
        token = sandkit.traffic_access_token
        assert token, "the create response carries the token"
        sandkit.files.write("/tmp/server.py", SERVER)
        sandkit.commands.run("python3 /tmp/server.py", background=True)
        host = sandkit.get_host(8000)
        deadline = time.time() + 20
        status, body = 0, ""
        while time.time() < deadline:
            status, body = get(host, headers={"e2b-traffic-access-token": token})
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200, body
        assert get(host)[0] == 403
        assert get(host, headers={"e2b-traffic-access-token": "wrong"})[0] == 403
    finally:
        sandkit.kill()


def test_mask_request_host(server):
    sandkit = Sandbox.create(network={"mask_request_host": "app.test:${PORT}"})
    try:
        host, status, body = serve(sandkit)
        assert status == 200, body
        assert '"host": "app.test:8000"' in body, body
        assert f'"forwarded": "{host}"' in body, body
    finally:
        sandkit.kill()
