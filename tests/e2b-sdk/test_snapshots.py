"""Snapshots and forks through the official SDK: E2B's routes, served on Docker.

A snapshot keeps the sandbox's files (not its memory: `mode="full"` is refused); sandboxes are
made from its id; it belongs to the key that made it.
"""

import subprocess
import uuid

import pytest
from e2b import Sandbox, Template
from e2b.exceptions import BuildException, SandboxException

from conftest import another_key


def test_snapshot_then_a_sandbox_from_it_then_delete(sandbox):
    sandbox.files.write("/home/user/kept.txt", "at the snapshot")
    sandbox.commands.run("mkdir -p /home/user/tree/deep && echo leaf > /home/user/tree/deep/leaf")
    snap = sandbox.create_snapshot()
    assert snap.snapshot_id and snap.names == [snap.snapshot_id]
    sandbox.files.write("/home/user/kept.txt", "later")

    listed = Sandbox.list_snapshots(sandbox_id=sandbox.sandbox_id).next_items()
    assert [s.snapshot_id for s in listed] == [snap.snapshot_id]

    copy = Sandbox.create(template=snap.snapshot_id)
    try:
        assert copy.sandbox_id != sandbox.sandbox_id
        assert copy.files.read("/home/user/kept.txt") == "at the snapshot"
        assert copy.files.read("/home/user/tree/deep/leaf") == "leaf\n"
        assert copy.commands.run("whoami").stdout == "user\n"
        assert copy.get_info().template_id == snap.snapshot_id
        # The source's own metadata is not the copy's.
        assert "sandbox_test_id" not in copy.get_info().metadata
        assert Sandbox.delete_snapshot(snap.snapshot_id) is True
        # Sandboxes made from a deleted snapshot keep running.
        assert copy.commands.run("echo still").stdout == "still\n"
    finally:
        copy.kill()
    assert Sandbox.delete_snapshot(snap.snapshot_id) is False
    assert Sandbox.list_snapshots(sandbox_id=sandbox.sandbox_id).next_items() == []
    with pytest.raises(SandboxException):
        Sandbox.create(template=snap.snapshot_id)


def test_named_snapshots_are_found_by_name_replaced_and_paged(sandbox):
    name = "snap-" + uuid.uuid4().hex[:8]
    named = sandbox.create_snapshot(name)
    other = sandbox.create_snapshot()
    try:
        assert any(n.endswith(f"/{name}:default") for n in named.names), named.names
        found = Sandbox.list_snapshots(name=name).next_items()
        assert [s.snapshot_id for s in found] == [named.snapshot_id]

        # Newest first, a page at a time.
        paginator = Sandbox.list_snapshots(sandbox_id=sandbox.sandbox_id, limit=1)
        first = paginator.next_items()
        assert paginator.has_next
        second = paginator.next_items()
        assert not paginator.has_next
        assert [s.snapshot_id for s in first + second] == [other.snapshot_id, named.snapshot_id]

        # The same name again: the name moves to the new snapshot.
        sandbox.files.write("/home/user/v.txt", "two")
        again = sandbox.create_snapshot(name)
        assert again.snapshot_id == named.snapshot_id
        assert len(Sandbox.list_snapshots(name=name).next_items()) == 1
        copy = Sandbox.create(template=again.snapshot_id)
        try:
            assert copy.files.read("/home/user/v.txt") == "two"
        finally:
            copy.kill()
    finally:
        Sandbox.delete_snapshot(named.snapshot_id)
        Sandbox.delete_snapshot(other.snapshot_id)


def test_memory_snapshots_are_refused_with_the_reason(sandbox):
    with pytest.raises(SandboxException) as raised:
        sandbox.create_snapshot(mode="full")
    assert "E2B's cloud" in str(raised.value)
    with pytest.raises(SandboxException):
        sandbox.create_snapshot("Not A Valid Name!")
    assert Sandbox.list_snapshots(sandbox_id=sandbox.sandbox_id).next_items() == []


def test_fork_copies_files_env_and_metadata(server):
    tag = uuid.uuid4().hex
    source = Sandbox.create(metadata={"fork": tag}, envs={"FROM": "source"})
    forks = []
    try:
        source.files.write("/home/user/f.txt", "before the fork")
        forks = source.fork(count=2, timeout=120)
        assert len(forks) == 2
        assert all(isinstance(f, Sandbox) for f in forks), forks
        ids = {f.sandbox_id for f in forks}
        assert len(ids) == 2 and source.sandbox_id not in ids
        for f in forks:
            assert f.files.read("/home/user/f.txt") == "before the fork"
            assert f.commands.run("echo $FROM").stdout == "source\n"
            assert f.get_info().metadata == {"fork": tag}
            f.files.write("/home/user/f.txt", f.sandbox_id)
        assert source.files.read("/home/user/f.txt") == "before the fork"
        listed = Sandbox.list(query=__import__("e2b").SandboxQuery(metadata={"fork": tag})).next_items()
        assert {s.sandbox_id for s in listed} == ids | {source.sandbox_id}
        # A fork is not a snapshot anyone asked for.
        assert Sandbox.list_snapshots(sandbox_id=source.sandbox_id).next_items() == []
    finally:
        for f in forks:
            if isinstance(f, Sandbox):
                f.kill()
        source.kill()


def test_another_key_cannot_list_delete_or_use_a_snapshot(sandbox, monkeypatch):
    snap = sandbox.create_snapshot("private")
    with another_key(monkeypatch):
        assert Sandbox.list_snapshots().next_items() == []
        assert Sandbox.list_snapshots(name="private").next_items() == []
        assert Sandbox.delete_snapshot(snap.snapshot_id) is False
        with pytest.raises(SandboxException):
            Sandbox.create(template=snap.snapshot_id)
        # However the image is named: its id, a prefix of it, a registry-qualified name, or
        # as the base of a template build.
        image_id = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", snap.snapshot_id],
                                  capture_output=True, text=True, check=True).stdout.strip()
        for alias in [image_id, image_id.removeprefix("sha256:")[:12], "docker.io/" + snap.snapshot_id]:
            with pytest.raises(SandboxException):
                Sandbox.create(template=alias)
        with pytest.raises(BuildException) as raised:
            Template.build(Template().from_image(snap.snapshot_id).run_cmd("true"), "stolen")
        assert "not yours" in str(raised.value) or "not on this engine" in str(raised.value)
        # Its own snapshot of the same name is its own.
        mine = Sandbox.create()
        try:
            own = mine.create_snapshot("private")
            assert own.snapshot_id != snap.snapshot_id
            assert Sandbox.delete_snapshot(own.snapshot_id) is True
        finally:
            mine.kill()
    assert [s.snapshot_id for s in Sandbox.list_snapshots(name="private").next_items()] == [snap.snapshot_id]
    assert Sandbox.delete_snapshot(snap.snapshot_id) is True
