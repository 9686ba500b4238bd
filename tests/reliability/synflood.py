"""Raw TCP/25 SYNs, as fast as one Python process sends them, for leak-window tests.

`python -m tests.reliability.synflood --src A --dst B --out FILE` (inside the lab's `sub`
namespace) sends bare SYNs from A to B:25 until SIGTERM and then writes the number sent to
FILE. No socket state, no handshake: the only question is whether a SYN crossed gw, which the
test counts in the `out` namespace. A connect-based prober makes a few hundred attempts a
second; this makes tens of thousands, enough to hit a window of a millisecond per commit.
"""

from __future__ import annotations

import argparse
import signal
import socket
import struct
import sys
from pathlib import Path


def run(src: str, dst: str, out: Path) -> None:
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_TCP)
    sock.bind((src, 0))
    sent, port = 0, 1024
    while not stop:
        for _ in range(256):
            port = port + 1 if port < 65000 else 1024
            # sport, dport 25, seq, ack, data offset 5, SYN, window, checksum 0 (gw's
            # forward path never checks it), urgent
            syn = struct.pack("!HHIIBBHHH", port, 25, sent, 0, 5 << 4, 0x02, 65535, 0, 0)
            try:
                sock.sendto(syn, (dst, 0))
                sent += 1
            except OSError:
                pass  # e.g. a full qdisc; the count is of SYNs sent
    out.write_text(str(sent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.reliability.synflood")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    run(args.src, args.dst, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
