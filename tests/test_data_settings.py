"""The `data:` settings: defaults, and each mistake refused with a message naming the field."""

from __future__ import annotations

import pwd

import psutil
import pytest
import yaml

from officina.hub.data import federation_from_settings, host_can_run_federation
from officina.hub.settings import SettingsError, load_settings
from platform_harness import start_platform


def settings_with(tmp_path, data: dict):
    path = tmp_path / "officina.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "data": data}))
    return load_settings(path)


def site(name, port, paths, read=None, origin="embedded"):
    entry = {"name": name, "origin": origin, "paths": paths,
             "read": read if read is not None else [{"path": paths[0], "groups": ["officina"]}]}
    if port is not None:
        entry["port"] = port
    return entry


def test_embedded_default_is_two_sites_behind_one_cache(tmp_path):
    fed = federation_from_settings(settings_with(tmp_path, {}))
    assert [s.name for s in fed.sites] == ["site-a", "site-b"]
    assert all(s.embedded for s in fed.sites)
    assert fed.site_of("/store/mc/zmumu/x.root").name == "site-b"
    assert fed.sites[1].groups_for("/store/mc/zmumu") == ("officina/gpu", "officina/admins")
    assert fed.sites[0].groups_for("/store/datax") == ()
    assert fed.cache_url == "root://127.0.0.1:8110"
    assert fed.cache.directory == tmp_path / "state" / "data" / "cache"


@pytest.mark.parametrize("data, message", [
    ({"cache": {"ram": "512m"}}, "data.cache.ram: '512m' is less than 1g"),
    ({"cache": {"port": 8111}}, "data.redirector.port: port 8111 is already used by data.cache.port"),
    ({"sites": [site("a", 9001, ["/store"]), site("b", 9002, ["/store/mc"])]},
     "data.sites[1].paths: '/store/mc' overlaps '/store' exported by site 'a'"),
    ({"sites": [site("a", 9001, ["/store/data"], [{"path": "/store/mc", "groups": ["x"]}])]},
     "data.sites[0].read[0].path: '/store/mc' is outside the site's exported paths"),
    ({"sites": [site("a", None, ["/store/data"])]}, "data.sites[0].port: an embedded origin needs a port"),
    ({"sites": [site("a", 9001, ["/store/data"], origin="xrootd.example.org:1094")]},
     "data.sites[0].port: only for an embedded origin"),
    ({"sites": [site("a", 9001, ["/store/a"]), site("a", 9002, ["/store/b"])]}, "data.sites[1].name: site 'a' is declared twice"),
    ({"sites": [site("a", 9001, ["store/data"])]}, "data.sites.0.paths.0: 'store/data' does not have the required form"),
    ({"sites": [site("a", 9001, ["/store/data"], origin="somewhere")]}, "data.sites.0.origin: 'somewhere' does not have the required form"),
    ({"cache": {"size": "1g"}}, "data.cache.size: unknown key"),
    ({"enabled": "yes"}, "data.enabled: 'yes' is not one of"),
    ({"redirector": {"address": "redirector.example.org:1094"}},
     "data.sites[0].origin: an embedded site subscribes to the embedded redirector"),
])
def test_mistakes_are_refused_naming_the_field(tmp_path, data, message):
    with pytest.raises(SettingsError) as err:
        settings_with(tmp_path, data)
    assert message in str(err.value)


def test_a_real_origin_site_is_accepted(tmp_path):
    fed = federation_from_settings(settings_with(tmp_path, {"sites": [
        site("remote", None, ["/store/remote"], origin="xrootd.example.org:1094"), site("local", 9001, ["/store/local"])]}))
    assert fed.sites[0].address == "xrootd.example.org:1094" and not fed.sites[0].embedded


@pytest.mark.skipif(not host_can_run_federation()[0], reason=host_can_run_federation()[1])
def test_platform_starts_the_federation_and_stops_every_daemon(platform_roots):
    platform = start_platform(platform_roots("data-platform"), data={"enabled": True})
    try:
        component = platform.table()["components"]["data"]
        runner = psutil.Process(component["pid"])
        daemons = runner.children(recursive=True)
        names = sorted(p.name() for p in daemons)
        assert names.count("xrootd") == 4 and names.count("cmsd") == 3, names
        account = pwd.getpwnam("officina_xrootd").pw_uid
        assert all(p.uids().effective == account for p in daemons if p.name() in ("xrootd", "cmsd")), \
            [(p.name(), p.uids()) for p in daemons]
        assert (platform.state_dir / "data" / "sites" / "site-a" / "root" / "store" / "data").is_dir()
    finally:
        result = platform.down()
    assert result.returncode == 0, result.stdout + result.stderr
    left = [p for p in daemons if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, left
