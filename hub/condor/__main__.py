"""The embedded pool as a process the platform's supervisor can run like its other components.

    python -m officina.hub.condor check --root ROOT
        exit 0 if this host can run the pool, else 1 with what to do (for `officina up`)
    python -m officina.hub.condor run --root ROOT --state DIR --homes DIR --port P [--cpus N --memory-mb M]
        start the pool, print one JSON line of timings, keep it up until SIGTERM or SIGINT,
        then stop it (the master, its daemons and jobs, and every mount)
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from .pool import CondorError, CondorPool, host_can_run_condor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m officina.hub.condor")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check")
    check.add_argument("--root", required=True)
    run = sub.add_parser("run")
    run.add_argument("--root", required=True)
    run.add_argument("--state", required=True)
    run.add_argument("--homes", required=True)
    run.add_argument("--port", type=int, required=True)
    run.add_argument("--cpus", type=int, default=2)
    run.add_argument("--memory-mb", type=int, default=2048)
    args = parser.parse_args(argv)

    if args.command == "check":
        ok, reason = host_can_run_condor(args.root)
        print(reason, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1

    pool = CondorPool(root=args.root, state_dir=args.state, homes=args.homes, port=args.port, cpus=args.cpus, memory_mb=args.memory_mb)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        timings = pool.start()
    except CondorError as e:
        print(f"condor pool: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"address": pool.address, **timings.__dict__}), flush=True)
    try:
        while not stop.wait(5):
            if not pool.running:
                print("condor pool: condor_master exited", file=sys.stderr)
                return 1
    finally:
        pool.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
