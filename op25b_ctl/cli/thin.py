"""Hand a command line to the running daemon, if there is one (standard library only).

The daemon keeps a command socket in its state directory (`daemon/control.py`): a command
sent there runs in a fork of the daemon, with everything already imported and loaded, on
this process's stdin, stdout and stderr. This module is all a forwarded command imports, so
it costs little more than Python's own start-up (docs/performance.md).

The daemon takes a command only from its own user, in its own network namespace, for its
own policy directory, and from a working directory it can see (its unit has ProtectHome=);
anything else runs here, as without a daemon. $OP25B_DAEMON: `auto` (default) forwards when
the daemon takes the command and runs it here otherwise; `off` never forwards; `require`
fails (exit 1) rather than run here, for tests and for checking that a daemon serves this
state directory. `--help` is never forwarded, nor the commands outside `FORWARDED`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from types import FrameType
from typing import BinaryIO

from op25b_ctl.codestamp import code_stamp
from op25b_ctl.errors import DaemonUnavailable  # the package's own import: no extra cost
from op25b_ctl.netns import netns_cookie

ENV = "OP25B_DAEMON"
SOCKET_NAME = ".ctl.sock"
DEFAULT_STATE_DIR = "/var/lib/op25b"  # as source.state.DEFAULT_STATE_DIR (test_thin checks)
DEFAULT_POLICY_DIR = "/etc/op25b"  # as policy.loader.DEFAULT_POLICY_DIR (test_thin checks)
# Commands that read or change this gateway through its policy and state directories; the
# fleet commands (`--store`), `teardown` (the off switch must not depend on the daemon) and
# `daemon` itself always run in their own process.
FORWARDED = frozenset(
    {"status", "explain", "pool", "apply", "plan", "rollout", "validate", "audit", "offenders"}
)


def _option(argv: Sequence[str], name: str, default: str) -> str:
    """The value of `--name VALUE` / `--name=VALUE` (the last one, as argparse takes)."""
    value = default
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.partition("=")[2]
    return value


def socket_path(argv: Sequence[str], environ: dict[str, str]) -> str:
    """Where the daemon of the state directory this command names listens."""
    state = _option(argv, "--state-dir", environ.get("OP25B_STATE_DIR") or DEFAULT_STATE_DIR)
    return os.path.join(state, SOCKET_NAME)


def policy_dir(argv: Sequence[str], environ: dict[str, str]) -> str:
    """The policy directory the command names, absolute (the daemon serves only its own)."""
    return os.path.abspath(
        _option(argv, "--policy", environ.get("OP25B_POLICY") or DEFAULT_POLICY_DIR)
    )


def forward(argv: Sequence[str]) -> int | None:
    """The command's exit status if the daemon ran it; None if it should run here."""
    mode = os.environ.get(ENV, "auto")
    if (
        mode == "off"
        or not argv
        or argv[0] not in FORWARDED
        or "-h" in argv
        or "--help" in argv
        or "--store" in argv
        or any(a.startswith("--store=") for a in argv)
        or os.environ.get("OP25B_STORE")
    ):
        return None
    try:
        return _forward(list(argv))
    except DaemonUnavailable as why:
        if mode == "require":
            print(f"op25b-ctl: no daemon took the command: {why}", file=sys.stderr)
            return 1
        return None


def _forward(argv: list[str]) -> int:
    path = socket_path(argv, dict(os.environ))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            raise DaemonUnavailable(f"{path}: {exc.strerror or exc}") from None
        request = json.dumps(
            {
                "argv": argv,
                "code": code_stamp(),
                "cwd": os.getcwd(),
                "env": dict(os.environ),
                "netns": netns_cookie(),
                "policy": policy_dir(argv, dict(os.environ)),
            }
        ).encode()
        with sock.makefile("rb") as lines:
            try:
                socket.send_fds(sock, [b"\0"], [0, 1, 2])
                sock.sendall(struct.pack("!I", len(request)) + request)
                answer = lines.readline().decode(errors="replace").strip()
            except OSError as exc:
                raise DaemonUnavailable(f"{path}: {exc.strerror or exc}") from None
            if answer != "ok":
                raise DaemonUnavailable(answer or "the daemon closed the socket")
            # From here on the command is running: never run it a second time here.
            return _wait(lines)
    finally:
        sock.close()


def _wait(lines: BinaryIO) -> int:
    child: list[int] = []

    def relay(signum: int, _frame: FrameType | None) -> None:
        if child:
            os.kill(child[0], signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, relay)
    while True:
        line = lines.readline().decode(errors="replace").strip()
        if not line:
            print("op25b-ctl: the daemon's command process ended without a status", file=sys.stderr)
            return 1
        word, _, value = line.partition(" ")
        if word == "pid" and value.isdigit():
            child.append(int(value))
        elif word == "exit":
            try:
                return int(value)
            except ValueError:
                return 1
