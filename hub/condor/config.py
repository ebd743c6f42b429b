"""The embedded pool's HTCondor configuration, as pure functions of its settings.

Security model (what the text below enforces, and why):

- Every command needs authentication (REQUIRED), integrity and encryption. The only methods
  are IDTOKENS (users, from the platform-minted tokens) and FS (the daemons among themselves
  inside the root, where FS proves the caller's Unix account). No ANONYMOUS, no CLAIMTOBE.
- A user token names the user's system account, `officina-<user>@officina`, so the job's
  Owner is that account and the starter runs the job as that account (UID_DOMAIN is
  `officina` on both sides). The hub user -> account step is done by the platform when it
  mints the token (`accounts.system_account_name`): HTCondor 23's schedd does not pass
  IDTOKENS identities through CERTIFICATE_MAPFILE (its log says "name to map is null, not
  mapping"), so a `<user>@officina` token could not be mapped to the account there.
- Each user has a schedd of their own, readable and writable only by their account, the
  daemons and root: HTCondor has no per-owner read restriction inside one schedd (any READ
  client sees every job ad, arguments and environment included), so isolation is by schedd.
- The collector, negotiator and startd answer READ to any `*@officina` identity (machine ads
  only) and WRITE to the daemons alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TRUST_DOMAIN = "officina"
# Users' tokens name `<account>@officina`; the daemons are `condor@officina` and `root@officina`.
DAEMON_IDENTITIES = ("condor@officina", "root@officina")
POOL_KEY_NAME = "POOL"
# Not `officina-pool`: that is the account (and schedd) name of a hub user called "pool".
BASE_SCHEDD_NAME = "officina_pool@officina"

# Paths inside the root; the pool mounts state folders of the host onto them.
IN_ROOT_LOCAL = "/var/lib/officina-condor"
IN_ROOT_KEYS = "/etc/condor/passwords.d"
CONFIG_FILE = "/etc/condor/config.d/99-officina.conf"


@dataclass(frozen=True)
class PoolSettings:
    port: int
    cpus: int = 2
    memory_mb: int = 2048
    # The system accounts that have a schedd of their own.
    accounts: tuple[str, ...] = ()
    # Execute nodes started for users by the resource manager (HTCondor workers).
    workers: tuple[WorkerStartd, ...] = ()


@dataclass(frozen=True)
class WorkerStartd:
    """One execute node of a user's "HTCondor workers" resource: a startd of its own in the
    pool, with `cpus` and `memory_mb` in one partitionable slot, that only `account`'s jobs
    may claim. Jobs pick a resource's nodes with `TARGET.OfficinaResource == "<resource>"`."""

    resource: str   # the resource manager's id ([a-z0-9]+)
    index: int      # 1.. within the resource
    account: str
    cpus: int
    memory_mb: int

    def __post_init__(self):
        if not re.fullmatch(r"[a-z0-9]+", self.resource):
            raise ValueError(f"not a resource id: {self.resource!r}")
        schedd_local_name(self.account)  # validates the account name

    @property
    def local_name(self) -> str:
        return f"W_{self.resource.upper()}_{self.index}"

    @property
    def name(self) -> str:
        """The startd's Name (its slot is `slot1@<name>`)."""
        return f"{self.resource}-{self.index}@{TRUST_DOMAIN}"


def schedd_local_name(account: str) -> str:
    """A configuration-safe local name for a user's schedd; account names are [a-z0-9-], so
    replacing `-` by `_` never maps two accounts to one name."""
    if not re.fullmatch(r"[a-z0-9-]+", account):
        raise ValueError(f"not a system account name Officina makes: {account!r}")
    return "U_" + account.replace("-", "_").upper()


def schedd_name(account: str) -> str:
    return f"{account}@{TRUST_DOMAIN}"


def token_subject(account: str) -> str:
    """The identity a user's token names: their system account, in the pool's domain."""
    schedd_local_name(account)  # validates the name
    return f"{account}@{TRUST_DOMAIN}"


def render_pool_config(settings: PoolSettings) -> str:
    daemons = " ".join(DAEMON_IDENTITIES)
    lines = [
        "# Officina's embedded pool. Written by officina.hub.condor at each start: do not edit.",
        "use ROLE: CentralManager",
        "use ROLE: Submit",
        "use ROLE: Execute",
        "",
        "# Network: loopback only, one port for every daemon (shared port).",
        "CONDOR_HOST = 127.0.0.1",
        f"COLLECTOR_PORT = {settings.port}",
        f"COLLECTOR_HOST = 127.0.0.1:{settings.port}",
        "USE_SHARED_PORT = True",
        f"SHARED_PORT_PORT = {settings.port}",
        "NETWORK_INTERFACE = 127.0.0.1",
        "BIND_ALL_INTERFACES = False",
        "ENABLE_IPV6 = False",
        "ENABLE_IPV4 = True",
        "",
        "# No mailer in the root.",
        "MAIL = /bin/true",
        "",
        "# The root has no private /tmp per job; the starter must not try to make one.",
        "MOUNT_UNDER_SCRATCH =",
        "",
        f"UID_DOMAIN = {TRUST_DOMAIN}",
        f"FILESYSTEM_DOMAIN = {TRUST_DOMAIN}",
        f"TRUST_DOMAIN = {TRUST_DOMAIN}",
        "",
        f"LOCAL_DIR = {IN_ROOT_LOCAL}",
        "LOG = $(LOCAL_DIR)/log",
        "SPOOL = $(LOCAL_DIR)/spool",
        "EXECUTE = $(LOCAL_DIR)/execute",
        "LOCK = $(LOCAL_DIR)/lock",
        "CRED_STORE_DIR = $(LOCAL_DIR)/cred_dir",
        "RUN = /run/condor",
        "",
        "# Security: see the module docstring of officina.hub.condor.config.",
        f"SEC_PASSWORD_DIRECTORY = {IN_ROOT_KEYS}",
        f"SEC_TOKEN_POOL_SIGNING_KEY_FILE = {IN_ROOT_KEYS}/{POOL_KEY_NAME}",
        "SEC_TOKEN_SYSTEM_DIRECTORY = /etc/condor/tokens.d",
        "SEC_DEFAULT_AUTHENTICATION = REQUIRED",
        "SEC_DEFAULT_INTEGRITY = REQUIRED",
        "SEC_DEFAULT_ENCRYPTION = REQUIRED",
        "SEC_DEFAULT_AUTHENTICATION_METHODS = FS, IDTOKENS",
        "SEC_CLIENT_AUTHENTICATION_METHODS = FS, IDTOKENS",
        "SEC_READ_AUTHENTICATION = REQUIRED",
        "SEC_CLIENT_AUTHENTICATION = REQUIRED",
        # Only the platform mints tokens: no daemon signs one on a client's request, so a
        # token cannot be renewed past its lifetime (condor_token_fetch), nor asked for.
        "SEC_ENABLE_TOKEN_FETCH = False",
        "SEC_ENABLE_TOKEN_REQUEST = False",
        "SEC_ENABLE_IMPERSONATION_TOKENS = False",
        f"ALLOW_READ = *@{TRUST_DOMAIN}",
        f"ALLOW_WRITE = {daemons}",
        f"ALLOW_DAEMON = {daemons}",
        f"ALLOW_NEGOTIATOR = {daemons}",
        f"ALLOW_ADVERTISE_MASTER = {daemons}",
        f"ALLOW_ADVERTISE_SCHEDD = {daemons}",
        f"ALLOW_ADVERTISE_STARTD = {daemons}",
        f"ALLOW_ADMINISTRATOR = {daemons}",
        f"ALLOW_CONFIG = {DAEMON_IDENTITIES[1]}",
        # The pool's own schedd is for the platform (health checks), not for users.
        f"SCHEDD_NAME = {BASE_SCHEDD_NAME}",
        f"SCHEDD.ALLOW_READ = {daemons}",
        f"SCHEDD.ALLOW_WRITE = {daemons}",
        "QUEUE_SUPER_USERS = root, condor",
        "",
        "# Jobs run as the job's Owner (the user's account, copied into the root); never as",
        "# root, and a job whose Owner has no account here runs as nobody.",
        "STARTER_ALLOW_RUNAS_OWNER = True",
        "",
        "# One partitionable slot: the machine is small, jobs ask for what they need.",
        f"NUM_CPUS = {settings.cpus}",
        f"MEMORY = {settings.memory_mb}",
        "NUM_SLOTS = 1",
        "NUM_SLOTS_TYPE_1 = 1",
        "SLOT_TYPE_1 = 100%",
        "SLOT_TYPE_1_PARTITIONABLE = True",
        "RUNBENCHMARKS = 0",
        "",
        "# An interactive platform: match and start quickly.",
        "SCHEDD_INTERVAL = 2",
        "NEGOTIATOR_INTERVAL = 2",
        "NEGOTIATOR_MIN_INTERVAL = 1",
        "NEGOTIATOR_CYCLE_DELAY = 1",
        "STARTER_UPDATE_INTERVAL = 2",
        "SHADOW_QUEUE_UPDATE_INTERVAL = 2",
        "UPDATE_INTERVAL = 2",
        "STARTD_INITIAL_UPDATE_INTERVAL = 1",
        "SCHEDD_MIN_INTERVAL = 1",
        "JOB_START_DELAY = 0",
        "CLAIM_WORKLIFE = 0",
        "",
    ]
    for account in settings.accounts:
        lines += _user_schedd_lines(account)
    for worker in settings.workers:
        lines += _worker_startd_lines(worker)
    return "\n".join(lines) + "\n"


def _user_schedd_lines(account: str) -> list[str]:
    local = schedd_local_name(account)
    p = local
    allowed = f"{schedd_name(account)} " + " ".join(DAEMON_IDENTITIES)
    return [
        f"# The schedd of {account}: only that account (and the daemons) may read or write it.",
        f"{local} = $(SCHEDD)",
        f"{local}_ARGS = -local-name {local}",
        f"{p}.SCHEDD_NAME = {schedd_name(account)}",
        # Not LOCAL_DIR nor LOCK: LOG and the shared port's address file are made from them.
        f"{local}_DIR = $(LOCAL_DIR)/schedd/{account}",
        f"{p}.SPOOL = $({local}_DIR)/spool",
        f"{p}.SCHEDD_LOG = $(LOG)/SchedLog.{account}",
        f"{p}.SHADOW_LOG = $(LOG)/ShadowLog.{account}",
        f"{p}.PROCD_ADDRESS = $({local}_DIR)/procd_pipe",
        f"{p}.SCHEDD_ADDRESS_FILE = $({p}.SPOOL)/.schedd_address",
        f"{p}.SCHEDD_DAEMON_AD_FILE = $({p}.SPOOL)/.schedd_classad",
        f"{local}_SPOOL = $({p}.SPOOL)",
        f"{p}.ALLOW_READ = {allowed}",
        f"{p}.ALLOW_WRITE = {allowed}",
        f"DAEMON_LIST = $(DAEMON_LIST) {local}",
        f"DC_DAEMON_LIST = + {local}",
        "",
    ]


def _worker_startd_lines(worker: WorkerStartd) -> list[str]:
    local = worker.local_name
    return [
        f"# Execute node {worker.index} of resource {worker.resource}, for {worker.account} only.",
        f"{local} = $(STARTD)",
        f"{local}_ARGS = -local-name {local}",
        f"{local}.STARTD_NAME = {worker.name}",
        f"{local}.STARTD_LOG = $(LOG)/StartLog.{worker.resource}-{worker.index}",
        # Not under the pool's own EXECUTE: its startd empties that folder when it starts.
        f"{local}.EXECUTE = $(LOCAL_DIR)/nodes/{worker.resource}-{worker.index}",
        f"{local}.STARTD_ADDRESS_FILE = $(LOG)/.startd_address.{worker.resource}-{worker.index}",
        f"{local}.STARTD_DAEMON_AD_FILE = $(LOG)/.startd_classad.{worker.resource}-{worker.index}",
        f"{local}.PROCD_ADDRESS = $(LOCK)/procd_pipe.{worker.resource}-{worker.index}",
        f"{local}.NUM_CPUS = {worker.cpus}",
        f"{local}.MEMORY = {worker.memory_mb}",
        f"{local}.OfficinaResource = \"{worker.resource}\"",
        f"{local}.OfficinaOwner = \"{worker.account}\"",
        f"{local}.STARTD_ATTRS = $(STARTD_ATTRS) OfficinaResource OfficinaOwner START",
        # Only the owner's jobs start here; the resource manager's quota paid for these cores.
        f"{local}.START = (TARGET.Owner == \"{worker.account}\")",
        f"DAEMON_LIST = $(DAEMON_LIST) {local}",
        f"DC_DAEMON_LIST = + {local}",
        "",
    ]


def worker_execute_dirs(worker: WorkerStartd) -> list[str]:
    """Folders under LOCAL_DIR that a worker startd needs before it starts."""
    return ["nodes", f"nodes/{worker.resource}-{worker.index}"]


def user_schedd_dirs(account: str) -> list[str]:
    """Folders under LOCAL_DIR that a user's schedd needs before it starts."""
    return [f"schedd/{account}", f"schedd/{account}/spool"]


def render_client_config(port: int) -> str:
    """What a session's tools and bindings read (CONDOR_CONFIG): where the pool is and how to
    authenticate. The token itself is in the user's own token directory."""
    return "\n".join(
        [
            "# Officina's embedded pool, for sessions' HTCondor clients. Written at each start.",
            f"COLLECTOR_HOST = 127.0.0.1:{port}",
            "CONDOR_HOST = 127.0.0.1",
            "NETWORK_INTERFACE = 127.0.0.1",
            "ENABLE_IPV6 = False",
            f"UID_DOMAIN = {TRUST_DOMAIN}",
            f"FILESYSTEM_DOMAIN = {TRUST_DOMAIN}",
            f"TRUST_DOMAIN = {TRUST_DOMAIN}",
            "SEC_CLIENT_AUTHENTICATION = REQUIRED",
            "SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS",
            "SEC_CLIENT_INTEGRITY = REQUIRED",
            "SEC_CLIENT_ENCRYPTION = REQUIRED",
            "",
        ]
    )
