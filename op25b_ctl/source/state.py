"""(I/O) The controller's own state directory: overrides, rollout bookkeeping, the lock.

    <state-dir>/overrides.json   active operator overrides, one per pool
    <state-dir>/rollout.json     which stages have been applied, and when (for the calendar)
    <state-dir>/audit.jsonl      append-only audit log (see `audit`)
    <state-dir>/.tick.json       cache: what the last full tick saw (lets an idle tick skip
                                 loading a 100,000-prefix policy); safe to delete
    <state-dir>/.live.json       cache: our table as our last command left it, and the
                                 ruleset generation (in this boot and namespace) right after;
                                 while the generation is unchanged, commands diff against it
                                 instead of reading the kernel; safe to delete
    <state-dir>/.lock            flock(2) lock: one changing command at a time (a dot file,
                                 so watchers of the directory, like the daemon's input
                                 fingerprint, do not take every lock for a state change)

Trust: the directory and the files we open for writing in place (`.lock`, `audit.jsonl`) must
be owned by us or root and not writable by anyone; those two are opened with O_NOFOLLOW, so a
symlink planted there is refused instead of followed (a root process would truncate or append
to its target). Missing parents are created 0755 and the directory itself 0750 whatever the
umask. `.tick.json` and `.live.json` are caches: unreadable or garbage means "do the full
tick" or "read the kernel", never a failure.

Every file is replaced atomically (temp file in the same directory, fsync, rename, fsync of
the directory), so a crash leaves either the old or the new file, never half of one. Readers
need no lock for that reason; writers hold `lock()` around read-modify-write-apply.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from op25b_ctl.errors import LockBusy, OverrideError, StateError
from op25b_ctl.fileio import (
    UnsafeFileError,
    check_owner,
    describe_oserror,
    make_dirs,
    open_regular,
    read_bounded,
)
from op25b_ctl.plan.table import Table, hollow_from_json, hollow_to_json
from op25b_ctl.policy.overrides import Override

DEFAULT_STATE_DIR = "/var/lib/op25b"
FORMAT = 1
MAX_STATE_BYTES = 16 << 20  # overrides for 1,000 pools are ~300 kB
# free space a change needs beyond a new copy of its largest state file: an audit line is
# under 1 kB, the live record and the rule reference some kB at 1,000 pools
MIN_FREE_BYTES = 256 << 10


def _element(line: str) -> tuple[str, str | None]:
    key, tab, value = line.partition("\t")
    return key, value if tab else None


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a crash leaves the old or the new file, never half."""
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass(frozen=True)
class LiveRecord:
    """Our table as our last command left it: its shape (no elements) and, for its sets, the
    `ruleset.sets_key` they were built under and their elements fingerprint; with the
    ruleset (boot and namespace) and its generation right after, if no other commit slipped
    in around ours (else None: the shape is then only history, the sets' key still holds)."""

    table: Table
    sets_key: str
    fingerprint: str
    ruleset: str | None = None
    generation: int | None = None

    def current(self, ruleset: str | None, generation: int | None) -> bool:
        """Nothing has committed since: the kernel holds exactly `table`."""
        return (
            self.ruleset is not None
            and self.generation is not None
            and (self.ruleset, self.generation) == (ruleset, generation)
        )


class StateDir:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @property
    def overrides_file(self) -> Path:
        return self.path / "overrides.json"

    @property
    def rollout_file(self) -> Path:
        return self.path / "rollout.json"

    @property
    def audit_file(self) -> Path:
        return self.path / "audit.jsonl"

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    def check_trusted(self) -> None:
        """Refuse a state directory that someone else owns or anyone may write into: they
        could plant files (or symlinks) that a root process then acts on."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StateError(
                f"cannot use state directory {self.path}: {describe_oserror(exc)}"
            ) from None
        try:
            check_owner(self.path, st)
        except UnsafeFileError as exc:
            raise StateError(f"state directory refused: {exc}") from None

    def check_space(self) -> None:
        """Refuse a change *before* it is made when the filesystem of the state directory
        cannot take what recording it writes (a disk full: every state file is replaced
        through a new copy, the audit line is appended): StateError, exit 1, nothing
        changed. The disk can still fill between this check and the record; that is
        NotRecordedError, exit 3 (the gateway was changed, stderr says how)."""
        probe = self.path
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        try:
            st = os.statvfs(probe)
        except OSError:
            return  # the writes themselves will say what is wrong
        if st.f_blocks == 0:
            return  # a filesystem that reports no size (no limit to check)
        root = os.geteuid() == 0  # root may use the blocks and inodes reserved for it
        free = (st.f_bfree if root else st.f_bavail) * st.f_frsize
        inodes = st.f_ffree if root else st.f_favail
        largest = 0
        for path in (self.overrides_file, self.rollout_file, self.live_file):
            with contextlib.suppress(OSError):
                largest = max(largest, path.stat().st_size)
        need = largest + MIN_FREE_BYTES
        if free < need or (st.f_files > 0 and inodes == 0):
            what = "no free inodes" if free >= need else f"{free} bytes free, {need} needed"
            raise StateError(
                f"no space left on the filesystem of state directory {self.path} ({what} "
                "to record a change); nothing changed: free space there and run it again"
            )

    def make(self) -> None:
        """Create the directory (and missing parents) safely, then check it is ours."""
        try:
            make_dirs(self.path)
        except OSError as exc:
            raise StateError(
                f"cannot create state directory {self.path}: {describe_oserror(exc)}"
            ) from None
        self.check_trusted()

    def _read_json(self, path: Path) -> dict[str, Any]:
        try:
            raw = read_bounded(path, MAX_STATE_BYTES, follow=False)
        except FileNotFoundError:
            return {}
        except UnsafeFileError as exc:
            raise StateError(f"{exc}; fix or remove it") from None
        except OSError as exc:
            raise StateError(f"cannot read {path}: {describe_oserror(exc)}") from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise StateError(f"{path}: not UTF-8 ({exc.reason}); fix or remove it") from None
        except (json.JSONDecodeError, RecursionError) as exc:
            raise StateError(f"{path}: not valid JSON ({exc}); fix or remove it") from None
        if data == {}:
            return {}  # a hand-made empty object means "nothing recorded"
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StateError(f"{path}: not an op25b-ctl state file (format {FORMAT} expected)")
        return data

    def _write_json(self, path: Path, data: dict[str, Any], *, compact: bool = False) -> None:
        try:
            text = (
                json.dumps({"format": FORMAT, **data}, separators=(",", ":"))
                if compact
                else json.dumps({"format": FORMAT, **data}, indent=2, sort_keys=True)
            )
            write_atomic(path, text + "\n")
        except OSError as exc:  # a failed write_atomic removed its temp file: no half file
            raise StateError(f"cannot write {path}: {describe_oserror(exc)}") from None

    # ------------------------------------------------------------------ overrides

    def overrides(self) -> dict[str, Override]:
        """Overrides by pool, as last written (expired ones included until pruned)."""
        data = self._read_json(self.overrides_file)
        records = data.get("overrides", {})
        if not isinstance(records, dict):
            raise StateError(f"{self.overrides_file}: `overrides` must be a mapping")
        out: dict[str, Override] = {}
        for pool, record in records.items():
            try:
                out[pool] = Override.from_json(record)
            except OverrideError as exc:
                raise StateError(f"{self.overrides_file}: {exc}") from None
        return out

    def save_overrides(self, overrides: dict[str, Override]) -> None:
        self._write_json(
            self.overrides_file,
            {"overrides": {p: o.to_json() for p, o in sorted(overrides.items())}},
        )

    # ------------------------------------------------------------------ rollout bookkeeping

    def applied_stages(self) -> dict[str, str]:
        """Stage name -> when a command first applied the table with that stage due."""
        stages = self._read_json(self.rollout_file).get("applied_stages", {})
        return {str(k): str(v) for k, v in stages.items()} if isinstance(stages, dict) else {}

    def mark_applied(self, names: list[str], when: datetime) -> list[str]:
        """Record stages as applied; returns those that were not recorded before."""
        known = self.applied_stages()
        new = [n for n in names if n not in known]
        if new:
            known.update(dict.fromkeys(new, when.isoformat()))
            self._write_json(self.rollout_file, {"applied_stages": known})
        return new

    # ------------------------------------------------------------------ tick cache

    @property
    def tick_cache_file(self) -> Path:
        return self.path / ".tick.json"

    def tick_cache(self) -> dict[str, Any]:
        """The last full tick's inputs digest, time, next change and ruleset generation."""
        try:
            return self._read_json(self.tick_cache_file)
        except StateError:
            return {}  # a cache: unreadable means "do the full tick"

    def save_tick_cache(self, record: dict[str, Any]) -> None:
        """Best effort: a cache that cannot be written only costs the next tick a full run."""
        with contextlib.suppress(StateError):
            self._write_json(self.tick_cache_file, record)

    def forget_tick_cache(self) -> None:
        with contextlib.suppress(OSError):
            self.tick_cache_file.unlink()

    # ------------------------------------------------------------------ what we made live

    @property
    def live_file(self) -> Path:
        return self.path / ".live.json"

    def live_record(self) -> LiveRecord | None:
        """What our last command left live (`LiveRecord.current` says whether the kernel is
        still at the generation it had then); None on any doubt."""
        try:
            data = self._read_json(self.live_file)
            if not data:
                return None
            ruleset, generation = data.get("ruleset"), data.get("generation")
            return LiveRecord(
                hollow_from_json(data["table"]),
                str(data["sets_key"]),
                str(data["fingerprint"]),
                ruleset if isinstance(ruleset, str) else None,
                generation if isinstance(generation, int) else None,
            )
        except (StateError, KeyError, TypeError, ValueError, AttributeError):
            return None  # a cache: unreadable means "read the kernel"

    def save_live_record(self, record: LiveRecord) -> None:
        """Best effort, like the tick cache: a record not written costs the next command a
        kernel read, never a wrong answer."""
        with contextlib.suppress(StateError):
            self._write_json(
                self.live_file,
                {
                    "ruleset": record.ruleset,
                    "generation": record.generation,
                    "table": hollow_to_json(record.table),
                    "sets_key": record.sets_key,
                    "fingerprint": record.fingerprint,
                },
                compact=True,  # a cache nobody reads by eye, rewritten by every change
            )

    def forget_live_record(self) -> None:
        with contextlib.suppress(OSError):
            self.live_file.unlink()

    @property
    def live_sets_file(self) -> Path:
        return self.path / ".live-sets.json"

    def live_sets(self, sets_key: str, fingerprint: str) -> dict[str, dict[str, Any]] | None:
        """The elements of the sets our last commit under `sets_key` wrote, by set name: what
        a command diffs against, instead of reading 110,000 elements back, while nothing has
        committed since (`LiveRecord.current`). None on any doubt; the caller checks them
        against `fingerprint` (the elements' own digest) before trusting them."""
        try:
            raw = read_bounded(self.live_sets_file, MAX_STATE_BYTES, follow=False)
            header, *lines = raw.decode("utf-8").split("\n")
            head = json.loads(header)
            if not isinstance(head, dict) or (
                head.get("format"),
                head.get("sets_key"),
                head.get("fingerprint"),
            ) != (FORMAT, sets_key, fingerprint):
                return None
            sets: dict[str, dict[str, Any]] = {}
            at = 0
            for name, count in head["sets"]:
                chunk = lines[at : at + int(count)]
                at += int(count)
                sets[str(name)] = dict(_element(line) for line in chunk)
            return sets if at == len(lines) else None
        except (OSError, UnsafeFileError, TypeError, ValueError, KeyError, AttributeError):
            return None

    def save_live_sets(
        self, sets_key: str, fingerprint: str, sets: dict[str, dict[str, Any]]
    ) -> None:
        """Best effort and without fsync: a torn or missing file fails the fingerprint check
        and costs the next command a kernel read, never a wrong answer. One element a line
        (`key` or `key<TAB>verdict`): a tenth of the time JSON takes for 110,000."""
        head = {
            "format": FORMAT,
            "sets_key": sets_key,
            "fingerprint": fingerprint,
            "sets": [[name, len(elements)] for name, elements in sets.items()],
        }
        body = [
            key if value is None else f"{key}\t{value}"
            for elements in sets.values()
            for key, value in elements.items()
        ]
        text = "\n".join([json.dumps(head, separators=(",", ":")), *body])
        with contextlib.suppress(OSError):
            fd, tmp = tempfile.mkstemp(prefix=f".{self.live_sets_file.name}.", dir=self.path)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(text)
                os.replace(tmp, self.live_sets_file)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    # ------------------------------------------------------------------ lock

    @contextlib.contextmanager
    def lock(self, what: str, timeout: float = 30.0) -> Iterator[None]:
        """Hold the state lock (flock, released by the kernel even if we crash)."""
        self.make()
        try:
            fd = open_regular(self.lock_file, os.O_RDWR | os.O_CREAT, follow=False, owner=True)
        except UnsafeFileError as exc:
            raise StateError(f"lock refused: {exc}") from None
        except OSError as exc:
            raise StateError(
                f"cannot open lock {self.lock_file}: {describe_oserror(exc)}"
            ) from None
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = self._holder(fd)
                        raise LockBusy(
                            f"another op25b-ctl command holds {self.lock_file}"
                            f"{f' ({holder})' if holder else ''}; waited {timeout:g}s, "
                            "changed nothing; try again (or --lock-timeout SECONDS)"
                        ) from None
                    time.sleep(0.05)  # poll the lock; flock has no timed wait
            with contextlib.suppress(OSError):  # who holds it: a courtesy, even on a full disk
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()}: {what}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the flock

    @staticmethod
    def _holder(fd: int) -> str:
        with contextlib.suppress(OSError):
            return os.pread(fd, 200, 0).decode(errors="replace").strip()
        return ""
