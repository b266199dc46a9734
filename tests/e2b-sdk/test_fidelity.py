"""E2B fidelity, checked with the unchanged SDK: a paused sandbox is gone for envd at once,
list filters include their boundary and order sandboxes made in the same second, /proc files
stream, and a route e2b-local does not serve is never taken for a missing sandbox."""

import os
import uuid

import pytest
from e2b import Sandbox, SandboxQuery
from e2b.exceptions import SandboxException


def test_paused_sandbox_is_not_running_at_once(sandbox):
    assert sandbox.commands.run("true").exit_code == 0
    assert sandbox.pause() is True
    assert not sandbox.is_running()
    with pytest.raises(SandboxException) as raised:
        sandbox.commands.run("true")
    assert "is paused" not in str(raised.value), "the engine's 409 reached the SDK"
    resumed = Sandbox.connect(sandbox.sandbox_id)
    assert resumed.is_running()
    assert resumed.commands.run("echo back").stdout == "back\n"


def test_list_started_after_includes_its_boundary(server):
    tag = uuid.uuid4().hex
    a = Sandbox.create(metadata={"since": tag})
    b = Sandbox.create(metadata={"since": tag})
    try:
        first, second = a.get_info(), b.get_info()
        assert first.started_at < second.started_at, "start times keep sub-second precision"
        query = SandboxQuery(metadata={"since": tag}, started_after=second.started_at)
        assert [s.sandbox_id for s in Sandbox.list(query=query).next_items()] == [b.sandbox_id]
        query = SandboxQuery(metadata={"since": tag}, started_after=first.started_at)
        listed = [s.sandbox_id for s in Sandbox.list(query=query).next_items()]
        assert listed == [b.sandbox_id, a.sandbox_id], "newest first, in the order made"
    finally:
        a.kill()
        b.kill()


def test_proc_files_stream(sandbox):
    status = sandbox.files.read("/proc/self/status")
    assert "Name:" in status


def test_unserved_route_is_not_a_missing_sandbox(sandbox):
    # A route of a sandbox that e2b-local does not serve (every route the SDK 2.63 calls is
    # served now; a newer SDK may call more): a 501 that names the route, never the 404 the
    # SDK reads as "sandbox not found".
    import httpx
    r = httpx.get(f"{os.environ['E2B_API_URL']}/sandboxes/{sandbox.sandbox_id}/a-newer-route",
                  headers={"X-API-KEY": os.environ["E2B_API_KEY"]})
    assert r.status_code == 501, r.text
    assert "not served by e2b-local" in r.json()["message"], r.text
    assert sandbox.is_running()


def test_symlink_target_is_the_resolved_path(sandbox):
    sandbox.files.write("/home/user/real.txt", "x")
    sandbox.commands.run("cd /home/user && ln -s real.txt rel-link && ln -s rel-link chain")
    for name in ["rel-link", "chain"]:
        info = sandbox.files.get_info(f"/home/user/{name}")
        assert info.symlink_target == "/home/user/real.txt", (name, info)
        assert info.type.value == "symlink", (name, info)


def test_killed_mid_command_is_a_timeout_not_an_exit_code(server):
    """As on E2B: the stream breaks off, the SDK finds the sandbox gone and raises
    TimeoutException (SandboxNotRunningException), not CommandExitException(137)."""
    from e2b.exceptions import TimeoutException

    sandkit = Sandbox.create()
    handle = sandkit.commands.run("sleep 60", background=True)
    assert Sandbox.kill(sandkit.sandbox_id) is True
    with pytest.raises(TimeoutException) as raised:
        handle.wait()
    # The words E2B's SDK uses once it found the sandbox gone, not a body read error.
    assert "killed or reached its" in str(raised.value), str(raised.value)


def test_the_mcp_gateway_is_refused_in_e2bs_words(server):
    """Asked for MCP servers, the SDK makes its sandbox from the `mcp-gateway` template;
    without it (here: no MCP gateway, it pulls servers from the internet) E2B's API answers
    404 `template 'mcp-gateway' not found`, and so does e2b-local."""
    before = len(Sandbox.list().next_items())
    with pytest.raises(SandboxException) as e:
        Sandbox.create(mcp={"exa": {"apiKey": "not-a-key"}})
    assert str(e.value).startswith("404: template 'mcp-gateway' not found"), str(e.value)
    assert len(Sandbox.list().next_items()) == before, "no sandbox is left behind"
