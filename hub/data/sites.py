"""The data federation as declared in the platform configuration (`data:` in officina.yaml).

One declaration feeds everything: the daemons' configurations (exports, authorization
databases, the cache's origin), the sample dataset's placement, the Kubernetes manifests and,
later, what the session side and the data browser list. The schema checks each field's form;
`check_data_settings` checks what a schema cannot (a read rule outside its site's exports, two
sites exporting one path, two daemons on one port).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The embedded federation's daemons all listen on loopback.
LOOPBACK = "127.0.0.1"


def path_within(path: str, prefix: str) -> bool:
    """WLCG path semantics: `/store` covers `/store/x`, not `/storex`."""
    prefix = prefix.rstrip("/") or "/"
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True)
class ReadRule:
    """Members of any of `groups` (IAM group names, `a/b` form) may read under `path`."""

    path: str
    groups: tuple[str, ...]


@dataclass(frozen=True)
class DataSite:
    name: str
    # "embedded": the platform runs this site's origin; else "host:port" of a real origin
    # whose cmsd subscribes to the platform's redirector.
    origin: str
    port: int | None
    paths: tuple[str, ...]
    read: tuple[ReadRule, ...]

    @property
    def embedded(self) -> bool:
        return self.origin == "embedded"

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}" if self.embedded else self.origin

    def groups_for(self, path: str) -> tuple[str, ...]:
        """Groups allowed to read `path`: those of the longest rule covering it."""
        rules = [r for r in self.read if path_within(path, r.path)]
        return max(rules, key=lambda r: len(r.path)).groups if rules else ()


@dataclass(frozen=True)
class CacheSpec:
    port: int
    directory: Path
    ram: str
    block_size: str
    connect_timeout: int
    request_timeout: int


@dataclass(frozen=True)
class Federation:
    """Validated `data:` settings with the state directory resolved."""

    enabled: str | bool
    sites: tuple[DataSite, ...]
    cache: CacheSpec
    redirector_port: int
    redirector_cmsd_port: int
    # A real redirector (host:port) the cache reads from; None: the embedded one.
    redirector_address: str | None
    state_dir: Path
    issuer: str

    @property
    def cache_url(self) -> str:
        return f"root://{LOOPBACK}:{self.cache.port}"

    @property
    def redirector_url(self) -> str:
        return f"root://{LOOPBACK}:{self.redirector_port}"

    @property
    def cache_origin(self) -> str:
        """What the cache reads from: the real redirector, or the embedded one."""
        return self.redirector_address or f"{LOOPBACK}:{self.redirector_port}"

    @property
    def exported_paths(self) -> tuple[str, ...]:
        return tuple(p for site in self.sites for p in site.paths)

    def site_of(self, path: str) -> DataSite | None:
        return next((s for s in self.sites if any(path_within(path, p) for p in s.paths)), None)


def federation_from_settings(settings) -> Federation:
    """The `data:` section of validated Settings as a Federation."""
    data = settings["data"]
    state = Path(settings["state_dir"]) / "data"
    cache = data["cache"]
    return Federation(
        enabled=data["enabled"],
        sites=tuple(
            DataSite(
                name=s["name"],
                origin=s["origin"],
                port=s.get("port"),
                paths=tuple(s["paths"]),
                read=tuple(ReadRule(r["path"], tuple(r["groups"])) for r in s["read"]),
            )
            for s in data["sites"]
        ),
        cache=CacheSpec(
            port=cache["port"],
            directory=Path(cache["dir"]) if cache["dir"] else state / "cache",
            ram=cache["ram"],
            block_size=cache["block_size"],
            connect_timeout=cache["origin_connect_timeout"],
            request_timeout=cache["origin_request_timeout"],
        ),
        redirector_port=data["redirector"]["port"],
        redirector_cmsd_port=data["redirector"]["cmsd_port"],
        redirector_address=data["redirector"]["address"],
        state_dir=state,
        issuer=settings.issuer,
    )


def check_data_settings(data: dict) -> str | None:
    """What the schema cannot say about `data:`, as "key: problem", or None."""
    ram = data["cache"]["ram"]
    if int(ram[:-1]) * (1024 if ram.endswith("g") else 1) < 1024:
        return f"data.cache.ram: {ram!r} is less than 1g, which the XRootD 5.5 cache refuses"
    seen_names: set[str] = set()
    exported: dict[str, str] = {}
    for i, site in enumerate(data["sites"]):
        key = f"data.sites[{i}]"
        if site["name"] in seen_names:
            return f"{key}.name: site {site['name']!r} is declared twice"
        seen_names.add(site["name"])
        if site["origin"] == "embedded" and data["redirector"]["address"]:
            return (f"{key}.origin: an embedded site subscribes to the embedded redirector, but "
                    f"data.redirector.address names a real one ({data['redirector']['address']}); "
                    "declare the site by host:port")
        if site["origin"] == "embedded" and site.get("port") is None:
            return f"{key}.port: an embedded origin needs a port"
        if site["origin"] != "embedded" and site.get("port") is not None:
            return f"{key}.port: only for an embedded origin (this site's origin is {site['origin']!r})"
        for path in site["paths"]:
            for other, owner in exported.items():
                if path_within(path, other) or path_within(other, path):
                    return f"{key}.paths: {path!r} overlaps {other!r} exported by site {owner!r}"
            exported[path] = site["name"]
        for j, rule in enumerate(site["read"]):
            if not any(path_within(rule["path"], p) for p in site["paths"]):
                return (f"{key}.read[{j}].path: {rule['path']!r} is outside the site's exported paths "
                        f"({', '.join(site['paths'])})")
    return None


def data_ports(data: dict) -> dict[str, int]:
    """Every port the embedded federation listens on, by settings key (for the port check)."""
    ports = {"data.cache.port": data["cache"]["port"]}
    if not data["redirector"]["address"]:
        ports["data.redirector.port"] = data["redirector"]["port"]
        ports["data.redirector.cmsd_port"] = data["redirector"]["cmsd_port"]
    for i, site in enumerate(data["sites"]):
        if site["origin"] == "embedded":
            ports[f"data.sites[{i}].port"] = site["port"]
    return ports
