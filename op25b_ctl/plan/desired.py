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
from op25b_ctl.plan.ruleset import desired_table, sets_key
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
    sets_key: str = ""  # `ruleset.sets_key`: equal keys, equal sets ("": not known)


def from_policy(
    policy: Policy,
    now: datetime,
    overrides: Iterable[Override] = (),
    *,
    known_sets: tuple[str, str] | None = None,
    shape_only: bool = False,
) -> Desired:
    """Desired state at `now` for an already loaded policy and a set of overrides.

    `known_sets` is a (sets key, elements fingerprint) pair the caller knows to be live: if
    the key is this state's, the table comes back hollow (sets declared, no elements), which
    saves building 110,000 elements to find them unchanged. `shape_only` never builds them:
    a table for views that read decisions and chains, which `diff` refuses."""
    known = {p.name for p in policy.pools if p.dynamic}
    # an override left behind for a pool that was removed or made static has no effect
    overrides = tuple(o for o in overrides if o.pool in known)
    decisions = decide(policy, now, overrides)
    exempt = tuple(active_exemptions(policy, now))
    prefixes = [e.prefix for e in exempt]
    key = sets_key(policy)
    hollow = (
        ""
        if shape_only
        else (known_sets[1] if key and known_sets and known_sets[0] == key else None)
    )
    table = desired_table(policy, modes(decisions), exemptions=prefixes, hollow=hollow)
    return Desired(
        policy,
        decisions,
        table,
        next_change(policy, now, overrides),
        exempt,
        tuple(o for o in overrides if o.active(now)),
        key,
    )
