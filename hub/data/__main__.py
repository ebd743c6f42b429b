"""The embedded federation as a process the platform's supervisor runs like its other components.

    python -m officina.hub.data check
        exit 0 if the XRootD packages are here, else 1 with what to do (for `officina up`)
    python -m officina.hub.data run --settings FILE
        start the sites, the redirector and the cache from the platform's settings (the
        resolved settings.json the supervisor writes), print one JSON line of timings, keep
        them up until SIGTERM or SIGINT (re-seeding the issuer's keys), then stop them
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from .federation import RESEED_EVERY_S, DataError, XRootDFederation, host_can_run_federation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m officina.hub.data")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check")
    run = sub.add_parser("run")
    run.add_argument("--settings", required=True, help="the platform's officina.yaml or resolved settings.json")
    args = parser.parse_args(argv)

    if args.command == "check":
        ok, reason = host_can_run_federation()
        print(reason, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1

    from ..settings import SettingsError, load_settings
    from .sites import federation_from_settings

    try:
        federation = XRootDFederation(federation_from_settings(load_settings(args.settings)))
    except (SettingsError, DataError) as e:
        print(f"data federation: {e}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        timings = federation.start()
    except Exception as e:  # noqa: BLE001 - reported and the exit code says it failed
        print(f"data federation: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"cache": federation.federation.cache_url, "pids": federation.pids(), **timings}), flush=True)
    last_seed = time.monotonic()
    try:
        while not stop.wait(2):
            if not federation.running:
                dead = [n for n, d in federation.daemons.items() if not d.running]
                print(f"data federation: {', '.join(dead)} exited", file=sys.stderr)
                return 1
            if time.monotonic() - last_seed > RESEED_EVERY_S:
                try:
                    federation.reseed_keys()
                    last_seed = time.monotonic()
                except Exception as e:  # noqa: BLE001 - the issuer may be restarting; retry later
                    print(f"data federation: cannot refresh the issuer's keys yet: {e}", file=sys.stderr)
    finally:
        federation.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
