"""The data service: a JupyterHub-managed service at /services/data/ that gives sessions what
they cannot do themselves with the federation.

    GET    api/sites     the declared sites, and the paths of each the caller's groups may read
    GET    api/stats     cache statistics per dataset (the cache's own .cinfo records), for the
                         datasets the caller may read
    GET    api/mounts    the caller's mounts
    POST   api/mounts    {"path": "/store/data/open/dimuon-2026"} -> the dataset at ~/data/<name>
    DELETE api/mounts?path=/store/...

Mounts are FUSE (xrootdfs) and /dev/fuse is root's here, so this service mounts: xrootdfs
starts as root, mounts, and then switches to the user's account (`-o uid=`), so it reads the
user's own token file (BEARER_TOKEN_FILE, kept fresh by the session) with the user's rights
and nothing of root's. Reads go through the cache (`rdr`); listings go to the dataset's site
(`cns`), because the cache lists nothing. The mountpoint is in the user's home (0700), so
`allow_other` (needed for the user to see a root-made mount) lets no one else in.
Mounts are kept in a root-only JSON file and checked again at start (a mount whose xrootdfs
died is unmounted); every mount is undone when the platform stops.

API calls carry the user's JupyterHub token (`access:services!service=data`); refusals are
4xx with {"error": "..."} naming the problem.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import signal
import subprocess
import time
from urllib.parse import urlsplit

import psutil
from jupyterhub.services.auth import HubAuth, HubAuthenticated
from jupyterhub.utils import url_path_join
from tornado import web

from ..accounts import system_account_name
from ..lifetime import watch_parent
from ..settings import Settings
from ..state import StateDir
from .sites import Federation, federation_from_settings
from .stats import StatsError, cache_stats

log = logging.getLogger("officina.data")

XROOTDFS = "/usr/bin/xrootdfs"
FUSERMOUNT = "/usr/bin/fusermount"
SERVICE = "data"


def federation_runs(settings: Settings) -> bool:
    """Whether the platform runs the federation (the supervisor's own test)."""
    from .federation import platform_can_run_federation

    return platform_can_run_federation(settings)[0]


def session_environment(settings: Settings) -> dict[str, str]:
    """What sessions and Dask workers need to read the federation: the cache and redirector
    addresses, the data service, and the federation's CA (the daemons speak TLS, which the
    token protocol requires). The token itself is BEARER_TOKEN_FILE, set apart."""
    federation = federation_from_settings(settings)
    return {
        "OFFICINA_DATA_CACHE": federation.cache_url,
        "OFFICINA_DATA_REDIRECTOR": federation.redirector_url if not federation.redirector_address
        else f"root://{federation.redirector_address}",
        "OFFICINA_DATA_URL": f"http://127.0.0.1:{settings['data']['service_port']}{settings['hub']['base_url']}services/{SERVICE}/",
        "X509_CERT_DIR": str(federation.state_dir / "tls" / "certificates"),
    }


def readable_prefixes(federation: Federation, groups) -> list[tuple[str, str]]:
    """(site, path prefix) pairs the groups may read, from the sites' declared rules."""
    groups = set(groups)
    return [(site.name, rule.path) for site in federation.sites for rule in site.read if groups & set(rule.groups)]


def may_read(federation: Federation, groups, path: str) -> bool:
    site = federation.site_of(path)
    return site is not None and bool(set(groups) & set(site.groups_for(path)))


def check_dataset_path(path) -> str:
    if not isinstance(path, str) or not path.startswith("/") or any(p in ("", ".", "..") for p in path.strip("/").split("/")):
        raise web.HTTPError(400, f"path: an absolute dataset path like /store/data/open/dimuon-2026, got {path!r}")
    return "/" + path.strip("/")


class Mounts:
    """The users' xrootdfs mounts, recorded in a root-only JSON file."""

    def __init__(self, federation: Federation, state: StateDir, system_accounts: bool):
        self.federation = federation
        self.homes = state.homes
        self.system_accounts = system_accounts
        self.ca_dir = federation.state_dir / "tls" / "certificates"  # XRootDFederation.ca_dir
        self.record_file = federation.state_dir / "mounts.json"
        self.records: dict[str, dict] = {}
        self._children: dict[int, subprocess.Popen] = {}  # this service's xrootdfs, reaped at unmount
        if self.record_file.exists():
            self.records = json.loads(self.record_file.read_text())

    def _save(self) -> None:
        tmp = self.record_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(self.records, handle)
        os.replace(tmp, self.record_file)

    @staticmethod
    def mounted(mountpoint: str) -> bool:
        with open("/proc/self/mounts") as handle:
            return any(line.split()[1] == mountpoint for line in handle if len(line.split()) > 2)

    def _alive(self, record: dict) -> bool:
        try:
            return psutil.Process(record["pid"]).create_time() == record["created"]
        except psutil.Error:
            return False

    def recover(self) -> None:
        """After a restart: keep the mounts whose xrootdfs still runs, undo the others."""
        for key, record in list(self.records.items()):
            if not (self._alive(record) and self.mounted(record["mountpoint"])):
                self._unmount(record)
                del self.records[key]
        self._save()

    def of(self, user: str) -> list[dict]:
        return [public_mount(r) for r in self.records.values() if r["user"] == user]

    def mount(self, user: str, groups, path: str) -> dict:
        if not os.path.exists("/dev/fuse") or not os.access(XROOTDFS, os.X_OK):
            raise web.HTTPError(503, "this machine cannot mount datasets (no /dev/fuse or no xrootdfs): "
                                     "read them with their root:// URLs (officina.lab.data.url) instead")
        if not may_read(self.federation, groups, path):
            site = self.federation.site_of(path)
            if site is None:
                raise web.HTTPError(404, f"no data site exports {path} (exported: {', '.join(self.federation.exported_paths)})")
            raise web.HTTPError(403, f"your groups may not read {path} (site {site.name} lets "
                                     f"{', '.join(site.groups_for(path)) or 'nobody'} read it)")
        key = f"{user}:{path}"
        if key in self.records:
            return public_mount(self.records[key])
        name = path.rsplit("/", 1)[-1]
        home = self.homes / user
        mountpoint = home / "data" / name
        taken = [r for r in self.records.values() if r["user"] == user and r["mountpoint"] == str(mountpoint)]
        if taken:
            raise web.HTTPError(409, f"~/data/{name} already holds {taken[0]['path']}: unmount it first")
        account = None
        if self.system_accounts:
            try:
                account = pwd.getpwnam(system_account_name(user))
            except KeyError:
                raise web.HTTPError(409, f"{user} has no session account yet: start a session once first") from None
        if not home.is_dir():
            raise web.HTTPError(409, f"{user} has no home yet: start a session once first")
        for folder in (home / "data", mountpoint):
            if folder.is_symlink():
                raise web.HTTPError(409, f"~/{folder.relative_to(home)} is a link: remove it to mount there")
            folder.mkdir(mode=0o755, exist_ok=True)
            if account is not None:
                os.chown(folder, account.pw_uid, account.pw_gid, follow_symlinks=False)
        if any(mountpoint.iterdir()):
            raise web.HTTPError(409, f"~/data/{name} is not empty: move its files away to mount there")
        site = self.federation.site_of(path)
        host = "localhost"  # the servers' certificate names localhost and 127.0.0.1
        options = [
            f"rdr=root://{host}:{self.federation.cache.port}/{path}/",
            f"cns=root://{host}:{site.port}/{path}/" if site.embedded else f"cns=root://{site.origin}/{path}/",
            "allow_other", "nworkers=8", "ro",
        ]
        if account is not None:
            options.append(f"uid={account.pw_name}")
        env = {"PATH": "/usr/bin:/bin", "X509_CERT_DIR": str(self.ca_dir),
               "BEARER_TOKEN_FILE": str(home / ".officina" / "bearer_token"),
               # Fail in seconds, not minutes, when a site is down (the cache does the same).
               "XRD_CONNECTIONRETRY": "1", "XRD_REQUESTTIMEOUT": "30", "XRD_STREAMTIMEOUT": "30"}
        logfile = self.federation.state_dir / "logs" / f"mount-{user}-{name}.log"
        with open(logfile, "ab") as out:
            child = subprocess.Popen([XROOTDFS, str(mountpoint), "-f", "-o", ",".join(options)], env=env,
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + 20
        while not self.mounted(str(mountpoint)):
            if child.poll() is not None or time.monotonic() > deadline:
                if child.poll() is None:
                    child.kill()
                child.wait()
                raise web.HTTPError(502, f"xrootdfs did not mount {path}: {logfile.read_text(errors='replace')[-300:]}")
            time.sleep(0.1)
        self._children[child.pid] = child
        record = {"user": user, "path": path, "mountpoint": str(mountpoint), "pid": child.pid,
                  "created": psutil.Process(child.pid).create_time(), "log": str(logfile)}
        self.records[key] = record
        self._save()
        log.info("Mounted %s for %s at %s", path, user, mountpoint)
        return public_mount(record)

    def unmount(self, user: str, path: str) -> None:
        record = self.records.get(f"{user}:{path}")
        if record is None:
            raise web.HTTPError(404, f"you have no mount of {path}")
        self._unmount(record)
        del self.records[f"{user}:{path}"]
        self._save()

    def _unmount(self, record: dict) -> None:
        if self.mounted(record["mountpoint"]):
            subprocess.run([FUSERMOUNT, "-u", "-z", record["mountpoint"]], capture_output=True, timeout=30)
        if self._alive(record):
            try:
                os.kill(record["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
        child = self._children.pop(record["pid"], None)
        if child is not None:  # ours: reaped, not left a zombie until the service ends
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def unmount_all(self) -> None:
        for record in self.records.values():
            self._unmount(record)
        self.records = {}
        self._save()


def public_mount(record: dict) -> dict:
    return {"path": record["path"], "mountpoint": record["mountpoint"]}


class DataHandler(HubAuthenticated, web.RequestHandler):
    def initialize(self, federation: Federation, mounts: Mounts):
        self.federation = federation
        self.mounts = mounts

    def check_xsrf_cookie(self):
        return  # token-authenticated API only

    def caller(self) -> dict:
        user = self.current_user
        if user is None or user.get("kind") != "user":
            raise web.HTTPError(401 if not self.request.headers.get("Authorization") else 403,
                                "a JupyterHub token of a user with access to the data service is needed")
        return user

    def send(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None))[1]
        message = exc.log_message if isinstance(exc, web.HTTPError) and exc.log_message else (
            "the data service failed; the administrators can see why in its log" if status_code >= 500 else self._reason)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))


class SitesHandler(DataHandler):
    def get(self):
        groups = self.caller().get("groups") or ()
        readable = readable_prefixes(self.federation, groups)
        self.send({
            "cache": self.federation.cache_url,
            "sites": [{"name": s.name, "paths": list(s.paths),
                       "readable": [p for site, p in readable if site == s.name]} for s in self.federation.sites],
        })


class StatsHandler(DataHandler):
    async def get(self):
        groups = self.caller().get("groups") or ()
        try:
            stats = await asyncio.to_thread(cache_stats, self.federation.cache.directory)
        except StatsError as exc:
            raise web.HTTPError(503, str(exc)) from None
        self.send([s.as_dict() for s in stats.values() if may_read(self.federation, groups, s.dataset)])


class MountsHandler(DataHandler):
    def get(self):
        self.send(self.mounts.of(self.caller()["name"]))

    async def post(self):
        user = self.caller()
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the request body is not JSON") from None
        if not isinstance(body, dict) or set(body) - {"path"}:
            raise web.HTTPError(400, 'the body must be {"path": "/store/..."}')
        path = check_dataset_path(body.get("path"))
        self.send(await asyncio.to_thread(self.mounts.mount, user["name"], user.get("groups") or (), path), 201)

    async def delete(self):
        user = self.caller()
        path = check_dataset_path(self.get_argument("path", None))
        await asyncio.to_thread(self.mounts.unmount, user["name"], path)
        self.send({"unmounted": path})


def make_app(federation: Federation, mounts: Mounts, prefix: str) -> web.Application:
    api = url_path_join(prefix, "api")
    args = {"federation": federation, "mounts": mounts}
    return web.Application(
        [(url_path_join(api, "sites"), SitesHandler, args),
         (url_path_join(api, "stats"), StatsHandler, args),
         (url_path_join(api, "mounts"), MountsHandler, args)],
        hub_auth=HubAuth(access_scopes={f"access:services!service={SERVICE}"}, cache_max_age=60),
    )


async def serve(federation: Federation, mounts: Mounts) -> None:
    prefix = os.environ["JUPYTERHUB_SERVICE_PREFIX"]
    bind = urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"])
    await asyncio.to_thread(mounts.recover)
    server = make_app(federation, mounts, prefix).listen(bind.port, address=bind.hostname or "127.0.0.1")
    log.info("Data service at %s on %s", prefix, bind.netloc)
    stopping = asyncio.Event()
    orphaned = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
    watcher = asyncio.ensure_future(watch_parent(lambda: (orphaned.set(), stopping.set())))
    await stopping.wait()
    server.stop()
    watcher.cancel()
    if not orphaned.is_set():  # the platform stops: no mount outlives it
        await asyncio.to_thread(mounts.unmount_all)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s data] %(message)s")
    with open(os.environ["OFFICINA_SETTINGS"]) as handle:
        settings = Settings(raw=json.load(handle), source="data service")
    federation = federation_from_settings(settings)
    mounts = Mounts(federation, StateDir(settings.state_dir), settings.run_as_system_accounts)
    asyncio.run(serve(federation, mounts))


if __name__ == "__main__":
    main()
