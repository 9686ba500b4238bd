"""A small TCP connect-rate load generator, run inside the lab's `sub` namespace.

Each attempt is a non-blocking connect from a fixed source address; `window` attempts are
in flight at once and a new one starts as soon as one finishes. An attempt finishes with a
reset (the gateway's `reject with tcp reset`, or the far host's closed port), a completed
handshake (closed at once with SO_LINGER 0, so no TIME_WAIT eats the ephemeral ports), or
an error. Attempts still open at the end are abandoned and counted as `pending`. The loop
stops by itself after `seconds`; everything stays inside the namespaces.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass

IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h: pick the port at connect(), not at bind()
_LINGER_0 = struct.pack("ii", 1, 0)


@dataclass(frozen=True)
class Rate:
    attempts: int  # finished attempts
    seconds: float
    outcomes: dict[str, int]

    @property
    def per_second(self) -> float:
        return self.attempts / self.seconds if self.seconds else 0.0


def _outcome(err: int) -> str:
    if err == 0:
        return "connected"
    if err == errno.ECONNREFUSED:
        return "refused"
    return errno.errorcode.get(err, str(err))


def connect_rate(src: str, dst: str, port: int, seconds: float, window: int = 32) -> Rate:
    """Finished connect attempts per second from src to dst:port for `seconds`."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    ep = select.epoll()
    inflight: dict[int, socket.socket] = {}
    outcomes: Counter[str] = Counter()

    def launch() -> None:
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((src, 0))
        err = sock.connect_ex((dst, port))
        if err == errno.EINPROGRESS:
            inflight[sock.fileno()] = sock
            ep.register(sock.fileno(), select.EPOLLOUT)
        else:
            outcomes[_outcome(err)] += 1
            sock.close()

    start = time.monotonic()
    end = start + seconds
    try:
        while (now := time.monotonic()) < end:
            while len(inflight) < window:
                launch()
            for fd, _ in ep.poll(min(0.05, end - now)):
                sock = inflight.pop(fd)
                ep.unregister(fd)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                outcomes[_outcome(err)] += 1
                if err == 0:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
                sock.close()
        elapsed = time.monotonic() - start
    finally:
        for sock in inflight.values():
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
            sock.close()
        ep.close()
    outcomes["pending"] = len(inflight)
    finished = sum(n for k, n in outcomes.items() if k != "pending")
    return Rate(finished, elapsed, dict(outcomes))
