"""Which mode each pool is in: the answer the planner needs, and why (for `status`/`explain`).

Pure: the caller passes the policy (and, later, the time and the operators' overrides).
"""

from __future__ import annotations

from dataclasses import dataclass

from op25b_ctl.model import Mode, Policy


@dataclass(frozen=True)
class Decision:
    mode: Mode
    reason: str


def decide(policy: Policy) -> dict[str, Decision]:
    """Each pool's mode: static pools are always off; dynamic pools take their policy mode."""
    out: dict[str, Decision] = {}
    for pool in policy.pools:
        if not pool.dynamic:
            out[pool.name] = Decision("off", "static pool: never blocked")
        else:
            out[pool.name] = Decision(pool.mode, "policy default (pools.yaml)")
    return out


def modes(decisions: dict[str, Decision]) -> dict[str, Mode]:
    return {name: d.mode for name, d in decisions.items()}
