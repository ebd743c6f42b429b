"""The embedded XRootD federation: origin sites, a redirector and an XCache, as processes.

`XRootDFederation(federation).start()` prepares the state (TLS, the cache's service key, the
sample dataset, the issuer's keys, the configurations), starts every daemon as the platform's
unprivileged XRootD account (xrootd refuses to run as root) and waits until each listens;
`stop()` ends exactly the daemons it started, by PID. Individual sites can be stopped and
started again (`stop_site`, `start_site`), which is how a site outage is shown and tested.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..accounts import AccountError, ensure_daemon_account
from . import config as cfg
from .keycache import fetch_jwks, seed_key_cache
from .sample import place_sample_data
from .sites import LOOPBACK, DataSite, Federation
from .tls import ensure_tls

XROOTD = "/usr/bin/xrootd"
CMSD = "/usr/bin/cmsd"
REQUIRED_BINARIES = (XROOTD, CMSD, "/usr/bin/xrdsssadmin", "/usr/bin/xrdpfc_print")
REQUIRED_PLUGINS = ("libXrdPss-5.so", "libXrdPfc-5.so", "libXrdAccSciTokens-5.so", "libXrdSecztn-5.so")
PLUGIN_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/lib/aarch64-linux-gnu")
# The daemons' account. The underscore keeps it out of `officina-<user>` (session accounts).
DAEMON_ACCOUNT = "officina_xrootd"
# How often the runner re-seeds the issuer's keys (a rotated stand-in key is picked up).
RESEED_EVERY_S = 600


class DataError(Exception):
    """The federation cannot start or run; the message says why and what to do."""


def host_can_run_federation() -> tuple[bool, str]:
    missing = [b for b in REQUIRED_BINARIES if not os.access(b, os.X_OK)]
    missing += [p for p in REQUIRED_PLUGINS if not any(os.path.exists(os.path.join(d, p)) for d in PLUGIN_DIRS)]
    if missing:
        return False, (f"the XRootD packages are not installed (missing {', '.join(missing)}); "
                       "run scripts/install.sh")
    return True, "XRootD 5 with the proxy cache and the SciTokens plugin is installed"


def platform_can_run_federation(settings) -> tuple[bool, str]:
    """Whether this platform can run the federation, and why not: the packages, and users'
    tokens that the sites accept (WLCG-profile ones; see the settings' consistency check).
    The one test behind the supervisor's component, the data service and the sessions'
    and Dask workers' environment."""
    if settings["data"]["enabled"] is False:
        return False, "data.enabled is false"
    can, why = host_can_run_federation()
    if can and settings["iam"]["groups_claim"] != "wlcg.groups":
        return False, "the hub's tokens are not WLCG-profile ones (iam.groups_claim is not wlcg.groups)"
    return can, why


def daemon_account() -> pwd.struct_passwd:
    """The account the daemons run as: `officina_xrootd` (created) as root, else ourselves."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.getuid())
    try:
        return ensure_daemon_account(DAEMON_ACCOUNT, "Officina XRootD daemons")
    except AccountError as exc:
        raise DataError(str(exc)) from None


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Daemon:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    port: int | None
    proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class XRootDFederation:
    federation: Federation
    daemons: dict[str, Daemon] = field(default_factory=dict)

    def __post_init__(self):
        self.root = self.federation.state_dir
        self.account = daemon_account()

    # ----- layout -------------------------------------------------------------------
    def site_dir(self, site: DataSite) -> Path:
        return self.root / "sites" / site.name

    def site_root(self, site: DataSite) -> Path:
        return self.site_dir(site) / "root"

    @property
    def cache_dir(self) -> Path:
        return self.federation.cache.directory

    @property
    def ca_dir(self) -> Path:
        """Clients trust the federation's CA with X509_CERT_DIR pointing here."""
        return self.root / "tls" / "certificates"

    def log_of(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def _own(self, path: Path, mode: int) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, self.account.pw_uid, self.account.pw_gid)
        os.chmod(path, mode)
        return path

    # ----- preparation --------------------------------------------------------------
    def prepare(self) -> None:
        ok, why = host_can_run_federation()
        if not ok:
            raise DataError(why)
        uid, gid = self.account.pw_uid, self.account.pw_gid
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)
        tls = self.root / "tls"
        ensure_tls(tls, uid, gid)
        self._own(self.root / "logs", 0o750)
        self._make_sss_key()
        embedded = [s for s in self.federation.sites if s.embedded]
        place_sample_data({s.name: (self.site_root(s), s.paths) for s in embedded})
        jwks = fetch_jwks(self.federation.issuer) if self.seeds_keys else None
        audiences = ["https://wlcg.cern.ch/jwt/v1/any", self.federation.cache_url,
                     f"roots://{LOOPBACK}:{self.federation.cache.port}"]
        scitokens_cfg = self.root / "scitokens.cfg"
        scitokens_cfg.write_text(cfg.scitokens_config(self.federation, audiences))
        os.chmod(scitokens_cfg, 0o644)
        for site in embedded:
            d = self.site_dir(site)
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)
            admin = self._own(d / "admin", 0o700)
            home = self._own(d / "home", 0o700)
            if jwks:
                seed_key_cache(home, self.federation.issuer, jwks, uid, gid)
            authdb = d / "authdb"
            authdb.write_text(cfg.group_authdb(
                (site,), [f"u {cfg.CACHE_IDENTITY} {p} {cfg.READ_PRIVILEGES}" for p in site.paths]))
            conf = d / "xrootd.cfg"
            conf.write_text(cfg.origin_config(self.federation, site, root=self.site_root(site), admin=admin,
                                              tls_dir=tls, scitokens_cfg=scitokens_cfg, authdb=authdb,
                                              sss_keytab=self.sss_keytab))
            for f in (authdb, conf):
                os.chmod(f, 0o644)
        rdr = self.root / "redirector"
        rdr.mkdir(parents=True, exist_ok=True)
        rdr_admin = self._own(rdr / "admin", 0o700)
        (rdr / "xrootd.cfg").write_text(cfg.redirector_config(self.federation, admin=rdr_admin, tls_dir=tls))
        cache = self.root / "cache-daemon"
        cache.mkdir(parents=True, exist_ok=True)
        os.chmod(cache, 0o755)
        cache_admin = self._own(cache / "admin", 0o700)
        cache_home = self._own(cache / "home", 0o700)
        if jwks:
            seed_key_cache(cache_home, self.federation.issuer, jwks, uid, gid)
        self._own(self.cache_dir, 0o755)
        authdb = cache / "authdb"
        authdb.write_text(cfg.group_authdb(self.federation.sites))
        (cache / "xrootd.cfg").write_text(cfg.cache_config(self.federation, admin=cache_admin, tls_dir=tls,
                                                           scitokens_cfg=scitokens_cfg, authdb=authdb))

    @property
    def sss_keytab(self) -> Path:
        return self.root / "sss" / "xcache.keytab"

    def _make_sss_key(self) -> None:
        folder = self._own(self.root / "sss", 0o700)
        if not self.sss_keytab.exists():
            # The key is made by XRootD's own tool into the owner-only folder; it never passes
            # through arguments or the environment, only its path does.
            result = subprocess.run(
                ["xrdsssadmin", "-k", "officina-xcache", "-u", cfg.CACHE_IDENTITY, "-g", cfg.CACHE_IDENTITY,
                 "add", str(self.sss_keytab)], capture_output=True, text=True)
            if result.returncode != 0:
                raise DataError(f"cannot make the cache's service key: {result.stderr.strip() or result.stdout.strip()}")
        os.chown(self.sss_keytab, self.account.pw_uid, self.account.pw_gid)
        os.chmod(self.sss_keytab, 0o600)
        os.chown(folder, self.account.pw_uid, self.account.pw_gid)

    def _declare_daemons(self, embedded: list[DataSite]) -> None:
        base_env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "X509_CERT_DIR": str(self.ca_dir),
        }
        as_account = ["-R", self.account.pw_name] if os.geteuid() == 0 else []

        def daemon(name: str, binary: str, conf: Path, home: Path | None, port: int | None, extra=None):
            # A site's xrootd and cmsd find each other in the admin path under one instance
            # name (`-n`): the site's name, the cmsd's daemon entry only being named apart.
            instance = name.removesuffix("-cmsd")
            env = {**base_env, **(extra or {})}
            if home is not None:
                env["HOME"] = env["XDG_CACHE_HOME"] = str(home)
            self.daemons[name] = Daemon(name, [binary, "-c", str(conf), "-n", instance, *as_account], env,
                                        self.log_of(name), port)

        if not self.federation.redirector_address:
            rdr = self.root / "redirector" / "xrootd.cfg"
            daemon("redirector-cmsd", CMSD, rdr, None, self.federation.redirector_cmsd_port)
            daemon("redirector", XROOTD, rdr, None, self.federation.redirector_port)
        for site in embedded:
            d = self.site_dir(site)
            daemon(f"{site.name}-cmsd", CMSD, d / "xrootd.cfg", d / "home", None)
            daemon(site.name, XROOTD, d / "xrootd.cfg", d / "home", site.port)
        cache = self.root / "cache-daemon"
        # The proxy's client authenticates to the sites with the service key only (never with
        # a token that happens to be lying around for the account).
        daemon("xcache", XROOTD, cache / "xrootd.cfg", cache / "home", self.federation.cache.port,
               {"XrdSecPROTOCOL": "sss", "XrdSecSSSKT": str(self.sss_keytab),
                # A site that refuses connections is given up on after one short window.
                "XRD_CONNECTIONWINDOW": str(self.federation.cache.connect_timeout)})

    # ----- processes ----------------------------------------------------------------
    def start(self, timeout: float = 60) -> dict:
        started = time.monotonic()
        self.prepare()
        if not self.daemons:
            # Declared once: a second prepare() (a restart of the files) must not forget the
            # processes already running, which stop() ends by their Popen handles.
            self._declare_daemons([s for s in self.federation.sites if s.embedded])
        prepared = time.monotonic() - started
        try:
            for name in self.daemons:
                self._start_daemon(name)
            self._wait_listening(list(self.daemons), timeout)
            self._wait_subscribed(timeout)
        except BaseException:
            self.stop()
            raise
        return {"prepare_s": round(prepared, 2), "start_s": round(time.monotonic() - started, 2)}

    def _start_daemon(self, name: str) -> None:
        d = self.daemons[name]
        if d.running:
            return
        log = open(d.log, "ab")
        try:
            d.proc = subprocess.Popen(d.argv, env=d.env, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, cwd=str(self.root), start_new_session=True)
        finally:
            log.close()

    def _wait_listening(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for name in names:
            d = self.daemons[name]
            while True:
                if not d.running:
                    raise DataError(f"{name} exited at start:\n{_tail(d.log)}")
                if d.port is None or _port_open(d.port):
                    break
                if time.monotonic() > deadline:
                    raise DataError(f"{name} does not listen on port {d.port} after {timeout:.0f} s:\n{_tail(d.log)}")
                time.sleep(0.1)

    def _wait_subscribed(self, timeout: float) -> None:
        """Until the redirector's log shows every embedded site's cmsd logged in."""
        sites = [s for s in self.federation.sites if s.embedded]
        log = self.log_of("redirector-cmsd")
        deadline = time.monotonic() + timeout
        while True:
            text = log.read_text(errors="replace") if log.exists() else ""
            missing = [s.name for s in sites if not _site_login_seen(text, s)]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise DataError(f"site(s) {', '.join(missing)} did not subscribe to the redirector:\n{_tail(log)}")
            time.sleep(0.2)

    def stop_site(self, name: str) -> None:
        """End one site's daemons (its xrootd and cmsd), as a site outage."""
        self._terminate([self.daemons[n] for n in (name, f"{name}-cmsd") if n in self.daemons])

    def start_site(self, name: str, timeout: float = 60) -> None:
        for n in (f"{name}-cmsd", name):
            self._start_daemon(n)
        self._wait_listening([f"{name}-cmsd", name], timeout)

    @property
    def running(self) -> bool:
        return bool(self.daemons) and all(d.running for d in self.daemons.values())

    def pids(self) -> dict[str, int]:
        return {n: d.proc.pid for n, d in self.daemons.items() if d.running}

    @property
    def seeds_keys(self) -> bool:
        """An http issuer (the stand-in) gets its keys seeded; scitokens fetches an https one's."""
        return self.federation.issuer.startswith("http://")

    def reseed_keys(self) -> None:
        if not self.seeds_keys:
            return
        jwks = fetch_jwks(self.federation.issuer)
        homes = [self.site_dir(s) / "home" for s in self.federation.sites if s.embedded]
        homes.append(self.root / "cache-daemon" / "home")
        for home in homes:
            seed_key_cache(home, self.federation.issuer, jwks, self.account.pw_uid, self.account.pw_gid)

    def stop(self, grace: float = 10) -> None:
        # The cache first (no reader is left half-served by a vanished site), sites last.
        self._terminate(list(reversed(self.daemons.values())), grace)

    def _terminate(self, daemons: list[Daemon], grace: float = 10) -> None:
        live = [d for d in daemons if d.running]
        for d in live:
            # Each daemon leads its own session (start_new_session): its group is exactly it
            # and the helpers it forked, and nothing else.
            _signal_group(d.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for d in live:
            try:
                d.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(d.proc.pid, signal.SIGKILL)
                d.proc.wait(10)


def _site_login_seen(text: str, site: DataSite) -> bool:
    # The manager's cmsd logs "Primary <instance> server.<pid>:<n>@<host>:<port> logged in";
    # a site's instance name is the site's name.
    return any(f"Primary {site.name} server." in line and "logged in" in line for line in text.splitlines())


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
