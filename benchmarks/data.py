"""Reading a dataset through the XCache from an origin behind an emulated WAN link, against
reading it directly from that origin and from local disk, side by side in one run.

The link: the origin runs in its own network namespace (`officina-bench-<pid>`), joined to the
root namespace by a veth pair (10.213.n.1/30 here, .2/30 there) whose two ends `tc tbf` limits
to `--rate`. This kernel has no `netem`; with `--rtt` a user-space relay (benchmarks/wan.py,
asyncio) in front of the origin holds every chunk rtt/2 in each direction, and the cache and
the direct reads both go through it. Default: no added delay (the veth's own round trip,
tens of microseconds), the link's rate being the point.

The daemons: XRootD 5.5 from the Debian packages, as the platform's daemon account
(`officina_xrootd`, from officina.hub.data.federation; xrootd refuses root). The origin is a
plain data server (`all.export /store`, `oss.localroot`); the cache is the platform's XCache
(libXrdPss + libXrdPfc) with `pss.origin` the origin's veth address, tuned for this link
(below). Token authorization and TLS are off for both: not what is measured here (the
platform's daemons speak TLS, which costs CPU on every read, cold or warm, through the cache
or direct); tests/test_data_federation.py covers them.

The dataset: `--files` files of incompressible bytes from a fixed seed (numpy PCG64, seed
2026), `--size` MB in all, written once into the origin's folder.

The reader, one for all four modes: XRootD's Python client (`XRootD.client.File`, the .venv's
wheel) reading each file start to end in `--chunk` MiB requests, `--inflight` of them
outstanding (async reads, as uproot and xrdcp keep several in flight); local disk goes through
the same client by `file://` URL (XrdCl's local file handler).

Modes, each timed over the whole dataset (all files, every byte, sequentially):
  1. cold cache: the cache daemon stopped, its folder emptied, started again, then read;
  2. warm cache: the same files again through the cache (from its disk: page cache included);
  3. direct origin: `root://<origin veth address>` over the link, no cache;
  4. local disk: the origin's own files read from their folder. Page cache NOT dropped:
     they were just written (and read by the origin), as the warm cache's files were just
     written by the cache, so both read from memory as they would right after a fetch.
Also, for information (no target): 5. warm cache and 6. local disk with their files' pages
evicted first (POSIX_FADV_DONTNEED on those files only), both read from the disk device.
Each round runs them in that order, the fast modes (2, 4) read 3 times each; `--repeat`
rounds, medians reported. The bytes read
through the cache are checked once (sha256) against the files, outside the timings.

Targets: warm cache / local disk >= 0.8 (throughput); cold cache within 1.1x the direct
read's time (throughput ratio >= 1/1.1 = 0.91).

Cache tuning (why): blocks of `--blocksize` (4 MiB default: on a link, fewer and larger
requests; the 1 MiB default pays one request per MiB), `pfc.prefetch` blocks fetched ahead
of the reader per file (so the link never idles while the client waits on a block), a RAM
pool large enough for those in flight, and write-queue threads so that writing blocks to
disk never holds the fetches back. See `cache_config` for the directives.

Needs root (namespaces, tc). Everything it starts is ended by PID and everything it makes
(namespace, veth, qdiscs, temporary folders) removed, also after an error or Ctrl-C.

    .venv/bin/python benchmarks/data.py [--rate 200] [--size 300] [--files 4] [--repeat 3]
                                        [--rtt 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, this file's folder leads sys.path, where benchmarks/dask.py would shadow dask.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE))

from wan import DelayRelay, WanLink  # noqa: E402

from officina.hub.data.federation import XROOTD, daemon_account  # noqa: E402

ORIGIN_PORT = 1094  # inside the namespace: no other listener there
DATASET = "/store/bench/wan"
SEED = 2026
MiB = 1 << 20
MODES = ("cold cache", "warm cache", "direct origin", "local disk")
# Informational pair (no target): both read from the disk device, their files' pages evicted.
DROPPED = ("warm cache, pages dropped", "local disk, pages dropped")
# The fast modes take a fraction of a second: each is read this many times per round.
FAST_READS = 3



def interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


# ----- dataset -------------------------------------------------------------------------
def write_dataset(folder: Path, total_mb: int, files: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    per_file = total_mb * 1_000_000 // files
    paths = []
    for i in range(files):
        path = folder / f"block-{i:03d}.bin"
        with open(path, "wb") as f:
            left = per_file
            while left:
                n = min(left, 16 * MiB)
                f.write(rng.bytes(n))
                left -= n
        paths.append(path)
    return paths


# ----- daemons -------------------------------------------------------------------------
def origin_config(root: Path, admin: Path) -> str:
    return "\n".join([
        "# Benchmark origin: a plain data server, no authorization (see the docstring).",
        "all.export /store",
        f"oss.localroot {root}",
        f"all.adminpath {admin}",
        f"all.pidpath {admin}",
        f"xrd.port {ORIGIN_PORT}",
        "xrd.network nodnr",
    ]) + "\n"


def cache_config(origin: str, cache_dir: Path, admin: Path, port: int, blocksize_mib: int, prefetch: int) -> str:
    return "\n".join([
        "# Benchmark XCache in front of the origin behind the emulated link.",
        "ofs.osslib libXrdPss.so",
        "pss.cachelib libXrdPfc.so",
        f"pss.origin {origin}",
        "all.export /store",
        f"oss.localroot {cache_dir}",
        f"all.adminpath {admin}",
        f"all.pidpath {admin}",
        f"xrd.port {port}",
        "xrd.network nodnr",
        f"pfc.blocksize {blocksize_mib}m",
        # Blocks fetched ahead of the reader, per file: enough to keep the link busy for the
        # time a block takes to cross it plus the request's round trip.
        f"pfc.prefetch {prefetch}",
        # The RAM pool holds blocks in flight and those waiting to be written; 2g is the
        # smallest 5.5 accepts comfortably (it refuses less than 1g).
        "pfc.ram 2g",
        # Blocks queued for disk and the threads writing them: writes never stall fetches.
        "pfc.writequeue 64 4",
        "pfc.diskusage 0.90 0.95",
        # The proxy's client: more event-loop threads than the default one, so that receiving
        # from the origin and answering the local reader do not queue behind each other.
        "pss.setopt ParallelEvtLoop 4",
        "pss.setopt ConnectTimeout 10",
        "pss.setopt RequestTimeout 120",
    ]) + "\n"


class Daemon:
    def __init__(self, name: str, argv: list[str], log: Path, host: str, port: int):
        self.name, self.argv, self.log, self.host, self.port = name, argv, log, host, port
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> None:
        with open(self.log, "ab") as log:
            # Its own session: its process group is exactly it and what it forks.
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                                      "LANG": "C.UTF-8"})
        deadline = time.monotonic() + timeout
        while not port_open(self.host, self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{tail(self.log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} does not listen on {self.host}:{self.port}:\n{tail(self.log)}")
            time.sleep(0.05)

    def stop(self, grace: float = 10) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        pid = self.proc.pid
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self.proc = None


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ----- the reader ----------------------------------------------------------------------
def read_url(url: str, chunk: int, inflight: int, digest=None) -> int:
    """Every byte of `url`, `inflight` requests of `chunk` bytes outstanding; returns bytes."""
    from XRootD import client
    from XRootD.client.flags import OpenFlags

    f = client.File()
    status, _ = f.open(url, OpenFlags.READ, timeout=60)
    if not status.ok:
        raise RuntimeError(f"open {url}: {status.message}")
    try:
        status, info = f.stat(timeout=60)
        if not status.ok:
            raise RuntimeError(f"stat {url}: {status.message}")
        size = info.size
        offsets = list(range(0, size, chunk))
        results: dict[int, bytes] = {}
        errors: list[str] = []
        cv = threading.Condition()
        pending = 0
        nxt = 0
        done = 0
        total = 0

        def callback(offset):
            def cb(status, response, hostlist):
                nonlocal pending
                with cv:
                    if not status.ok:
                        errors.append(f"read {url} at {offset}: {status.message}")
                    results[offset] = response if status.ok else b""
                    pending -= 1
                    cv.notify()
            return cb

        while done < len(offsets):
            with cv:
                while nxt < len(offsets) and pending < inflight:
                    off = offsets[nxt]
                    nxt += 1
                    pending += 1
                    st = f.read(off, min(chunk, size - off), timeout=120, callback=callback(off))
                    if not st.ok:
                        raise RuntimeError(f"read {url}: {st.message}")
                while offsets[done] not in results and not errors:
                    cv.wait()
                if errors:
                    raise RuntimeError(errors[0])
                data = results.pop(offsets[done])
            if digest is not None:
                digest.update(data)
            total += len(data)
            done += 1
        if total != size:
            raise RuntimeError(f"{url}: read {total} bytes of {size}")
        return total
    finally:
        f.close(timeout=30)


def drop_pages(paths) -> None:
    """Evict these files' pages from the page cache (POSIX_FADV_DONTNEED on clean pages): only
    these files, not the machine's whole page cache (no drop_caches)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def load_pages(paths) -> None:
    for path in paths:
        with open(path, "rb") as f:
            while f.read(16 * MiB):
                pass


def read_all(urls: list[str], chunk: int, inflight: int) -> tuple[float, int]:
    started = time.perf_counter()
    total = sum(read_url(u, chunk, inflight) for u in urls)
    return time.perf_counter() - started, total


# ----- the benchmark -------------------------------------------------------------------
def mbps(seconds: float, nbytes: int) -> float:
    return nbytes / 1e6 / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200, help="link rate, Mbit/s (default 200)")
    parser.add_argument("--rtt", type=float, default=0, help="added round trip, ms, by the delay relay (default 0)")
    parser.add_argument("--size", type=int, default=300, help="dataset size, MB (default 300)")
    parser.add_argument("--files", type=int, default=4, help="files in the dataset (default 4)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the four modes (default 3)")
    parser.add_argument("--chunk", type=int, default=8, help="reader request size, MiB (default 8)")
    parser.add_argument("--inflight", type=int, default=2, help="reader requests outstanding (default 2)")
    parser.add_argument("--blocksize", type=int, default=4, help="pfc.blocksize, MiB (default 4)")
    parser.add_argument("--prefetch", type=int, default=16, help="pfc.prefetch, blocks (default 16)")
    parser.add_argument("--no-dropped", dest="dropped", action="store_false",
                        help="skip the informational reads with the files' pages evicted")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: network namespaces and tc")
    while Path("/tmp/ci-running").exists():
        # A full CI run shares these 2 cores: numbers taken beside it mean nothing.
        print("a CI run is going (/tmp/ci-running); waiting a minute", flush=True)
        time.sleep(60)

    # SIGTERM ends the run like Ctrl-C: the finally blocks tear everything down.
    signal.signal(signal.SIGTERM, interrupted)
    account = daemon_account()
    tmp = Path(tempfile.mkdtemp(prefix="officina-bench-data-"))
    tmp.chmod(0o711)
    link = WanLink(args.rate)
    origin = cache = relay = None
    rounds: dict[str, list[float]] = {m: [] for m in (*MODES, *(DROPPED if args.dropped else ()))}
    nbytes = 0
    try:
        data_root = tmp / "origin" / "root"
        files = write_dataset(data_root / DATASET.lstrip("/"), args.size, args.files)
        for d in (tmp / "origin", tmp / "cache"):
            d.mkdir(exist_ok=True)
        for path in [tmp / "origin", data_root, *data_root.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        admin_o, admin_c, cache_dir = tmp / "origin" / "admin", tmp / "cache" / "admin", tmp / "cache" / "data"
        for d in (admin_o, admin_c, cache_dir):
            d.mkdir(parents=True)
            os.chown(d, account.pw_uid, account.pw_gid)
            d.chmod(0o700)
        os.chmod(tmp / "cache", 0o755)
        (tmp / "origin" / "xrootd.cfg").write_text(origin_config(data_root, admin_o))

        link.__enter__()
        origin = Daemon("origin", link.exec_argv([XROOTD, "-c", str(tmp / "origin" / "xrootd.cfg"), "-n", "origin",
                                                   "-R", account.pw_name]),
                        tmp / "origin" / "xrootd.log", link.ns_ip, ORIGIN_PORT)
        origin.start()
        origin_addr = f"{link.ns_ip}:{ORIGIN_PORT}"
        if args.rtt > 0:
            relay = DelayRelay((link.ns_ip, ORIGIN_PORT), args.rtt / 2000).__enter__()
            origin_addr = f"127.0.0.1:{relay.port}"
        cache_port = free_port()
        (tmp / "cache" / "xrootd.cfg").write_text(
            cache_config(origin_addr, cache_dir, admin_c, cache_port, args.blocksize, args.prefetch))
        cache = Daemon("cache", [XROOTD, "-c", str(tmp / "cache" / "xrootd.cfg"), "-n", "cache", "-R", account.pw_name],
                       tmp / "cache" / "xrootd.log", "127.0.0.1", cache_port)

        names = [f"{DATASET}/{p.name}" for p in files]
        urls = {
            "cache": [f"root://127.0.0.1:{cache_port}/{n}" for n in names],
            "direct origin": [f"root://{origin_addr}/{n}" for n in names],
            "local disk": [f"file://localhost{p}" for p in files],
        }
        chunk = args.chunk * MiB
        print(f"dataset: {len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.0f} MB; link {args.rate:g} "
              f"Mbit/s (tbf), added RTT {args.rtt:g} ms; origin {origin_addr} in {link.namespace}", flush=True)
        for r in range(args.repeat):
            cache.stop()
            # Cold: the cache's whole folder goes (data and .cinfo records), and its RAM with
            # the restart.
            shutil.rmtree(cache_dir)
            cache_dir.mkdir()
            os.chown(cache_dir, account.pw_uid, account.pw_gid)
            cache.start()
            plan = [("cold cache", "cache", 1), ("warm cache", "cache", FAST_READS),
                    ("direct origin", "direct origin", 1), ("local disk", "local disk", FAST_READS)]
            if args.dropped:
                plan += [(DROPPED[0], "cache", 1), (DROPPED[1], "local disk", 1)]
            for mode, key, times in plan:
                for _ in range(times):
                    if mode == DROPPED[0]:
                        drop_pages(sorted(p for p in cache_dir.rglob("*.bin")))
                    elif mode == DROPPED[1]:
                        drop_pages(files)
                    seconds, nbytes = read_all(urls[key], chunk, args.inflight)
                    rounds[mode].append(seconds)
                    print(f"round {r + 1}: {mode:26s} {seconds:7.2f} s  {mbps(seconds, nbytes):8.1f} MB/s", flush=True)
            # The origin serves from memory in every round (its files were just evicted).
            load_pages(files)
        # The bytes through the cache are the files' bytes (untimed).
        for url, path in zip(urls["cache"], files):
            got = hashlib.sha256()
            read_url(url, chunk, args.inflight, got)
            want = hashlib.sha256(path.read_bytes())
            if got.digest() != want.digest():
                raise SystemExit(f"{url}: bytes differ from {path}")
    finally:
        print("tearing down: daemons, link, temporary folder", file=sys.stderr, flush=True)
        try:
            if cache is not None:
                cache.stop()
            if relay is not None:
                relay.__exit__(None, None, None)
            if origin is not None:
                origin.stop()
        finally:
            link.down()
            shutil.rmtree(tmp, ignore_errors=True)
            left = link.leftovers()
            if left:
                print(f"WARNING: left behind: {', '.join(left)}", file=sys.stderr)

    med = {m: statistics.median(v) for m, v in rounds.items()}
    rate = {m: mbps(s, nbytes) for m, s in med.items()}
    warm_local = rate["warm cache"] / rate["local disk"]
    cold_direct = rate["cold cache"] / rate["direct origin"]
    print(f"\nRead {args.files} files, {nbytes / 1e6:.0f} MB, origin behind a {args.rate:g} Mbit/s tbf link"
          f"{f' + {args.rtt:g} ms RTT relay' if args.rtt else ''} ({os.cpu_count()} cores; XRootD Python client, "
          f"{args.chunk} MiB x {args.inflight} in flight; pfc.blocksize {args.blocksize}m, pfc.prefetch "
          f"{args.prefetch}; median of {args.repeat})\n")
    print("| mode | median s | MB/s | min s | max s |")
    print("|---|---|---|---|---|")
    for m in rounds:
        print(f"| {m} | {med[m]:.2f} | {rate[m]:.1f} | {min(rounds[m]):.2f} | {max(rounds[m]):.2f} |")
    print()
    print("| ratio (throughput) | value | target | |")
    print("|---|---|---|---|")
    print(f"| warm cache / local disk | {warm_local:.2f} | >= 0.80 | {'PASS' if warm_local >= 0.8 else 'MISS'} |")
    print(f"| cold cache / direct origin | {cold_direct:.2f} | >= 0.91 (time <= 1.1x) | "
          f"{'PASS' if cold_direct >= 1 / 1.1 else 'MISS'} |")
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "bytes": nbytes, "seconds": rounds, "median_mb_s": rate,
            "warm_over_local": warm_local, "cold_over_direct": cold_direct,
        }, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: main's finally blocks have torn down
        print(f"benchmarks/data.py: interrupted ({stop or 'Ctrl-C'}); everything it started was stopped",
              file=sys.stderr)
        sys.exit(130)
