"""Commands through envd's process service."""

import time

import pytest
from e2b import CommandExitException
from e2b.exceptions import TimeoutException

from conftest import processes_matching


def test_stdout_stderr_and_exit_zero(sandbox):
    r = sandbox.commands.run("echo out; echo err >&2")
    assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 0)


def test_nonzero_exit_raises_with_output(sandbox):
    with pytest.raises(CommandExitException) as e:
        sandbox.commands.run("echo partial; echo bad >&2; exit 3")
    assert e.value.exit_code == 3
    assert e.value.stdout == "partial\n"
    assert e.value.stderr == "bad\n"


def test_env_and_cwd(sandbox):
    r = sandbox.commands.run('echo "$A|$B"; pwd', envs={"A": "1", "B": "two words"}, cwd="/tmp")
    assert r.stdout == "1|two words\n/tmp\n"


def test_default_user_and_home(sandbox):
    r = sandbox.commands.run("whoami; pwd; echo $HOME")
    assert r.stdout == "user\n/home/user\n/home/user\n"
    assert sandbox.commands.run("whoami", user="root").stdout == "root\n"


def test_multiline_and_quoting(sandbox):
    script = "x=1\nfor i in 1 2 3; do\n  x=$((x*2))\ndone\necho \"x is $x\"; echo 'single $x' \"it's\""
    assert sandbox.commands.run(script).stdout == "x is 8\nsingle $x it's\n"


def test_broken_utf8_is_replaced(sandbox):
    r = sandbox.commands.run("printf 'a\\377b'")
    assert r.stdout == "a\ufffdb"


def test_timeout_raises_and_kills(sandbox):
    started = time.time()
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 3041", timeout=2)
    assert time.time() - started < 20
    time.sleep(1)
    assert processes_matching(sandbox, "slee[p] 3041") == 0


def test_background_list_and_kill(sandbox):
    handle = sandbox.commands.run("sleep 3042", background=True)
    listed = sandbox.commands.list()
    assert handle.pid in [p.pid for p in listed]
    mine = next(p for p in listed if p.pid == handle.pid)
    assert mine.args[-1] == "sleep 3042"
    assert sandbox.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException):
        handle.wait()
    assert handle.pid not in [p.pid for p in sandbox.commands.list()]
    assert sandbox.commands.kill(handle.pid) is False
    assert processes_matching(sandbox, "slee[p] 3042") == 0


def test_connect_to_running_command(sandbox):
    handle = sandbox.commands.run("sleep 1; echo late", background=True)
    again = sandbox.commands.connect(handle.pid)
    result = again.wait()
    assert result.exit_code == 0
    assert "late" in result.stdout


def test_connect_to_missing_process(sandbox):
    from e2b.exceptions import NotFoundException

    with pytest.raises(NotFoundException):
        sandbox.commands.connect(999999)


def test_stdin_and_close_stdin(sandbox):
    handle = sandbox.commands.run("cat", background=True, stdin=True)
    sandbox.commands.send_stdin(handle.pid, "first line\n")
    sandbox.commands.send_stdin(handle.pid, "second line\n")
    sandbox.commands.close_stdin(handle.pid)
    result = handle.wait()
    assert result.stdout == "first line\nsecond line\n"


def test_streaming_callbacks(sandbox):
    seen_out, seen_err = [], []
    sandbox.commands.run(
        "for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.2; done",
        on_stdout=seen_out.append,
        on_stderr=seen_err.append,
    )
    assert "".join(seen_out) == "out1\nout2\nout3\n"
    assert "".join(seen_err) == "err1\nerr2\nerr3\n"
    assert len(seen_out) >= 2, "output arrived in pieces, as it was printed"


def test_five_megabytes_of_output(sandbox):
    r = sandbox.commands.run("head -c 5000000 /dev/zero | tr '\\0' 'x'")
    assert len(r.stdout) == 5_000_000
    assert set(r.stdout) == {"x"}


def test_pty(sandbox):
    from e2b import PtySize

    out = []
    handle = sandbox.pty.create(PtySize(rows=24, cols=80))
    sandbox.pty.resize(handle.pid, PtySize(rows=30, cols=100))
    sandbox.pty.send_stdin(handle.pid, b"stty size; echo pty-$((40+2)); exit\n")
    handle.wait(on_pty=lambda d: out.append(d))
    text = b"".join(out)
    assert b"pty-42" in text
    assert b"30 100" in text
