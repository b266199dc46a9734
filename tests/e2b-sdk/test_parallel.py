"""Several sandboxes at once, and nothing left behind when the server stops."""

import subprocess
from concurrent.futures import ThreadPoolExecutor

from e2b import Sandbox

from conftest import LocalServer, another_key, our_containers


def test_eight_sandboxes_in_parallel(server):
    def work(i: int) -> str:
        sandkit = Sandbox.create(metadata={"parallel": str(i)})
        try:
            sandkit.files.write("/home/user/n.txt", str(i))
            return sandkit.commands.run("cat /home/user/n.txt; echo; hostname").stdout.split("\n")[0]
        finally:
            sandkit.kill()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(8)))
    assert results == [str(i) for i in range(8)]


def test_the_default_limits_suit_a_test_suite(monkeypatch):
    """A fresh server at its default settings, as a user starts it: 70 creates in well under a
    minute (more than the old default of 60 a minute, which failed most of an ordinary SDK
    test run with RateLimitException) are all served."""
    from e2b.exceptions import RateLimitException

    def one(i: int) -> str:
        try:
            sandkit = Sandbox.create(timeout=60)
        except RateLimitException as e:
            return f"429: {e}"
        sandkit.kill()
        return "ok"

    with another_key(monkeypatch):
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(one, range(70)))
    refused = [r for r in results if r != "ok"]
    assert not refused, refused[:3]


def test_ctrl_c_kills_what_the_server_made(monkeypatch):
    """A second server, stopped with SIGINT while a sandbox it made still runs."""
    srv = LocalServer()
    srv.start()
    try:
        monkeypatch.setenv("E2B_API_KEY", srv.key)
        monkeypatch.setenv("E2B_API_URL", srv.api_url)
        monkeypatch.setenv("E2B_SANDBOX_URL", srv.envd_url)
        sandkit = Sandbox.create(timeout=600)
        assert sandkit.commands.run("echo alive").stdout == "alive\n"
        before = set(our_containers(srv.owner))
        assert len(before) >= 1
    finally:
        code = srv.stop()
    assert code == 0
    names = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True).stdout
    assert f"sandkit-{sandkit.sandbox_id}" not in names.split()
