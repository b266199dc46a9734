"""What the agent inside Docker sandboxes gives the unchanged SDK through e2b-local: directory
watching (the sync SDK's polled watcher and the async SDK's stream), file metadata, and
metrics."""

import asyncio
import time

from e2b import AsyncSandbox, FilesystemEventType


def test_watch_dir_polled(sandbox):
    sandbox.files.make_dir("/home/user/watched")
    handle = sandbox.files.watch_dir("/home/user/watched", recursive=True)
    sandbox.files.write("/home/user/watched/a.txt", "one")
    sandbox.commands.run("mkdir -p /home/user/watched/sub && echo two > /home/user/watched/sub/b.txt")
    sandbox.files.remove("/home/user/watched/a.txt")
    seen = []
    deadline = time.time() + 10
    while time.time() < deadline:
        seen += [(e.name, e.type) for e in handle.get_new_events()]
        if ("a.txt", FilesystemEventType.REMOVE) in seen and ("sub/b.txt", FilesystemEventType.WRITE) in seen:
            break
        time.sleep(0.2)
    handle.stop()
    assert ("a.txt", FilesystemEventType.CREATE) in seen, seen
    assert ("a.txt", FilesystemEventType.WRITE) in seen, seen
    assert ("sub", FilesystemEventType.CREATE) in seen, seen
    assert ("sub/b.txt", FilesystemEventType.WRITE) in seen, seen
    assert ("a.txt", FilesystemEventType.REMOVE) in seen, seen
    assert not any(".sandkit-write" in n for n, _ in seen), "temporary files of writes are never shown"


def test_a_new_file_is_reported_as_e2b_reports_it(sandbox):
    """E2B's envd writes a new file in place: create, chmod, write, in that order (the SDK's
    own test_watch_iterated counts the three). sandkit writes it whole, staged beside it, and
    reports the same; the staged name is never shown."""
    sandbox.files.make_dir("/home/user/iterated")
    handle = sandbox.files.watch_dir("/home/user/iterated")
    sandbox.files.write("/home/user/iterated/new.txt", "x")
    seen = []
    deadline = time.time() + 10
    while time.time() < deadline and len(seen) < 3:
        seen += [(e.name, e.type) for e in handle.get_new_events()]
        time.sleep(0.1)
    time.sleep(0.3)
    seen += [(e.name, e.type) for e in handle.get_new_events()]
    handle.stop()
    t = FilesystemEventType
    assert seen == [("new.txt", t.CREATE), ("new.txt", t.CHMOD), ("new.txt", t.WRITE)], seen


def test_watch_dir_stream(server):
    async def run():
        sandkit = await AsyncSandbox.create()
        try:
            events = []
            got = asyncio.Event()

            def on_event(e):
                events.append((e.name, e.type))
                if e.name == "c.txt" and e.type == FilesystemEventType.WRITE:
                    got.set()

            handle = await sandkit.files.watch_dir("/tmp", on_event)
            await sandkit.files.write("/tmp/c.txt", "three")
            await asyncio.wait_for(got.wait(), 10)
            await handle.stop()
            assert ("c.txt", FilesystemEventType.CREATE) in events, events
        finally:
            await sandkit.kill()

    asyncio.run(run())


def test_file_metadata_round_trips(sandbox):
    info = sandbox.files.write("/home/user/doc.txt", "hello", metadata={"Owner": "alice", "stage": "draft 1"})
    assert info.metadata == {"owner": "alice", "stage": "draft 1"}
    assert sandbox.files.get_info("/home/user/doc.txt").metadata == {"owner": "alice", "stage": "draft 1"}
    listed = {e.name: e.metadata for e in sandbox.files.list("/home/user")}
    assert listed["doc.txt"] == {"owner": "alice", "stage": "draft 1"}
    sandbox.files.write("/home/user/doc.txt", "v2")
    assert not sandbox.files.get_info("/home/user/doc.txt").metadata, "a write without metadata clears it"


def test_metrics(sandbox):
    metrics = sandbox.get_metrics()
    assert len(metrics) >= 1
    m = metrics[-1]
    assert m.cpu_count >= 1
    assert 0 < m.mem_used <= m.mem_total
    assert 0 < m.disk_used <= m.disk_total


def test_metrics_only_inside_the_asked_range(sandbox):
    """get_metrics(start, end) returns only samples inside the range: none for a range in
    the past, the samples kept so far and the current one for a range around now."""
    from datetime import datetime, timedelta, timezone
    now = datetime.now(timezone.utc)
    past = sandbox.get_metrics(start=now - timedelta(hours=2), end=now - timedelta(hours=1))
    assert past == []
    around = sandbox.get_metrics(start=now - timedelta(minutes=1), end=now + timedelta(minutes=1))
    assert len(around) >= 1
    for m in around:
        assert now - timedelta(minutes=1) <= m.timestamp <= now + timedelta(minutes=1)
    future = sandbox.get_metrics(start=now + timedelta(hours=1))
    assert future == []


def test_git_in_the_base_template(sandbox):
    """E2B's base template has git, and the SDK's git helpers rely on it."""
    result = sandbox.commands.run("git --version")
    assert result.exit_code == 0 and result.stdout.startswith("git version"), result


def wait_paused(sandbox_id):
    from e2b import Sandbox, SandboxState

    deadline = time.time() + 60
    while time.time() < deadline:
        if Sandbox.get_info(sandbox_id).state == SandboxState.PAUSED:
            return
        time.sleep(0.5)
    assert Sandbox.get_info(sandbox_id).state == SandboxState.PAUSED


def test_auto_pause_at_the_timeout(server):
    """lifecycle on_timeout=pause: the sandbox is paused at its timeout, not killed, and
    connect resumes it with its files."""
    from e2b import Sandbox

    sandkit = Sandbox.create(timeout=4, lifecycle={"on_timeout": "pause"})
    try:
        sandkit.files.write("/home/user/kept.txt", "across the pause")
        wait_paused(sandkit.sandbox_id)
        resumed = Sandbox.connect(sandkit.sandbox_id)
        assert resumed.files.read("/home/user/kept.txt") == "across the pause"
    finally:
        Sandbox.kill(sandkit.sandbox_id)


def test_set_timeout_zero_pauses_at_once_with_keep_memory_unset(server):
    """As E2B's own test of keep_memory=None: lifecycle pause without a mode, then
    set_timeout(0) ends the time to live at once (E2B accepts 0), and the sandbox is paused,
    not killed."""
    from e2b import Sandbox

    sandkit = Sandbox.create(timeout=300, lifecycle={"on_timeout": {"action": "pause"}})
    try:
        sandkit.files.write("/home/user/kept.txt", "kept")
        sandkit.set_timeout(0)
        wait_paused(sandkit.sandbox_id)
        resumed = Sandbox.connect(sandkit.sandbox_id)
        assert resumed.files.read("/home/user/kept.txt") == "kept"
    finally:
        Sandbox.kill(sandkit.sandbox_id)


def test_auto_resume_on_traffic(server):
    """lifecycle auto_resume: a sandbox paused at its timeout resumes when the SDK uses it."""
    from e2b import Sandbox, SandboxState

    sandkit = Sandbox.create(timeout=4, lifecycle={"on_timeout": "pause", "auto_resume": True})
    try:
        sandkit.files.write("/home/user/kept.txt", "still here")
        wait_paused(sandkit.sandbox_id)
        result = sandkit.commands.run("cat /home/user/kept.txt")
        assert result.stdout == "still here"
        assert Sandbox.get_info(sandkit.sandbox_id).state == SandboxState.RUNNING
    finally:
        Sandbox.kill(sandkit.sandbox_id)


def test_user_may_sudo_as_on_e2b_and_root_stays_contained(sandbox):
    """As E2B's base template: `user` runs sudo without a password (E2B's own SDK tests do).
    The rest of the hardening holds for the root it gets: no raw sockets."""
    assert sandbox.commands.run("sudo -n id -u", user="user").stdout.strip() == "0"
    raw = sandbox.commands.run(
        "sudo -n python3 -c 'import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)' "
        "2>&1; echo exit=$?", user="user")
    assert "PermissionError" in raw.stdout or "Operation not permitted" in raw.stdout, raw.stdout
    assert "exit=0" not in raw.stdout, raw.stdout
