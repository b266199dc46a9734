"""A sandbox's logs and the batch metrics route, through the SDK's generated client (no
high-level method wraps them): what a dashboard or a script watching sandboxes calls."""

import time

import pytest
from e2b import ConnectionConfig, Sandbox
from e2b.api.client.api.sandboxes import (
    get_sandboxes_metrics,
    get_sandboxes_sandbox_id_logs,
    get_v_2_sandboxes_sandbox_id_logs,
)
from e2b.api.client.models.log_level import LogLevel
from e2b.api.client.models.logs_direction import LogsDirection
from e2b.api.client_sync import get_api_client
from e2b.exceptions import TimeoutException

from conftest import another_key


def client():
    return get_api_client(ConnectionConfig())


def v2(sandbox_id, **kw):
    r = get_v_2_sandboxes_sandbox_id_logs.sync_detailed(sandbox_id, client=client(), **kw)
    assert r.status_code == 200, r.content
    return r.parsed.logs


def test_logs_hold_what_happened_to_and_in_the_sandbox(server, monkeypatch):
    sbx = Sandbox.create()
    sid = sbx.sandbox_id
    try:
        before = int(time.time() * 1000) - 1
        assert sbx.commands.run("echo hello").stdout == "hello\n"
        with pytest.raises(TimeoutException):
            sbx.commands.run("sleep 30", timeout=1)
        # The client gave up at its timeout; the sandbox's deadline ends the command a moment
        # later, and the log says so as a warning (a level is a minimum).
        deadline = time.time() + 20
        while not v2(sid, level=LogLevel.WARN) and time.time() < deadline:
            time.sleep(0.2)
        warned = v2(sid, level=LogLevel.WARN)
        assert len(warned) == 1 and warned[0].message.endswith("ended"), warned
        assert warned[0].fields["status"] == "deadline"
        sbx.set_timeout(120)

        # Forward: oldest first, each entry as E2B's envd and API write it.
        forward = v2(sid, direction=LogsDirection.FORWARD, cursor=before - 60_000)
        messages = [e.message for e in forward]
        assert messages[0] == "Sandbox created", messages
        assert messages[-1] == "Sandbox timeout set", messages
        created = forward[0]
        assert created.fields["sandboxID"] == sid
        assert created.fields["templateID"] == "base"
        starts = [e for e in forward if e.fields.additional_properties.get("event_type") == "process_start"]
        ends = [e for e in forward if e.fields.additional_properties.get("event_type") == "process_end"]
        echo = next(e for e in starts if "echo hello" in e.fields["command"])
        pid = echo.fields["pid"]
        assert echo.message == f"Process with pid {pid} started"
        echo_end = next(e for e in ends if e.fields["pid"] == pid)
        assert echo_end.fields["exit_code"] == "0"
        assert echo_end.fields["stdout_bytes"] == "6"
        assert echo_end.level == LogLevel.INFO
        assert messages.index(echo.message) < messages.index(echo_end.message)

        # Backward (the default): newest first.
        backward = v2(sid)
        assert [e.message for e in backward] == list(reversed(messages))
        # `search` is a substring of the message; `limit` bounds the page.
        assert {e.message for e in v2(sid, search="started")} == {e.message for e in starts}
        assert len(v2(sid, limit=2)) == 2
        # A cursor after everything, read forward: nothing.
        assert v2(sid, direction=LogsDirection.FORWARD, cursor=int(time.time() * 1000) + 1000) == []

        # v1: the same entries, oldest first, each also as one JSON line.
        r = get_sandboxes_sandbox_id_logs.sync_detailed(sid, client=client(), start=before - 60_000)
        assert r.status_code == 200, r.content
        assert [e.message for e in r.parsed.log_entries] == messages
        assert len(r.parsed.logs) == len(messages)
        assert '"message":"Sandbox created"' in r.parsed.logs[0].line

        # Another key sees no logs of this sandbox (as E2B: 200 and none).
        with another_key(monkeypatch):
            assert v2(sid) == []

        # Refusals in E2B's words.
        r = get_v_2_sandboxes_sandbox_id_logs.sync_detailed(sid, client=client(), limit=1001)
        assert r.status_code == 400, r.content
        r = get_v_2_sandboxes_sandbox_id_logs.sync_detailed("Not-A-Sandbox-Id", client=client())
        assert r.status_code == 400 and b"Invalid sandbox ID" in r.content, r.content
    finally:
        sbx.kill()
    # The logs outlive the sandbox, and end with its kill.
    after = v2(sid)
    assert after[0].message == "Killing sandbox"
    assert after[0].fields["kill_reason"] == "request"


def test_batch_metrics_give_each_own_sandbox_its_latest_sample(server, monkeypatch):
    a, b = Sandbox.create(), Sandbox.create()
    try:
        ids = [a.sandbox_id, b.sandbox_id, "nosuchsandbox"]
        # Samples are taken every 5 s: within a few, both sandboxes have one.
        deadline = time.time() + 15
        while True:
            r = get_sandboxes_metrics.sync_detailed(client=client(), sandbox_ids=ids)
            assert r.status_code == 200, r.content
            got = r.parsed.sandboxes
            if len(got) == 2 or time.time() > deadline:
                break
            time.sleep(0.5)
        assert set(got) == {a.sandbox_id, b.sandbox_id}, got
        for m in got.values():
            assert m["cpuCount"] >= 1
            assert 0 < m["memUsed"] <= m["memTotal"]
            assert abs(m["timestampUnix"] - time.time()) < 60
        # Another key's view of the same ids: nothing.
        with another_key(monkeypatch):
            r = get_sandboxes_metrics.sync_detailed(client=client(), sandbox_ids=ids)
            assert r.status_code == 200 and r.parsed.sandboxes == {}, r.content
        # More than 100, or the same id twice: 400.
        r = get_sandboxes_metrics.sync_detailed(
            client=client(), sandbox_ids=[f"s{i}" for i in range(101)])
        assert r.status_code == 400, r.content
        r = get_sandboxes_metrics.sync_detailed(client=client(), sandbox_ids=[a.sandbox_id] * 2)
        assert r.status_code == 400, r.content
    finally:
        a.kill()
        b.kill()
