"""Reading the offender sets of our table: one dump per set, nothing written, no lock.

The kernel holds the list (plan/offenders.py says what each element means); this reads it
for the pools asked, with each pool's mode now, for `offenders`, the metrics, the fleet
status and the rollout's readiness. `FIRST_SEEN` is the daemon's record of when it first saw
each source: a command run in the daemon's fork (`offenders` through the command socket)
inherits it; a standalone command has none (first seen unknown).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from op25b_ctl.errors import TableNotFound
from op25b_ctl.kernel.base import Kernel
from op25b_ctl.plan.offenders import FirstSeen, PoolSeen, distinct_by_pool
from op25b_ctl.plan.ruleset import FAMILY, offender_set, tracking_of
from op25b_ctl.policy.model import Policy

__all__ = ["FIRST_SEEN", "distinct_offenders", "read_pools"]

FIRST_SEEN = FirstSeen()


def read_pools(
    kernel: Kernel,
    policy: Policy,
    modes: Mapping[str, str],
    *,
    pools: Iterable[str] | None = None,
    now: datetime | None = None,
    first_seen: FirstSeen | None = None,
) -> list[PoolSeen]:
    """Each tracked dynamic pool's sets (or only `pools`'), in pools.yaml order. A set that
    is missing (no table yet, tracking just switched on) reads as empty. With `first_seen`
    and `now`, the reading is also recorded there."""
    wanted = None if pools is None else set(pools)
    out: list[PoolSeen] = []
    for pool in policy.pools:
        if wanted is not None and pool.name not in wanted:
            continue
        tracking = tracking_of(policy, pool.name)
        if tracking is None:
            continue
        elements = []
        for version in (4, 6):
            name = offender_set(pool.name, version)
            try:
                found = kernel.offender_elements(FAMILY, policy.gateway.table, name)
            except TableNotFound:
                found = []
            if first_seen is not None and now is not None:
                first_seen.observe(name, found, tracking, now)
            elements.append(found)
        out.append(
            PoolSeen(pool.name, modes.get(pool.name, "off"), tracking, elements[0], elements[1])
        )
    return out


def distinct_offenders(
    kernel: Kernel, policy: Policy, pools: Iterable[str] | None = None
) -> Mapping[str, int]:
    """{pool: distinct sources that tried TCP/25 within the retention window}, from the
    kernel, for every tracked dynamic pool (or only `pools`): what a stage's readiness is
    judged by (plan/readiness.py). Untracked pools are absent."""
    return distinct_by_pool(read_pools(kernel, policy, {}, pools=pools))
