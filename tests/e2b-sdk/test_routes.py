"""Routes of E2B's API that the SDK's generated client calls and no high-level method wraps:
each through the SDK's own client functions, as a program using them would call them."""

import os
import time
import urllib.request
import uuid

import pytest
from e2b import ConnectionConfig, Sandbox, Template
from e2b.api.client.api.sandboxes import post_sandboxes_sandbox_id_refreshes
from e2b.api.client.api.tags import (
    get_templates_template_id_tags_count,
    get_templates_template_id_tags_exists,
    get_templates_template_id_tags_groups,
    get_templates_template_id_tags_tag_assignments,
)
from e2b.api.client.api.templates import (
    get_default_templates,
    get_templates_template_id_builds_build_id_logs,
    patch_templates_template_id,
    patch_v_2_templates_template_id,
)
from e2b.api.client.models import SandboxRefreshRequest, TemplateUpdateRequest
from e2b.api.client.models.get_templates_template_id_tags_groups_sort import (
    GetTemplatesTemplateIDTagsGroupsSort as Sort,
)
from e2b.api.client.models.log_level import LogLevel
from e2b.api.client.models.logs_direction import LogsDirection
from e2b.api.client_sync import get_api_client


def client():
    return get_api_client(ConnectionConfig())


def test_refreshes_extend_and_never_shorten(server):
    sandkit = Sandbox.create(timeout=5)
    try:
        before = Sandbox.get_info(sandkit.sandbox_id).end_at
        r = post_sandboxes_sandbox_id_refreshes.sync_detailed(
            sandkit.sandbox_id, client=client(), body=SandboxRefreshRequest(duration=120))
        assert r.status_code == 204, r.content
        extended = Sandbox.get_info(sandkit.sandbox_id).end_at
        assert extended.timestamp() >= before.timestamp() + 100
        # A shorter refresh leaves the end where it is.
        r = post_sandboxes_sandbox_id_refreshes.sync_detailed(
            sandkit.sandbox_id, client=client(), body=SandboxRefreshRequest(duration=1))
        assert r.status_code == 204
        assert Sandbox.get_info(sandkit.sandbox_id).end_at == extended
        # Past the first time to live, it still runs.
        time.sleep(6)
        assert sandkit.is_running()
        r = post_sandboxes_sandbox_id_refreshes.sync_detailed(
            "nosuchsandbox", client=client(), body=SandboxRefreshRequest(duration=10))
        assert r.status_code == 404
    finally:
        sandkit.kill()


def test_default_templates_are_base(server):
    r = get_default_templates.sync_detailed(client=client())
    assert r.status_code == 200, r.content
    assert [t.template_id for t in r.parsed] == ["base"]
    assert r.parsed[0].is_default is True


def test_build_logs_tags_and_patch(server):
    tpl = "sandkit-test-" + uuid.uuid4().hex[:10]
    info = Template.build(Template().from_base_image().run_cmd("echo built-here"), f"{tpl}:v1")
    c = client()
    try:
        Template.assign_tags(f"{tpl}:v1", ["prod"])
        # The build's log: the step's output, oldest first; newest first backward; by level.
        r = get_templates_template_id_builds_build_id_logs.sync_detailed(
            info.template_id, info.build_id, client=c)
        assert r.status_code == 200, r.content
        messages = [e.message for e in r.parsed.logs]
        assert any("built-here" in m for m in messages), messages
        r = get_templates_template_id_builds_build_id_logs.sync_detailed(
            info.template_id, info.build_id, client=c, direction=LogsDirection.BACKWARD, limit=1)
        assert [e.message for e in r.parsed.logs] == messages[-1:]
        r = get_templates_template_id_builds_build_id_logs.sync_detailed(
            info.template_id, info.build_id, client=c, level=LogLevel.ERROR)
        assert r.parsed.logs == []
        future = int((time.time() + 3600) * 1000)
        r = get_templates_template_id_builds_build_id_logs.sync_detailed(
            info.template_id, info.build_id, client=c, cursor=future)
        assert r.parsed.logs == []
        r = get_templates_template_id_builds_build_id_logs.sync_detailed(
            info.template_id, "00000000-0000-4000-a000-000000000000", client=c)
        assert r.status_code == 404

        # Tags.
        r = get_templates_template_id_tags_count.sync_detailed(tpl, client=c)
        assert r.status_code == 200 and r.parsed.total == 2, r.content
        r = get_templates_template_id_tags_exists.sync_detailed(tpl, client=c, tag=" PROD ")
        assert r.parsed.exists is True and r.parsed.normalized_tag == "prod", r.content
        r = get_templates_template_id_tags_exists.sync_detailed(tpl, client=c, tag="nope")
        assert r.parsed.exists is False
        r = get_templates_template_id_tags_groups.sync_detailed(tpl, client=c, sort=Sort.NAME_ASC)
        assert r.status_code == 200, r.content
        assert [g.tag for g in r.parsed.tags] == ["prod", "v1"]
        assert all(len(g.assignments) == 1 for g in r.parsed.tags)
        r = get_templates_template_id_tags_groups.sync_detailed(
            tpl, client=c, sort=Sort.NAME_ASC, tags_limit=1)
        assert [g.tag for g in r.parsed.tags] == ["prod"] and r.parsed.next_cursor
        r = get_templates_template_id_tags_groups.sync_detailed(
            tpl, client=c, sort=Sort.NAME_ASC, tags_limit=1, tags_cursor=r.parsed.next_cursor)
        assert [g.tag for g in r.parsed.tags] == ["v1"] and not r.parsed.next_cursor
        r = get_templates_template_id_tags_tag_assignments.sync_detailed(tpl, "v1", client=c)
        assert r.status_code == 200, r.content
        assert [str(a.build_id) for a in r.parsed.data] == [info.build_id]
        r = get_templates_template_id_tags_count.sync_detailed("no-such-template", client=c)
        assert r.status_code == 404

        # PATCH: a template stays this key's own.
        r = patch_templates_template_id.sync_detailed(
            tpl, client=c, body=TemplateUpdateRequest(public=False))
        assert r.status_code == 200, r.content
        r = patch_v_2_templates_template_id.sync_detailed(
            tpl, client=c, body=TemplateUpdateRequest(public=False))
        assert r.status_code == 200 and r.parsed.names == [tpl], r.content
        r = patch_v_2_templates_template_id.sync_detailed(
            tpl, client=c, body=TemplateUpdateRequest(public=True))
        assert r.status_code == 400
        assert b"cannot be made public" in r.content
    finally:
        Template.remove_tags(tpl, ["prod"])
        req = urllib.request.Request(f"{server.api_url}/templates/{tpl}", method="DELETE",
                                     headers={"X-API-KEY": os.environ["E2B_API_KEY"]})
        urllib.request.urlopen(req, timeout=30).close()
