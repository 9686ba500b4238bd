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


class _SynLoop:
    """One process sending bare SYNs from one source address through a raw socket: what a
    connect attempt is for the gateway (a SYN in, a reset back) without the client's socket
    work. The segments are built once, with valid checksums (the gateway's reject and the
    far host's TCP check them), one per source port."""

    def __init__(self, src: str, dst: str, port: int) -> None:
        if ":" in dst:
            raise ValueError("raw SYNs are IPv4 only here")
        pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, 20)
        self.segments = []
        for sport in range(SYN_PORTS[0], SYN_PORTS[1]):
            # sport, dport, seq, ack, data offset 5 words, SYN, window, checksum, urgent
            seg = struct.pack("!HHIIBBHHH", sport, port, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
            self.segments.append(seg[:16] + struct.pack("!H", _checksum(pseudo + seg)) + seg[18:])
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        self.sock.bind((src, 0))
        self.dst = (dst, 0)

    def run(self, seconds: float) -> Rate:
        sendto, dst, segments = self.sock.sendto, self.dst, self.segments
        sent = failed = i = 0
        n = len(segments)
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.monotonic()
        end = start + seconds
        try:
            while time.monotonic() < end:
                for _ in range(256):  # the clock is read once per 256 SYNs
                    try:
                        sendto(segments[i], dst)
                        sent += 1
                    except OSError:
                        failed += 1  # e.g. a full queue; only answered SYNs count
                    i = i + 1 if i + 1 < n else 0
            elapsed = time.monotonic() - start
            after = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            self.sock.close()
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return Rate(sent, elapsed, {"sent": sent, "send_error": failed}, cpu_seconds=cpu)


SYN_PORTS = (20000, 60000)  # source ports the raw SYNs cycle through


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of an even-length byte string."""
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_segments_received() -> int:
    """TCP segments this network namespace received (Tcp InSegs in /proc/net/snmp): the
    resets that answer the raw SYNs, which no socket takes."""
    with open("/proc/net/snmp") as fh:
        rows = [line.split() for line in fh if line.startswith("Tcp:")]
    return int(dict(zip(rows[0][1:], rows[1][1:], strict=True))["InSegs"])


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
    syn: bool,
) -> None:
    """Get ready (sockets, segments), say so, wait for the go, run, send the Rate."""
    for other in inherited:  # the parent's ends, forked along: else no EOF if it gives up
        other.close()
    try:
        loop: _Loop | _SynLoop
        if syn:
            loop = _SynLoop(src, dst, port)  # binds src: fails now if sub lacks it
        else:
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


def syn_rate(srcs: Sequence[str], dst: str, port: int, seconds: float) -> Rate:
    """Raw SYNs from one process per source address, started together; the rate is the
    resets that came back to this namespace per second, the outcomes "refused" (answered)
    and "unanswered"."""
    before = tcp_segments_received()
    sent = connect_rates(srcs, dst, port, seconds, syn=True)
    answered = tcp_segments_received() - before
    outcomes = {"refused": answered, "unanswered": max(0, sent.attempts - answered)}
    return replace(sent, attempts=answered, outcomes=outcomes, per_process=())


def connect_rates(
    srcs: Sequence[str],
    dst: str,
    port: int,
    seconds: float,
    window: int = 32,
    *,
    syn: bool = False,
) -> Rate:
    """One process per source address (each its own loop of `window` attempts, or of raw
    SYNs), started together once all are ready; their attempts and outcomes summed, the
    rate the sum of each process's own rate."""
    if len(srcs) == 1 and not syn:
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
                target=_child,
                args=(child, list(pipes), src, dst, port, seconds, window, syn),
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
