"""Federated data from users' sessions: the whole platform with its XRootD federation, users
logged in through the IAM stand-in (WLCG-profile tokens), reading in their kernels with
officina.lab.data, through a FUSE mount, by root:// URL and from their Dask workers."""

from __future__ import annotations

import json
import os
import pwd

import httpx
import pytest

from officina.hub.data import host_can_run_federation
from platform_harness import HubSession, run_in_kernel, start_platform

pytestmark = [pytest.mark.timeout(900),
              pytest.mark.skipif(not host_can_run_federation()[0], reason=host_can_run_federation()[1])]

DATASET = "/store/data/open/dimuon-2026"


@pytest.fixture(scope="module")
def platform(platform_roots):
    p = start_platform(platform_roots("data-sessions"), data={"enabled": True})
    yield p
    try:
        p.down()
    finally:
        p.emergency_stop()


@pytest.fixture(scope="module")
def people(platform):
    out = {}
    for name in ("alice", "bob"):
        person = HubSession(platform, name)
        person.login()
        person.start_server()
        out[name] = (person, person.token())
    return out


def kernel(platform, people, name: str, code: str, timeout: float = 300) -> str:
    cell = run_in_kernel(platform, name, people[name][1], code, timeout=timeout)
    assert cell["error"] is None, cell
    return cell["stdout"]


def results(out: str) -> dict:
    return {line.split(" ", 1)[0][1:]: json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("@")}


def test_a_session_browses_mounts_and_reads_with_its_own_token(platform, people):
    out = results(kernel(platform, people, "alice", f"""
import json, os
import uproot
from officina.lab import data

def say(key, value):
    print("@" + key, json.dumps(value, default=str))

say("sites", {{s["name"]: s["readable"] for s in data.sites()}})
say("datasets", [(d["path"], d["files"]) for d in data.datasets()])
with uproot.open(data.url("{DATASET}/events-000.root")) as f:
    say("by_url", int(f["Events"].num_entries))
where = data.mount("{DATASET}")
say("mount", [str(where), sorted(os.listdir(where)), os.stat(where / "events-000.root").st_uid])
with uproot.open(where / "events-000.root") as f:
    say("by_mount", [int(f["Events"].num_entries), float(f["Events"]["Dimuon_mass"].array(library="np").sum())])
with uproot.open(data.url("{DATASET}/events-000.root")) as f:
    say("by_url_sum", float(f["Events"]["Dimuon_mass"].array(library="np").sum()))
for what, call in (("list", lambda: data.files("/store/mc/zmumu")), ("mount", lambda: data.mount("/store/mc/zmumu")),
                   ("read", lambda: uproot.open(data.url("/store/mc/zmumu/events-000.root"))),
                   ("bad", lambda: data.mount("store/../etc"))):
    try:
        call()
        say("refused_" + what, None)
    except Exception as exc:
        say("refused_" + what, str(exc))
say("prefetch", data.prefetch("{DATASET}", progress=False))
say("stats", {{s["dataset"]: [s["cached_bytes"], s["size"], s["accesses"]] for s in data.cache_stats()}})
data.unmount("{DATASET}")
say("after", [os.path.ismount(where), os.listdir(where)])
"""))
    assert out["sites"] == {"site-a": ["/store/data"], "site-b": []}, out["sites"]  # alice: officina/users
    assert out["datasets"] == [[DATASET, 3]]  # two ROOT files and a Parquet summary
    assert out["by_url"] == 200_000
    where, names, uid = out["mount"]
    assert where == str(platform.state_dir / "homes" / "alice" / "data" / "dimuon-2026")
    assert names == ["events-000.root", "events-001.root", "summary.parquet"]
    assert uid == pwd.getpwnam("officina-alice").pw_uid  # her files, served by her xrootdfs
    assert out["by_mount"][0] == 200_000 and out["by_mount"][1] == out["by_url_sum"]
    assert "do not allow" in out["refused_list"], out
    assert "your groups may not read /store/mc/zmumu" in out["refused_mount"], out
    assert out["refused_read"] and ("3010" in out["refused_read"] or "ermission" in out["refused_read"]), out
    assert "an absolute dataset path" in out["refused_bad"] or "starts with /" in out["refused_bad"], out
    assert out["prefetch"]["files"] == 3 and out["prefetch"]["bytes"] > 10 * 2**20
    cached, size, accesses = out["stats"][DATASET]
    assert cached == size and accesses >= 3, out["stats"]
    assert "/store/mc/zmumu" not in out["stats"]  # not hers to see
    assert out["after"] == [False, []]
    # The mount's xrootdfs ran as alice's account, and nothing of it is left.
    assert not [p for p in os.popen("pgrep -a xrootdfs").read().splitlines() if "/homes/alice/" in p]


def test_bob_reads_his_groups_data_and_his_dask_workers_read_it_too(platform, people):
    out = results(kernel(platform, people, "bob", f"""
import json
import uproot
import officina.lab as lab
from officina.lab import data

def say(key, value):
    print("@" + key, json.dumps(value, default=str))

def entries(url):
    import os, uproot
    try:
        with uproot.open(url) as f:
            return [os.getuid(), int(f["Events"].num_entries)]
    except Exception as exc:  # what the worker saw, for the assertion's message
        return [os.getuid(), repr(exc), {{k: v for k, v in os.environ.items() if k.startswith(("X509", "BEARER", "XRD", "OFFICINA"))}}]

say("sites", {{s["name"]: s["readable"] for s in data.sites()}})
client = lab.dask(workers=1)
try:
    say("worker", client.submit(entries, data.url("/store/mc/zmumu/events-001.root")).result(timeout=120))
    say("worker_data", client.submit(entries, data.url("{DATASET}/events-001.root")).result(timeout=120))
finally:
    client.cluster.shutdown()
""", timeout=420))
    assert out["sites"] == {"site-a": ["/store/data"], "site-b": ["/store/mc"]}, out["sites"]  # officina/gpu
    bob = pwd.getpwnam("officina-bob").pw_uid
    assert out["worker"] == [bob, 100_000] and out["worker_data"] == [bob, 200_000], out


def test_the_data_service_refuses_clearly(platform, people):
    base = f"{platform.url}services/data/api/"
    assert httpx.get(base + "sites", timeout=30).status_code in (401, 403)
    headers = {"Authorization": f"token {people['alice'][1]}"}
    for body, status, error in (({"path": "relative/x"}, 400, "an absolute dataset path"),
                                ({"path": "/store/other"}, 404, "no data site exports /store/other"),
                                ({"path": "/store/data", "x": 1}, 400, 'the body must be {"path"'),
                                ({"path": "/store/mc"}, 403, "your groups may not read /store/mc")):
        r = httpx.post(base + "mounts", json=body, headers=headers, timeout=30)
        assert r.status_code == status and error in r.json()["error"], (body, r.status_code, r.text)
    r = httpx.delete(base + "mounts", params={"path": "/store/data"}, headers=headers, timeout=30)
    assert r.status_code == 404 and "no mount of /store/data" in r.json()["error"]


def test_the_data_browser_prefetches_with_progress_and_plots_the_cache(platform, people):
    out = results(kernel(platform, people, "bob", """
import json
from officina.widgets import DataBrowser

def say(key, value):
    print("@" + key, json.dumps(value, default=str))

browser = DataBrowser()
say("sites", list(browser.site.options))
browser.site.value = "site-b"
say("datasets", [label for label, _ in browser.dataset.options])
browser.dataset.value = "/store/mc/zmumu"
done = browser.prefetch()
say("prefetch", [done["files"], browser.progress.value, browser.progress.max, browser.note.value])
say("after", [label for label, _ in browser.dataset.options])
say("plot", [o.get("output_type") for o in browser.plot.outputs])
where = browser.mount()
say("mount", [str(where), browser.note.value])
from officina.lab import data
data.unmount("/store/mc/zmumu")
"""))
    assert out["sites"] == ["site-a", "site-b"]
    assert out["datasets"] == ["/store/mc/zmumu — 3 files, " + out["datasets"][0].split(", ", 1)[1]]
    assert out["datasets"][0].endswith(" MB, 0% cached") or "% cached" in out["datasets"][0]
    files, value, maximum, note = out["prefetch"]
    assert files == 3 and value == maximum > 0 and note.startswith("Prefetched /store/mc/zmumu: 3 files"), out
    assert out["after"][0].endswith("100% cached"), out["after"]
    assert "display_data" in out["plot"], out["plot"]  # the cache chart
    assert out["mount"][0].endswith("/homes/bob/data/zmumu") and "Mounted" in out["mount"][1], out


def test_a_machine_without_fuse_says_so_and_points_to_urls(tmp_path, monkeypatch):
    """Where xrootdfs cannot run (no /dev/fuse, as in most containers, or no xrootdfs), a
    mount is refused with the reason and what to use instead; nothing is made."""
    from tornado import web

    from officina.hub.data import service
    from officina.hub.data.sites import Federation
    from officina.hub.state import StateDir

    monkeypatch.setattr(service, "XROOTDFS", str(tmp_path / "no-xrootdfs"))
    federation = Federation(enabled=True, sites=(), cache=None, redirector_port=1, redirector_cmsd_port=2,
                            redirector_address=None, state_dir=tmp_path / "data", issuer="http://127.0.0.1:1/")
    (tmp_path / "data").mkdir()
    mounts = service.Mounts(federation, StateDir(tmp_path / "state"), system_accounts=False)
    with pytest.raises(web.HTTPError) as refused:
        mounts.mount("alice", ["officina"], DATASET)
    assert refused.value.status_code == 503
    assert "cannot mount datasets (no /dev/fuse or no xrootdfs)" in refused.value.log_message
    assert "officina.lab.data.url" in refused.value.log_message
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("data"))
