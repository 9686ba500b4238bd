"""Unit tests never reach the host's kernel: netlink sockets and libnftables are refused.

The in-memory `MemoryKernel` stands in for the kernel behind the `Kernel` seam; a test that
reaches past it (a command building the real `NftKernel`, a stray netlink read) fails here
with a clear message instead of reading -- or, as root, changing -- the machine's ruleset.
CI also runs these tests as an unprivileged user, where the kernel would refuse anyway.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest

REFUSED = "unit tests must not reach the host kernel: use op25b_ctl.kernel.memory.MemoryKernel"


class _GuardedSocket(socket.socket):
    def __init__(self, family: Any = -1, *args: Any, **kwargs: Any) -> None:
        if family == socket.AF_NETLINK:
            raise AssertionError(REFUSED)
        super().__init__(family, *args, **kwargs)


@pytest.fixture(autouse=True)
def _no_host_kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(socket, "socket", _GuardedSocket)
    monkeypatch.setitem(sys.modules, "nftables", None)  # `import nftables` raises ImportError
    yield
