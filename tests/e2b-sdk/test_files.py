"""Files through envd: /files and the filesystem service."""

import os

import pytest
from e2b import FileType
from e2b.exceptions import NotFoundException


def test_text_round_trip(sandbox):
    info = sandbox.files.write("/home/user/hello.txt", "hello\nworld\n")
    assert info.path == "/home/user/hello.txt"
    assert sandbox.files.read("/home/user/hello.txt") == "hello\nworld\n"
    # Relative paths are relative to the user's home.
    assert sandbox.files.read("hello.txt") == "hello\nworld\n"
    # The file belongs to the user, as on E2B.
    assert sandbox.commands.run("stat -c %U /home/user/hello.txt").stdout == "user\n"


def test_binary_round_trip(sandbox):
    data = bytes(range(256)) * 4
    sandbox.files.write("/tmp/bin.dat", data)
    assert sandbox.files.read("/tmp/bin.dat", format="bytes") == data


def test_twenty_mebibytes(sandbox):
    data = os.urandom(20 << 20)
    sandbox.files.write("/tmp/big.bin", data)
    assert sandbox.files.read("/tmp/big.bin", format="bytes") == data


def test_write_many_files(sandbox):
    from e2b.sandbox.filesystem.filesystem import WriteEntry

    infos = sandbox.files.write_files([
        WriteEntry(path="/home/user/m/a.txt", data="A"),
        WriteEntry(path="/home/user/m/b.txt", data="B"),
    ])
    assert sorted(i.path for i in infos) == ["/home/user/m/a.txt", "/home/user/m/b.txt"]
    assert sandbox.files.read("/home/user/m/b.txt") == "B"


def test_list_with_depth(sandbox):
    for p in ["t/a.txt", "t/b/c.txt", "t/b/d/e.txt"]:
        sandbox.files.write(f"/home/user/{p}", p)
    one = sandbox.files.list("/home/user/t")
    assert [e.name for e in one] == ["a.txt", "b"]
    assert [e.type for e in one] == [FileType.FILE, FileType.DIR]
    two = sandbox.files.list("/home/user/t", depth=2)
    assert [e.path for e in two] == ["/home/user/t/a.txt", "/home/user/t/b", "/home/user/t/b/c.txt", "/home/user/t/b/d"]


def test_get_info_and_exists(sandbox):
    sandbox.files.write("/home/user/info.txt", "12345")
    info = sandbox.files.get_info("/home/user/info.txt")
    assert (info.name, info.type, info.size, info.path) == ("info.txt", FileType.FILE, 5, "/home/user/info.txt")
    assert info.permissions == "-rw-r--r--"
    assert info.owner == "user"
    assert sandbox.files.exists("/home/user/info.txt")
    assert not sandbox.files.exists("/home/user/nope.txt")
    d = sandbox.files.get_info("/home/user")
    assert d.type == FileType.DIR


def test_make_dir_twice(sandbox):
    assert sandbox.files.make_dir("/home/user/new/deep") is True
    assert sandbox.files.make_dir("/home/user/new/deep") is False
    assert sandbox.files.get_info("/home/user/new/deep").type == FileType.DIR


def test_rename(sandbox):
    sandbox.files.write("/home/user/old.txt", "moved")
    info = sandbox.files.rename("/home/user/old.txt", "/home/user/new.txt")
    assert info.path == "/home/user/new.txt"
    assert not sandbox.files.exists("/home/user/old.txt")
    assert sandbox.files.read("/home/user/new.txt") == "moved"


def test_remove(sandbox):
    sandbox.files.write("/home/user/gone/x.txt", "x")
    sandbox.files.remove("/home/user/gone")
    assert not sandbox.files.exists("/home/user/gone")
    # Removing what is not there is not an error, as in envd.
    sandbox.files.remove("/home/user/gone")


def test_missing_file_errors(sandbox):
    with pytest.raises(NotFoundException):
        sandbox.files.read("/home/user/missing.txt")
    with pytest.raises(NotFoundException):
        sandbox.files.get_info("/home/user/missing.txt")
    with pytest.raises(NotFoundException):
        sandbox.files.list("/home/user/missing-dir")


def test_download_and_upload_urls_are_signed(sandbox):
    import urllib.request

    sandbox.files.write("/home/user/url.txt", "via url")
    url = sandbox.download_url("/home/user/url.txt")
    assert "signature=" in url
    assert urllib.request.urlopen(url).read() == b"via url"
    bad = url.replace("signature=v1_", "signature=v1_X")
    with pytest.raises(Exception):
        urllib.request.urlopen(bad)
