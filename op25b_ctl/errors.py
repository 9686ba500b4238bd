"""Every exception op25b-ctl raises on purpose, in one tree, so callers catch by meaning.

The CLI maps each branch to one exit status; the daemon logs any `Op25bError` and keeps the
last good state. Anything else escaping is a bug.

    Op25bError                  base: anything op25b-ctl raises deliberately
    ├── PolicyError             the policy is invalid (every problem, file:line): exit 2
    ├── OverrideError           an operator's override or time argument is refused: exit 2
    ├── NotOurTableError        a table of our name exists but was not made by us: exit 2
    ├── StateError              the state directory cannot be read or written: exit 1
    ├── UnsafeFileError         an input file is not a plain file of ours (a FIFO, a planted
    │                           symlink, too large, a foreign owner): as its reader says
    ├── LockBusy                another command holds the state lock, nothing changed: exit 75
    ├── KernelError             nftables refused or could not be read: exit 1, ruleset unchanged
    │                           (a change split into batches: the batches before the refused
    │                           one stay, a complete and enforcing table; see plan/diff.py)
    │   └── TableNotFound       the table asked for does not exist (reads only)
    ├── StoreUsageError         a store URL, TLS option or request that cannot be right: exit 2
    ├── ConcurrentPublish       someone published since this publish's base revision: exit 2
    ├── StoreError              the fleet's store is unreachable or answered oddly: exit 1
    │   ├── StoreUnavailable    no endpoint of the store answered
    │   └── Compacted           a watch's start revision was compacted away: resync in full
    ├── NotRecordedError        the gateway WAS changed, but the audit line or the state
    │                           bookkeeping failed after the commit (disk full): exit 3
    └── LeaseFileError          a DHCP lease file (--leases) is missing, unreadable or
                                malformed (file:line): reported, the list is still shown
                                without the lease columns; exit 1

Each class lives here and nowhere else; modules import them from `op25b_ctl.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Compacted",
    "ConcurrentPublish",
    "KernelError",
    "LeaseFileError",
    "LockBusy",
    "NotOurTableError",
    "NotRecordedError",
    "UnsafeFileError",
    "Op25bError",
    "OverrideError",
    "PolicyError",
    "Problem",
    "StateError",
    "StoreError",
    "StoreUnavailable",
    "StoreUsageError",
    "TableNotFound",
]


class Op25bError(Exception):
    """Base of every error op25b-ctl raises deliberately."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the policy, located as precisely as we can."""

    file: str
    where: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        place = f"{self.file}:{self.line}" if self.line else self.file
        return (
            f"{place}: {self.where}: {self.message}" if self.where else f"{place}: {self.message}"
        )


class PolicyError(Op25bError):
    """The policy is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class OverrideError(Op25bError):
    """An override (or a time given on the command line) cannot be accepted; nothing changed."""


class NotOurTableError(Op25bError):
    """Refuse to adopt a table that another owner created under our name."""


class StateError(Op25bError):
    """The state directory cannot be read or written, or holds a malformed file."""


class UnsafeFileError(Op25bError):
    """A file is not what it must be (not regular, too large, a symlink, foreign owner);
    the policy loader and the state directory turn it into their own errors."""


class LockBusy(Op25bError):
    """Another op25b-ctl command holds the state lock; nothing was changed."""


class KernelError(Op25bError):
    """nftables rejected a transaction or could not be read; carries nft's own message."""


class TableNotFound(KernelError):
    """The table asked for does not exist (in this namespace and family)."""


class StoreUsageError(Op25bError):
    """A store URL, TLS option or request that cannot be right (nothing written)."""


class ConcurrentPublish(Op25bError):
    """Someone published since the revision this publish was based on."""


class StoreError(Op25bError):
    """The store cannot be reached or answered something unexpected."""


class StoreUnavailable(StoreError):
    """No endpoint of the store answered."""


class Compacted(StoreError):
    """The watch's start revision was compacted away: the caller must resync in full."""


class NotRecordedError(Op25bError):
    """The change was made on the gateway, but recording it failed; says what was changed.

    Only a failure *after* the commit gets here: an audit log that cannot be written is
    found before anything is touched (a StateError, exit 1, nothing changed).
    """


class LeaseFileError(Op25bError):
    """A DHCP lease file cannot be used; the message names the file (and the line)."""


class DaemonUnavailable(Op25bError):
    """No daemon took a forwarded command (`cli/thin.py`): it then runs in its own process."""
