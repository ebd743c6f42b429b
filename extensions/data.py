"""Federated data from a notebook: browse the sites, mount a dataset, read it through the cache.

    from officina.lab import data
    data.sites()                                   # the sites and what your groups may read
    data.datasets()                                # folders of files, with sizes
    path = data.mount("/store/data/open/dimuon-2026")   # ~/data/dimuon-2026, a FUSE mount
    data.url("/store/data/open/dimuon-2026/events-000.root")   # root://... for uproot, fsspec, Dask
    data.prefetch("/store/data/open/dimuon-2026")  # pull it into the cache, with a progress bar
    data.cache_stats(); data.plot_cache()          # hits and misses per dataset

Every read goes through the platform's XCache with your own IAM token (BEARER_TOKEN_FILE, kept
fresh by your session): the sites decide what you may read. The XRootD client finds the token
and the federation's CA (X509_CERT_DIR) in the environment the platform gives sessions and
Dask workers, so `uproot.open(data.url(...))` needs nothing more.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

CHUNK = 8 * 2**20


class DataError(RuntimeError):
    """A read, listing or mount that failed; the message says what and why."""


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise DataError(f"this session has no data federation ({name} is unset): the platform runs none")
    return value


def _service(method: str, path: str, **kwargs):
    token = os.environ.get("JUPYTERHUB_API_TOKEN")
    response = httpx.request(method, _env("OFFICINA_DATA_URL").rstrip("/") + "/api/" + path, timeout=120,
                             headers={"Authorization": f"token {token}"}, **kwargs)
    if response.status_code >= 400:
        try:
            reason = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            reason = response.text[:300]
        raise DataError(f"{reason} (HTTP {response.status_code})")
    return response.json()


def _clean(path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise DataError(f"a path in the federation starts with /, like /store/data/open/dimuon-2026; got {path!r}")
    return "/" + path.strip("/")


def url(path: str) -> str:
    """The root:// URL of `path` through the cache (for uproot, fsspec, pandas, Dask)."""
    return f"{_env('OFFICINA_DATA_CACHE')}/{_clean(path)}"


def sites() -> list[dict]:
    """The declared sites, each with the path prefixes your groups may read (`readable`)."""
    return _service("GET", "sites")["sites"]


def _filesystem():
    from XRootD import client

    return client.FileSystem(_env("OFFICINA_DATA_REDIRECTOR"))


def _status_error(what: str, path: str, status) -> DataError:
    message = (status.message or "").strip().splitlines()[-1] if status.message else "failed"
    if status.errno == 3010 or "permission denied" in message.lower():
        why = "your token's groups and scopes do not allow it"
    elif status.errno == 3011:
        why = "no site has it"
    elif "auth" in message.lower():
        why = "no valid token (is your session's token fresh? see officina.lab.token_status())"
    else:
        why = message
    return DataError(f"cannot {what} {path}: {why}")


def files(path: str) -> list[dict]:
    """The entries of a folder: name, size, whether it is a folder."""
    from XRootD.client.flags import DirListFlags, StatInfoFlags

    path = _clean(path)
    # LOCATE: the redirector asks every site holding the folder (a redirector lists nothing itself).
    status, listing = _filesystem().dirlist(path, DirListFlags.STAT | DirListFlags.LOCATE, timeout=30)
    if not status.ok:
        raise _status_error("list", path, status)
    entries = [{"name": e.name, "path": f"{path}/{e.name}", "size": e.statinfo.size,
                "folder": bool(e.statinfo.flags & StatInfoFlags.IS_DIR)} for e in listing]
    return sorted(entries, key=lambda e: e["name"])


def datasets(under: str | None = None, depth: int = 4) -> list[dict]:
    """The datasets (folders holding files) you may read, under `under` or every readable
    prefix of every site: path, site, files, bytes."""
    roots = [(s["name"], p) for s in sites() for p in s["readable"]] if under is None else [("", _clean(under))]
    found: list[dict] = []
    for site, root in roots:
        queue = [(root, 0)]
        while queue:
            folder, level = queue.pop(0)
            try:
                entries = files(folder)
            except DataError:
                continue  # a folder of a site that is down, or not yours: not listed
            plain = [e for e in entries if not e["folder"]]
            if plain:
                found.append({"path": folder, "site": site, "files": len(plain), "bytes": sum(e["size"] for e in plain)})
            if level < depth:
                queue += [(e["path"], level + 1) for e in entries if e["folder"]]
    return found


def open(path: str, mode: str = "rb"):  # noqa: A001 - the module's verb, as fsspec's
    """An open file of the federation (through the cache), as fsspec gives it."""
    import fsspec

    return fsspec.open(url(path), mode).open()


def mount(path: str) -> Path:
    """Make a dataset readable at ~/data/<name> (xrootdfs through the cache, with your token;
    read-only). Where the machine has no FUSE, the error says so: use url() instead."""
    made = _service("POST", "mounts", json={"path": _clean(path)})
    return Path(made["mountpoint"])


def unmount(path: str) -> None:
    _service("DELETE", "mounts", params={"path": _clean(path)})


def mounts() -> list[dict]:
    return _service("GET", "mounts")


def prefetch(path: str, progress=True) -> dict:
    """Read every file of a dataset (or one file) through the cache, so later reads are local;
    a progress bar in MB (or `progress(mb)` called as it goes, or nothing with False).
    Returns files, bytes and seconds."""
    from XRootD import client

    from .clusters import _progress

    from XRootD.client.flags import StatInfoFlags

    path = _clean(path)
    status, info = _filesystem().stat(path, timeout=30)
    if not status.ok:
        raise _status_error("find", path, status)
    if info.flags & StatInfoFlags.IS_DIR:
        entries = [e for e in files(path) if not e["folder"]]
    else:
        entries = [{"path": path, "size": info.size}]
    total = sum(e["size"] for e in entries)
    if callable(progress):
        update = progress
    else:
        update = _progress(max(1, total // 2**20), "MB") if progress else (lambda n: None)
    done, started = 0, time.monotonic()
    for entry in entries:
        with client.File() as handle:
            status, _ = handle.open(url(entry["path"]), timeout=60)
            if not status.ok:
                raise _status_error("read", entry["path"], status)
            offset = 0
            while offset < entry["size"]:
                status, chunk = handle.read(offset, CHUNK, timeout=120)
                if not status.ok:
                    raise _status_error("read", entry["path"], status)
                if not chunk:
                    break
                offset += len(chunk)
                done += len(chunk)
                update(done // 2**20)
    update(max(1, total // 2**20))
    return {"files": len(entries), "bytes": done, "seconds": round(time.monotonic() - started, 3)}


def cache_stats() -> list[dict]:
    """Per dataset you may read: files and bytes in the cache, accesses, hits and misses
    (from the cache's own records)."""
    return _service("GET", "stats")


def plot_cache(stats: list[dict] | None = None, ax=None):
    """A bar chart per dataset: bytes served from the cache against bytes fetched from the
    sites, and how much of each dataset the cache holds."""
    import matplotlib.pyplot as plt

    stats = cache_stats() if stats is None else stats
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.6 + 0.5 * max(1, len(stats))))
    names = [s["dataset"] for s in stats]
    mb = 2**20
    # Every byte the cache holds came from a site once; whatever readers got beyond that was
    # served from the cache. (The records' own hit/miss split counts blocks its prefetching
    # fetched ahead of a first read as hits, so it is not used for "from the sites".)
    fetched = [(s["cached_bytes"] + s["bypass_bytes"]) for s in stats]
    read = [s["hit_bytes"] + s["miss_bytes"] + s["bypass_bytes"] for s in stats]
    hit = [max(0, r - f) / mb for r, f in zip(read, fetched)]
    miss = [f / mb for f in fetched]
    ax.barh(names, hit, color="#2a9d8f", label="served from the cache")
    ax.barh(names, miss, left=hit, color="#e76f51", label="fetched from the sites")
    for y, s in enumerate(stats):
        held = 100 * s["cached_bytes"] / s["size"] if s["size"] else 0
        ax.text(hit[y] + miss[y], y, f"  {held:.0f}% cached, {s['accesses']} reads", va="center", fontsize=8)
    ax.set_xlabel("MB read")
    ax.set_title("Cache hits per dataset")
    ax.legend(loc="lower right", fontsize=8)
    return ax
