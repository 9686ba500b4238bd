"""The exporter: per-pool kernel counters (read at scrape time, or as the last pass sampled
them), never backwards; live modes, health."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from op25b_ctl.daemon.livecounters import LiveCounters
from op25b_ctl.daemon.metrics import Metrics, Scrape, build_registry, exemptions_in_force
from op25b_ctl.daemon.reconcile import Reconciler
from op25b_ctl.kernel.base import Counter
from op25b_ctl.kernel.memory import MemoryKernel
from op25b_ctl.plan.desired import Desired
from op25b_ctl.plan.ruleset import desired_table
from op25b_ctl.policy.loader import load_policy
from op25b_ctl.policy.model import Exemption
from op25b_ctl.source.directory import DirectorySource
from tests.daemonpolicy import EAST1, EAST2, WEST1, break_prefix, daemon_policy, set_mode

NOW = datetime(2011, 1, 31, 9, 0, tzinfo=UTC)


@pytest.fixture
def kernel() -> MemoryKernel:
    return MemoryKernel()


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    return daemon_policy(tmp_path / "policy")


@pytest.fixture
def rec(kernel: MemoryKernel, policy_dir: Path) -> Reconciler:
    return Reconciler(
        kernel, DirectorySource(policy_dir), clock=lambda: NOW, sample_every_pass=True
    )


@pytest.fixture
def scrape(rec: Reconciler, kernel: MemoryKernel) -> tuple[CollectorRegistry, Metrics]:
    return build_registry(lambda: rec.view)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_pool_counters_are_the_kernels_as_the_last_pass_sampled_them(
    rec: Reconciler, kernel: MemoryKernel, scrape: tuple[CollectorRegistry, Metrics]
) -> None:
    registry, _ = scrape
    rec.run_once()
    kernel.values[f"blocked_{EAST1}"] = (7, 420)
    kernel.values[f"monitored_{EAST2}"] = (3, 180)
    kernel.values["relayed"] = (11, 660)
    assert value(registry, "op25b_pool_blocked_packets_total", pool=EAST1) == 0  # not yet
    assert rec.run_once().read == "fast"  # a pass that reads nothing else samples them

    assert value(registry, "op25b_pool_blocked_packets_total", pool=EAST1) == 7
    assert value(registry, "op25b_pool_blocked_bytes_total", pool=EAST1) == 420
    assert value(registry, "op25b_pool_blocked_packets_total", pool=WEST1) == 0
    assert value(registry, "op25b_pool_monitored_packets_total", pool=EAST2) == 3
    assert value(registry, "op25b_relayed_packets_total") == 11
    # static pools are never in the table: no counter series for them
    assert value(registry, "op25b_pool_blocked_packets_total", pool="static-biz") is None

    kernel.values[f"blocked_{EAST1}"] = (9, 540)
    rec.run_once()
    assert value(registry, "op25b_pool_blocked_packets_total", pool=EAST1) == 9


def test_modes_desired_and_in_the_kernel(
    rec: Reconciler, kernel: MemoryKernel, scrape: tuple[CollectorRegistry, Metrics]
) -> None:
    registry, _ = scrape
    rec.run_once()
    for pool, mode in ((EAST1, "enforce"), (EAST2, "monitor"), (WEST1, "enforce")):
        assert value(registry, "op25b_pool_mode", pool=pool, mode=mode) == 1
        assert value(registry, "op25b_pool_kernel_mode", pool=pool, mode=mode) == 1
        assert value(registry, "op25b_pool_kernel_mode", pool=pool, mode="off") == 0
    assert value(registry, "op25b_pool_mode", pool="static-biz", mode="off") == 1
    assert value(registry, "op25b_pool_prefixes", pool=EAST1, family="ipv4") == 1
    assert value(registry, "op25b_pool_prefixes", pool=EAST1, family="ipv6") == 1
    assert value(registry, "op25b_pool_exemptions", pool=EAST1) == 0

    kernel.flush_chains("inet", "op25b")  # someone flushed our rules: nothing is enforced
    kernel.fail_next = "Error: simulated"  # and the repair is refused: the pass sees it as is
    rec.run_once()
    assert value(registry, "op25b_pool_mode", pool=EAST1, mode="enforce") == 1
    assert value(registry, "op25b_pool_kernel_mode", pool=EAST1, mode="enforce") == 0
    assert value(registry, "op25b_pool_kernel_mode", pool=EAST1, mode="off") == 1


def test_absent_table(
    rec: Reconciler, kernel: MemoryKernel, scrape: tuple[CollectorRegistry, Metrics]
) -> None:
    registry, _ = scrape
    rec.run_once()
    assert value(registry, "op25b_table_present") == 1
    kernel.edit("inet", "op25b", None)
    kernel.fail_next = "Error: simulated"  # the repair is refused: the table stays absent
    rec.run_once()
    assert value(registry, "op25b_table_present") == 0
    assert value(registry, "op25b_kernel_read_ok") == 1
    assert value(registry, "op25b_pool_blocked_packets_total", pool=EAST1) is None


def test_health_counts_each_pass(
    rec: Reconciler,
    kernel: MemoryKernel,
    scrape: tuple[CollectorRegistry, Metrics],
    policy_dir: Path,
) -> None:
    registry, metrics = scrape
    metrics.observe(rec.run_once(), now=1000.0)
    metrics.observe(rec.run_once(), now=1001.0)
    assert value(registry, "op25b_reconcile_runs_total", read="full") == 1
    assert value(registry, "op25b_reconcile_runs_total", read="fast") == 1
    assert value(registry, "op25b_reconcile_changes_total") == 1
    assert value(registry, "op25b_reconcile_last_success_timestamp_seconds") == 1001.0
    assert value(registry, "op25b_reconcile_duration_seconds_count") == 2
    assert value(registry, "op25b_table_in_sync") == 1

    kernel.edit("inet", "op25b", None)
    metrics.observe(rec.run_once(), now=1002.0)
    assert value(registry, "op25b_drift_repairs_total") == 1

    break_prefix(policy_dir)
    metrics.observe(rec.run_once(), now=1003.0)
    assert value(registry, "op25b_policy_reload_failures_total") == 1
    assert value(registry, "op25b_policy_valid") == 0

    kernel.fail_next = "Error: simulated"
    kernel.edit("inet", "op25b", None)
    metrics.observe(rec.run_once(), now=1004.0)
    assert value(registry, "op25b_reconcile_errors_total") == 1
    assert value(registry, "op25b_reconcile_last_success_timestamp_seconds") == 1003.0
    assert value(registry, "op25b_table_in_sync") == 0


def test_policy_and_ruleset_identity(
    rec: Reconciler, scrape: tuple[CollectorRegistry, Metrics], policy_dir: Path
) -> None:
    registry, _ = scrape
    rec.run_once()
    text = generate_latest(registry).decode()
    assert (
        f'op25b_policy_info{{action="reject",digest="{rec.digest}",table="inet op25b"}} 1.0' in text
    )
    assert "op25b_ruleset_info{fingerprint=" in text
    assert value(registry, "op25b_ruleset_generation") is not None
    digest = rec.digest
    set_mode(policy_dir, EAST2, "enforce")
    rec.run_once()
    assert rec.digest != digest
    assert f'digest="{rec.digest}"' in generate_latest(registry).decode()


def test_before_any_valid_policy_only_health_is_exported(
    kernel: MemoryKernel, policy_dir: Path
) -> None:
    (policy_dir / "relays.yaml").write_text("relays: []\n")
    rec = Reconciler(kernel, DirectorySource(policy_dir), clock=lambda: NOW)
    registry, metrics = build_registry(lambda: rec.view)
    metrics.observe(rec.run_once(), now=1.0)
    assert value(registry, "op25b_policy_valid") == 0
    assert value(registry, "op25b_reconcile_errors_total") == 1
    assert "op25b_pool_mode" not in generate_latest(registry).decode()


def test_a_deleted_table_comes_back_with_the_counters_prometheus_last_saw(
    rec: Reconciler, kernel: MemoryKernel, scrape: tuple[CollectorRegistry, Metrics]
) -> None:
    registry, _ = scrape
    rec.run_once()
    kernel.values[f"blocked_{EAST1}"] = (7, 420)
    rec.run_once()
    assert value(registry, "op25b_pool_blocked_packets_total", pool=EAST1) == 7  # a scrape
    kernel.edit("inet", "op25b", None)  # `nft delete table inet op25b`: the kernel forgets

    repaired = rec.run_once()

    assert repaired.drift_repaired
    assert value(registry, "op25b_pool_blocked_packets_total", pool=EAST1) == 7
    assert value(registry, "op25b_pool_blocked_bytes_total", pool=EAST1) == 420
    assert value(registry, "op25b_pool_blocked_packets_total", pool=WEST1) == 0


def test_exemptions_in_force_are_counted_per_pool_from_the_desired_state(
    policy_dir: Path,
) -> None:
    policy = load_policy(policy_dir)
    prefixes = ["192.0.2.16/28", "2001:db8:1000:1::/64", "198.51.100.7/32"]
    table = desired_table(policy, {EAST1: "enforce", WEST1: "enforce"}, exemptions=prefixes)
    exempt = tuple(Exemption(prefix=p, ticket=f"T-{i}") for i, p in enumerate(prefixes))
    want = Desired(policy=policy, decisions={}, table=table, exemptions=exempt)
    counts = exemptions_in_force(want)
    assert counts == {EAST1: 2, EAST2: 0, WEST1: 1, "static-biz": 0}


# --------------------------------------------------------------------------- scrape-time reads


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def live(kernel: MemoryKernel, clock: Clock) -> LiveCounters:
    return LiveCounters(kernel.counters, clock=clock)


@pytest.fixture
def fresh(rec: Reconciler, live: LiveCounters) -> CollectorRegistry:
    registry, _ = build_registry(lambda: rec.view, live)
    return registry


def test_a_scrape_shows_the_kernels_counters_now_not_the_last_pass(
    rec: Reconciler, kernel: MemoryKernel, fresh: CollectorRegistry, clock: Clock
) -> None:
    """With --interval 30 the kernel held 6 blocked packets while the metric read 0 for 30 s
    (issue 17): a scrape reads the kernel, no pass needed."""
    rec.run_once()
    kernel.values[f"blocked_{EAST1}"] = (6, 360)
    kernel.values["relayed"] = (2, 120)
    clock.now += 1.0
    assert value(fresh, "op25b_pool_blocked_packets_total", pool=EAST1) == 6
    assert value(fresh, "op25b_pool_blocked_bytes_total", pool=EAST1) == 360
    assert value(fresh, "op25b_relayed_packets_total") == 2
    assert value(fresh, "op25b_kernel_read_ok") == 1


def test_scrapes_within_a_second_share_one_kernel_read(
    rec: Reconciler,
    kernel: MemoryKernel,
    fresh: CollectorRegistry,
    live: LiveCounters,
    clock: Clock,
) -> None:
    rec.run_once()
    for _ in range(5):  # five scrapers at once
        generate_latest(fresh)
    assert live.reads == 1
    kernel.values[f"blocked_{EAST1}"] = (4, 240)
    clock.now += 0.5
    assert value(fresh, "op25b_pool_blocked_packets_total", pool=EAST1) == 0  # 0.5 s old
    clock.now += 0.5
    assert value(fresh, "op25b_pool_blocked_packets_total", pool=EAST1) == 4  # 1 s: read again
    assert live.reads == 2


def test_a_repair_never_takes_a_scraped_counter_back(
    rec: Reconciler, kernel: MemoryKernel, fresh: CollectorRegistry, clock: Clock
) -> None:
    """The pass sampled 7; a scrape then showed 9; the table is deleted and the repair can
    only restore the 7 it saw: the scrape after it still shows 9, then counts on from there."""
    rec.run_once()
    kernel.values[f"blocked_{EAST1}"] = (7, 420)
    rec.run_once()
    kernel.values[f"blocked_{EAST1}"] = (9, 540)
    clock.now += 1
    assert value(fresh, "op25b_pool_blocked_packets_total", pool=EAST1) == 9
    kernel.edit("inet", "op25b", None)
    clock.now += 1
    assert value(fresh, "op25b_table_present") == 0
    assert value(fresh, "op25b_pool_blocked_packets_total", pool=EAST1) is None
    assert rec.run_once().drift_repaired
    assert kernel.values[f"blocked_{EAST1}"] == (7, 420)  # the reconciler's carry
    clock.now += 1
    assert value(fresh, "op25b_pool_blocked_packets_total", pool=EAST1) == 9
    kernel.values[f"blocked_{EAST1}"] = (12, 720)
    clock.now += 1
    assert value(fresh, "op25b_pool_blocked_packets_total", pool=EAST1) == 12


def test_a_counter_reset_by_someone_else_continues_from_the_offset(
    rec: Reconciler, kernel: MemoryKernel, fresh: CollectorRegistry, clock: Clock
) -> None:
    """`nft reset counters`: the kernel goes back to 0; the next pass makes what it had
    counted the counter's offset (View.offsets), and the metric goes on from there."""
    rec.run_once()
    kernel.values[f"blocked_{EAST1}"] = (9, 540)
    rec.run_once()
    kernel.values[f"blocked_{EAST1}"] = (0, 0)  # reset
    clock.now += 1
    assert value(fresh, "op25b_pool_blocked_packets_total", pool=EAST1) == 9  # not back
    kernel.values[f"blocked_{EAST1}"] = (2, 120)
    rec.run_once()
    assert rec.view.offsets[f"blocked_{EAST1}"].packets == 9
    clock.now += 1
    assert value(fresh, "op25b_pool_blocked_packets_total", pool=EAST1) == 11
    assert value(fresh, "op25b_pool_blocked_bytes_total", pool=EAST1) == 660


def test_an_unreadable_kernel_at_scrape_time_says_so(
    rec: Reconciler, kernel: MemoryKernel, clock: Clock
) -> None:
    def broken(family: str, name: str) -> dict[str, Counter]:
        raise OSError("netlink refused")

    registry, _ = build_registry(lambda: rec.view, LiveCounters(broken, clock=clock))
    rec.run_once()
    assert value(registry, "op25b_kernel_read_ok") == 0
    assert value(registry, "op25b_table_in_sync") == 1


def test_a_new_section_sees_the_same_scrape(
    rec: Reconciler, kernel: MemoryKernel, live: LiveCounters, clock: Clock
) -> None:
    """Other groups of metrics are sections over the same Scrape: no second kernel read."""

    def blocked_sum(scrape: Scrape) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("op25b_test_blocked_sum", "sum")
        g.add_metric([], sum(c.packets for n, c in scrape.counters.items() if "blocked" in n))
        yield g

    registry, _ = build_registry(lambda: rec.view, live, sections=[blocked_sum])
    rec.run_once()
    kernel.values[f"blocked_{EAST1}"] = (3, 180)
    kernel.values[f"blocked_{WEST1}"] = (4, 240)
    clock.now += 1
    assert value(registry, "op25b_test_blocked_sum") == 7
    assert live.reads == 1


def test_a_pass_that_committed_is_never_followed_by_an_older_read(
    rec: Reconciler,
    kernel: MemoryKernel,
    fresh: CollectorRegistry,
    live: LiveCounters,
    policy_dir: Path,
) -> None:
    """Within the cache's second, a pass that commits (new ruleset generation) makes the
    next scrape read again: the kernel mode shown is never older than the pass's counters."""
    rec.run_once()
    assert value(fresh, "op25b_pool_kernel_mode", pool=EAST2, mode="monitor") == 1
    set_mode(policy_dir, EAST2, "enforce")
    assert rec.run_once().changed
    assert value(fresh, "op25b_pool_kernel_mode", pool=EAST2, mode="enforce") == 1  # same second
    assert live.reads == 2
