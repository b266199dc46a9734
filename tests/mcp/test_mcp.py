"""`sandkit mcp` judged by the official MCP Python SDK (`mcp` on PyPI), over stdio and over
streamable HTTP, on Docker: the tools, one sandbox per MCP session (made on the first tool
call, killed when the session ends), and nothing left when the server stops (SIGTERM)."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parents[2]
SANDKIT = os.environ.get("SANDKIT_BIN", str(ROOT / "target" / "debug" / "sandkit"))
TOOLS = ["edit", "ipython", "list_files", "read_file", "run_command", "write_file"]


def session_sandboxes() -> list:
    """Running sandboxes made for an MCP session (their session id starts with mcp-)."""
    out = subprocess.run(
        ["docker", "ps", "-q", "--filter", "label=sandkit.meta.sandkit.session"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    ids = []
    for c in out:
        label = subprocess.run(
            ["docker", "inspect", "-f", '{{index .Config.Labels "sandkit.meta.sandkit.session"}}', c],
            capture_output=True, text=True,
        ).stdout.strip()
        if label.startswith("mcp-"):
            ids.append(c)
    return ids


def wait_for(predicate, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return predicate()


async def call(session: ClientSession, name: str, **arguments):
    result = await session.call_tool(name, arguments)
    text = "".join(c.text for c in result.content if getattr(c, "text", None) is not None)
    return result.is_error, text


async def exercise(session: ClientSession) -> None:
    """Every tool, as a model would call them, in one MCP session."""
    tools = await session.list_tools()
    assert sorted(t.name for t in tools.tools) == TOOLS
    run = next(t for t in tools.tools if t.name == "run_command")
    assert "command" in run.input_schema["properties"]

    err, text = await call(session, "run_command",
                           command="mkdir -p /tmp/mcp && cd /tmp/mcp && export GREETING=hi; echo out; echo err >&2; (exit 3)")
    assert not err, text
    out = json.loads(text)
    assert (out["exit_code"], out["stdout"], out["stderr"], out["cwd"], out["timed_out"]) == \
        (3, "out\n", "err\n", "/tmp/mcp", False), out
    # The shell is kept between calls.
    err, text = await call(session, "run_command", command="pwd; echo $GREETING")
    assert json.loads(text)["stdout"] == "/tmp/mcp\nhi\n", text

    err, text = await call(session, "write_file", path="notes/a.txt", content="one\ntwo\n")
    assert not err, text
    err, text = await call(session, "read_file", path="/tmp/mcp/notes/a.txt")
    assert (err, text) == (False, "one\ntwo\n"), text
    err, text = await call(session, "list_files", path="/tmp/mcp")
    assert text.splitlines() == ["notes/"], text
    err, text = await call(session, "edit", command="str_replace", path="notes/a.txt", old_str="two", new_str="TWO")
    assert not err, text
    err, text = await call(session, "edit", command="view", path="notes/a.txt")
    assert "TWO" in text, text
    err, text = await call(session, "ipython", code="x = 6 * 7\nx")
    assert not err and "42" in text, text

    # Failures are tool errors the model reads, not protocol errors.
    err, text = await call(session, "read_file", path="/no/such/file")
    assert err and "no/such/file" in text, text
    err, text = await call(session, "edit", command="str_replace", path="notes/a.txt", old_str="absent", new_str="x")
    assert err, text

    # A command past its timeout is interrupted, and the next one runs.
    started = time.time()
    err, text = await call(session, "run_command", command="echo before; sleep 60", timeout_secs=2)
    out = json.loads(text)
    assert out["timed_out"] and "before" in out["stdout"], out
    assert time.time() - started < 30
    err, text = await call(session, "run_command", command="echo after")
    assert json.loads(text)["stdout"] == "after\n", text


def sandkit_env() -> dict:
    env = dict(os.environ)
    env.setdefault("SANDKIT_LOG", "info")
    return env


def test_stdio_one_sandbox_per_session_gone_at_the_end():
    before = set(session_sandboxes())

    async def main():
        params = StdioServerParameters(command=SANDKIT, args=["mcp"], env=sandkit_env())
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                # No sandbox before the first tool call.
                assert set(session_sandboxes()) == before
                await exercise(session)
                assert len(set(session_sandboxes()) - before) == 1

    asyncio.run(main())
    assert wait_for(lambda: set(session_sandboxes()) <= before), session_sandboxes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_sessions_have_their_own_sandboxes_killed_when_they_end():
    port = free_port()
    log = open(ROOT / "target" / f"sandkit-mcp-http-{port}.log", "w")
    server = subprocess.Popen([SANDKIT, "mcp", "--http", f"127.0.0.1:{port}"], env=sandkit_env(),
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/mcp"
    before = set(session_sandboxes())
    try:
        assert wait_for(lambda: _listening(port), 30), "sandkit mcp --http did not listen"

        async def one(tag: str) -> str:
            async with streamable_http_client(url) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    await call(session, "write_file", path="/tmp/who", content=tag)
                    await asyncio.sleep(1)
                    err, text = await call(session, "read_file", path="/tmp/who")
                    assert (err, text) == (False, tag), (tag, text)
                    _, host = await call(session, "run_command", command="hostname")
                    return json.loads(host)["stdout"]

        async def main():
            async with streamable_http_client(url) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    await exercise(session)
                    assert len(set(session_sandboxes()) - before) == 1
            # Two sessions at once: two sandboxes that never see each other's files.
            hosts = await asyncio.gather(one("a"), one("b"))
            assert hosts[0] != hosts[1], hosts

        asyncio.run(main())
        # Each client closed its session (HTTP DELETE): its sandbox is killed.
        assert wait_for(lambda: set(session_sandboxes()) <= before), session_sandboxes()

        # A session left open is killed when the server stops.
        async def left_open():
            async with streamable_http_client(url, terminate_on_close=False) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    await call(session, "run_command", command="true")
        asyncio.run(left_open())
        assert len(set(session_sandboxes()) - before) == 1
    finally:
        # As a service manager stops it.
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            code = server.wait()
        log.close()
    assert code == 0, (ROOT / "target" / f"sandkit-mcp-http-{port}.log").read_text()[-2000:]
    assert wait_for(lambda: set(session_sandboxes()) <= before), session_sandboxes()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
