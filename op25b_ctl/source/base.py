"""The other seam: what the controller is told, and where it reports what it did.

A `Source` answers "what should this gateway enforce?" -- the policy (pools, relays, stages,
exemptions) and the engineers' overrides -- and takes the audit trail. The reconciler, the
operations and the CLI see only this protocol, so a second source of truth (a policy store
shared by a fleet of gateways) is a second implementation, not a change to them:

    DirectorySource  (directory.py)  policy files + the state directory's overrides/audit log

Two identities, for two kinds of caller:

    revision()  cheap, compared on every daemon pass (the directory: stat of every input
                file; a store: its revision number). Equal means load() would return the
                same inputs; different means it may not.
    digest()    the inputs' content (sha256), stable across processes and restarts: what
                the idle `rollout tick` remembers between cron runs.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from op25b_ctl.policy.model import Policy
from op25b_ctl.policy.overrides import Override
from op25b_ctl.source.audit import Entry

__all__ = ["Snapshot", "Source"]


@dataclass(frozen=True)
class Snapshot:
    """Everything the desired state is computed from, as of one revision."""

    policy: Policy
    overrides: Mapping[str, Override]  # by pool, expired ones included until pruned
    revision: Hashable  # source.revision() when these were read
    digest: str  # sha256 of the policy as read (the metrics' policy identity)


class Source(Protocol):
    """Where the policy and the overrides come from, and where changes are audited."""

    def revision(self) -> Hashable:
        """Cheap identity of the inputs; changes whenever `load()` may answer differently."""
        ...

    def digest(self) -> str:
        """Content digest of the policy and the overrides, without validating the policy."""
        ...

    def load(self) -> Snapshot:
        """The validated policy and the overrides; PolicyError / StateError if invalid."""
        ...

    def wait(self, since: Hashable, timeout: float) -> bool:
        """Block until `revision()` differs from `since` (True) or `timeout` passes (False)."""
        ...

    def policy(self) -> Policy:
        """The validated policy alone (commands that need no overrides)."""
        ...

    def overrides(self) -> dict[str, Override]:
        """Overrides by pool, as last written (expired ones included until pruned)."""
        ...

    def set_override(self, override: Override) -> None:
        """Add or replace the override of `override.pool`."""
        ...

    def clear_override(self, pool: str) -> None:
        """Remove the override of `pool`, if any."""
        ...

    def record(self, entry: Entry) -> None:
        """Append one entry to the audit trail (never edited afterwards)."""
        ...

    def check_recordable(self) -> None:
        """Raise StateError now if `record` could not write (called before any change, so an
        unwritable audit trail refuses the change instead of leaving it unaudited)."""
        ...

    def audit_log(self) -> list[dict[str, Any]]:
        """Every audit entry, oldest first (entries that cannot be read are skipped; see
        `audit_skipped`)."""
        ...

    def audit_skipped(self) -> list[tuple[int, str]]:
        """(line or position, why) of each audit record skipped by the last `audit_log`."""
        ...

    @property
    def audit_location(self) -> str:
        """Where the audit trail is kept, for messages."""
        ...

    def lock(self, what: str, timeout: float) -> AbstractContextManager[None]:
        """Exclude other commands changing this gateway; LockBusy after `timeout` seconds."""
        ...

    def try_lock(self, what: str) -> AbstractContextManager[None]:
        """`lock` without waiting, for the daemon's pass; LockBusy if held. A source that no
        command has written to yet needs no lock (and is not created by taking it)."""
        ...
