"""Is the schedule ready? For each pending enforcement stage, who would lose mail on its date.

A stage that moves pools to `enforce` cuts off every subscriber of those pools still sending
on TCP/25. The kernel counts them while a pool is in `monitor` or `enforce` (distinct
sources in the offender retention window, per pool); this module sets those counts against
each pending stage's threshold (`max_offenders` in rollout.yaml) and its warning time
(`warn_before`). The answer informs people: stages still fire on their dates, ready or not.

Only stages to `enforce` have a readiness (a stage to `monitor` blocks nobody). A pool
without a count (its mode is `off`, so nothing is tracked, or no count source is wired) makes
the stage's total unknown rather than zero: an unknown is never reported as ready.

Pure: the policy, the overrides, the time and the counts come in as arguments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from op25b_ctl.plan.modes import decide
from op25b_ctl.policy.model import Mode, Policy
from op25b_ctl.policy.overrides import Override

__all__ = ["PoolOffenders", "StageReadiness", "describe", "readiness", "span", "to_json"]


@dataclass(frozen=True)
class PoolOffenders:
    """One pool of a stage: its mode now and its distinct offenders (None: not counted)."""

    pool: str
    mode: Mode
    offenders: int | None

    @property
    def why_unknown(self) -> str | None:
        if self.offenders is not None:
            return None
        if self.mode == "off":
            return "not tracked while the pool is off"
        return "offender tracking not available"


@dataclass(frozen=True)
class StageReadiness:
    """A pending enforcement stage against its threshold, at time `at`."""

    stage: str
    due: datetime | None  # None: `at: tbd`
    pools: tuple[PoolOffenders, ...]
    threshold: int  # `max_offenders`: at most this many distinct offenders is ready
    warn_before: timedelta  # how long before `due` a stage not ready warns
    at: datetime  # the time this was judged at

    @property
    def offenders(self) -> int | None:
        """The stage's pools' offenders together; None if any pool has no count."""
        counts = [p.offenders for p in self.pools]
        return None if any(c is None for c in counts) else sum(c for c in counts if c)

    @property
    def ready(self) -> bool | None:
        """Offenders at most the threshold; None while the count is unknown."""
        total = self.offenders
        return None if total is None else total <= self.threshold

    @property
    def within_warning(self) -> bool:
        """Due within `warn_before` from now (a tbd stage never is)."""
        return self.due is not None and self.due - self.at <= self.warn_before

    @property
    def warning(self) -> bool:
        """What the alert says: due soon and more offenders than the threshold."""
        return self.within_warning and self.ready is False


def readiness(
    policy: Policy,
    now: datetime,
    counts: Mapping[str, int] | None,
    overrides: Iterable[Override] = (),
) -> list[StageReadiness]:
    """Every pending stage to `enforce` (dated ones in time order, then tbd), with each of
    its pools' offenders from `counts` (pool -> distinct sources; None: no count source).

    A count is taken only for a pool in `monitor` or `enforce` now: an `off` pool has no
    offender set, so a number for it would be stale.
    """
    decisions = decide(policy, now, overrides)
    out: list[StageReadiness] = []
    for stage in policy.stages:
        due = stage.scheduled
        if stage.mode != "enforce" or not policy.applies(stage):
            continue
        if due is not None and due <= now:
            continue  # done (or due this minute): no longer pending
        pools = []
        for name in policy.stage_pools(stage):
            mode = decisions[name].mode
            count = None if counts is None or mode == "off" else counts.get(name)
            pools.append(PoolOffenders(name, mode, count))
        out.append(
            StageReadiness(
                stage.name,
                due,
                tuple(pools),
                stage.max_offenders,
                timedelta(seconds=stage.warn_before_seconds),
                now,
            )
        )
    return out


def span(window: timedelta) -> str:
    """`7 days`, `36 hours`, `90 minutes`: the retention window as a reader says it."""
    seconds = int(window.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'' if n == 1 else 's'}"
    return f"{seconds} seconds"


def describe(r: StageReadiness, due: str, window: timedelta | None) -> str:
    """One line for `rollout status`; `due` is the date as the policy's zone shows it, and
    `window` the offender retention (how far back "still sent" looks), if known.

    enforce-east-1 due 2011-01-17: 37 subscribers of flets-east-dyn-1 still sent on 25 in
    the last 7 days (threshold 10: NOT READY, due within 7d)
    """
    head = f"{r.stage} due {due}: "
    total = r.offenders
    if total is None:
        unknown = sorted({p.why_unknown for p in r.pools if p.why_unknown})
        names = ", ".join(p.pool for p in r.pools if p.offenders is None)
        return head + f"{'; '.join(unknown)} ({names})"
    if len(r.pools) == 1:
        pools = r.pools[0].pool
    else:
        pools = ", ".join(f"{p.pool} ({p.offenders})" for p in r.pools)
    since = f"in the last {span(window)}" if window else "in the offender retention window"
    who = "subscriber" if total == 1 else "subscribers"
    verdict = "ready" if r.ready else "NOT READY"
    soon = f", due within {_short(r.warn_before)}" if r.within_warning else ""
    return head + (
        f"{total} {who} of {pools} still sent on 25 {since} "
        f"(threshold {r.threshold}: {verdict}{soon})"
    )


def _short(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for suffix, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{suffix}"
    return f"{seconds}s"


def to_json(r: StageReadiness, due: str | None) -> dict[str, object]:
    """The same for `-o json` (`due` as the policy's zone shows it, None for tbd)."""
    return {
        "stage": r.stage,
        "due": due,
        "pools": [
            {"pool": p.pool, "mode": p.mode, "offenders": p.offenders, "unknown": p.why_unknown}
            for p in r.pools
        ],
        "offenders": r.offenders,
        "threshold": r.threshold,
        "warn_before_seconds": int(r.warn_before.total_seconds()),
        "ready": r.ready,
        "within_warning": r.within_warning,
        "warning": r.warning,
    }
