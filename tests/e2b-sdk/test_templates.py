"""The SDK's template builder (`Template().from_...().build()`) against e2b-local: the v3 build
API (registration, file uploads, steps, status and logs) building on the local engine, alias
look-ups and the template list."""

import json
import os
import time
import urllib.request
import uuid

import pytest
from e2b import Sandbox, Template, wait_for_file
from e2b.exceptions import BuildException, SandboxException

from conftest import another_key


def name() -> str:
    return "sandkit-test-" + uuid.uuid4().hex[:10]


def api(server, method: str, path: str):
    req = urllib.request.Request(server.api_url + path, method=method,
                                 headers={"X-API-KEY": os.environ["E2B_API_KEY"]})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
            return r.status, (json.loads(body) if body else None)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_base_exists_and_an_unknown_name_does_not(server):
    assert Template.exists("base") is True
    assert Template.exists("nonexistent-" + uuid.uuid4().hex) is False


def test_build_copy_run_env_workdir_user_then_start(server, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "test.txt").write_text("copied\n")
    os.symlink("test.txt", tmp_path / "folder" / "link.txt")
    tpl = name()
    template = (
        Template(file_context_path=str(tmp_path))
        .from_base_image()
        .copy("folder/*", "folder")
        .run_cmd("cat folder/test.txt > /tmp/seen.txt")
        .set_envs({"A": "one"})
        .set_envs({"B": "$A two"})
        .run_cmd('echo "$B" > /tmp/env.txt')
        .set_workdir("/app")
        .run_cmd("whoami > whoami.txt; pwd > pwd.txt; id -u > uid.txt", user="root")
        .set_user("user")
        .run_cmd("whoami > /tmp/user.txt")
        .set_start_cmd("sh -c 'echo started > /tmp/started; sleep 3600'", wait_for_file("/tmp/started"))
    )
    logs = []
    info = Template.build(template, tpl, on_build_logs=logs.append)
    assert info.template_id and info.build_id
    messages = [str(entry.message) for entry in logs]
    assert any("Template is ready" in m for m in messages), messages
    assert any(m.startswith("RUN cat folder/test.txt") for m in messages), messages
    assert Template.exists(tpl) is True

    sandkit = Sandbox.create(tpl)
    try:
        assert sandkit.get_info().template_id == tpl
        assert sandkit.files.read("/home/user/folder/test.txt") == "copied\n"
        assert sandkit.commands.run("readlink /home/user/folder/link.txt").stdout == "test.txt\n"
        assert sandkit.commands.run("stat -c %U /home/user/folder/test.txt").stdout == "user\n"
        assert sandkit.files.read("/tmp/seen.txt") == "copied\n"
        assert sandkit.files.read("/tmp/env.txt") == "one two\n"
        assert sandkit.files.read("/app/whoami.txt") == "root\n"
        assert sandkit.files.read("/app/pwd.txt") == "/app\n"
        assert sandkit.files.read("/tmp/user.txt") == "user\n"
        # Started, and ready, before create returned.
        assert sandkit.files.read("/tmp/started") == "started\n"
        # ENV values are for the build only, as on E2B.
        assert sandkit.commands.run("echo \"[$A]\"").stdout == "[]\n"
    finally:
        sandkit.kill()

    status, listed = api(server, "GET", "/templates")
    assert status == 200
    entry = next(t for t in listed if t["aliases"] == [tpl])
    assert entry["templateID"] == info.template_id and entry["buildStatus"] == "ready"
    assert any(t["templateID"] == "base" for t in listed)
    # A template is not a snapshot.
    assert all(tpl not in n for s in Sandbox.list_snapshots().next_items() for n in s.names)

    status, _ = api(server, "DELETE", f"/templates/{info.template_id}")
    assert status == 204
    assert Template.exists(tpl) is False
    with pytest.raises(SandboxException):
        Sandbox.create(tpl)


def test_tags_pick_the_build(server):
    tpl = name()
    Template.build(Template().from_base_image().run_cmd("echo one > /tmp/v"), f"{tpl}:v1")
    Template.build(Template().from_base_image().run_cmd("echo two > /tmp/v"), tpl, tags=["v2", "latest"])
    try:
        for ref, want in [(f"{tpl}:v1", "one\n"), (f"{tpl}:v2", "two\n"), (f"{tpl}:latest", "two\n")]:
            sandkit = Sandbox.create(ref)
            try:
                assert sandkit.files.read("/tmp/v") == want, ref
            finally:
                sandkit.kill()
        assert Template.exists(f"{tpl}:v1") and not Template.exists(f"{tpl}:v3")
    finally:
        api(server, "DELETE", f"/templates/{tpl}")


def test_a_failed_step_is_named_with_its_command(server):
    with pytest.raises(BuildException) as raised:
        Template.build(Template().from_base_image().run_cmd("whoami", user="root123"), name())
    assert ("failed to run command 'whoami': command failed: unauthenticated: invalid username: "
            "'root123'") in str(raised.value)
    with pytest.raises(BuildException) as raised:
        Template.build(Template().from_base_image().run_cmd("echo to stderr >&2; exit 3"), name())
    assert "exit status 3" in str(raised.value)


def test_a_base_image_not_on_the_engine_is_named(server):
    with pytest.raises(BuildException) as raised:
        Template.build(Template().from_image("ubuntu:22.04").run_cmd("true"), name())
    assert "ubuntu:22.04" in str(raised.value)
    assert "no registry" in str(raised.value)


def test_from_a_local_image_in_the_background(server):
    tpl = name()
    template = Template().from_image("sandkit-base:bookworm").run_cmd("sleep 1; echo hi > /hello")
    info = Template.build_in_background(template, tpl)
    assert Template.get_build_status(info).status.value == "building"
    deadline = time.time() + 120
    while Template.get_build_status(info).status.value != "ready":
        assert Template.get_build_status(info).status.value == "building"
        assert time.time() < deadline
        time.sleep(0.5)
    sandkit = Sandbox.create(tpl)
    try:
        assert sandkit.files.read("/hello") == "hi\n"
    finally:
        sandkit.kill()
        api(server, "DELETE", f"/templates/{tpl}")


def test_another_key_cannot_use_a_template(server, monkeypatch):
    tpl = name()
    Template.build(Template().from_base_image().run_cmd("true"), tpl)
    with another_key(monkeypatch) as other:
        # E2B's answer for a name another team holds: it exists, and is not yours.
        assert Template.exists(tpl) is True
        with pytest.raises(SandboxException):
            Sandbox.create(tpl)
        status, listed = api(other, "GET", "/templates")
        assert status == 200 and all(t["aliases"] != [tpl] for t in listed)
        assert api(other, "DELETE", f"/templates/{tpl}")[0] == 404
    assert api(server, "DELETE", f"/templates/{tpl}")[0] == 204


def test_tags_assigned_listed_and_removed(server):
    tpl = name()
    Template.build(Template().from_base_image().run_cmd("echo tagged > /tmp/t"), f"{tpl}:v1")
    try:
        assigned = Template.assign_tags(f"{tpl}:v1", ["production", "latest"])
        assert sorted(assigned.tags) == ["latest", "production"]
        assert Template.assign_tags(f"{tpl}:v1", "stable").tags == ["stable"]
        assert sorted(t.tag for t in Template.get_tags(tpl)) == ["latest", "production", "stable", "v1"]
        sandkit = Sandbox.create(f"{tpl}:production")
        try:
            assert sandkit.files.read("/tmp/t") == "tagged\n"
        finally:
            sandkit.kill()
        Template.remove_tags(tpl, ["production"])
        assert not Template.exists(f"{tpl}:production")
        assert sorted(t.tag for t in Template.get_tags(tpl)) == ["latest", "stable", "v1"]
        for bad in [":invalid-tag", f"{tpl}:"]:
            with pytest.raises(Exception):
                Template.assign_tags(bad, ["x"])
    finally:
        api(server, "DELETE", f"/templates/{tpl}")
    assert not Template.exists(f"{tpl}:v1")


def test_the_operators_own_images_do_not_boot(server):
    """A tenant names an image that is on the engine but not allowed (an operator's image):
    neither a sandbox nor a build starts from it."""
    import subprocess
    private = "sandkit-test-operator-only:" + uuid.uuid4().hex[:8]
    subprocess.run(["docker", "tag", "sandkit-mini:latest", private], check=True)
    try:
        with pytest.raises(SandboxException) as raised:
            Sandbox.create(template=private)
        assert "--allow-image" in str(raised.value)
        with pytest.raises(BuildException) as raised:
            Template.build(Template().from_image(private).run_cmd("true"), name())
        assert private in str(raised.value) and "--allow-image" in str(raised.value)
    finally:
        subprocess.run(["docker", "rmi", private], check=True, capture_output=True)
