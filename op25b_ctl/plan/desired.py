"""The one question every caller asks: what should the table hold at time `now`?

CLI commands, `rollout tick` and the daemon all go through `from_policy`, so they can never
disagree about the desired state. Pure: the policy and the overrides come from a `Source`,
time comes in as an argument.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from op25b_ctl.plan.modes import Decision, active_exemptions, decide, modes, next_change
from op25b_ctl.plan.ruleset import desired_table
from op25b_ctl.plan.table import Table
from op25b_ctl.policy.model import Exemption, Policy
from op25b_ctl.policy.overrides import Override


@dataclass(frozen=True)
class Desired:
    policy: Policy
    decisions: dict[str, Decision]
    table: Table
    # when the answer changes next by itself (a rollout stage, an override expiring)
    next_change: datetime | None = None
    exemptions: tuple[Exemption, ...] = ()
    overrides: tuple[Override, ...] = field(default=())


def from_policy(policy: Policy, now: datetime, overrides: Iterable[Override] = ()) -> Desired:
    """Desired state at `now` for an already loaded policy and a set of overrides."""
    known = {p.name for p in policy.pools if p.dynamic}
    # an override left behind for a pool that was removed or made static has no effect
    overrides = tuple(o for o in overrides if o.pool in known)
    decisions = decide(policy, now, overrides)
    exempt = tuple(active_exemptions(policy, now))
    table = desired_table(policy, modes(decisions), exemptions=[e.prefix for e in exempt])
    return Desired(
        policy,
        decisions,
        table,
        next_change(policy, now, overrides),
        exempt,
        tuple(o for o in overrides if o.active(now)),
    )
