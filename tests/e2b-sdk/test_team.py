"""e2b-local for a team: two keys from a keys file, each seeing only what it made; limits per
key answered as the SDK expects; a key taken out of the file refused at once; and the
operator's dashboard, loaded in headless Chromium and looked at."""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from e2b import Sandbox, Secret, Template, Volume
from e2b.exceptions import AuthenticationException, RateLimitException
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, LocalServer

ALICE = "e2b_alice_" + "%032x" % random.getrandbits(128)
BOB = "e2b_bob_" + "%032x" % random.getrandbits(128)


def entry(name, key, extra=""):
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f'[[key]]\nname = "{name}"\nsha256 = "{digest}"\n{extra}\n'


@pytest.fixture
def team(server, tmp_path, monkeypatch):
    keys = tmp_path / "keys.toml"
    keys.write_text(entry("alice", ALICE, "operator = true\nmax_snapshots = 1")
                    + entry("bob", BOB, "max_sandboxes = 1\nmax_disk_mib = 1\nmax_volumes = 0"))
    srv = LocalServer("--keys-file", str(keys), "--data-dir", str(tmp_path / "data"))
    # A warm pool of one, so that its depth is in /metrics.
    monkeypatch.setenv("SANDKIT_DOCKER__POOL", "1")
    srv.start()
    monkeypatch.setenv("E2B_API_URL", srv.api_url)
    monkeypatch.setenv("E2B_VOLUME_API_URL", srv.api_url)
    monkeypatch.setenv("E2B_SANDBOX_URL", srv.envd_url)
    monkeypatch.setenv("E2B_API_KEY", ALICE)
    srv.keys_file = keys
    try:
        yield srv
    finally:
        monkeypatch.undo()
        assert srv.stop() == 0


def call(srv, method, path, key, body=None):
    req = urllib.request.Request(srv.api_url + path, method=method, data=body,
                                 headers={"X-API-KEY": key})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_two_keys_see_only_their_own_and_a_revoked_key_is_refused(team, tmp_path):
    a = Sandbox.create(api_key=ALICE)
    b = Sandbox.create(api_key=BOB)
    secret = Secret.create("team-token-%06x" % random.getrandbits(24), "sk-1", api_key=ALICE)
    volume = Volume.create("vol-%06x" % random.getrandbits(24), api_key=ALICE)
    snap = a.create_snapshot()
    tpl = "team-tpl-%06x" % random.getrandbits(24)
    Template.build(Template().from_base_image().run_cmd("echo alice > /tmp/who"), tpl, api_key=ALICE)
    try:
        assert [s.sandbox_id for s in Sandbox.list(api_key=ALICE).next_items()] == [a.sandbox_id]
        # A template is its key's: another key cannot start it (as on E2B, the name is taken).
        with pytest.raises(Exception):
            Sandbox.create(tpl, api_key=BOB)
        from_tpl = Sandbox.create(tpl, api_key=ALICE)
        assert from_tpl.files.read("/tmp/who") == "alice\n"
        from_tpl.kill()
        assert [s.sandbox_id for s in Sandbox.list(api_key=BOB).next_items()] == [b.sandbox_id]
        with pytest.raises(Exception):
            Sandbox.connect(a.sandbox_id, api_key=BOB)
        assert [s.snapshot_id for s in Sandbox.list_snapshots(api_key=ALICE).next_items()] == [snap.snapshot_id]
        assert Sandbox.list_snapshots(api_key=BOB).next_items() == []
        assert secret.name in [s.name for s in Secret.list(api_key=ALICE).next_items()]
        assert Secret.list(api_key=BOB).next_items() == []
        assert volume.name in [v.name for v in Volume.list(api_key=ALICE)]
        assert Volume.list(api_key=BOB) == []

        # Limits are each key's: bob may hold one sandbox, alice one snapshot.
        with pytest.raises(RateLimitException):
            Sandbox.create(api_key=BOB)
        with pytest.raises(RateLimitException):
            a.create_snapshot()
        extra = Sandbox.create(api_key=ALICE)
        extra.kill()
        # Bob may hold 1 MiB of disk: a snapshot holding 3 MiB passes it, so the next waits.
        b.files.write("/home/user/big.bin", os.urandom(3 << 20))
        held = b.create_snapshot()
        with pytest.raises(RateLimitException):
            b.create_snapshot()
        assert Sandbox.delete_snapshot(held.snapshot_id, api_key=BOB) is True
        again = b.create_snapshot()  # room again
        assert Sandbox.delete_snapshot(again.snapshot_id, api_key=BOB) is True
        # Bob may keep no volume. (Builds at once: the SDK's builder waits out each 429's
        # Retry-After and tries again; robustness.rs answers that limit over HTTP.)
        with pytest.raises(RateLimitException):
            Volume.create("bobs-%06x" % random.getrandbits(24), api_key=BOB)
        # Uploads count too: a build copying 3 MiB is cut off at bob's 1 MiB.
        (tmp_path / "ctx").mkdir()
        (tmp_path / "ctx" / "big.bin").write_bytes(os.urandom(3 << 20))
        with pytest.raises(Exception) as refused:
            Template.build(Template(file_context_path=str(tmp_path / "ctx")).from_base_image()
                           .copy("big.bin", "/tmp/big.bin"), "bob-tpl", api_key=BOB)
        assert "429" in str(refused.value) or "disk" in str(refused.value), refused.value

        # What an operator scrapes, read with Prometheus' own parser; only operators may.
        assert call(team, "GET", "/metrics", BOB)[0] == 403
        status, text = call(team, "GET", "/metrics", ALICE)
        assert status == 200, text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples
        }
        def value(name, **labels):
            return samples.get((name, tuple(sorted(labels.items()))))
        assert value("e2b_local_sandboxes", key="alice", state="running") == 1
        assert value("e2b_local_sandboxes", key="bob", state="running") == 1
        assert value("e2b_local_creates_total", key="alice", outcome="made") == 3  # a, from_tpl, extra
        # (the SDK tries a refused create again before it raises)
        assert value("e2b_local_quota_refusals_total", key="bob", limit="concurrent") >= 1
        assert value("e2b_local_quota_refusals_total", key="alice", limit="snapshots") >= 1
        assert value("e2b_local_quota_refusals_total", key="bob", limit="disk") >= 1
        assert value("e2b_local_create_seconds_count") == 4
        assert value("e2b_local_request_seconds_count", listener="api") >= 5
        assert value("e2b_local_runtime_pool_size") == 1
        assert value("e2b_local_runtime_pool_ready") in (0, 1)
        assert value("e2b_local_runtime_guard_up") == 1
        assert value("e2b_local_runtime_guard_sandboxes") >= 2

        # Bob's key taken out of the file: refused from the next request, alice untouched.
        team.keys_file.write_text(entry("alice", ALICE, "operator = true\nmax_snapshots = 1"))
        team.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while time.time() < deadline:
            if call(team, "GET", "/sandboxes", BOB)[0] == 401:
                break
            time.sleep(0.1)
        with pytest.raises(AuthenticationException):
            Sandbox.list(api_key=BOB).next_items()
        assert a.commands.run("echo still").stdout == "still\n"
    finally:
        Sandbox.delete_snapshot(snap.snapshot_id, api_key=ALICE)
        assert call(team, "DELETE", f"/templates/{tpl}", ALICE)[0] == 204
        Volume.destroy(volume.volume_id, api_key=ALICE)
        Secret.destroy(secret.secret_id, api_key=ALICE)
        a.kill()


def chromium(*args):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "Chromium is needed for the dashboard test (apt-get install chromium)"
    return subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1400,900", *args],
        capture_output=True, text=True, timeout=120,
    )


def test_the_dashboard_shows_the_team_in_a_browser(team):
    from PIL import Image

    a = Sandbox.create(api_key=ALICE)
    b = Sandbox.create(api_key=BOB)
    snap = a.create_snapshot()
    try:
        a.commands.run("sh -c 'i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done'")
        time.sleep(6)  # one round of the 5 s sampler: the plots have a history

        # Without a session: the sign-in form, 401. A non-operator key gets no link.
        status, body = call(team, "GET", "/dashboard", "")
        assert status == 401 and b'name="key"' in body
        assert call(team, "POST", "/dashboard/link", BOB)[0] == 403
        status, body = call(team, "POST", "/dashboard/link", ALICE)
        assert status == 200, body
        url = team.api_url + json.loads(body)["path"]

        # Chromium's `--dump-dom` and `--screenshot` are two browsers: a link each. The
        # link answers with a session cookie and the page without the token in its address.
        links = [url] + [team.api_url + json.loads(call(team, "POST", "/dashboard/link", ALICE)[1])["path"]]
        dom = chromium("--dump-dom", links[0])
        opened = time.time()  # the link's first use was before this
        assert dom.returncode == 0, dom.stderr
        page = dom.stdout
        for shown in (a.sandbox_id, b.sandbox_id, "alice", "bob", "running", "base", "snapshot",
                      "Keys and their limits", "CPU percent over the last hour"):
            assert shown in page, f"{shown!r} not on the page"
        # Bob holds his one sandbox: his row says the limit is reached.
        assert 'class="num full">1 / 1' in page

        shot = ROOT / "target" / "dashboard.png"
        shot.unlink(missing_ok=True)
        ran = chromium(f"--screenshot={shot}", links[1])
        assert ran.returncode == 0 and shot.exists(), ran.stderr
        image = Image.open(shot).convert("RGB")
        assert image.size == (1400, 900)
        # Not a blank page: text, tables and plots give it many colours, and the plots'
        # blue line is drawn.
        colours = image.getcolors(maxcolors=1 << 20)
        assert len(colours) > 50, len(colours)
        assert any(b > 180 and r < 80 and g < 150 for _, (r, g, b) in colours), "no CPU plot line"

        # A link signs in once (and again only within 10 s): opened later, or forged, it is
        # the sign-in form.
        time.sleep(max(0, opened + 10.5 - time.time()))
        assert "was used already" in chromium("--dump-dom", url).stdout
        forged = url[:-1] + ("0" if url[-1] != "0" else "1")
        assert "was used already" in chromium("--dump-dom", forged).stdout
    finally:
        Sandbox.delete_snapshot(snap.snapshot_id, api_key=ALICE)
        a.kill()
        b.kill()
