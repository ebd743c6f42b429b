"""The XCache on Kubernetes: ConfigMap, Deployment and Service, rendered by a pure function.

On Kubernetes the platform runs no sites of its own: the cache reads a real federation
(`data.redirector.address`), and a real IAM (https) is the issuer, whose keys scitokens-cpp
fetches and caches by itself (no seeding, unlike the embedded stand-in). What the cache holds
that is secret is never rendered: the TLS key and certificate (`tls_secret`, e.g. made by
cert-manager) and the cache's sss key for the sites (`sss_secret`) are Secrets referred to by
name; the CA folder is the grid's usual /etc/grid-security/certificates from `ca_config_map`.

    python -m officina.hub.data.kubernetes --config officina.yaml [--namespace NS]
        print the manifests (what an operator applies, or reviews)
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import yaml

from . import config as cfg
from .sites import Federation, federation_from_settings

XROOTD_PORT = 1094
# The image: Debian 12 with the same XRootD 5.5 packages as scripts/install.sh installs.
DEFAULT_IMAGE = "officina/xcache:0.1.0"
# The Debian packages' `xrootd` account; the container never runs as root (xrootd refuses to).
XROOTD_UID = 10940
CONFIG_DIR = Path("/etc/xrootd")
TLS_DIR = Path("/etc/xrootd/tls")
CA_DIR = Path("/etc/grid-security/certificates")
SSS_DIR = Path("/etc/xrootd/sss")
CACHE_DIR = Path("/var/cache/xrootd/data")
RUN_DIR = Path("/var/run/xrootd")
LABELS = {"app.kubernetes.io/name": "xcache", "app.kubernetes.io/part-of": "officina",
          "app.kubernetes.io/component": "data-cache"}


class RenderError(Exception):
    """The settings cannot be rendered for Kubernetes; the message names the setting."""


def render_xcache(federation: Federation, namespace: str, *, image: str = DEFAULT_IMAGE,
                  cache_size: str = "100Gi", tls_secret: str = "xcache-tls", sss_secret: str = "xcache-sss",
                  ca_config_map: str = "grid-certificates", name: str = "xcache") -> list[dict]:
    if not federation.redirector_address:
        raise RenderError("data.redirector.address: required on Kubernetes (the host:port of the real "
                          "redirector the cache reads from; the embedded sites run only on one machine)")
    # The same rules as the embedded cache's, with the container's paths.
    tls_dir = TLS_DIR
    xrootd_cfg = cfg.cache_config(
        federation, admin=RUN_DIR / "admin", tls_dir=tls_dir, scitokens_cfg=CONFIG_DIR / "scitokens.cfg",
        authdb=CONFIG_DIR / "authdb", cache_dir=CACHE_DIR, port=XROOTD_PORT,
    ).replace(f"xrd.tlsca certdir {tls_dir / 'certificates'}", f"xrd.tlsca certdir {CA_DIR}")
    audiences = ["https://wlcg.cern.ch/jwt/v1/any", f"roots://{name}.{namespace}.svc:{XROOTD_PORT}"]
    labels = dict(LABELS)
    config_map = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": f"{name}-config", "namespace": namespace, "labels": labels},
        "data": {
            "xrootd.cfg": xrootd_cfg,
            "scitokens.cfg": cfg.scitokens_config(federation, audiences),
            "authdb": cfg.group_authdb(federation.sites),
        },
    }
    volume_mounts = [
        {"name": "config", "mountPath": str(CONFIG_DIR / "xrootd.cfg"), "subPath": "xrootd.cfg", "readOnly": True},
        {"name": "config", "mountPath": str(CONFIG_DIR / "scitokens.cfg"), "subPath": "scitokens.cfg", "readOnly": True},
        {"name": "config", "mountPath": str(CONFIG_DIR / "authdb"), "subPath": "authdb", "readOnly": True},
        {"name": "tls", "mountPath": str(TLS_DIR), "readOnly": True},
        {"name": "ca", "mountPath": str(CA_DIR), "readOnly": True},
        {"name": "sss", "mountPath": str(SSS_DIR), "readOnly": True},
        {"name": "cache", "mountPath": str(CACHE_DIR)},
        {"name": "run", "mountPath": str(RUN_DIR)},
    ]
    container = {
        "name": "xcache",
        "image": image,
        "command": ["xrootd", "-c", str(CONFIG_DIR / "xrootd.cfg"), "-n", name],
        "ports": [{"name": "xrootd", "containerPort": XROOTD_PORT, "protocol": "TCP"}],
        "env": [
            {"name": "XrdSecPROTOCOL", "value": "sss"},
            {"name": "XrdSecSSSKT", "value": str(SSS_DIR / "keytab")},
            {"name": "X509_CERT_DIR", "value": str(CA_DIR)},
            # scitokens-cpp's key cache (the issuer's keys) and xrootd's own files.
            {"name": "HOME", "value": str(RUN_DIR)},
            {"name": "XDG_CACHE_HOME", "value": str(RUN_DIR / "cache")},
            {"name": "XRD_CONNECTIONWINDOW", "value": str(federation.cache.connect_timeout)},
        ],
        "readinessProbe": {"tcpSocket": {"port": "xrootd"}, "periodSeconds": 10},
        "livenessProbe": {"tcpSocket": {"port": "xrootd"}, "initialDelaySeconds": 30, "periodSeconds": 30},
        "resources": {
            # pfc.ram is memory the cache may fill with blocks in flight: give it that and some.
            "requests": {"cpu": "500m", "memory": _memory(federation.cache.ram, 1.25)},
            "limits": {"memory": _memory(federation.cache.ram, 2)},
        },
        "volumeMounts": volume_mounts,
        "securityContext": {"privileged": False, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True},
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            # One pod owns the cache folder: a new one starts after the old one has gone.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": "xcache", "app.kubernetes.io/part-of": "officina"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": XROOTD_UID, "runAsGroup": XROOTD_UID,
                                        "fsGroup": XROOTD_UID, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [
                        {"name": "config", "configMap": {"name": f"{name}-config"}},
                        {"name": "tls", "secret": {"secretName": tls_secret, "defaultMode": 0o440, "items": [
                            {"key": "tls.crt", "path": "server.pem"}, {"key": "tls.key", "path": "server.key"}]}},
                        {"name": "ca", "configMap": {"name": ca_config_map}},
                        {"name": "sss", "secret": {"secretName": sss_secret, "defaultMode": 0o400,
                                                   "items": [{"key": "keytab", "path": "keytab"}]}},
                        {"name": "cache", "emptyDir": {"sizeLimit": cache_size}},
                        {"name": "run", "emptyDir": {}},
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "selector": copy.deepcopy(deployment["spec"]["selector"]["matchLabels"]),
            "ports": [{"name": "xrootd", "port": XROOTD_PORT, "targetPort": "xrootd", "protocol": "TCP"}],
        },
    }
    return [config_map, deployment, service]


def _memory(ram: str, factor: float) -> str:
    mib = int(ram[:-1]) * (1024 if ram.endswith("g") else 1)
    return f"{int(mib * factor)}Mi"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m officina.hub.data.kubernetes")
    parser.add_argument("--config", required=True)
    parser.add_argument("--namespace", default="officina")
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    args = parser.parse_args(argv)
    from ..settings import SettingsError, load_settings

    try:
        manifests = render_xcache(federation_from_settings(load_settings(args.config)), args.namespace, image=args.image)
    except (SettingsError, RenderError) as e:
        print(f"xcache: {e}", file=sys.stderr)
        return 2
    yaml.safe_dump_all(manifests, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
