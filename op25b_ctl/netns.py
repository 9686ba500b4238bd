"""Which network namespace this process is in, as a number the kernel never hands out twice.

A ruleset generation kept on disk (`.live.json`) and a command handed to the daemon
(`cli/thin.py`) both mean something only in the namespace they came from. A namespace's
inode number can come back after it is deleted; its cookie (SO_NETNS_COOKIE, Linux 5.14)
is not reused within a boot. Standard library only: the thin client imports it.
"""

from __future__ import annotations

import socket
import struct

SO_NETNS_COOKIE = 71  # <asm-generic/socket.h>; Python's socket module does not name it


def netns_cookie() -> int | None:
    """This process's network namespace cookie; None where the kernel cannot say."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    except OSError:
        return None
    return int(struct.unpack("=Q", raw)[0])
