"""The daemon as one gateway of a fleet: its status report and its store metrics.

After every pass the daemon hands `FleetReporter.after_pass` the result; the reporter builds
the gateway's status from the reconciler's view (what it applied, the ruleset digest, pools
by mode, blocked packets, the last error) and gives it to the source, which puts it on the
gateway's lease when it changed. `FleetCollector` exports the same per gateway to Prometheus.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from op25b_ctl.daemon.discovery import DiscoveryWatcher
from op25b_ctl.daemon.reconcile import Reconciler
from op25b_ctl.daemon.view import ReconcileResult
from op25b_ctl.plan.ruleset import blocked_counter
from op25b_ctl.plan.table import Table
from op25b_ctl.source.fleet import FleetSource


def ruleset_digest(table: Table) -> str:
    """A short identity of the desired ruleset: chains, their rule ids, sets and counters
    (the element fingerprint counter's name carries the elements' digest)."""
    h = hashlib.sha256()
    for name in sorted(table.chains):
        h.update(name.encode() + b"\0" + "\0".join(table.chains[name].rule_ids).encode() + b"\1")
    for name in sorted(table.sets):
        h.update(b"set " + name.encode() + b"\1")
    for name in sorted(table.counters):
        h.update(b"counter " + name.encode() + b"\1")
    return h.hexdigest()[:16]


class FleetReporter:
    """Turns each pass into the gateway's status and the applied-revision bookkeeping."""

    def __init__(
        self,
        reconciler: Reconciler,
        source: FleetSource,
        discovery: DiscoveryWatcher | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.source = source
        self.discovery = discovery  # the hole alarm: its answer goes into the status
        self.applied_store_revision: int | None = None
        self.applied_policy_revision: int | None = None
        self._digest: tuple[int, str] | None = None  # (id of the table, its digest)

    def after_pass(self, result: ReconcileResult) -> None:
        view = self.reconciler.view
        want = view.desired
        revision: Hashable = self.reconciler.revision
        if result.ok and view.in_sync and isinstance(revision, int):
            self.applied_store_revision = revision
            loaded = self.source.loaded
            if loaded is not None and loaded[0] == revision:
                self.applied_policy_revision = loaded[1]
        pools: dict[str, int] = {}
        blocked = 0
        digest = None
        if want is not None:
            for decision in want.decisions.values():
                pools[decision.mode] = pools.get(decision.mode, 0) + 1
            for name in want.decisions:
                counter = view.counters.get(blocked_counter(name))
                offset = view.offsets.get(blocked_counter(name))  # counted before a reset
                blocked += counter.packets if counter is not None else 0
                blocked += offset.packets if offset is not None else 0
            table_id = id(want.table)
            if self._digest is None or self._digest[0] != table_id:
                self._digest = (table_id, ruleset_digest(want.table))
            digest = self._digest[1]
        error = result.error
        if error is None and view.policy_error is not None:
            error = f"published policy refused: {view.policy_error}"[:300]
        status: dict[str, Any] = {
            "group": self.source.group,
            "policy_revision": self.applied_policy_revision,
            "store_revision": self.applied_store_revision,
            "ruleset_digest": digest,
            "in_sync": view.in_sync,
            "pools": pools,
            "blocked_packets": blocked,
            "last_error": error,
            "last_pass": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        holes = self.discovery.report() if self.discovery is not None else None
        if holes is not None:
            status["discovery"] = holes
        self.source.report(status)


class FleetCollector(Collector):
    """op25b_policy_revision_applied, op25b_store_connected, op25b_store_last_sync_seconds
    and the store's resync/reconnect counts, labelled with the gateway's name."""

    def __init__(self, reporter: FleetReporter, monotonic: Any = None) -> None:
        import time

        self.reporter = reporter
        self.monotonic = monotonic or time.monotonic

    def collect(self) -> Iterator[Metric]:
        source = self.reporter.source
        labels = ["gateway", "group"]
        values = [source.gateway, source.group or ""]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(values, value)
            return g

        applied = self.reporter.applied_policy_revision
        yield gauge(
            "op25b_policy_revision_applied",
            "Published policy revision this gateway last enforced in full (0: none yet).",
            float(applied or 0),
        )
        yield gauge(
            "op25b_store_revision_applied",
            "Store (etcd) revision of the policy and overrides this gateway last enforced.",
            float(self.reporter.applied_store_revision or 0),
        )
        yield gauge(
            "op25b_store_connected",
            "1 while the fleet store's watch is open; 0: enforcing the local snapshot.",
            1.0 if source.connected else 0.0,
        )
        last = source.last_sync
        yield gauge(
            "op25b_store_last_sync_seconds",
            "Seconds since the store last confirmed this gateway is up to date.",
            (self.monotonic() - last) if last is not None else float("inf"),
        )
        for name, doc, value in (
            (
                "op25b_store_resyncs",
                "Full re-reads of the store after its history was compacted past our revision.",
                source.resyncs,
            ),
            (
                "op25b_store_reconnects",
                "Reconnection attempts to the fleet store.",
                source.reconnects,
            ),
        ):
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(values, float(value))
            yield c
