"""What a reconcile pass hands to the rest of the daemon: its result and a view of the state.

The reconciler publishes a new `View` at the end of every pass (one attribute swap), and the
metrics collector and the loop only read it: nothing they do feeds back into the control loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from op25b_ctl.errors import PolicyError
from op25b_ctl.kernel.base import Counter
from op25b_ctl.plan.desired import Desired
from op25b_ctl.plan.transaction import Transaction

__all__ = ["Read", "ReconcileResult", "View"]

# How a pass looked at the kernel, cheapest first (see reconcile.py).
Read = Literal["fast", "known", "skeleton", "full", "none"]
READS: tuple[Read, ...] = ("fast", "known", "skeleton", "full", "none")


@dataclass(frozen=True)
class ReconcileResult:
    """What one pass did; the daemon logs it and the metrics count it."""

    changed: bool  # a transaction was committed
    ops: int  # its number of operations
    duration: float  # seconds, monotonic
    drift_repaired: bool  # the commit undid someone else's change to our table
    error: str | None = None  # the pass failed (nft refused, table not ours, no valid policy)
    read: Read = "none"  # how the live table was looked at
    desired_changed: bool = False  # the desired table differs from the one before this pass
    policy_rejected: bool = False  # a changed policy was invalid: the last good one stays
    clock_stepped_back: bool = False  # the wall clock went backwards since the last pass
    tx: Transaction | None = None  # what was committed, for the log

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class View:
    """The reconciler's knowledge after a pass."""

    desired: Desired | None = None  # the last good desired state
    digest: str | None = None  # its policy's content digest (16 hex digits)
    policy_error: PolicyError | None = None  # the current files are invalid (last good kept)
    state_error: str | None = None  # the state (overrides, lock) cannot be read (last good kept)
    in_sync: bool = False  # the live table equalled the desired one at the end of the pass
    generation: int | None = None  # the kernel's ruleset generation, if it tells
    table_present: bool | None = None  # None: the kernel could not be read
    # our table's named counters as last sampled (empty while the table is absent)
    counters: Mapping[str, Counter] = field(default_factory=dict)
    # continuity: what each counter had counted before someone reset it or recreated it
    # empty; what is shown is the kernel's value plus this (daemon/livecounters.py)
    offsets: Mapping[str, Counter] = field(default_factory=dict)
