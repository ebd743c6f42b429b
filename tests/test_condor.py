"""Officina's embedded HTCondor pool, tested for real: a trixie root made by
scripts/condor-root.sh (cached in /var/cache/officina/condor-root, or $OFFICINA_CONDOR_ROOT),
the pool started from Python, two hub users with platform-minted tokens submitting through the
htcondor2 bindings from their own system accounts, and Dask on HTCondor.

Isolation is tested as the users see it: each user's Python runs as their account, with only
their own token, in a subprocess; what one user may do to the other's jobs is a truth table.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from officina.hub.accounts import ensure_account, make_session_preexec, system_account_name
from officina.hub.condor import CondorError, CondorPool, host_can_run_condor
from officina.hub.condor import config as cfg
from officina.hub.condor.pool import DAEMON_ACCOUNT, mounts_under
from officina.hub.condor.tokens import mint_token
from platform_harness import free_ports

pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parent.parent
ROOT = Path(os.environ.get("OFFICINA_CONDOR_ROOT", "/var/cache/officina/condor-root"))
ARTIFACTS = REPO / "test-artifacts"
USERS = ("condora", "condorb")
TIMINGS: dict[str, float] = {}


# ------------------------------------------------------------------ configuration, no pool


def test_schedd_local_names_never_collide():
    names = ["officina-a-b", "officina-a--b", "officina-ab", "officina-a-b-1"]
    local = [cfg.schedd_local_name(n) for n in names]
    assert len(set(local)) == len(names)
    for bad in ("Officina-x", "a b", "x@y", "a_b", ""):
        with pytest.raises(ValueError):
            cfg.schedd_local_name(bad)


def test_pool_config_is_loopback_token_only_and_per_user():
    text = cfg.render_pool_config(cfg.PoolSettings(port=12345, accounts=("officina-x",)))
    assert "COLLECTOR_HOST = 127.0.0.1:12345" in text and "SHARED_PORT_PORT = 12345" in text
    assert "ENABLE_IPV6 = False" in text and "MOUNT_UNDER_SCRATCH =\n" in text
    assert "SEC_DEFAULT_AUTHENTICATION_METHODS = FS, IDTOKENS\n" in text
    for weak in ("CLAIMTOBE", "ANONYMOUS", "ALLOW_WRITE = *\n", "ALLOW_READ = *\n"):
        assert weak not in text
    assert "U_OFFICINA_X.ALLOW_READ = officina-x@officina condor@officina root@officina" in text
    client = cfg.render_client_config(12345)
    assert "SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS\n" in client


def test_host_check_names_the_missing_root(tmp_path):
    ok, reason = host_can_run_condor(tmp_path / "nothing-here")
    assert not ok
    expected = "condor-root.sh" if os.geteuid() == 0 else "needs root"
    assert expected in reason, reason


# ------------------------------------------------------------------ the real pool


def _as_user(user: str, code: str, pool: CondorPool, homes: Path, env: dict | None = None, timeout: float = 180):
    """Run Python as the user's account, as a session would: their home, the pool's client
    environment and nothing else of the test's. The last stdout line is JSON."""
    account = pwd.getpwnam(system_account_name(user))
    home = homes / user
    full_env = {"HOME": str(home), "LANG": "C.UTF-8", **pool.client_env(home), **(env or {})}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=full_env, preexec_fn=make_session_preexec(home, account),
        capture_output=True, text=True, timeout=timeout,
    )
    return result


def _py(body: str) -> str:
    """The user's program: the common prelude, then `body`."""
    return _PRELUDE + textwrap.dedent(body)


def _json_out(result: subprocess.CompletedProcess):
    assert result.returncode == 0, f"rc={result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


_PRELUDE = """
import json, os, time, pwd
import htcondor2 as htcondor
def schedd_of(account):
    ad = htcondor.Collector().locate(htcondor.DaemonType.Schedd, account + "@officina")
    return htcondor.Schedd(ad)
me = pwd.getpwuid(os.getuid()).pw_name
"""


@pytest.fixture(scope="module")
def condor_root():
    if os.geteuid() != 0:
        pytest.skip("the embedded HTCondor pool needs root")
    t0 = time.monotonic()
    result = subprocess.run(["bash", str(REPO / "scripts" / "condor-root.sh"), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    TIMINGS["root_script_s"] = time.monotonic() - t0
    ok, reason = host_can_run_condor(ROOT)
    assert ok, reason
    return ROOT


@pytest.fixture(scope="module")
def platform_state():
    """A state directory as the platform has it: 0711 down to the homes."""
    base = Path(tempfile.mkdtemp(prefix="officina-condor-"))
    base.chmod(0o711)
    state = base / "state"
    state.mkdir(mode=0o711)
    homes = state / "homes"
    homes.mkdir(mode=0o711)
    yield state
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def accounts(platform_state):
    """The two users' system accounts, made with the platform's helper; only those this test
    created are removed."""
    existing = {p.pw_name for p in pwd.getpwall()}
    homes = platform_state / "homes"
    entries = {user: ensure_account(user, homes / user) for user in USERS}
    yield entries
    for user in USERS:
        name = system_account_name(user)
        if name not in existing:
            subprocess.run(["userdel", name], capture_output=True)
    if DAEMON_ACCOUNT not in existing:
        subprocess.run(["userdel", DAEMON_ACCOUNT], capture_output=True)


@pytest.fixture(scope="module")
def pool(condor_root, platform_state, accounts):
    (port,) = free_ports(1)
    pool = CondorPool(root=condor_root, state_dir=platform_state / "condor", homes=platform_state / "homes", port=port, cpus=4, memory_mb=4096)
    timings = pool.start()
    TIMINGS.update(master_started_s=timings.master_started, schedd_visible_s=timings.schedd_visible, slot_visible_s=timings.slot_visible)
    yield pool
    pool.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "condor-timings.json").write_text(json.dumps(TIMINGS, indent=2))


@pytest.fixture(scope="module")
def tokens(pool, platform_state):
    minted = {}
    for user in USERS:
        t0 = time.monotonic()
        minted[user] = mint_token(pool, user, platform_state / "homes" / user, lifetime_s=3600)
        TIMINGS[f"mint_{user}_s"] = time.monotonic() - t0
    return minted


def test_pool_runs_in_its_root_with_private_key_and_no_host_mounts(pool, platform_state):
    assert pool.running
    assert TIMINGS["slot_visible_s"] < 60
    key = pool.keys_dir / cfg.POOL_KEY_NAME
    assert key.stat().st_mode & 0o777 == 0o600 and key.stat().st_uid == 0
    assert pool.keys_dir.stat().st_mode & 0o777 == 0o700
    # The key never shows in a process's argv, nor in the pool's logs.
    raw = key.read_bytes()
    secret = bytes(b ^ (0xDE, 0xAD, 0xBE, 0xEF)[i % 4] for i, b in enumerate(raw))
    for proc in psutil.process_iter(["cmdline"]):
        assert secret.decode() not in " ".join(proc.info["cmdline"] or [])
    for log in (pool.local_dir / "log").iterdir():
        if log.is_file():
            assert secret not in log.read_bytes() and raw not in log.read_bytes()
    # The pool's mounts are in its own namespace: the host sees none under the root.
    assert mounts_under(pool.root) == []
    written = (pool.root / cfg.CONFIG_FILE.lstrip("/")).read_text()
    assert f"COLLECTOR_HOST = 127.0.0.1:{pool.port}" in written


def test_no_daemon_signs_tokens_on_request(pool):
    """Only the platform mints tokens: a token can't be renewed past its lifetime with
    condor_token_fetch, not even by a daemon's own identity."""
    for daemon in ("SCHEDD", "COLLECTOR"):
        result = pool.run_in_root(["condor_token_fetch", "-type", daemon, "-lifetime", "600"])
        assert result.returncode != 0 and result.stdout.strip() == "", (daemon, result.stdout[:20])
        assert "Token fetch disabled" in result.stderr, result.stderr


def test_second_pool_on_the_same_root_is_refused(pool, tmp_path):
    other = CondorPool(root=pool.root, state_dir=tmp_path / "other", homes=pool.homes, port=free_ports(1)[0])
    with pytest.raises(CondorError, match="another Officina pool"):
        other.start()


def test_tokens_are_the_users_own_files_naming_their_account(tokens, accounts):
    for user, minted in tokens.items():
        st = minted.path.lstat()
        assert st.st_mode & 0o777 == 0o600
        assert (st.st_uid, st.st_gid) == (accounts[user].pw_uid, accounts[user].pw_gid)
        assert minted.path.parent.stat().st_mode & 0o777 == 0o700
        payload = json.loads(_b64decode(minted.path.read_text().strip().split(".")[1]))
        assert payload["sub"] == f"{system_account_name(user)}@officina"
        assert payload["iss"] == "officina"
        assert payload["exp"] - payload["iat"] == 3600
        assert sorted(payload["scope"].split()) == ["condor:/READ", "condor:/WRITE"]


def test_token_is_not_written_through_a_planted_symlink(pool, tokens, platform_state, tmp_path):
    home = platform_state / "homes" / "condorb"
    account = pwd.getpwnam(system_account_name("condorb"))
    target = tmp_path / "elsewhere"
    target.mkdir()
    condor_dir = home / ".condor"
    saved = home / ".condor-saved"
    condor_dir.rename(saved)
    try:
        os.symlink(target, condor_dir)
        os.lchown(condor_dir, account.pw_uid, account.pw_gid)
        with pytest.raises(CondorError, match="not writing a token"):
            mint_token(pool, "condorb", home, lifetime_s=600)
        assert list(target.iterdir()) == []
    finally:
        condor_dir.unlink()
        saved.rename(condor_dir)


def test_jobs_run_as_the_users_account_and_read_their_home(pool, tokens, accounts, platform_state):
    homes = platform_state / "homes"
    for user in USERS:
        (homes / user / "secret.txt").write_text(f"private note of {user}\n")
        os.chown(homes / user / "secret.txt", accounts[user].pw_uid, accounts[user].pw_gid)
        os.chmod(homes / user / "secret.txt", 0o600)
    code = _py("""
    t0 = time.monotonic()
    schedd = schedd_of(me)
    sub = htcondor.Submit({
        "executable": "/bin/sh",
        "arguments": "\\"-c 'id -un; id -u; cat secret.txt'\\"",
        "output": "job.out", "error": "job.err", "log": "job.log",
        "request_cpus": "1", "request_memory": "64", "request_disk": "1024",
    })
    result = schedd.submit(sub)
    owner = schedd.query(constraint=f"ClusterId == {result.cluster()}", projection=["Owner"])[0]["Owner"]
    for event in htcondor.JobEventLog("job.log").events(stop_after=120):
        if event.type == htcondor.JobEventType.JOB_TERMINATED:
            break
    else:
        raise SystemExit("the job did not finish within 120 s")
    print(json.dumps({"owner": owner, "out": open("job.out").read(), "err": open("job.err").read(), "seconds": time.monotonic() - t0}))
    """)
    for user in USERS:
        out = _json_out(_as_user(user, code, pool, homes))
        account = accounts[user]
        assert out["owner"] == account.pw_name
        assert out["out"].split("\n")[:3] == [account.pw_name, str(account.pw_uid), f"private note of {user}"], out
        TIMINGS.setdefault("first_job_s", out["seconds"])


_LONG_JOB = _PRELUDE + """
schedd = schedd_of(me)
result = schedd.submit(htcondor.Submit({"executable": "/bin/sleep", "arguments": "600", "request_cpus": "1",
                                        "request_memory": "32", "request_disk": "1024", "log": "sleep.log"}))
print(json.dumps({"cluster": result.cluster()}))
"""


@pytest.fixture(scope="module")
def long_jobs(pool, tokens, platform_state):
    homes = platform_state / "homes"
    jobs = {user: _json_out(_as_user(user, _LONG_JOB, pool, homes))["cluster"] for user in USERS}
    yield jobs
    for user, cluster in jobs.items():
        _as_user(user, _PRELUDE + f"\nschedd_of(me).act(htcondor.JobAction.Remove, 'ClusterId == {cluster}')\nprint('{{}}')", pool, homes)


# What each user may do with each user's schedd: the truth table of isolation.
@pytest.mark.parametrize("actor", USERS)
@pytest.mark.parametrize("target", USERS)
def test_queue_isolation_truth_table(pool, long_jobs, platform_state, actor, target):
    homes = platform_state / "homes"
    code = _py(f"""
    try:
        ads = schedd_of({system_account_name(target)!r}).query(projection=["ClusterId", "Owner"])
        print(json.dumps({{"ok": True, "jobs": [[a["ClusterId"], a["Owner"]] for a in ads]}}))
    except htcondor.HTCondorException as e:
        print(json.dumps({{"ok": False, "error": str(e)}}))
    """)
    out = _json_out(_as_user(actor, code, pool, homes))
    if actor == target:
        assert out["ok"], out
        owners = {owner for _, owner in out["jobs"]}
        assert owners == {system_account_name(actor)}
        assert long_jobs[actor] in {cluster for cluster, _ in out["jobs"]}
    else:
        assert not out["ok"]
        assert "DENIED" in out["error"] and f"{system_account_name(actor)}@officina" in out["error"], out


def test_a_user_cannot_remove_the_others_job(pool, long_jobs, platform_state):
    homes = platform_state / "homes"
    victim = system_account_name("condorb")
    code = _py(f"""
    try:
        schedd_of({victim!r}).act(htcondor.JobAction.Remove, "ClusterId == {long_jobs['condorb']}")
        print(json.dumps({{"refused": False}}))
    except htcondor.HTCondorException as e:
        print(json.dumps({{"refused": True, "error": str(e)}}))
    """)
    out = _json_out(_as_user("condora", code, pool, homes))
    assert out["refused"], out
    # The bindings only say "Error when performing action on the schedd."; the schedd's log
    # says why: the authorization layer turned condora away before any job was looked at.
    log = (pool.local_dir / "log" / f"SchedLog.{victim}").read_text()
    assert f"PERMISSION DENIED to {system_account_name('condora')}@officina" in log
    # And the job is still there, as its owner sees it.
    code = _PRELUDE + f"\nprint(json.dumps(len(schedd_of(me).query(constraint='ClusterId == {long_jobs['condorb']}'))))"
    assert _json_out(_as_user("condorb", code, pool, homes)) == 1


def test_the_pools_own_schedd_is_closed_to_users(pool, tokens, platform_state):
    code = _py(f"""
    try:
        schedd_of("officina_pool").query()
        print(json.dumps({{"refused": False}}))
    except htcondor.HTCondorException as e:
        print(json.dumps({{"refused": True, "error": str(e)}}))
    """)
    out = _json_out(_as_user("condora", code, pool, platform_state / "homes"))
    assert out["refused"] and "DENIED" in out["error"], out


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged_tokens(real: str) -> dict[str, str]:
    header, payload, _signature = real.split(".")
    claims = json.loads(_b64decode(payload))
    claims["sub"] = f"{system_account_name('condorb')}@officina"
    body = _b64encode(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{body}".encode()
    other_key = os.urandom(32).hex().encode()
    return {
        # condora's own token, its subject changed to condorb: the signature no longer matches.
        "modified": f"{header}.{body}.{_signature}",
        # A token for condorb signed with a key that is not the pool's.
        "other key": f"{header}.{body}.{_b64encode(hmac.new(other_key, signing_input, hashlib.sha256).digest())}",
    }


@pytest.mark.parametrize("kind", ["modified", "other key"])
def test_forged_tokens_are_refused(pool, tokens, platform_state, accounts, kind):
    homes = platform_state / "homes"
    forged = _forged_tokens(tokens["condora"].path.read_text().strip())[kind]
    # A token folder holding nothing but the forged token, owned by condora.
    folder = homes / "condora" / f"forged-{kind.replace(' ', '-')}"
    folder.mkdir(mode=0o700, exist_ok=True)
    (folder / "token").write_text(forged + "\n")
    os.chmod(folder / "token", 0o600)
    for path in (folder, folder / "token"):
        os.chown(path, accounts["condora"].pw_uid, accounts["condora"].pw_gid)
    # Located with condora's real token; then the forged one is all the client has.
    code = _py(f"""
    schedd = schedd_of({system_account_name('condorb')!r})
    htcondor.param["SEC_TOKEN_DIRECTORY"] = {str(folder)!r}
    out = {{}}
    try:
        schedd.query()
        out["refused"] = False
    except htcondor.HTCondorException as e:
        out.update(refused=True, error=str(e))
    print(json.dumps(out))
    """)
    out = _json_out(_as_user("condora", code, pool, homes))
    assert out["refused"], out
    # The client's own words: no method could authenticate it.
    assert "Failed to authenticate using IDTOKENS" in out["error"], out
    # A fresh client with nothing but the forged token: the collector refuses it too (only
    # less eloquently: "Failed communication with collector").
    code = _py("""
    try:
        htcondor.Collector().query(htcondor.AdTypes.Startd)
        print(json.dumps({"refused": False}))
    except htcondor.HTCondorException as e:
        print(json.dumps({"refused": True, "error": str(e)}))
    """)
    out = _json_out(_as_user("condora", code, pool, homes, env={"_CONDOR_SEC_TOKEN_DIRECTORY": str(folder)}))
    assert out["refused"], out


def test_dask_on_htcondor_two_workers_as_one_user(pool, tokens, accounts, platform_state):
    homes = platform_state / "homes"
    code = textwrap.dedent("""
    import json, os, time
    t0 = time.monotonic()
    from dask_jobqueue import HTCondorCluster
    from dask.distributed import Client
    import dask.array as da
    cluster = HTCondorCluster(
        cores=1, memory="512 MiB", disk="100 MiB", python=os.environ["OFFICINA_CONDOR_PYTHON"],
        scheduler_options={"host": "127.0.0.1", "dashboard_address": None},
        log_directory=os.path.expanduser("~/dask-logs"),
    )
    cluster.scale(2)
    with Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        up = time.monotonic() - t0
        total = int(da.arange(1_000_000, chunks=100_000).sum().compute())
        where = client.run(lambda: [os.getuid(), os.getcwd()])
    cluster.close()
    print(json.dumps({"up": up, "total": total, "where": list(where.values())}))
    """)
    out = _json_out(_as_user("condora", code, pool, homes, timeout=300))
    assert out["total"] == 499999500000
    assert len(out["where"]) == 2
    for uid, cwd in out["where"]:
        assert uid == accounts["condora"].pw_uid and cwd == str(homes / "condora")
    TIMINGS["dask_two_workers_s"] = out["up"]


def test_condor_commands_for_sessions(pool, tokens, platform_state):
    """condor_submit / condor_q / condor_rm on a session's PATH (what dask-jobqueue calls)."""
    homes = platform_state / "homes"
    code = textwrap.dedent("""
    import json, re, subprocess
    open("hello.sub", "w").write("executable = /bin/true\\nrequest_memory = 16\\nrequest_disk = 1024\\nhold = true\\nqueue 2\\n")
    sub = subprocess.run(["condor_submit", "hello.sub"], capture_output=True, text=True)
    cluster = re.search(r"(\\d+) job\\(s\\) submitted to cluster (\\d+)", sub.stdout)
    q = subprocess.run(["condor_q"], capture_output=True, text=True)
    rm = subprocess.run(["condor_rm", cluster.group(2)], capture_output=True, text=True)
    bad = subprocess.run(["condor_submit", "-spool", "hello.sub"], capture_output=True, text=True)
    print(json.dumps({"count": cluster.group(1), "cluster": cluster.group(2), "q": q.stdout, "rm": rm.returncode, "bad": [bad.returncode, bad.stderr]}))
    """)
    out = _json_out(_as_user("condorb", code, pool, homes))
    assert out["count"] == "2"
    assert f"{out['cluster']}.0" in out["q"] and "officina-condorb" in out["q"]
    assert out["rm"] == 0
    assert out["bad"][0] == 2 and "not supported" in out["bad"][1]


def _pool_processes(root: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.readlink(f"/proc/{proc.pid}/root") == str(root):
                found.append(proc)
        except OSError:
            continue
    return found


def test_execute_nodes_for_one_user_survive_a_pool_restart(pool, tokens, accounts, platform_state):
    """A user's execute nodes (the resource manager's HTCondor workers): startds of their own,
    kept by the pool across its restarts, only the owner's jobs may start there."""
    t0 = time.monotonic()
    names = pool.set_workers("nodes1", "condora", 2, 1, 256)
    TIMINGS["two_nodes_s"] = time.monotonic() - t0
    assert names == ["nodes1-1@officina", "nodes1-2@officina"]
    slots = pool.worker_slots("nodes1")
    assert sorted(s["Startd"] for s in slots) == names and all(s["Cpus"] == 1 and s["Memory"] == 256 for s in slots)
    written = (pool.root / cfg.CONFIG_FILE.lstrip("/")).read_text()
    assert 'W_NODES1_2.START = (TARGET.Owner == "officina-condora")' in written
    assert pool.workers_file.stat().st_mode & 0o777 == 0o600
    with pytest.raises(ValueError):
        cfg.WorkerStartd(resource="x; DAEMON_LIST = X", index=1, account="officina-condora", cpus=1, memory_mb=1)
    # The pool's own slot keeps the shape its starter gave it, whoever rewrites the config.
    assert "NUM_CPUS = 4\n" in written and "MEMORY = 4096\n" in written
    pool.stop()
    pool.start()  # (the pool's own startd empties its execute folder at start: the nodes' are elsewhere)
    assert sorted(pool.worker_names("nodes1")) == names
    assert pool.set_workers("nodes1", "condora", 1, 1, 256) == ["nodes1-1@officina"]
    assert pool.set_workers("nodes1", "condora", 0, 1, 256) == []
    assert pool.worker_slots("nodes1") == [] and "nodes1" not in pool.worker_resources()


def test_stop_leaves_no_process_and_no_mount(pool, long_jobs):
    assert _pool_processes(pool.root), "the pool's processes are found by their root"
    t0 = time.monotonic()
    pool.stop()
    TIMINGS["stop_s"] = time.monotonic() - t0
    assert _pool_processes(pool.root) == []
    assert mounts_under(pool.root) == []
    assert not pool.running
    # The mount points made for this run's state (under /tmp) are gone from the root.
    assert not (pool.root / str(pool.homes).lstrip("/")).exists()
    pool.stop()  # twice is fine


def test_a_crashed_platform_leaves_a_pool_that_the_next_stop_ends(condor_root, platform_state, tmp_path):
    """The process that started the pool is killed: the master lives on (it is the pool), and
    a new CondorPool on the same state ends it, with all of its namespace."""
    state = platform_state / "crash"
    (port,) = free_ports(1)
    script = textwrap.dedent(f"""
        import os, signal
        from officina.hub.condor import CondorPool
        pool = CondorPool(root={str(condor_root)!r}, state_dir={str(state)!r}, homes={str(platform_state / 'homes')!r}, port={port})
        pool.start()
        print("up", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "up" in result.stdout, result.stderr
    assert _pool_processes(condor_root), "the orphaned pool is running"
    assert mounts_under(condor_root) == []
    CondorPool(root=condor_root, state_dir=state, homes=platform_state / "homes", port=port).stop()
    assert _pool_processes(condor_root) == []
    assert mounts_under(condor_root) == []
