"""condor_submit, condor_rm and condor_q for sessions, on the htcondor2 bindings.

The host has no HTCondor tools (Debian 12 has none; the root's are linked against trixie's C
library), yet dask-jobqueue's HTCondorCluster runs `condor_submit <file>` and `condor_rm <id>`.
The pool writes launchers of these into its client folder, which `CondorPool.client_env()` puts
first on a session's PATH. Each talks to the calling account's own schedd with the account's
token (`~/.condor/tokens.d`). Only what dask-jobqueue and a person at a terminal commonly use is
supported; anything else is refused with a message, never silently ignored.
"""

from __future__ import annotations

import os
import pwd
import re
import sys

from .config import schedd_name

_QUEUE = re.compile(r"^\s*queue(?:\s+(\d+))?\s*$", re.IGNORECASE)


def _schedd():
    import htcondor2 as htcondor

    name = os.environ.get("OFFICINA_CONDOR_SCHEDD") or schedd_name(pwd.getpwuid(os.getuid()).pw_name)
    ad = htcondor.Collector().locate(htcondor.DaemonType.Schedd, name)
    return htcondor.Schedd(ad)


def split_queue(text: str) -> tuple[str, int]:
    """The submit description without its `queue` statement, and the count it asked for."""
    lines, count, seen = [], 1, False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.lower().startswith("queue"):
            match = _QUEUE.match(stripped)
            if not match:
                raise ValueError(f"only `queue` and `queue N` are supported here, not {stripped!r}")
            if seen:
                raise ValueError("only one queue statement is supported here")
            seen, count = True, int(match.group(1) or 1)
            continue
        lines.append(line)
    return "\n".join(lines) + "\n", count


def submit(args: list[str]) -> int:
    import htcondor2 as htcondor

    count_override = None
    files = []
    it = iter(args)
    for arg in it:
        if arg == "-queue":
            count_override = int(next(it))
        elif arg in ("-terse",):
            continue
        elif arg.startswith("-"):
            print(f"condor_submit: option {arg} is not supported by Officina's condor_submit", file=sys.stderr)
            return 2
        else:
            files.append(arg)
    if len(files) > 1:
        print("condor_submit: one submit file at most", file=sys.stderr)
        return 2
    text = open(files[0]).read() if files else sys.stdin.read()
    try:
        description, count = split_queue(text)
    except ValueError as e:
        print(f"condor_submit: {e}", file=sys.stderr)
        return 2
    count = count_override or count
    result = _schedd().submit(htcondor.Submit(description), count=count)
    print("Submitting job(s).")
    print(f"{result.num_procs()} job(s) submitted to cluster {result.cluster()}.")
    return 0


def _job_constraint(spec: str) -> str:
    if re.fullmatch(r"\d+\.\d+", spec):
        cluster, proc = spec.split(".")
        return f"ClusterId == {int(cluster)} && ProcId == {int(proc)}"
    if re.fullmatch(r"\d+", spec):
        return f"ClusterId == {int(spec)}"
    raise ValueError(f"not a job id: {spec!r}")


def remove(args: list[str]) -> int:
    import htcondor2 as htcondor

    if not args or any(a.startswith("-") for a in args):
        print("condor_rm: give job ids (cluster or cluster.proc); options are not supported here", file=sys.stderr)
        return 2
    schedd = _schedd()
    status = 0
    for spec in args:
        try:
            result = schedd.act(htcondor.JobAction.Remove, _job_constraint(spec))
        except (ValueError, htcondor.HTCondorException) as e:
            print(f"condor_rm: {spec}: {e}", file=sys.stderr)
            status = 1
            continue
        if int(result.get("TotalSuccess", 0)) > 0:
            print(f"Job {spec} marked for removal")
        else:
            print(f"condor_rm: no such job of yours: {spec}", file=sys.stderr)
            status = 1
    return status


_STATUS = {1: "I", 2: "R", 3: "X", 4: "C", 5: "H", 6: "E", 7: "S"}


def queue(args: list[str]) -> int:
    if args:
        print("condor_q: options are not supported by Officina's condor_q", file=sys.stderr)
        return 2
    rows = _schedd().query(projection=["ClusterId", "ProcId", "Owner", "JobStatus", "Cmd"])
    print(f"{'ID':>10}  {'OWNER':<24} ST  CMD")
    for ad in sorted(rows, key=lambda a: (a["ClusterId"], a["ProcId"])):
        print(f"{ad['ClusterId']:>7}.{ad['ProcId']:<2}  {ad.get('Owner', '?'):<24} {_STATUS.get(ad.get('JobStatus'), '?'):<3} {ad.get('Cmd', '')}")
    return 0


COMMANDS = {"condor_submit": submit, "condor_rm": remove, "condor_q": queue}


def main(name: str, args: list[str]) -> int:
    try:
        return COMMANDS[name](args)
    except Exception as e:  # a person at a terminal gets the message, not a traceback
        print(f"{name}: {e}", file=sys.stderr)
        return 1
