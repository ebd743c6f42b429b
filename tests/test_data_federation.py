"""The embedded data federation: real XRootD sites, redirector and XCache on loopback, tokens
from a real IAM stand-in. No mocks; each outcome is read from the daemons' own records."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from officina.hub.data import (
    SAMPLE_DATASETS, DataReadError, XRootDFederation, cache_stats, federation_from_settings,
    host_can_run_federation, read_file,
)
from officina.hub.settings import load_settings
from platform_harness import free_ports

pytestmark = pytest.mark.skipif(not host_can_run_federation()[0], reason=host_can_run_federation()[1])

DATA_FILE = "/store/data/open/dimuon-2026/events-000.root"
OTHER_DATA_FILE = "/store/data/open/dimuon-2026/events-001.root"
MC_FILE = "/store/mc/zmumu/events-000.root"


def _load_standin_module():
    # The IAM tests' helpers (a real stand-in process and the browser side of the code flow),
    # loaded by path: conftest modules of other folders are not importable by name.
    path = Path(__file__).resolve().parent / "iam" / "conftest.py"
    spec = importlib.util.spec_from_file_location("officina_tests_iam_standin", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


standin_helpers = _load_standin_module()
DATA_CLIENTS = {
    "data": {
        "client_secret": "data-secret-Rv20",
        "redirect_uris": [standin_helpers.HUB_CALLBACK],
        "scopes": ["openid", "profile", "offline_access", "wlcg", "wlcg.groups", "storage.read:/store"],
        "token_profile": "wlcg",
    },
    # IAM's default profile (`groups`, no `nbf`, no `aud`), as the hub's client has unless the
    # platform is set to the wlcg profile.
    "data-iam-profile": {
        "client_secret": "data-iam-secret-Jw31",
        "redirect_uris": [standin_helpers.HUB_CALLBACK],
        "scopes": ["openid", "profile", "storage.read:/store"],
        "token_profile": "iam",
    },
    "data-short": {
        "client_secret": "data-short-secret-Qe55",
        "redirect_uris": [standin_helpers.HUB_CALLBACK],
        "scopes": ["openid", "wlcg.groups"],
        "token_profile": "wlcg",
        "lifetimes": {"access_token": 2},
    },
}


@pytest.fixture(scope="module")
def iam(platform_roots):
    workdir = platform_roots("data-iam")
    port = free_ports(1)[0]
    standin_helpers.CLIENTS.update(DATA_CLIENTS)
    standin = standin_helpers.StandIn(workdir, port, standin_helpers.make_config(workdir, port))
    standin.start()
    yield standin
    standin.stop()


@pytest.fixture(scope="module")
def federation(platform_roots, iam):
    root = platform_roots("data")
    cache, redirector, cmsd, site_a, site_b = free_ports(5)
    config = root / "officina.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(root / "state"),
        "iam": {"standin": {"port": iam.port}},
        "data": {
            "enabled": True,
            "cache": {"port": cache},
            "redirector": {"port": redirector, "cmsd_port": cmsd},
            "sites": [
                {"name": "site-a", "origin": "embedded", "port": site_a, "paths": ["/store/data"],
                 "read": [{"path": "/store/data", "groups": ["officina"]}]},
                {"name": "site-b", "origin": "embedded", "port": site_b, "paths": ["/store/mc"],
                 "read": [{"path": "/store/mc", "groups": ["officina/gpu"]}]},
            ],
        },
    }))
    fed = XRootDFederation(federation_from_settings(load_settings(config)))
    fed.start()
    yield fed
    fed.stop()
    # Every daemon this federation ever ran (sites restarted by a test too) names its
    # configuration under `root` in its arguments: none may be left.
    left = [p.info for p in psutil.process_iter(["pid", "cmdline"])
            if any(str(root) in arg for arg in (p.info["cmdline"] or []))]
    assert not left, left


def token_file(folder: Path, iam, user: str, client: str = "data", scope: str = "openid wlcg.groups") -> Path:
    token = iam.tokens(user, client_id=client, scope=scope)["access_token"]
    path = folder / f"token-{user}-{client}"
    # Owner-only, as a session's token file: XRootD's client refuses a token file others can read.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return path


def read(fed, path: str, token: Path | None, dest: Path) -> bytes:
    return read_file(f"{fed.federation.cache_url}/{path}", dest, token, fed.ca_dir, timeout=60).read_bytes()


def origin_opens(fed, site: str, path: str) -> int:
    log = fed.log_of(site).read_text(errors="replace")
    return sum(1 for line in log.splitlines() if "ofs_open" in line and f"fn={path}" in line)


def test_second_read_is_served_by_the_cache(federation, iam, tmp_path):
    alice = token_file(tmp_path, iam, "alice")
    original = (federation.site_root(federation.federation.sites[0]) / DATA_FILE.lstrip("/")).read_bytes()
    first = read(federation, DATA_FILE, alice, tmp_path / "first")
    opens_after_first = origin_opens(federation, "site-a", DATA_FILE)
    second = read(federation, DATA_FILE, alice, tmp_path / "second")
    assert first == original and second == original
    assert opens_after_first == 1
    # The origin saw no second open: the bytes came from the cache.
    assert origin_opens(federation, "site-a", DATA_FILE) == 1
    stats = cache_stats(federation.cache_dir)
    dataset = stats["/store/data/open/dimuon-2026"]
    record = next(r for r in dataset.file_records if r.path == DATA_FILE)
    assert record.complete and record.size == record.cached_bytes == len(original)
    assert record.accesses == 2
    assert dataset.hits >= 1 and dataset.hit_bytes >= len(original) - 1024


def test_token_rules(federation, iam, tmp_path):
    alice = token_file(tmp_path, iam, "alice")  # officina/users: /store/data only
    bob = token_file(tmp_path, iam, "bob")  # officina/gpu: /store/data and /store/mc
    assert read(federation, MC_FILE, bob, tmp_path / "bob-mc")[:4] == b"root"
    assert read(federation, DATA_FILE, alice, tmp_path / "alice-data")[:4] == b"root"
    with pytest.raises(DataReadError, match="permission denied"):
        read(federation, MC_FILE, alice, tmp_path / "alice-mc")
    with pytest.raises(DataReadError, match="no valid token: none was given"):
        read(federation, DATA_FILE, None, tmp_path / "anonymous")
    # A capability scope grants what it names, whatever the groups, and nothing beyond it.
    scoped = token_file(tmp_path, iam, "alice", scope="openid storage.read:/store/mc/zmumu")
    assert read(federation, MC_FILE, scoped, tmp_path / "scoped")[:4] == b"root"
    with pytest.raises(DataReadError):
        read(federation, OTHER_DATA_FILE, scoped, tmp_path / "scoped-other")


def test_expired_token_is_denied(federation, iam, tmp_path):
    short = token_file(tmp_path, iam, "bob", client="data-short")
    expiry = iam.verify(short.read_text())["exp"]
    while time.time() <= expiry + 1:
        time.sleep(0.5)
    with pytest.raises(DataReadError, match="no valid token: the token in .* expired"):
        read(federation, MC_FILE, short, tmp_path / "expired")


def test_an_iam_profile_token_is_refused_and_the_cache_log_says_why(federation, iam, tmp_path):
    # scitokens-cpp takes WLCG (or SciTokens) profile tokens only: sessions need the wlcg
    # profile (iam.standin.token_profile: wlcg, or a wlcg client at a real IAM) to read data.
    token = token_file(tmp_path, iam, "alice", client="data-iam-profile", scope="openid storage.read:/store/data")
    with pytest.raises(DataReadError, match="no valid token"):
        read(federation, DATA_FILE, token, tmp_path / "iam-profile")
    assert "'nbf' claim is mandatory" in federation.log_of("xcache").read_text(errors="replace")


def test_a_tampered_token_is_denied(federation, iam, tmp_path):
    bob = token_file(tmp_path, iam, "bob")
    header, payload, signature = bob.read_text().split(".")
    bob.write_text(".".join([header, payload, signature[::-1]]))
    with pytest.raises(DataReadError, match="no valid token"):
        read(federation, MC_FILE, bob, tmp_path / "tampered")


def test_site_down_cached_files_read_and_uncached_fail_fast(federation, iam, tmp_path):
    alice = token_file(tmp_path, iam, "alice")
    cached = read(federation, DATA_FILE, alice, tmp_path / "warm")
    federation.stop_site("site-a")
    try:
        assert read(federation, DATA_FILE, alice, tmp_path / "while-down") == cached
        # read() gives up after 60 s: only so that a regression fails instead of hanging.
        with pytest.raises(DataReadError, match="not in the cache"):
            read(federation, OTHER_DATA_FILE, alice, tmp_path / "uncached")
    finally:
        federation.start_site("site-a")


def test_sample_dataset_is_in_the_sites_and_not_rewritten(federation):
    site_a, site_b = federation.federation.sites
    for dataset in SAMPLE_DATASETS:
        site = site_a if dataset.path.startswith("/store/data") else site_b
        folder = federation.site_root(site) / dataset.path.lstrip("/")
        assert sorted(p.name for p in folder.iterdir()) == ["events-000.root", "events-001.root", "summary.parquet"]
    before = {p: p.stat().st_mtime_ns for p in federation.site_root(site_a).rglob("*.root")}
    federation.prepare()
    assert {p: p.stat().st_mtime_ns for p in federation.site_root(site_a).rglob("*.root")} == before


def test_secrets_stay_out_of_arguments_and_are_owner_only(federation):
    for pid in federation.pids().values():
        cmdline = " ".join(psutil.Process(pid).cmdline())
        assert "eyJ" not in cmdline and "keytab" not in cmdline
    for secret in (federation.sss_keytab, federation.root / "tls" / "server.key", federation.root / "tls" / "ca.key"):
        assert secret.stat().st_mode & 0o077 == 0, secret


def test_preparing_again_keeps_track_of_the_running_daemons(federation):
    before = federation.pids()
    federation.prepare()
    assert federation.pids() == before and len(before) == 7
