"""E2B volumes through the official SDK: the control routes, the volume content API (at
E2B_VOLUME_API_URL, the volume's bearer token) and volumes mounted into sandboxes."""

import io
import subprocess
import uuid

import pytest
from e2b import Sandbox, Volume
from e2b.exceptions import NotFoundException, SandboxException

from conftest import another_key


def name() -> str:
    return "vol-" + uuid.uuid4().hex[:10]


@pytest.fixture
def volume(server):
    vol = Volume.create(name())
    try:
        yield vol
    finally:
        Volume.destroy(vol.volume_id)


def test_create_list_info_destroy(server):
    n = name()
    vol = Volume.create(n)
    assert vol.volume_id and vol.name == n and vol.token
    assert n in [v.name for v in Volume.list()]
    info = Volume.get_info(vol.volume_id)
    assert info.volume_id == vol.volume_id and info.name == n
    with pytest.raises(Exception):
        Volume.create(n)
    with pytest.raises(Exception):
        Volume.create("not a valid name!")
    assert Volume.destroy(vol.volume_id) is True
    assert Volume.destroy(vol.volume_id) is False
    assert Volume.destroy("non-existent-id") is False
    with pytest.raises(NotFoundException):
        Volume.get_info("non-existent-id")
    engine = subprocess.run(["docker", "volume", "ls", "-q"], capture_output=True, text=True).stdout
    assert f"sandkit-volume-{vol.volume_id}" not in engine


def test_files_dirs_stat_metadata_and_remove(volume):
    written = volume.write_file("/test.txt", "hello", mode=0o644, uid=1000, gid=1000)
    assert written.path == "/test.txt" and written.type.value == "file"
    assert written.mode == 0o644 and written.uid == 1000 and written.gid == 1000 and written.size == 5
    assert volume.read_file("/test.txt") == "hello"
    assert volume.read_file("/test.txt", format="bytes") == b"hello"
    with pytest.raises(Exception):
        volume.write_file("/test.txt", "again")
    volume.write_file("/test.txt", "replaced", force=True)
    assert volume.read_file("/test.txt") == "replaced"
    big = bytes(range(256)) * 40000
    volume.write_file("/deep/er/big.bin", io.BytesIO(big), force=True)
    assert volume.read_file("/deep/er/big.bin", format="bytes") == big
    assert b"".join(volume.read_file("/deep/er/big.bin", format="stream")) == big
    volume.write_file("/empty", b"")
    assert volume.read_file("/empty") == ""

    made = volume.make_dir("/dir1", mode=0o755)
    assert made.type.value == "directory" and made.mode == 0o755
    with pytest.raises(Exception):
        volume.make_dir("/dir1")
    volume.make_dir("/a/b/c", force=True)
    names = sorted(e.name for e in volume.list("/"))
    assert names == ["a", "deep", "dir1", "empty", "test.txt"]
    assert sorted(e.path for e in volume.list("/a", depth=2)) == ["/a/b", "/a/b/c"]
    with pytest.raises(NotFoundException):
        volume.list("/missing")

    info = volume.get_info("/test.txt")
    assert info.name == "test.txt" and info.mtime is not None
    assert volume.exists("/dir1") and not volume.exists("/nope")
    changed = volume.update_metadata("/test.txt", uid=1001, gid=1001, mode=0o600)
    assert (changed.uid, changed.gid, changed.mode) == (1001, 1001, 0o600)
    with pytest.raises(NotFoundException):
        volume.update_metadata("/nope", mode=0o600)

    volume.remove("/deep")
    assert not volume.exists("/deep/er/big.bin")
    with pytest.raises(NotFoundException):
        volume.remove("/deep")
    with pytest.raises(NotFoundException):
        volume.read_file("/deep/er/big.bin")
    # Paths never leave the volume.
    assert volume.read_file("/../../test.txt", format="bytes") == b"replaced"


def test_mounted_into_sandboxes_and_kept(volume):
    volume.write_file("/from-api.txt", "api")
    sandkit = Sandbox.create(volume_mounts={"/mnt/data": volume})
    try:
        assert sandkit.files.read("/mnt/data/from-api.txt") == "api"
        sandkit.commands.run("echo sandbox > /mnt/data/from-sandbox.txt", user="root")
        assert sandkit.get_info().volume_mounts == [{"name": volume.name, "path": "/mnt/data"}]
        # Mounted: not destroyed under the sandbox.
        with pytest.raises(Exception):
            Volume.destroy(volume.volume_id)
    finally:
        sandkit.kill()
    assert volume.read_file("/from-sandbox.txt") == "sandbox\n"
    other = Sandbox.create(volume_mounts={"/data": volume.name})
    try:
        assert other.files.read("/data/from-sandbox.txt") == "sandbox\n"
    finally:
        other.kill()
    for bad in [{"/x": "no-such-volume"}, {"relative": volume}, {"/a/../b": volume}]:
        with pytest.raises(SandboxException) as raised:
            Sandbox.create(volume_mounts=bad)
        assert "invalid mounts" in str(raised.value)


def test_another_key_cannot_reach_a_volume(volume, monkeypatch):
    volume.write_file("/secret.txt", "mine")
    with another_key(monkeypatch):
        assert all(v.volume_id != volume.volume_id for v in Volume.list())
        with pytest.raises(NotFoundException):
            Volume.get_info(volume.volume_id)
        assert Volume.destroy(volume.volume_id) is False
        with pytest.raises(SandboxException):
            Sandbox.create(volume_mounts={"/data": volume.name})
        # Its token does not open the volume on a server of another key.
        stolen = Volume(volume_id=volume.volume_id, name=volume.name, token=volume.token)
        with pytest.raises(Exception):
            stolen.read_file("/secret.txt")
        forged = Volume(volume_id=volume.volume_id, name=volume.name, token="forged")
        with pytest.raises(Exception):
            forged.read_file("/secret.txt")
    assert volume.read_file("/secret.txt") == "mine"
