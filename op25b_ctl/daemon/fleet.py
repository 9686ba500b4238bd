"""The daemon as one gateway of a fleet: its status report and its store metrics.

After every pass the daemon hands `FleetReporter.after_pass` the result; the reporter builds
the gateway's status from the reconciler's view (what it applied, the ruleset digest, pools
by mode, blocked packets, the last error) and gives it to the source, which puts it on the
gateway's lease when it changed. `FleetCollector` exports the same per gateway to Prometheus.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Hashable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from op25b_ctl.daemon.discovery import DiscoveryWatcher
from op25b_ctl.daemon.offenders import OffenderReader
from op25b_ctl.daemon.reconcile import Reconciler
from op25b_ctl.daemon.view import ReconcileResult
from op25b_ctl.plan.offenders import ranked
from op25b_ctl.plan.ruleset import blocked_counter
from op25b_ctl.plan.table import Table
from op25b_ctl.source.fleet import FleetSource

FLEET_TOP = 10  # sources with most attempts in a gateway's status key
# seconds between refreshes of that part of the status ($OP25B_OFFENDERS_REPORT_EVERY)
OFFENDERS_EVERY = 30.0
FLEET_FIELDS = ("source", "pool", "mode", "attempts", "last_seen")


def _seconds_from_env(name: str, default: float) -> float:
    """A positive number of seconds from the environment, else `default` (never an error:
    a daemon does not stop for a tuning knob)."""
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if 0 < value <= 86400 else default


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
        offenders: OffenderReader | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reconciler = reconciler
        self.source = source
        self.discovery = discovery  # the hole alarm: its answer goes into the status
        self.offenders = offenders
        self.monotonic = monotonic
        self._offenders: tuple[float, dict[str, Any]] | None = None
        self.offenders_every = _seconds_from_env("OP25B_OFFENDERS_REPORT_EVERY", OFFENDERS_EVERY)
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
        offenders = self._offender_section()
        if offenders is not None:
            status["offenders"] = offenders
        self.source.report(status)

    def _offender_section(self) -> dict[str, Any] | None:
        """Per-pool distinct counts and the top FLEET_TOP sources, refreshed at most every
        OFFENDERS_EVERY seconds (attempts change with every SYN: the key would otherwise be
        rewritten every pass). Bounded whatever the sets hold: no key per address."""
        if self.offenders is None:
            return None
        now = self.monotonic()
        if self._offenders is not None and now - self._offenders[0] < self.offenders_every:
            return self._offenders[1]
        pools = self.offenders.read()
        if pools is None:
            return self._offenders[1] if self._offenders is not None else None
        at = datetime.now(UTC)
        section = {
            "at": at.isoformat(timespec="seconds"),
            "pools": {ps.pool: ps.distinct for ps in pools},
            "top": [
                {k: v for k, v in r.to_json().items() if k in FLEET_FIELDS}
                for r in ranked(pools, at, top=FLEET_TOP)
            ],
        }
        self._offenders = (now, section)
        return section


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
