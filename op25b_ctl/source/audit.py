"""(I/O) The audit trail: one JSON object per line for every change, appended, never edited.

Who (the invoking user: $SUDO_USER behind sudo, else the login name), when, which command
line, what changed (pool modes before -> after, nftables op count), and why (--reason).
Appends are O_APPEND writes of one line each, fsynced, made while holding the state lock.
The log is opened with O_NOFOLLOW and must be ours (a symlink planted there is refused, never
appended through). A change opens it *before* touching the gateway (`AuditLog.open`), so an
unwritable log refuses the change with nothing done; only a write that fails after that
(disk full in between) leaves a change unaudited, and the CLI says so with its own exit
status. Reading skips lines that are not JSON objects and reports them.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from op25b_ctl.errors import StateError
from op25b_ctl.fileio import UnsafeFileError, describe_oserror, make_dirs, open_regular

MAX_LINE = 64 << 10  # longer lines are reported as skipped, not parsed


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


def _open(path: Path) -> int:
    try:
        make_dirs(path.parent)
        return open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, follow=False, owner=True)
    except UnsafeFileError as exc:
        raise StateError(f"audit log refused: {exc}") from None
    except OSError as exc:
        raise StateError(
            f"cannot open audit log {path}: {describe_oserror(exc)}; nothing changed"
        ) from None


class AuditLog:
    """The audit log held open across a change: opened (and checked) before the gateway is
    touched, written after. `write` raises StateError if the line cannot be written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def open(self) -> AuditLog:
        if self._fd is None:
            self._fd = _open(self.path)
        return self

    def write(self, entry: Entry) -> None:
        line = json.dumps(entry.to_json(), sort_keys=True, ensure_ascii=False) + "\n"
        fd = self._fd if self._fd is not None else _open(self.path)
        start = None
        try:
            start = os.fstat(fd).st_size  # writers hold the state lock: nobody appends between
            data = memoryview(line.encode())
            while data:  # a short write is retried: the next one says why (ENOSPC, EFBIG)
                written = os.write(fd, data)
                if written == 0:
                    raise OSError(28, "short write (disk full?)")
                data = data[written:]
            os.fsync(fd)
        except OSError as exc:
            if start is not None:  # never leave half a line (disk full mid-write)
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
            raise StateError(
                f"cannot append to audit log {self.path}: {describe_oserror(exc)}"
            ) from None
        finally:
            if fd != self._fd:
                os.close(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def append(path: Path, entry: Entry) -> None:
    log = AuditLog(path)
    try:
        log.write(entry)
    finally:
        log.close()


@dataclass(frozen=True)
class Skipped:
    """A line of the log that is not an entry: where, and why."""

    line: int
    why: str


def read_all(path: Path) -> tuple[list[dict[str, Any]], list[Skipped]]:
    """Every entry, oldest first, and the lines skipped (garbage, a torn last line after a
    crash mid-append, non-UTF-8): one bad line never hides the others."""
    try:
        fd = open_regular(path, os.O_RDONLY, follow=False)
    except FileNotFoundError:
        return [], []
    except UnsafeFileError as exc:
        raise StateError(f"audit log refused: {exc}") from None
    except OSError as exc:
        raise StateError(f"cannot read audit log {path}: {describe_oserror(exc)}") from None
    out: list[dict[str, Any]] = []
    skipped: list[Skipped] = []
    with os.fdopen(fd, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            if len(raw) > MAX_LINE:
                skipped.append(Skipped(n, f"longer than {MAX_LINE} bytes"))
                continue
            try:
                item = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                skipped.append(Skipped(n, "not UTF-8"))
                continue
            except (json.JSONDecodeError, RecursionError):
                skipped.append(
                    Skipped(n, "not JSON" + ("" if raw.endswith(b"\n") else " (torn last line)"))
                )
                continue
            why = _not_an_entry(item)
            if why:
                skipped.append(Skipped(n, why))
            else:
                out.append(item)
    return out, skipped


def _not_an_entry(item: Any) -> str:
    """Why a parsed line is not an entry we can show ("" if it is one)."""
    if not isinstance(item, dict):
        return f"a JSON {type(item).__name__}, not an entry"
    changes, command = item.get("changes"), item.get("command")
    if changes is not None and not (
        isinstance(changes, dict) and all(isinstance(c, dict) for c in changes.values())
    ):
        return "`changes` is not a mapping of pool -> {before, after}"
    if command is not None and not isinstance(command, list):
        return "`command` is not a list"
    return ""


def read(path: Path) -> list[dict[str, Any]]:
    """Every entry, oldest first; bad lines skipped (see `read_all` for which)."""
    return read_all(path)[0]
