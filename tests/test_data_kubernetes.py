"""The XCache's Kubernetes objects, rendered offline and checked against the Kubernetes schemas."""

from __future__ import annotations

import re
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml
from test_kubernetes import KUBERNETES_VERSION

from officina.hub.data import federation_from_settings
from officina.hub.data.kubernetes import RenderError, render_xcache
from officina.hub.settings import load_settings

JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.")
REAL_SITES = {
    "redirector": {"address": "redirector.example.org:1094"},
    "sites": [
        {"name": "infn-bari", "origin": "xrootd.ba.example.org:1094", "paths": ["/store/data"],
         "read": [{"path": "/store/data", "groups": ["cms"]}, {"path": "/store/data/restricted", "groups": ["cms/admins"]}]},
        {"name": "cnaf", "origin": "xrootd.cnaf.example.org:1094", "paths": ["/store/mc"],
         "read": [{"path": "/store/mc", "groups": ["cms"]}]},
    ],
}


def federation(tmp_path, data: dict):
    path = tmp_path / "officina.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"),
                                    "iam": {"issuer": "https://iam.example.org/", "client_secret_file": str(tmp_path / "secret")},
                                    "data": data}))
    (tmp_path / "secret").write_text("not-used-here")
    return federation_from_settings(load_settings(path))


def test_manifests_are_valid_kubernetes_objects(tmp_path):
    manifests = render_xcache(federation(tmp_path, REAL_SITES), "officina-data")
    assert [m["kind"] for m in manifests] == ["ConfigMap", "Deployment", "Service"]
    for manifest in manifests:
        assert kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


def test_the_cache_reads_the_real_redirector_with_the_declared_rules(tmp_path):
    config_map, deployment, service = render_xcache(federation(tmp_path, REAL_SITES), "officina-data")
    xrootd_cfg = config_map["data"]["xrootd.cfg"]
    assert "pss.origin redirector.example.org:1094" in xrootd_cfg
    assert "pss.cachelib libXrdPfc.so" in xrootd_cfg and "xrd.port 1094" in xrootd_cfg
    assert "pss.setopt ConnectTimeout 5" in xrootd_cfg
    assert "issuer = https://iam.example.org/" in config_map["data"]["scitokens.cfg"]
    assert config_map["data"]["authdb"].splitlines()[1:] == [
        "g /cms /store/data rl", "g /cms/admins /store/data/restricted rl", "g /cms /store/mc rl"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["selector"] == selector


def test_no_secret_is_rendered(tmp_path):
    text = yaml.safe_dump_all(render_xcache(federation(tmp_path, REAL_SITES), "officina-data"))
    assert not JWT.search(text) and "PRIVATE KEY" not in text
    volumes = {v["name"]: v for v in render_xcache(federation(tmp_path, REAL_SITES), "ns")[1]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "xcache-tls"
    assert volumes["sss"]["secret"]["secretName"] == "xcache-sss"


def test_embedded_sites_cannot_be_rendered(tmp_path):
    with pytest.raises(RenderError, match="data.redirector.address: required on Kubernetes"):
        render_xcache(federation(tmp_path, {}), "officina-data")


def test_command_prints_the_manifests(tmp_path):
    federation(tmp_path, REAL_SITES)
    result = subprocess.run([sys.executable, "-m", "officina.hub.data.kubernetes", "--config",
                             str(tmp_path / "officina.yaml"), "--namespace", "ns1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert [d["kind"] for d in yaml.safe_load_all(result.stdout)] == ["ConfigMap", "Deployment", "Service"]
