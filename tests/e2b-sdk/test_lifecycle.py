"""Sandbox lifecycle through the control plane, as the SDK drives it."""

import time
import uuid

import pytest
from e2b import Sandbox, SandboxQuery
from e2b.exceptions import SandboxException


def test_create_with_metadata_and_envs(server):
    tag = uuid.uuid4().hex
    sandkit = Sandbox.create(metadata={"suite": tag, "spaced key": "v w"}, envs={"GREETING": "hello there"})
    try:
        assert sandkit.sandbox_id.isalnum() and sandkit.sandbox_id == sandkit.sandbox_id.lower()
        info = sandkit.get_info()
        assert info.sandbox_id == sandkit.sandbox_id
        assert info.template_id == "base"
        assert info.metadata == {"suite": tag, "spaced key": "v w"}
        assert info.state.value == "running"
        assert info.end_at > info.started_at
        assert sandkit.commands.run("echo $GREETING").stdout == "hello there\n"
    finally:
        sandkit.kill()


def test_list_by_metadata(server):
    tag = uuid.uuid4().hex
    a = Sandbox.create(metadata={"pick": tag, "odd": "a b&c=d"})
    b = Sandbox.create(metadata={"pick": "other"})
    try:
        found = Sandbox.list(query=SandboxQuery(metadata={"pick": tag})).next_items()
        assert [s.sandbox_id for s in found] == [a.sandbox_id]
        found = Sandbox.list(query=SandboxQuery(metadata={"odd": "a b&c=d"})).next_items()
        assert [s.sandbox_id for s in found] == [a.sandbox_id]
    finally:
        a.kill()
        b.kill()


def test_list_paginates(server):
    tag = uuid.uuid4().hex
    made = [Sandbox.create(metadata={"page": tag}) for _ in range(3)]
    try:
        pager = Sandbox.list(query=SandboxQuery(metadata={"page": tag}), limit=2)
        first = pager.next_items()
        assert len(first) == 2 and pager.has_next
        second = pager.next_items()
        assert len(second) == 1 and not pager.has_next
        assert {s.sandbox_id for s in first + second} == {s.sandbox_id for s in made}
    finally:
        for s in made:
            s.kill()


def test_connect(sandbox):
    sandbox.files.write("/home/user/marker.txt", "from the first handle")
    again = Sandbox.connect(sandbox.sandbox_id)
    assert again.sandbox_id == sandbox.sandbox_id
    assert again.files.read("/home/user/marker.txt") == "from the first handle"


def test_connect_missing_raises(server):
    with pytest.raises(SandboxException):
        Sandbox.connect("nosuchsandbox000")


def test_kill_twice(server):
    sandkit = Sandbox.create()
    assert sandkit.kill() is True
    assert sandkit.kill() is False
    assert Sandbox.kill(sandkit.sandbox_id) is False


def test_set_timeout_then_expiry(server):
    sandkit = Sandbox.create(timeout=600)
    assert sandkit.is_running()
    sandkit.set_timeout(3)
    deadline = time.time() + 60
    while time.time() < deadline and sandkit.is_running():
        time.sleep(0.5)
    assert not sandkit.is_running()
    with pytest.raises(SandboxException):
        sandkit.get_info()


def test_pause_and_resume(sandbox):
    sandbox.files.write("/home/user/kept.txt", "kept")
    assert sandbox.pause() is True
    assert sandbox.get_info().state.value == "paused"
    resumed = Sandbox.connect(sandbox.sandbox_id)
    assert resumed.get_info().state.value == "running"
    assert resumed.files.read("/home/user/kept.txt") == "kept"


def test_wrong_api_key_is_refused(server, monkeypatch):
    from e2b.exceptions import AuthenticationException

    monkeypatch.setenv("E2B_API_KEY", "e2b_wrong")
    with pytest.raises(AuthenticationException):
        Sandbox.create()
