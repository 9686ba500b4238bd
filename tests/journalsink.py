"""A stand-in journald for the tests: runs a command the way systemd connects a service to the
journal, and records what it sends over the journal's native protocol.

    unshare --mount --propagation private python -m tests.journalsink DIR -- COMMAND...

In its own mount namespace it mounts a tmpfs on /run (the host's /run is untouched), binds
the native socket at the fixed path /run/systemd/journal/socket, and starts COMMAND with stderr
on DIR/stderr and JOURNAL_STREAM naming that file's device and inode, as systemd does for a
stream connected to journald. Each datagram is decoded (KEY=value lines, or KEY, a 64-bit
little-endian length and the raw value) and appended to DIR/journal.jsonl as one JSON object.
SIGTERM is passed on to COMMAND; the sink exits with COMMAND's status.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

SOCKET = Path("/run/systemd/journal/socket")


def decode(datagram: bytes) -> dict[str, str]:
    """One native-protocol entry as a dict (the last value wins for a repeated key)."""
    entry: dict[str, str] = {}
    i = 0
    while i < len(datagram):
        nl = datagram.index(b"\n", i)
        line = datagram[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            i = nl + 1
        else:  # binary-safe form: KEY\n<u64 le length><value>\n
            key = line
            (size,) = struct.unpack_from("<Q", datagram, nl + 1)
            start = nl + 9
            value = datagram[start : start + size]
            i = start + size + 1
        entry[key.decode()] = value.decode(errors="replace")
    return entry


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    command = argv[argv.index("--") + 1 :]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"], check=True)
    SOCKET.parent.mkdir(parents=True)
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(SOCKET))
    with (out / "stderr").open("wb") as err:
        st = os.fstat(err.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        if command[:1] == ["env"]:  # `env -i ...`: put it after -i, so it survives
            command = [*command[:2], f"JOURNAL_STREAM={env['JOURNAL_STREAM']}", *command[2:]]
        child = subprocess.Popen(command, stderr=err, env=env)
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    sink.settimeout(0.2)
    with (out / "journal.jsonl").open("a") as log:
        while True:
            try:
                data = sink.recv(1 << 20)
            except TimeoutError:
                if child.poll() is not None:
                    break
                continue
            except InterruptedError:
                continue
            log.write(json.dumps(decode(data)) + "\n")
            log.flush()
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
