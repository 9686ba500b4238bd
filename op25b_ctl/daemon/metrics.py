"""Prometheus metrics of the daemon: per-pool counters from the kernel, the controller's health.

Two halves, one registry (passed in, never prometheus_client's global default):

* `PoolCollector.collect()` runs at scrape time. It reads the reconciler's last `View` (the
  desired state, its health, the counters' continuity offsets; never the reconciler itself)
  and our table's counters from the kernel *now*, through `LiveCounters` (netlink, cached
  for at most 1 s, never backwards: daemon/livecounters.py). Without a kernel reader (unit
  tests, `build_registry(view)`) the counters are the last pass's sample. Each counter's
  reference count tells the pool's *live* mode (its blocked_ counter used by a rule =
  enforced in the kernel) independently of what the controller believes.
* `Metrics.observe(result)` counts reconcile passes (process-local, reset on restart as usual
  for a process's own counters).

The collector is a list of sections, each a function from one `Scrape` (what this scrape
sees: the view and the counters) to metric families; a new group of metrics is a new
section (`PoolCollector.sections.append`, or `build_registry(..., sections=...)`), computed
from the same `Scrape` without reading anything twice.

Metric names follow the Prometheus conventions (base units, `_total` counters, `_info`
gauges with a constant 1); the list is in docs/daemon.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from op25b_ctl import __version__
from op25b_ctl.daemon.livecounters import LiveCounters, ReadCounters, shifted
from op25b_ctl.daemon.view import READS, ReconcileResult, View
from op25b_ctl.kernel import base as kernel
from op25b_ctl.plan.desired import Desired
from op25b_ctl.plan.ruleset import (
    EXEMPTED_COUNTER,
    FINGERPRINT_PREFIX,
    RELAYED_COUNTER,
    blocked_counter,
    monitored_counter,
)
from op25b_ctl.policy.model import MODES, parse_net, split_families

NAMESPACE = "op25b"
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def exemptions_in_force(want: Desired) -> dict[str, int]:
    """Exempted prefixes in force per pool.

    `Desired.exemptions` are exactly the exemptions in force at `now`, the ones the desired
    table's `exempt` rules hold (expired ones are left out by desired.from_policy); the
    policy's one prefix index says which pool holds each.
    """
    counts = dict.fromkeys((pool.name for pool in want.policy.pools), 0)
    for exemption in want.exemptions:
        pool = want.policy.pool_of(parse_net(exemption.prefix))
        if pool is not None:
            counts[pool.name] += 1
    return counts


@dataclass(frozen=True)
class Scrape:
    """What one scrape sees: the last pass's view and our table's counters."""

    view: View
    # None: the kernel could not be read (now, or by the last pass without a live reader)
    table_present: bool | None
    counters: Mapping[str, kernel.Counter]  # continuous: kernel + offset, never backwards
    live: bool  # the counters were read at this scrape (at most LiveCounters.max_age old)

    @property
    def desired(self) -> Desired | None:
        return self.view.desired


Section = Callable[[Scrape], Iterable[Metric]]


class PoolCollector(Collector):
    """Turns the reconciler's last `View` and the kernel's counters into metrics at scrape
    time, section by section."""

    def __init__(
        self,
        view: Callable[[], View],
        live: LiveCounters | None = None,
        sections: Iterable[Section] = (),
    ) -> None:
        self.view = view
        self.live = live
        self._exemptions: tuple[object, dict[str, int]] = (None, {})
        self._policy_families: tuple[tuple[Desired, str | None], list[Metric]] | None = None
        self.sections: list[Section] = [self.health, self.policy, self.kernel, *sections]

    def describe(self) -> Iterable[Metric]:
        return []  # collect() depends on the view; do not let register() call it

    def collect(self) -> Iterator[Metric]:
        scrape = self.scrape()
        for section in self.sections:
            yield from section(scrape)

    def scrape(self) -> Scrape:
        """The view, and the counters: read now (cached <= 1 s), else the last pass's."""
        view = self.view()
        want = view.desired
        present, counters, live = view.table_present, view.counters, False
        if want is not None and self.live is not None:
            reading = self.live.read(want.table.family, want.table.name, view.generation)
            if reading.present is not None:
                present, counters, live = reading.present, reading.counters, True
            else:
                present = None  # unreadable now: say so (op25b_kernel_read_ok 0)
        if want is not None and self.live is not None and counters:
            counters = self.live.shown(
                counters, view.offsets, want.table.counters, view.counters if live else None
            )
        elif view.offsets:  # the pass's sample: already never behind what was shown
            counters = {n: shifted(c, view.offsets.get(n)) for n, c in counters.items()}
        return Scrape(view, present, counters, live)

    # ---------------------------------------------------------------- sections

    def health(self, scrape: Scrape) -> Iterator[Metric]:
        view = scrape.view
        valid = GaugeMetricFamily(
            f"{NAMESPACE}_policy_valid",
            "1 if the policy files as they are now are valid; 0 while a bad change is refused "
            "(the last good policy stays enforced)",
        )
        valid.add_metric([], 0 if view.policy_error is not None else 1)
        yield valid
        state_ok = GaugeMetricFamily(
            f"{NAMESPACE}_state_valid",
            "1 if the state (overrides, lock) could be read; 0 while it cannot (truncated or "
            "non-UTF-8 overrides.json, symlink loop, planted symlink): the last good desired "
            "state stays enforced",
        )
        state_ok.add_metric([], 0 if view.state_error is not None else 1)
        yield state_ok
        in_sync = GaugeMetricFamily(
            f"{NAMESPACE}_table_in_sync",
            "1 if the last reconcile pass left the live table equal to the desired one",
        )
        in_sync.add_metric([], 1 if view.in_sync else 0)
        yield in_sync
        if view.generation is not None:
            g = GaugeMetricFamily(
                f"{NAMESPACE}_ruleset_generation",
                "The kernel's nftables ruleset generation (bumped by every commit to any table)",
            )
            g.add_metric([], view.generation)
            yield g

    def policy(self, scrape: Scrape) -> Iterable[Metric]:
        """The desired state's metrics: built once per desired state and digest (8 ms at
        1,000 pools), then reused by every scrape until a pass publishes another."""
        want = scrape.desired
        if want is None:
            return ()
        key = (want, scrape.view.digest)
        cached = self._policy_families
        if cached is None or cached[0][0] is not want or cached[0][1] != key[1]:
            cached = self._policy_families = (key, list(self._policy(want, key[1])))
        return cached[1]

    def _policy(self, want: Desired, digest: str | None) -> Iterator[Metric]:
        policy = want.policy
        info = InfoMetricFamily(
            f"{NAMESPACE}_policy", "The policy in force: its digest (sha256 of the files), table"
        )
        info.add_metric(
            [],
            {
                "digest": digest or "",
                "table": f"{want.table.family} {want.table.name}",
                "action": policy.gateway.action,
            },
        )
        yield info
        fingerprint = next(
            (c for c in sorted(want.table.counters) if c.startswith(FINGERPRINT_PREFIX)), ""
        )
        rs = InfoMetricFamily(
            f"{NAMESPACE}_ruleset",
            "The desired ruleset's identity: fingerprint of every set element written",
        )
        rs.add_metric([], {"fingerprint": fingerprint.removeprefix(FINGERPRINT_PREFIX)})
        yield rs
        if want.next_change is not None:
            nxt = GaugeMetricFamily(
                f"{NAMESPACE}_next_change_timestamp_seconds",
                "When the desired state changes next by itself (rollout stage, override expiry)",
            )
            nxt.add_metric([], want.next_change.timestamp())
            yield nxt

        mode = GaugeMetricFamily(
            f"{NAMESPACE}_pool_mode",
            "Each pool's desired mode now (policy + schedule + overrides): 1 for the mode it is in",
            labels=["pool", "mode"],
        )
        prefixes = GaugeMetricFamily(
            f"{NAMESPACE}_pool_prefixes",
            "Prefixes in each pool, per address family",
            labels=["pool", "family"],
        )
        exempt = GaugeMetricFamily(
            f"{NAMESPACE}_pool_exemptions",
            "Exemptions in force inside each pool",
            labels=["pool"],
        )
        pool_info = InfoMetricFamily(
            f"{NAMESPACE}_pool", "Static facts about each pool", labels=["pool"]
        )
        if self._exemptions[0] is not want.table:
            self._exemptions = (want.table, exemptions_in_force(want))
        exemptions = self._exemptions[1]
        for pool in policy.pools:
            decision = want.decisions.get(pool.name)
            for m in MODES:
                mode.add_metric([pool.name, m], 1 if decision and decision.mode == m else 0)
            v4, v6 = split_families(pool.prefixes)
            prefixes.add_metric([pool.name, "ipv4"], len(v4))
            prefixes.add_metric([pool.name, "ipv6"], len(v6))
            exempt.add_metric([pool.name], exemptions.get(pool.name, 0))
            pool_info.add_metric(
                [pool.name],
                {
                    "dynamic": "true" if pool.dynamic else "false",
                    "reason": decision.reason if decision else "",
                },
            )
        yield from (mode, prefixes, exempt, pool_info)

    def kernel(self, scrape: Scrape) -> Iterator[Metric]:
        want = scrape.desired
        if want is None:
            return
        present = GaugeMetricFamily(
            f"{NAMESPACE}_table_present",
            "1 if our nftables table exists in the kernel (0: nothing is blocked)",
        )
        read_ok = GaugeMetricFamily(
            f"{NAMESPACE}_kernel_read_ok",
            "1 if the kernel's counters could be read (at this scrape; at most 1 s ago)",
        )
        if scrape.table_present is None:
            read_ok.add_metric([], 0)
            yield read_ok
            return
        read_ok.add_metric([], 1)
        present.add_metric([], 1 if scrape.table_present else 0)
        yield from (present, read_ok)
        if not scrape.table_present:
            return
        counters = scrape.counters

        def family(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"{NAMESPACE}_{name}", doc, labels=["pool"])

        blocked_p = family("pool_blocked_packets", "TCP/25 packets blocked, per pool (kernel)")
        blocked_b = family("pool_blocked_bytes", "TCP/25 bytes blocked, per pool (kernel)")
        mon_p = family(
            "pool_monitored_packets",
            "TCP/25 packets that would have been blocked, per pool in monitor mode (kernel)",
        )
        mon_b = family("pool_monitored_bytes", "TCP/25 bytes that would have been blocked")
        live = GaugeMetricFamily(
            f"{NAMESPACE}_pool_kernel_mode",
            "Each pool's mode as the kernel enforces it (read from which counter a rule uses)",
            labels=["pool", "mode"],
        )
        for pool in want.policy.pools:
            if not pool.dynamic:
                continue  # static pools are never in the table
            b = counters.get(blocked_counter(pool.name))
            m = counters.get(monitored_counter(pool.name))
            if b is not None:
                blocked_p.add_metric([pool.name], b.packets)
                blocked_b.add_metric([pool.name], b.bytes)
            if m is not None:
                mon_p.add_metric([pool.name], m.packets)
                mon_b.add_metric([pool.name], m.bytes)
            kernel_mode = (
                "enforce"
                if b is not None and b.refs
                else "monitor"
                if m is not None and m.refs
                else "off"
            )
            for mode in MODES:
                live.add_metric([pool.name, mode], 1 if mode == kernel_mode else 0)
        yield from (blocked_p, blocked_b, mon_p, mon_b, live)

        for name, doc in (
            (RELAYED_COUNTER, "TCP/25 packets to the ISP's own relays, let through"),
            (EXEMPTED_COUNTER, "TCP/25 packets from exempted sources, let through"),
        ):
            value = counters.get(name)
            if value is None:
                continue
            p = CounterMetricFamily(f"{NAMESPACE}_{name}_packets", doc)
            p.add_metric([], value.packets)
            b2 = CounterMetricFamily(f"{NAMESPACE}_{name}_bytes", doc.replace("packets", "bytes"))
            b2.add_metric([], value.bytes)
            yield from (p, b2)


class Metrics:
    """The controller's own health, counted from each ReconcileResult."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.runs = Counter(
            f"{NAMESPACE}_reconcile_runs",
            "Reconcile passes, by how the live table was read (fast = nothing read)",
            ["read"],
            registry=registry,
        )
        self.errors = Counter(
            f"{NAMESPACE}_reconcile_errors",
            "Reconcile passes that failed (nft refused, table not ours, no valid policy)",
            registry=registry,
        )
        self.duration = Histogram(
            f"{NAMESPACE}_reconcile_duration_seconds",
            "Time one reconcile pass took",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.last_success = Gauge(
            f"{NAMESPACE}_reconcile_last_success_timestamp_seconds",
            "When a reconcile pass last ended with the live table equal to the desired one",
            registry=registry,
        )
        self.changes = Counter(
            f"{NAMESPACE}_reconcile_changes",
            "Transactions committed to our table (policy changes, stages, drift repairs)",
            registry=registry,
        )
        self.ops = Counter(
            f"{NAMESPACE}_reconcile_operations",
            "Operations in the committed transactions",
            registry=registry,
        )
        self.drift = Counter(
            f"{NAMESPACE}_drift_repairs",
            "Commits that undid someone else's change to our table (deleted, flushed, edited)",
            registry=registry,
        )
        self.reload_failures = Counter(
            f"{NAMESPACE}_policy_reload_failures",
            "Policy or state changes refused as invalid (the last good policy stayed enforced)",
            registry=registry,
        )
        self.clock_steps_back = Counter(
            f"{NAMESPACE}_clock_steps_back",
            "Passes that found the wall clock earlier than at the pass before (the schedule "
            "is then followed at the new time, which may undo a stage)",
            registry=registry,
        )
        self.internal_errors = Counter(
            f"{NAMESPACE}_daemon_internal_errors",
            "Passes that raised an unexpected exception (a bug; logged with its traceback); "
            "the daemon carries on and the table stays as it was",
            registry=registry,
        )
        self.metrics_bind_failures = Counter(
            f"{NAMESPACE}_metrics_bind_failures",
            "Failed attempts to open the metrics port (taken by another process); retried "
            "after every pass, enforcement is not affected",
            registry=registry,
        )
        self.up_since = Gauge(
            f"{NAMESPACE}_start_time_seconds",
            "When the daemon started",
            registry=registry,
        )
        self.up_since.set_to_current_time()
        build = Gauge(
            f"{NAMESPACE}_build_info", "op25b-ctl version", ["version"], registry=registry
        )
        build.labels(__version__).set(1)
        for read in READS:
            self.runs.labels(read)  # every series exists from the start (rate() needs it)

    def observe(self, result: ReconcileResult, now: float) -> None:
        self.runs.labels(result.read).inc()
        self.duration.observe(result.duration)
        if result.policy_rejected:
            self.reload_failures.inc()
        if result.clock_stepped_back:
            self.clock_steps_back.inc()
        if result.error is not None:
            self.errors.inc()
            return
        self.last_success.set(now)
        if result.changed:
            self.changes.inc()
            self.ops.inc(result.ops)
        if result.drift_repaired:
            self.drift.inc()


def build_registry(
    view: Callable[[], View],
    counters: ReadCounters | LiveCounters | None = None,
    sections: Iterable[Section] = (),
) -> tuple[CollectorRegistry, Metrics]:
    """A fresh registry holding both halves: the view's metrics and the passes' counts.

    `counters` reads our table's counters at scrape time (`Kernel.counters`; cached 1 s);
    without it, scrapes show the last pass's sample."""
    disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` series: clutter
    registry = CollectorRegistry(auto_describe=False)
    metrics = Metrics(registry)
    live = (
        counters
        if isinstance(counters, LiveCounters) or counters is None
        else LiveCounters(counters)
    )
    registry.register(PoolCollector(view, live, sections))
    return registry, metrics
