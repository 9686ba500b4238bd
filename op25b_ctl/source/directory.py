"""The first `Source`: a policy directory of YAML files plus the state directory.

    <policy-dir>/*.yaml          what to enforce (see the README's policy files)
    <state-dir>/overrides.json   engineers' overrides (`state.StateDir`)
    <state-dir>/audit.jsonl      the audit trail (`audit`)
    <state-dir>/.lock            the lock every changing command holds

`revision()` is the stat identity of every input file, so a daemon pass notices an edit
without reading a byte; `wait()` polls it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Hashable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from op25b_ctl.errors import StateError
from op25b_ctl.policy import cache as policy_cache
from op25b_ctl.policy.cache import load_policy_cached
from op25b_ctl.policy.loader import policy_digest
from op25b_ctl.policy.model import Policy
from op25b_ctl.policy.overrides import Override
from op25b_ctl.source import audit
from op25b_ctl.source.base import Snapshot
from op25b_ctl.source.state import StateDir

__all__ = ["DirectorySource", "input_identity"]

# Files in the policy/state directories that never change the desired state: an append to
# the audit log must not cost a recompute of a 100,000-prefix policy.
NOT_INPUTS = (".jsonl", ".log")
WAIT_POLL = 0.5  # seconds between stat polls in `wait`
# stat identity of one input file: (path, inode, size, mtime_ns, ctime_ns)
FileId = tuple[str, int, int, int, int]


def input_identity(*dirs: Path | None) -> tuple[FileId, ...]:
    """A cheap fingerprint of every file under the given directories (stat only, no reads).

    Inode + size + mtime + ctime: an editor's rename-into-place changes the inode, an in-place
    write changes ctime, so any edit shows even within one timestamp tick of the last one.
    """
    found: list[FileId] = []
    for d in dirs:
        if d is not None:
            found.extend(_walk(d))
    return tuple(sorted(found))


def _walk(root: Path, depth: int = 0) -> Iterator[FileId]:
    """stat() of every input file under `root`. Symlinked directories are not entered (a
    link to `.` would recurse forever) and an entry that cannot be stat'ed (a symlink loop,
    permission denied) is an identity of its own, not an error: the reader says what is
    wrong with it."""
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        yield (str(root), -1, -1, -1, -1)  # absent is a state too (and differs from empty)
        return
    except NotADirectoryError:
        entries = []
    except OSError as exc:
        yield (str(root), -2, exc.errno or 0, -1, -1)
        return
    for e in entries:
        if e.name.startswith(".") or e.name.endswith(NOT_INPUTS):
            continue  # editors' swap files, lock files, append-only logs (the audit trail)
        try:
            if e.is_dir(follow_symlinks=False) and depth < 8:
                yield from _walk(Path(e.path), depth + 1)
                continue
            st = e.stat(follow_symlinks=True)
        except FileNotFoundError:
            continue  # vanished between the listing and the stat
        except OSError as exc:
            yield (e.path, -2, exc.errno or 0, -1, -1)
            continue
        yield (e.path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class DirectorySource:
    """Policy files in `policy_dir`; overrides, audit log and lock in `state_dir` (optional
    for read-only use: no state directory means no overrides and nothing to lock)."""

    def __init__(self, policy_dir: Path | str, state_dir: Path | str | None = None) -> None:
        self.policy_dir = Path(policy_dir)
        self.state = StateDir(state_dir) if state_dir is not None else None
        self._skipped: list[tuple[int, str]] = []

    def __repr__(self) -> str:
        where = self.state.path if self.state else "none"
        return f"DirectorySource(policy {self.policy_dir}, state {where})"

    def revision(self) -> Hashable:
        return input_identity(self.policy_dir, self.state.path if self.state else None)

    def digest(self) -> str:
        also = (self.state.overrides_file,) if self.state else ()
        return policy_digest(self.policy_dir, *also)

    def load(self) -> Snapshot:
        revision = self.revision()  # before reading: an edit during the read shows next time
        policy = load_policy_cached(self.policy_dir)
        overrides = self.overrides()
        return Snapshot(policy, overrides, revision, policy_digest(self.policy_dir))

    def wait(self, since: Hashable, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self.revision() != since:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(WAIT_POLL, left))  # stat polling: no inotify dependency

    def policy(self) -> Policy:
        return policy_cache.load(self.policy_dir)  # one-shot commands: the validated cache

    def overrides(self) -> dict[str, Override]:
        return self.state.overrides() if self.state else {}

    def set_override(self, override: Override) -> None:
        self._state().save_overrides({**self.overrides(), override.pool: override})

    def clear_override(self, pool: str) -> None:
        current = self.overrides()
        if pool in current:
            del current[pool]
            self._state().save_overrides(current)

    def record(self, entry: audit.Entry) -> None:
        audit.append(self._state().audit_file, entry)

    def check_recordable(self) -> None:
        audit.AuditLog(self._state().audit_file).open().close()

    def audit_log(self) -> list[dict[str, Any]]:
        if self.state is None:
            return []
        entries, skipped = audit.read_all(self.state.audit_file)
        self._skipped = [(s.line, s.why) for s in skipped]
        return entries

    def audit_skipped(self) -> list[tuple[int, str]]:
        return list(self._skipped)

    @property
    def audit_location(self) -> str:
        return str(self.state.audit_file) if self.state else "(no state directory)"

    def lock(self, what: str, timeout: float) -> AbstractContextManager[None]:
        return self._state().lock(what, timeout=timeout)

    def try_lock(self, what: str) -> AbstractContextManager[None]:
        if self.state is None or not self.state.path.is_dir():
            return contextlib.nullcontext()  # no state yet: no command to interleave with
        return self.state.lock(what, timeout=0)

    def _state(self) -> StateDir:
        if self.state is None:
            raise StateError("no state directory given (--state-dir)")
        return self.state
