"""The one question every caller asks: what should the table hold at time `now`?

CLI commands, `rollout tick` and the daemon all go through `compute`, so they can never
disagree about the desired state. It reads the policy (and, with the rollout work, the
operators' overrides) and is otherwise pure: time comes in as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from op25b_ctl.loader import load_policy
from op25b_ctl.model import Policy
from op25b_ctl.modes import Decision, decide, modes
from op25b_ctl.ruleset import desired_table
from op25b_ctl.table import Table


@dataclass(frozen=True)
class Desired:
    policy: Policy
    decisions: dict[str, Decision]
    table: Table
    # when the answer changes next by itself (a rollout stage, an override expiring)
    next_change: datetime | None = None


def from_policy(policy: Policy, now: datetime) -> Desired:
    del now  # the rollout schedule makes modes depend on time
    decisions = decide(policy)
    return Desired(policy, decisions, desired_table(policy, modes(decisions)))


def compute(policy_dir: Path, state_dir: Path | None, now: datetime) -> Desired:
    """Desired state at `now` from the policy files and the operators' state (overrides)."""
    del state_dir  # operator overrides live there (rollout work)
    return from_policy(load_policy(policy_dir), now)
