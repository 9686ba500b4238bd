"""Throw-away network namespaces for the cold-apply runs, removed by name on any exit.

Every name starts with `op25bb-<run id>-`, so a crashed run can be cleaned up by hand
(`ip netns list | grep op25bb-`) and nothing else is ever matched.
"""

from __future__ import annotations

import secrets
import subprocess
from types import TracebackType
from typing import Self

from op25b_lab.lab import delete_netns, tool_env

PREFIX = "op25bb"


def _ip(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, env=tool_env(), check=True)


class Namespaces:
    """Creates namespaces on demand; `close()` kills what runs in them and deletes them."""

    def __init__(self) -> None:
        self.run_id = secrets.token_hex(3)
        self.live: list[str] = []
        self._n = 0

    def create(self) -> str:
        self._n += 1
        name = f"{PREFIX}-{self.run_id}-{self._n}"
        _ip("netns", "add", name)
        self.live.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def remove(self, name: str, deadline: float = 5.0) -> None:
        """Kill the namespace's processes by pid and delete it (the lab's own helper)."""
        delete_netns(name, deadline=deadline)
        if name in self.live:
            self.live.remove(name)

    def close(self) -> None:
        for name in list(self.live):
            self.remove(name)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
