"""Kernel-side faults with real packets: the daemon killed mid-pass, and another program
committing to its own table all the time. Each ends with the intended enforcement (real
TCP/25 refused from both enforced pools, the relay reachable, a full read finding nothing to
do) and nothing lost (no probe connected, counters not reset)."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from op25b_lab.lab import DYN_A, DYN_W, FOREIGN_MX, Lab
from tests.daemonpolicy import EAST2, set_mode
from tests.e2e.conftest import lab, make_lab  # noqa: F401  (fixtures)
from tests.e2e.test_bulk_changes import EXTRA, set_extra, synthetic
from tests.reliability.conftest import Recorder
from tests.reliability.kernelfaults import (
    EAST1_CHAIN,
    REPAIR_DEADLINE,
    applied_gateway,
    assert_enforced,
    repaired_within,
    replace_rule_with_accept,
    wait_for,
)
from tests.reliability.prober import Prober

pytestmark = pytest.mark.root
SECTION = "fault"
KILLS = 4

FOREIGN = """
table ip foreign_busy {
    set seen { type ipv4_addr; }
    chain c { type filter hook forward priority 50; policy accept; }
}
"""
# another program's commits, as fast as nft can make them: each bumps the ruleset generation
CHURN = (
    "while :; do nft add element ip foreign_busy seen '{ 198.51.100.250 }'; "
    "nft delete element ip foreign_busy seen '{ 198.51.100.250 }'; done"
)


def test_kill_9_during_a_pass(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
    record: Recorder,
) -> None:
    """SIGKILL while the daemon commits a 1,000-prefix change: the table is the old one or
    the new one, enforcement never lapses, and the restarted daemon finishes the job."""
    lab.serve_tcp([25])
    extra = synthetic(EXTRA)
    gw = applied_gateway(lab, tmp_path)
    set_extra(gw.policy, extra)
    gw.start()
    probers = [Prober(lab, DYN_A.v4, FOREIGN_MX.v4), Prober(lab, DYN_W.v4, FOREIGN_MX.v4)]
    rng = random.Random(10)
    delays = []
    for k in range(1, KILLS + 1):
        assert gw.proc is not None
        blocked = gw.sample("op25b_pool_blocked_packets_total", pool="flets-east-dyn-1") or 0
        set_extra(gw.policy, extra[: EXTRA - k * 250])  # a pass with a map rebuild to do
        delay = rng.uniform(0.0, 0.6)  # the pass runs within the 0.5 s interval
        delays.append(delay)
        time.sleep(delay)  # a random point in (or around) the pass, on purpose
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(10)
        for p in probers:
            p.wait_attempts(3)  # no daemon at all now: the kernel keeps enforcing
        gw.proc = None
        gw.start()  # waits for in sync
        wait_for("the change committed", gw.plan_is_empty, 60)
        after = gw.sample("op25b_pool_blocked_packets_total", pool="flets-east-dyn-1") or 0
        assert after >= blocked  # counters are never reset by a crash or a restart
    finals = [p.stop() for p in probers]
    assert_enforced(lab, gw)
    leaked = sum(f["counts"].get("connected", 0) for f in finals)
    assert leaked == 0, finals
    record(
        "kill -9 of the daemon during a pass",
        done=f"{KILLS} x SIGKILL 0-0.6 s after a 250-prefix removal was written "
        f"(delays {', '.join(f'{d:.2f}' for d in delays)} s), then restart",
        expected="old or new table, never none; restart converges; no probe connects",
        observed=f"converged each time; probes {[f['counts'] for f in finals]}; 0 leaked",
    )


def test_foreign_table_busy(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
    record: Recorder,
) -> None:
    """Another program commits to its own table all the time, so the ruleset generation never
    stays ours: every pass reads our table's shape, changes and repairs still land, and the
    other table is never touched."""
    lab.serve_tcp([25])
    gw = applied_gateway(lab, tmp_path)
    gw.nft("-f", "-", stdin=FOREIGN)
    churn = lab.start(lab.ns_gw, ["bash", "-c", CHURN])
    try:
        gw.start()
        prober = Prober(lab, DYN_A.v4, FOREIGN_MX.v4)
        set_mode(gw.policy, EAST2, "enforce")  # a policy change lands despite the churn
        wait_for(
            "east-2 enforced",
            lambda: gw.sample("op25b_pool_kernel_mode", pool=EAST2, mode="enforce") == 1,
            REPAIR_DEADLINE * 2,
        )
        replace_rule_with_accept(gw)  # and an edit in place is still repaired
        took = repaired_within(gw, EAST1_CHAIN, time.monotonic())
        repaired_at = time.time()
        prober.wait_attempts(5)
        final = prober.stop()
        skeletons = gw.sample("op25b_reconcile_runs_total", read="skeleton") or 0
        assert skeletons >= 2  # the generation could not be trusted: it read the shape
        # the edit opened TCP/25 until the repair; not one connection after it
        assert not [t for t in final["leaks"] if t > repaired_at], final
    finally:
        lab.stop(churn)
    assert_enforced(lab, gw)
    assert "foreign_busy" in gw.nft("list", "tables")
    assert gw.nft("list", "chain", "ip", "foreign_busy", "c").count("policy accept") == 1
    assert gw.sample("op25b_reconcile_errors_total") == 0
    record(
        "foreign table busy",
        done="another table committed to in a tight loop (nft add/delete element) while "
        "a mode change and an edit in place are made",
        expected="both land; the other table untouched; no errors",
        observed=f"mode change applied, edit repaired in {took:.2f} s, "
        f"{int(skeletons)} skeleton reads, 0 errors",
        figure=f"{took:.2f} s",
    )
