"""Churn: hundreds of operations on a live gateway while a prober in an enforced pool keeps
trying TCP/25. Not one connection may get through.

The operations are what a gateway lives through: re-applies from the CLI, daemon restarts,
other pools' rollouts and rollbacks (overrides set and cleared), prefix removals and re-adds
(map rebuilds) and policy reloads (SIGHUP). The prober's pool (flets-east-dyn-1) is enforced
by the policy and never overridden, so every attempt from it must be refused.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from op25b_lab.lab import DYN_A, FOREIGN_MX, Lab, wait_for
from tests.daemonpolicy import EAST2, WEST1
from tests.e2e.conftest import lab, make_lab  # noqa: F401  (fixtures)
from tests.e2e.ctl import ctl
from tests.e2e.test_bulk_changes import set_extra, synthetic
from tests.reliability.conftest import Recorder
from tests.reliability.kernelfaults import applied_gateway, assert_enforced
from tests.reliability.prober import Prober

pytestmark = pytest.mark.root
SECTION = "churn"
EXTRA = 2000


@pytest.mark.parametrize(
    "operations",
    [pytest.param(40, id="40-ops"), pytest.param(220, id="220-ops", marks=pytest.mark.slow)],
)
def test_churn_leaks_nothing(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
    record: Recorder,
    operations: int,
) -> None:
    lab.serve_tcp([25])
    extra = synthetic(EXTRA)
    gw = applied_gateway(lab, tmp_path)
    set_extra(gw.policy, extra)
    gw.start()
    prober = Prober(lab, DYN_A.v4, FOREIGN_MX.v4)
    prober.wait_attempts(3)
    rng = random.Random(operations)
    kept = list(extra)
    done: Counter[str] = Counter()

    def cli(*args: str) -> None:
        cp = ctl(lab, *args, "--policy", str(gw.policy), "--state-dir", str(gw.state))
        assert cp.returncode == 0, (args, cp.stderr)

    def commits() -> float:
        return gw.sample("op25b_reconcile_changes_total") or 0

    def reapply() -> None:
        cli("apply")

    def restart() -> None:
        gw.stop()
        gw.start()

    def other_pool() -> None:
        pool = rng.choice([EAST2, WEST1])
        action = rng.choice(["rollback", "enforce", "monitor", "clear"])
        if action == "clear":
            cli("pool", "clear", pool)
        else:
            cli("pool", action, pool, "--reason", f"CHURN-{done.total()}")

    def prefixes() -> None:
        nonlocal kept
        before = commits()
        if len(kept) == EXTRA or (len(kept) > EXTRA // 2 and rng.random() < 0.7):
            drop = set(rng.sample(kept, rng.randint(1, 300)))
            kept = [x for x in kept if x not in drop]
        else:
            kept = list(extra)  # put them all back
        set_extra(gw.policy, kept)
        wait_for("the prefix change committed", lambda: commits() > before, 30)

    def reload() -> None:
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)

    ops: dict[str, tuple[Callable[[], None], float]] = {
        "re-apply": (reapply, 0.2),
        "daemon restart": (restart, 0.08),
        "other pool's rollout or rollback": (other_pool, 0.3),
        "prefix removal or re-add": (prefixes, 0.22),
        "policy reload (SIGHUP)": (reload, 0.2),
    }
    names = list(ops)
    started = time.monotonic()
    timeline: list[tuple[float, float, str]] = []  # (start, end, operation), wall clock
    for _ in range(operations):
        name = rng.choices(names, weights=[ops[n][1] for n in names])[0]
        t0 = time.time()
        ops[name][0]()
        timeline.append((t0, time.time(), name))
        done[name] += 1
    seconds = time.monotonic() - started

    cli("pool", "clear", EAST2)
    cli("pool", "clear", WEST1)
    set_extra(gw.policy, extra)
    wait_for("settled", gw.plan_is_empty, 60)
    prober.wait_attempts(3)
    final = prober.stop()
    assert_enforced(lab, gw)
    assert gw.sample("op25b_reconcile_errors_total") == 0
    during = [
        (round(leak - s, 3), name, round(e - s, 3))
        for leak in final["leaks"]
        for s, e, name in timeline
        if s - 0.5 <= leak <= e + 0.5
    ]
    assert final["counts"].get("connected", 0) == 0, (final, during)
    assert done.total() == operations and all(done[n] for n in names), done
    record(
        f"churn, {operations} operations",
        done=", ".join(f"{n} x{c}" for n, c in done.most_common()),
        expected="every TCP/25 attempt from the enforced pool refused throughout",
        observed=f"{sum(final['counts'].values())} attempts, {final['counts']}; "
        f"0 connected; {seconds:.0f} s",
        figure=f"{seconds:.0f} s",
    )
