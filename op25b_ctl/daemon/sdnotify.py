"""systemd's notify protocol (Type=notify, WatchdogSec=) in a few lines, no dependency.

One datagram per message to the unix socket named by $NOTIFY_SOCKET ("@..." = abstract
namespace). Outside systemd the variable is unset and every call is a no-op, so the daemon
runs the same in a terminal, in a test, or under systemd.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if addr.startswith("@"):
            self.address = "\0" + addr[1:]
        elif addr.startswith("/"):
            self.address = addr
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1_000_000

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send "KEY=value" lines as one message; False if not under systemd or it failed."""
        if self.address is None:
            return False
        msg = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                # never wait: a notify socket nobody reads (its queue holds 10 datagrams by
                # default) must not stall the pass that feeds the watchdog
                sock.send(msg, socket.MSG_DONTWAIT)
        except OSError:
            return False  # systemd gone or socket full: never take the daemon down for it
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.watchdog_interval is not None and self.notify("WATCHDOG=1")

    def stopping(self, status: str) -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")
