"""A TCP connect-rate load generator, run inside the lab's `sub` namespace.

Each attempt is a non-blocking connect from a fixed source address; `window` attempts are
in flight at once and a new one starts as soon as one finishes. An attempt finishes with a
reset (the gateway's `reject with tcp reset`, or the far host's closed port), a completed
handshake (closed at once with SO_LINGER 0, so no TIME_WAIT eats the ephemeral ports), or
an error. Attempts still open at the end are abandoned and counted as `pending`. The loop
stops by itself after `seconds`; everything stays inside the namespaces.

One such loop keeps at most one CPU busy, so its rate is the client's, not the gateway's.
`connect_rates` runs one loop per source address, each in its own process with its own
sockets, all released together once every one is ready, and sums what they finished: the
machine's CPUs then set the rate. Each loop also reports its CPU time: on veth the packet
work of every namespace on the way (the gateway's hooks too) runs in the softirq of the
CPU that sent the packet and is charged to the sender, so CPU per attempt is the attempt's
whole cost, and unlike the rate it holds still when other work takes CPU time.
"""

from __future__ import annotations

import errno
import ipaddress
import multiprocessing
import multiprocessing.connection
import resource
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h: pick the port at connect(), not at bind()
_LINGER_0 = struct.pack("ii", 1, 0)
READY_DEADLINE_S = 30.0  # every process must be ready by then, or the sample fails


@dataclass(frozen=True)
class Rate:
    attempts: int  # finished attempts
    seconds: float
    outcomes: dict[str, int]
    # per process: finished attempts / its own seconds (empty for a single loop)
    per_process: tuple[float, ...] = field(default=())
    # CPU time (user + system) the loop processes used while timing; the kernel charges the
    # network work it does in their context (the gateway's hooks included) as system time
    cpu_seconds: float = 0.0
    # the share of the machine's CPUs busy (anyone's work) while the processes ran
    busy: float | None = None

    @property
    def cpu_per_attempt(self) -> float:
        """Microseconds of the load processes' CPU per finished attempt."""
        return self.cpu_seconds * 1e6 / self.attempts if self.attempts else 0.0

    @property
    def per_second(self) -> float:
        if self.per_process:
            return sum(self.per_process)
        return self.attempts / self.seconds if self.seconds else 0.0


def _outcome(err: int) -> str:
    if err == 0:
        return "connected"
    if err == errno.ECONNREFUSED:
        return "refused"
    return errno.errorcode.get(err, str(err))


class _Loop:
    """One process's attempts: its own epoll, its own sockets, one source address."""

    def __init__(self, src: str, dst: str, port: int, window: int) -> None:
        self.family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        self.src, self.dst, self.port, self.window = src, dst, port, window
        self.ep = select.epoll()
        self.inflight: dict[int, socket.socket] = {}
        self.outcomes: Counter[str] = Counter()

    def launch(self) -> None:
        sock = socket.socket(self.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((self.src, 0))
        err = sock.connect_ex((self.dst, self.port))
        if err == errno.EINPROGRESS:
            self.inflight[sock.fileno()] = sock
            self.ep.register(sock.fileno(), select.EPOLLOUT)
        else:
            self.outcomes[_outcome(err)] += 1
            sock.close()

    def run(self, seconds: float) -> Rate:
        inflight, ep, outcomes = self.inflight, self.ep, self.outcomes
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.monotonic()
        end = start + seconds
        try:
            while (now := time.monotonic()) < end:
                while len(inflight) < self.window:
                    self.launch()
                for fd, _ in ep.poll(min(0.05, end - now)):
                    sock = inflight.pop(fd)
                    ep.unregister(fd)
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    outcomes[_outcome(err)] += 1
                    if err == 0:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
                    sock.close()
            elapsed = time.monotonic() - start
            after = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            for sock in inflight.values():
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
                sock.close()
            ep.close()
        outcomes["pending"] = len(inflight)
        finished = sum(n for k, n in outcomes.items() if k != "pending")
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return Rate(finished, elapsed, dict(outcomes), cpu_seconds=cpu)


def load_sources(first: str, count: int) -> list[str]:
    """`count` consecutive IPv4 source addresses from `first` on, all in first's /26 (the
    lab's pool prefixes are /26 or wider), one per load process."""
    base = ipaddress.IPv4Address(first)
    pool = ipaddress.IPv4Network(f"{first}/26", strict=False)
    addrs = [base + i for i in range(count)]
    if count < 1 or addrs[-1] not in pool or addrs[-1] == pool.broadcast_address:
        raise ValueError(f"{count} load sources from {first} do not fit in {pool}")
    return [str(a) for a in addrs]


def _cpu_times() -> tuple[int, int]:
    """All CPUs' (total, idle + iowait) jiffies from /proc/stat (not namespaced)."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    return sum(f), f[3] + f[4]


def connect_rate(src: str, dst: str, port: int, seconds: float, window: int = 32) -> Rate:
    """Finished connect attempts per second from src to dst:port for `seconds`, one loop."""
    return _Loop(src, dst, port, window).run(seconds)


def _child(
    conn: multiprocessing.connection.Connection,
    inherited: Sequence[multiprocessing.connection.Connection],
    src: str,
    dst: str,
    port: int,
    seconds: float,
    window: int,
) -> None:
    """Get ready (epoll, a bound test socket), say so, wait for the go, run, send the Rate."""
    for other in inherited:  # the parent's ends, forked along: else no EOF if it gives up
        other.close()
    try:
        loop = _Loop(src, dst, port, window)
        probe = socket.socket(loop.family, socket.SOCK_STREAM)
        probe.bind((src, 0))  # the source address exists here: fail now, not mid-sample
        probe.close()
        conn.send("ready")
        if conn.recv() != "go":
            return
        conn.send(loop.run(seconds))
    except EOFError:
        return  # the parent gave up before the go
    except Exception as exc:  # the parent reports it
        conn.send(f"error: {exc!r}")
    finally:
        conn.close()


def connect_rates(
    srcs: Sequence[str], dst: str, port: int, seconds: float, window: int = 32
) -> Rate:
    """One process per source address (each its own loop of `window` attempts), started
    together once all are ready; their attempts and outcomes summed, the rate the sum of
    each process's own rate."""
    if len(srcs) == 1:
        total0, idle0 = _cpu_times()
        rate = connect_rate(srcs[0], dst, port, seconds, window)
        total1, idle1 = _cpu_times()
        busy = 1 - (idle1 - idle0) / (total1 - total0) if total1 > total0 else None
        return replace(rate, busy=busy)
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    try:
        for src in srcs:
            parent, child = ctx.Pipe()
            pipes.append(parent)
            proc = ctx.Process(
                target=_child, args=(child, list(pipes), src, dst, port, seconds, window)
            )
            proc.start()
            child.close()
            procs.append(proc)
        for src, conn in zip(srcs, pipes, strict=True):
            if not conn.poll(READY_DEADLINE_S):
                raise RuntimeError(f"load process for {src} not ready in {READY_DEADLINE_S} s")
            if (msg := conn.recv()) != "ready":
                raise RuntimeError(f"load process for {src}: {msg}")
        total0, idle0 = _cpu_times()
        for conn in pipes:
            conn.send("go")
        rates = []
        for src, conn in zip(srcs, pipes, strict=True):
            if not conn.poll(seconds + READY_DEADLINE_S):
                raise RuntimeError(f"load process for {src} did not report")
            got = conn.recv()
            if not isinstance(got, Rate):
                raise RuntimeError(f"load process for {src}: {got}")
            rates.append(got)
        total1, idle1 = _cpu_times()
    finally:
        for conn in pipes:  # a child still waiting for the go sees EOF and exits
            conn.close()
        for proc in procs:
            proc.join(READY_DEADLINE_S)
            if proc.is_alive():
                proc.kill()
                proc.join()
    outcomes: Counter[str] = Counter()
    for r in rates:
        outcomes.update(r.outcomes)
    return Rate(
        sum(r.attempts for r in rates),
        max(r.seconds for r in rates),
        dict(outcomes),
        tuple(r.per_second for r in rates),
        sum(r.cpu_seconds for r in rates),
        1 - (idle1 - idle0) / (total1 - total0) if total1 > total0 else None,
    )
