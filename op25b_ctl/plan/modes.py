"""Which mode each pool is in at time T, and why: the schedule evaluated, purely.

Precedence, highest first:
    static pool     always off (OP25B is for dynamic addresses)
    override        an engineer's `pool enforce|monitor|rollback`, until it expires/is cleared
    stage           the latest rollout stage at or before T that selects the pool
    baseline        the pool's `mode` in pools.yaml (its state before any stage)

Time is always passed in; nothing here reads the clock, so tests walk the calendar freely.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from op25b_ctl.policy.model import Exemption, Mode, Policy, Stage
from op25b_ctl.policy.overrides import Override

Source = Literal["static", "baseline", "stage", "override"]


@dataclass(frozen=True)
class Decision:
    mode: Mode
    reason: str
    source: Source = "baseline"
    stage: str | None = None
    override: Override | None = None


@dataclass(frozen=True)
class Change:
    """Something that changes the answer by itself at `at` (a stage, an expiry)."""

    at: datetime
    kind: Literal["stage", "override-expiry", "exemption-expiry"]
    what: str


def stage_modes(policy: Policy, now: datetime) -> dict[str, tuple[Mode, Stage]]:
    """Per pool, the mode set by the latest stage due at `now` (stages are in time order)."""
    out: dict[str, tuple[Mode, Stage]] = {}
    for stage in policy.stages:
        at = stage.scheduled
        if at is None or at > now or not policy.applies(stage):
            continue
        for name in policy.stage_pools(stage):
            out[name] = (stage.mode, stage)
    return out


def active_overrides(overrides: Iterable[Override], now: datetime) -> dict[str, Override]:
    return {o.pool: o for o in overrides if o.active(now)}


def decide(
    policy: Policy, now: datetime, overrides: Iterable[Override] = ()
) -> dict[str, Decision]:
    """Each pool's mode at `now`, with the reason an engineer would want to read."""
    staged = stage_modes(policy, now)
    active = active_overrides(overrides, now)
    out: dict[str, Decision] = {}
    for pool in policy.pools:
        name = pool.name
        if not pool.dynamic:
            out[name] = Decision("off", "static pool: never blocked", "static")
        elif name in active:
            o = active[name]
            until = f" until {local(policy, o.until)}" if o.until else " (no expiry)"
            out[name] = Decision(
                o.mode,
                f"override `pool {o.action}` by {o.user or '?'}{until}: {o.reason}",
                "override",
                override=o,
            )
        elif name in staged:
            mode, stage = staged[name]
            out[name] = Decision(
                mode,
                f"rollout stage {stage.name!r} since {local(policy, stage.scheduled)}",
                "stage",
                stage=stage.name,
            )
        else:
            out[name] = Decision(pool.mode, "baseline (pools.yaml), no stage due yet", "baseline")
    return out


def local(policy: Policy, at: datetime | None) -> str:
    """A time as the operators read it: in the policy's zone (Asia/Tokyo), with offset."""
    if at is None:
        return "tbd"
    return at.astimezone(policy.zone).isoformat(timespec="minutes")


def modes(decisions: Mapping[str, Decision]) -> dict[str, Mode]:
    return {name: d.mode for name, d in decisions.items()}


def active_exemptions(policy: Policy, now: datetime) -> list[Exemption]:
    """Exemptions in force at `now`; the controller drops expired ones itself."""
    return [e for e in policy.exemptions if e.active(now)]


def upcoming(policy: Policy, now: datetime, overrides: Iterable[Override] = ()) -> list[Change]:
    """Every future event that changes the desired table by itself, soonest first."""
    out: list[Change] = []
    for stage in policy.stages:
        at = stage.scheduled
        if at is not None and at > now and policy.applies(stage):
            pools = ", ".join(policy.stage_pools(stage))
            out.append(Change(at, "stage", f"stage {stage.name!r}: {pools} -> {stage.mode}"))
    for o in overrides:
        if o.until is not None and o.until > now:
            out.append(Change(o.until, "override-expiry", f"override on {o.pool} expires"))
    for e in policy.exemptions:
        if e.expires is not None and e.expires > now:
            out.append(
                Change(e.expires, "exemption-expiry", f"exemption {e.prefix} ({e.ticket}) expires")
            )
    return sorted(out, key=lambda c: c.at)


def next_change(
    policy: Policy, now: datetime, overrides: Iterable[Override] = ()
) -> datetime | None:
    changes = upcoming(policy, now, overrides)
    return changes[0].at if changes else None
