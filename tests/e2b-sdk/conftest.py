"""Runs the official E2B Python SDK against e2b-local over Docker.

The session starts the `e2b-local` binary (E2B_LOCAL_BIN, default target/debug/e2b-local) on free
loopback ports with a fresh API key, points the SDK at it through the environment variables it
already reads, and stops it with SIGINT at the end.
"""

import contextlib
import hashlib
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def owner_of(key: str) -> str:
    """The owner digest e2b-local puts on what `--api-key KEY` makes."""
    return hashlib.sha256(f"{key}::owner".encode()).hexdigest()[:32]


def our_containers(owner: str) -> list:
    """Containers made through e2b-local for `owner` (another test worker's server makes its
    own at the same time)."""
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=sandkit.meta.sandkit.e2b.template",
         "--filter", f"label=sandkit.meta.sandkit.e2b.owner={owner}"],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.split()


class LocalServer:
    def __init__(self, *extra_args: str):
        self.extra_args = list(extra_args)
        self.bin = os.environ.get("E2B_LOCAL_BIN", str(ROOT / "target" / "debug" / "e2b-local"))
        self.key = "e2b_" + secrets.token_hex(16)
        self.owner = owner_of(self.key)
        self.api_port, self.envd_port, self.ports_port = free_port(), free_port(), free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.envd_url = f"http://127.0.0.1:{self.envd_port}"
        self.log = open(ROOT / "target" / f"e2b-local-pytest-{self.api_port}.log", "w")
        self.proc = None

    def start(self):
        env = dict(os.environ, SANDKIT_LOG=os.environ.get("SANDKIT_LOG", "info"))
        self.proc = subprocess.Popen(
            [self.bin, "--api-addr", f"127.0.0.1:{self.api_port}",
             "--envd-addr", f"127.0.0.1:{self.envd_port}", "--api-key", self.key,
             "--ports-addr", f"127.0.0.1:{self.ports_port}",
             *self.extra_args],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"e2b-local exited early; see {self.log.name}")
            try:
                urllib.request.urlopen(self.api_url + "/health", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("e2b-local did not answer within 30s")

    def stop(self) -> int:
        """Ctrl-C, as a user would; returns the exit code."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.log.close()


@pytest.fixture(scope="session")
def server():
    srv = LocalServer()
    srv.start()
    os.environ["E2B_API_KEY"] = srv.key
    os.environ["E2B_API_URL"] = srv.api_url
    os.environ["E2B_SANDBOX_URL"] = srv.envd_url
    # The SDK reaches volume content here, never through E2B_API_URL.
    os.environ["E2B_VOLUME_API_URL"] = srv.api_url
    os.environ.pop("E2B_DEBUG", None)
    yield srv
    if srv.proc.poll() is None:
        assert srv.stop() == 0
    left = our_containers(srv.owner)
    assert not left, f"containers left after e2b-local stopped: {left}"


@contextlib.contextmanager
def another_key(monkeypatch):
    """A second server with a key of its own, the SDK pointed at it until the block ends."""
    other = LocalServer()
    other.start()
    try:
        monkeypatch.setenv("E2B_API_KEY", other.key)
        monkeypatch.setenv("E2B_API_URL", other.api_url)
        monkeypatch.setenv("E2B_VOLUME_API_URL", other.api_url)
        monkeypatch.setenv("E2B_SANDBOX_URL", other.envd_url)
        yield other
    finally:
        monkeypatch.undo()
        assert other.stop() == 0


@pytest.fixture
def sandbox(server):
    from e2b import Sandbox

    sandkit = Sandbox.create(metadata={"sandbox_test_id": uuid.uuid4().hex})
    try:
        yield sandkit
    finally:
        try:
            sandkit.kill()
        except Exception:
            pass


def processes_matching(sandkit, pattern: str) -> int:
    """How many processes in the sandbox have `pattern` (a grep -E regex) in their command line."""
    cmd = ("for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done 2>/dev/null"
           f" | grep -E -c -- '{pattern}' || true")
    return int(sandkit.commands.run(cmd, user="root").stdout.strip() or "0")


@contextlib.contextmanager
def namespace(prefix: str, second_octet: int, server: str, *args: str):
    """A network namespace of the test's own standing for the internet, joined to the host by
    a veth pair, with two addresses (10.<second_octet>.<n>.2 and .3) and `server` (Python,
    run there with `args`; it prints `ready` once it listens). Yields (a, b, namespace).
    Needs root."""
    if os.geteuid() != 0:
        if os.environ.get("SANDKIT_REQUIRE_DOCKER") == "1":
            pytest.fail("the network tests make a network namespace: run them as root")
        pytest.skip("making a network namespace needs root")
    n = random.randint(10, 250)
    tag = "%06x" % random.getrandbits(24)
    ns, host_if, peer = f"{prefix}-{tag}", f"{prefix}{tag}h", f"{prefix}{tag}n"
    net = f"10.{second_octet}.{n}"
    a, b = f"{net}.2", f"{net}.3"
    subprocess.run(
        ["sh", "-c",
         f"ip netns add {ns} && ip link add {host_if} type veth peer name {peer} && "
         f"ip link set {peer} netns {ns} && ip addr add {net}.1/24 dev {host_if} && "
         f"ip link set {host_if} up && ip netns exec {ns} sh -c 'ip link set lo up && "
         f"ip addr add {a}/24 dev {peer} && ip addr add {b}/24 dev {peer} && "
         f"ip link set {peer} up && ip route add default via {net}.1'"],
        check=True,
    )
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", server, *args],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        yield a, b, ns
    finally:
        proc.kill()
        proc.wait()
        subprocess.run(["ip", "netns", "del", ns])
        subprocess.run(["ip", "link", "del", host_if], stderr=subprocess.DEVNULL)
