"""An emulated WAN link for benchmarks: a network namespace joined to the root namespace by a
veth pair whose two ends `tc tbf` rate-limits, and, since this kernel has no `netem`, an
optional user-space relay that adds a fixed delay to each direction.

`WanLink` is a context manager; whatever part of it was set up is torn down on exit (the
namespace, which takes its veth end with it, the root end and its qdisc), also after an
exception or Ctrl-C half-way through. Needs root (ip netns, tc).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

IP = "/usr/sbin/ip"
TC = "/usr/sbin/tc"


def _run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def _subnet_in_use(net: ipaddress.IPv4Network) -> bool:
    out = _run(IP, "-4", "-o", "addr", "show")
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            addr = ipaddress.ip_interface(parts[parts.index("inet") + 1])
            if addr.network.overlaps(net):
                return True
    return False


def tbf_burst_bytes(rate_mbit: float) -> int:
    # tbf needs burst >= rate / HZ (the kernel's timer tick), else it cannot reach the rate; a
    # few ticks' worth (HZ up to 1000, 4 ms at 250 Hz) and never less than a few jumbo frames.
    return max(64 * 1024, int(rate_mbit * 1e6 / 8 / 250) * 2)


@dataclass
class WanLink:
    """`10.213.<n>.1` (root side) <-> `10.213.<n>.2` (inside `namespace`), tbf at `rate_mbit`
    on both ends. `n` comes from the PID, moved on if that /30 is in use."""

    rate_mbit: float
    tag: str = field(default_factory=lambda: str(os.getpid()))
    latency_ms: int = 50  # tbf's queue bound: how long a packet may wait for tokens
    namespace: str = ""
    host_if: str = ""
    ns_if: str = ""
    host_ip: str = ""
    ns_ip: str = ""
    _made: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.namespace = f"officina-bench-{self.tag}"
        # Interface names are at most 15 characters.
        self.host_if, self.ns_if = f"obw{self.tag}h"[:15], f"obw{self.tag}n"[:15]

    def _pick_subnet(self) -> ipaddress.IPv4Network:
        base = int(self.tag) if self.tag.isdigit() else 0
        for i in range(256):
            n = (base + i) % 256
            for sub in range(0, 256, 4):
                # Spread over the third and fourth octet: 64 /30s per third octet.
                net = ipaddress.ip_network(f"10.213.{n}.{sub}/30")
                if not _subnet_in_use(net):
                    return net
        raise RuntimeError("no free /30 in 10.213.0.0/16")

    def __enter__(self) -> "WanLink":
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def exec_argv(self, argv: list[str]) -> list[str]:
        """`argv` run inside the namespace (ip netns exec execs it: the PID is the program's)."""
        return [IP, "netns", "exec", self.namespace, *argv]

    def up(self) -> None:
        net = self._pick_subnet()
        hosts = list(net.hosts())
        self.host_ip, self.ns_ip = str(hosts[0]), str(hosts[1])
        _run(IP, "netns", "add", self.namespace)
        self._made.append("netns")
        _run(IP, "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        self._made.append("veth")
        _run(IP, "link", "set", self.ns_if, "netns", self.namespace)
        _run(IP, "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _run(IP, "link", "set", self.host_if, "up")
        ns = [IP, "netns", "exec", self.namespace]
        _run(*ns, IP, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        _run(*ns, IP, "link", "set", self.ns_if, "up")
        _run(*ns, IP, "link", "set", "lo", "up")
        burst = tbf_burst_bytes(self.rate_mbit)
        tbf = ["root", "tbf", "rate", f"{self.rate_mbit:g}mbit", "burst", str(burst), "latency",
               f"{self.latency_ms}ms"]
        # veth offloads (TSO/GSO) hand tbf 64 KiB super-packets; the burst above covers them.
        _run(TC, "qdisc", "add", "dev", self.host_if, *tbf)
        _run(*ns, TC, "qdisc", "add", "dev", self.ns_if, *tbf)

    def down(self) -> None:
        # Deleting the namespace destroys its veth end, which destroys the pair and both
        # qdiscs; the root end is deleted explicitly in case the namespace step failed first.
        if "veth" in self._made:
            subprocess.run([IP, "link", "del", self.host_if], capture_output=True)
        if "netns" in self._made:
            subprocess.run([IP, "netns", "del", self.namespace], capture_output=True)
        self._made.clear()

    def leftovers(self) -> list[str]:
        """What of this link still exists (empty after `down`)."""
        left = []
        if self.namespace in _run(IP, "netns", "list"):
            left.append(f"namespace {self.namespace}")
        if subprocess.run([IP, "link", "show", self.host_if], capture_output=True).returncode == 0:
            left.append(f"interface {self.host_if}")
        return left


class DelayRelay:
    """A TCP relay on 127.0.0.1 that forwards to `target` and holds every chunk `delay_s` in
    each direction (round trip + 2 × delay_s), as netem would; runs an asyncio loop in a thread
    of this process. Chunks are released in order at their due time, so throughput is not
    capped by the delay (the relay buffers what is in flight), only by the link and the window.
    """

    def __init__(self, target: tuple[str, int], delay_s: float):
        self.target, self.delay_s = target, delay_s
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True, name="delay-relay")
        self._server = None

    def __enter__(self) -> "DelayRelay":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("delay relay did not start")
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", 0, reuse_address=True))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            # Connections still open are cancelled and awaited here, so that none is left
            # pending (and none logs a traceback) when the loop closes.
            self._server.close()
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.close()

    async def _client(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        for w in (writer, up_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipes = [asyncio.ensure_future(self._pipe(reader, up_writer)),
                 asyncio.ensure_future(self._pipe(up_reader, writer))]
        try:
            await asyncio.wait(pipes)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)

    async def _pipe(self, reader, writer) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def release():
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    break
                writer.write(data)
                await writer.drain()
            writer.close()

        sender = asyncio.ensure_future(release())
        try:
            while True:
                try:
                    data = await reader.read(1 << 20)
                except OSError:
                    data = b""
                queue.put_nowait((time.monotonic() + self.delay_s, data or None))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
