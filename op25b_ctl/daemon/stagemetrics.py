"""Prometheus metrics of the schedule's readiness: one series per pending stage to enforce.

    op25b_stage_due_timestamp_seconds{stage}      when it fires (dated stages only)
    op25b_stage_offenders{stage}                  distinct offenders of its pools now
                                                  (absent while unknown: no count source,
                                                  or a pool still off)
    op25b_stage_offender_threshold{stage}         its `max_offenders`
    op25b_stage_warn_before_seconds{stage}        its `warn_before`

The alert `Op25bStageNotReady` (monitoring/prometheus/op25b-rules.yml) compares them, so
the judgement is visible in Prometheus and its threshold lives in one place, rollout.yaml.
A label per stage, never per address: a schedule has a handful of stages.

`stage_families` takes `plan.readiness` results; `StageCollector` computes them at scrape
time from the daemon's last desired state, its clock and a count source (pool -> distinct
offenders, or None while none is wired).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from op25b_ctl.daemon.view import View
from op25b_ctl.plan.readiness import StageReadiness, readiness

__all__ = ["OffenderCounts", "StageCollector", "stage_families"]

NAMESPACE = "op25b"
# distinct offenders per tracked pool, or None: no count source (yet)
OffenderCounts = Callable[[], Mapping[str, int] | None]


def stage_families(results: Iterable[StageReadiness]) -> list[GaugeMetricFamily]:
    """The four families for these stages (tbd stages have no due time, so no series)."""
    due = GaugeMetricFamily(
        f"{NAMESPACE}_stage_due_timestamp_seconds",
        "When each pending rollout stage to enforce fires (rollout.yaml `at`)",
        labels=["stage"],
    )
    offenders = GaugeMetricFamily(
        f"{NAMESPACE}_stage_offenders",
        "Distinct sources that tried TCP/25 in the retention window, in the pools of each "
        "pending stage to enforce (absent while not known)",
        labels=["stage"],
    )
    threshold = GaugeMetricFamily(
        f"{NAMESPACE}_stage_offender_threshold",
        "Each pending stage's `max_offenders`: at most this many offenders is ready",
        labels=["stage"],
    )
    warn = GaugeMetricFamily(
        f"{NAMESPACE}_stage_warn_before_seconds",
        "Each pending stage's `warn_before`: how long before it fires a stage not ready alerts",
        labels=["stage"],
    )
    for r in results:
        if r.due is None:
            continue
        due.add_metric([r.stage], r.due.timestamp())
        total = r.offenders
        if total is not None:
            offenders.add_metric([r.stage], total)
        threshold.add_metric([r.stage], r.threshold)
        warn.add_metric([r.stage], r.warn_before.total_seconds())
    return [due, offenders, threshold, warn]


class StageCollector(Collector):
    """Readiness at scrape time, from the reconciler's last `View` (its policy and overrides)."""

    def __init__(
        self,
        view: Callable[[], View],
        clock: Callable[[], datetime],
        counts: OffenderCounts = lambda: None,
    ) -> None:
        self.view = view
        self.clock = clock
        self.counts = counts

    def describe(self) -> Iterable[object]:
        return []  # collect() depends on the view; do not let register() call it

    def collect(self) -> Iterator[GaugeMetricFamily]:
        want = self.view().desired
        if want is None:
            return
        yield from stage_families(
            readiness(want.policy, self.clock(), self.counts(), want.overrides)
        )
