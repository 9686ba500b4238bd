"""(I/O) The audit trail: one JSON object per line for every change, appended, never edited.

Who (the invoking user: $SUDO_USER behind sudo, else the login name), when, which command
line, what changed (pool modes before -> after, nftables op count), and why (--reason).
Appends are O_APPEND writes of one line each, fsynced, made while holding the state lock.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from op25b_ctl.errors import StateError


def invoking_user() -> str:
    """The human behind the command: sudo keeps the real user in SUDO_USER."""
    sudo = os.environ.get("SUDO_USER")
    if sudo:
        return sudo
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


@dataclass(frozen=True)
class Entry:
    at: datetime
    user: str
    command: Sequence[str]
    action: str
    reason: str = ""
    pool: str | None = None
    changes: dict[str, tuple[str | None, str]] | None = None  # pool -> (before, after)
    ops: int = 0
    detail: str = ""
    ok: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            # the wall clock, which differs from `at` only when --now was given
            "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "user": self.user,
            "command": list(self.command),
            "action": self.action,
            "pool": self.pool,
            "reason": self.reason,
            "changes": {p: {"before": b, "after": a} for p, (b, a) in (self.changes or {}).items()},
            "ops": self.ops,
            "detail": self.detail,
            "ok": self.ok,
        }


def append(path: Path, entry: Entry) -> None:
    line = json.dumps(entry.to_json(), sort_keys=True, ensure_ascii=False) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StateError(f"cannot append to audit log {path}: {exc}") from None


def read(path: Path) -> list[dict[str, Any]]:
    """Every entry, oldest first; a torn last line (crash mid-append) is skipped, not fatal."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StateError(f"cannot read audit log {path}: {exc}") from None
    out: list[dict[str, Any]] = []
    for line in lines:
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(item, dict):
            out.append(item)
    return out
