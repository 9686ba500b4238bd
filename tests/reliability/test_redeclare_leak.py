"""An upgrade that changes how sets are declared, committed while raw SYNs pour out of an
enforced pool: not one SYN may cross gw, and the table ends with the usual names.

The older version's table is crafted with nft in the lab's gateway namespace: the same rules,
counters and elements, but `pools_v4` (5,000 synthetic prefixes) declared `flags constant,
interval` and `relays_v4` without `flags interval` (a set of host addresses). A flush cannot
change a declaration, so `op25b-ctl apply` must replace both sets. Fails on the same-name,
same-batch re-declaration (every rule re-pointed at a set declared in its own batch, which is
empty until the set backend's commit step, after the generation flip: docs/benchmarks.md).
Passes only if the new sets are declared alone first (plan/diff.py).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest

from op25b_ctl.plan.desired import from_policy
from op25b_ctl.plan.diff import one_batch, steps_to
from op25b_ctl.plan.render import render
from op25b_ctl.plan.ruleset import POOLS_V4, RELAYS_V4, blocked_counter
from op25b_ctl.plan.table import Table
from op25b_ctl.policy.loader import load_policy
from op25b_lab.lab import DYN_A, FOREIGN_MX, Lab, wait_for
from tests.daemonpolicy import EAST1, daemon_policy
from tests.e2e.conftest import lab, make_lab  # noqa: F401  (fixtures)
from tests.e2e.ctl import ctl, ctl_json
from tests.e2e.test_bulk_changes import set_extra, synthetic
from tests.reliability.conftest import Recorder
from tests.reliability.test_rebuild_leak import COUNT_LEAKS, FLOODERS, crossed

pytestmark = pytest.mark.root

SECTION = "fault"
ELEMENTS = 5_000
ROUNDS = 3  # each: craft the old table, flood, upgrade it with `apply`


def old_table(policy: Path) -> Table:
    """What the older version made for this policy: our table with two sets declared its way."""
    table = from_policy(load_policy(policy), datetime.now(UTC), ()).table
    pools, relays = table.sets[POOLS_V4], table.sets[RELAYS_V4]
    hosts = {k.removesuffix("/32"): None for k in relays.elements}
    assert all("/" not in k for k in hosts), "the lab's relays are host addresses"
    sets = {
        **table.sets,
        POOLS_V4: replace(pools, flags=frozenset({"constant", "interval"})),
        RELAYS_V4: replace(relays, flags=frozenset(), elements=hosts),
    }
    return replace(table, sets=sets)


def blocked(lab: Lab, above: int = -1) -> int | None:  # noqa: F811  (not the fixture)
    """The enforced pool's blocked packets at gw, if more than `above` (else None)."""
    out = lab.run(
        lab.ns_gw, ["nft", "list", "counter", "inet", "op25b", blocked_counter(EAST1)]
    ).stdout
    n = int(out.split("packets ")[1].split()[0])
    return n if n > above else None


@contextmanager
def flooding(lab: Lab, tmp_path: Path, tag: str) -> Iterator[list[int]]:  # noqa: F811
    """Raw SYNs from the enforced pool while the block runs; the list gets the number sent."""
    argv = [sys.executable, "-m", "tests.reliability.synflood", "--src", DYN_A.v4,
            "--dst", FOREIGN_MX.v4]  # fmt: skip
    outs = [tmp_path / f"flood-{tag}-{i}" for i in range(FLOODERS)]
    floods = [lab.start(lab.ns_sub, [*argv, "--out", str(o)]) for o in outs]
    sent: list[int] = []
    try:
        # the table in place is enforcing the pool the SYNs come from
        wait_for("the table to block the flood", partial(blocked, lab, 1000), 30)
        yield sent
        # and the one after it too
        now = blocked(lab) or 0
        wait_for("the new table to block the flood", partial(blocked, lab, now + 1000), 30)
    finally:
        for f in floods:
            lab.stop(f)
    sent.append(sum(int(o.read_text()) for o in outs))


def craft(lab: Lab, table: Table) -> None:  # noqa: F811
    """Make `table` in gw's namespace with nft, in place of ours."""
    lab.run(lab.ns_gw, ["nft", "delete", "table", "inet", "op25b"], check=False)
    lab.run(lab.ns_gw, ["nft", "-f", "-"], input=render(one_batch(None, table)))


def test_a_declaration_change_leaks_no_syn_and_keeps_the_names(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
    record: Recorder,
) -> None:
    policy, state = daemon_policy(tmp_path / "policy"), tmp_path / "state"
    set_extra(policy, synthetic(ELEMENTS))
    lab.run(lab.ns_out, ["nft", "-f", "-"], input=COUNT_LEAKS)  # the lab's `out`, not gw
    sent, commits, staged = 0, [], []
    for r in range(ROUNDS):
        craft(lab, old_table(policy))
        listed = lab.run(lab.ns_gw, ["nft", "list", "set", "inet", "op25b", RELAYS_V4]).stdout
        assert "flags interval" not in listed  # the old declaration, really in the kernel
        with flooding(lab, tmp_path, str(r)) as count:
            cp = ctl(lab, "apply", "--policy", str(policy), "--state-dir", str(state), "-o", "json")
            assert cp.returncode == 0, cp.stderr
        sent += count[0]
        diff = json.loads(cp.stdout)["diff"]
        commits.append(sum(line.startswith("-- commit") for line in diff))
        staged.append(any(line.startswith("+ map pools_v4_next with ") for line in diff))

    leaked = crossed(lab)
    record(
        "set declarations changed under a SYN flood",
        done=(
            f"{ROUNDS}x: an older version's table (pools_v4 `flags constant, interval`, "
            f"{ELEMENTS} prefixes; relays_v4 without `flags interval`), then `op25b-ctl apply` "
            "while 2 raw-SYN flooders send from an enforced pool"
        ),
        expected="no SYN crosses gw; both sets re-declared under their own names",
        observed=f"{leaked} of {sent} SYNs crossed; commits per upgrade {commits}",
        figure=f"{leaked} / {sent}",
    )
    print(f"redeclare leak: {leaked} of {sent} SYNs crossed in {ROUNDS} upgrades")
    assert sent > 100_000, f"only {sent} SYNs sent: the test proves nothing"
    assert leaked == 0, f"{leaked} of {sent} SYNs from an enforced pool crossed gw"
    assert commits == [3] * ROUNDS and all(staged), (commits, staged)

    assert_settled(lab, policy, state)


def assert_settled(lab: Lab, policy: Path, state: Path) -> None:  # noqa: F811
    """The names are the usual ones, and everything that reads them agrees."""
    listed = lab.run(lab.ns_gw, ["nft", "list", "table", "inet", "op25b"]).stdout
    assert "_next" not in listed and "flags constant" not in listed
    again = ctl_json(lab, "plan", "--policy", str(policy), "--state-dir", str(state))
    assert again["changes"] == 0, again["diff"]
    status = ctl_json(lab, "status", "--policy", str(policy), "--state-dir", str(state))
    assert status["rules_in_sync"] and status["statements_verified"], status
    east1 = next(p for p in status["pools"] if p["name"] == EAST1)
    assert east1["live_mode"] == "enforce" and east1["blocked"]["packets"] > 0, east1
    saved = json.loads((state / ".rule-digests.json").read_text())["digests"]
    table = from_policy(load_policy(policy), datetime.now(UTC), ()).table
    assert set(saved) == {r.id for c in table.chains.values() for r in c.rules}


@pytest.mark.parametrize("committed", [1, 2], ids=["after-batch-1", "after-batch-2"])
def test_an_upgrade_cut_between_batches_enforces_and_is_finished(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
    record: Recorder,
    committed: int,
) -> None:
    """What the kernel holds when the upgrade stops after `committed` of its three batches
    (the planner's own intermediate table, made with nft): it blocks the flood, and the next
    `apply` finishes from there with the remaining batches, no SYN crossing."""
    policy, state = daemon_policy(tmp_path / "policy"), tmp_path / "state"
    set_extra(policy, synthetic(ELEMENTS))
    desired = from_policy(load_policy(policy), datetime.now(UTC), ()).table
    steps = steps_to(old_table(policy), desired)
    assert len(steps) == 3
    craft(lab, steps[committed - 1])
    lab.run(lab.ns_out, ["nft", "-f", "-"], input=COUNT_LEAKS)
    with flooding(lab, tmp_path, "cut") as count:
        cp = ctl(lab, "apply", "--policy", str(policy), "--state-dir", str(state), "-o", "json")
        assert cp.returncode == 0, cp.stderr
    diff = json.loads(cp.stdout)["diff"]
    leaked, sent = crossed(lab), count[0]
    left = max(1, sum(line.startswith("-- commit") for line in diff))
    record(
        f"upgrade cut after batch {committed} of 3",
        done=(
            f"the planner's table after batch {committed} made with nft, then `op25b-ctl "
            "apply` while 2 raw-SYN flooders send from an enforced pool"
        ),
        expected=f"it blocks; apply finishes in {3 - committed} batch(es); no SYN crosses",
        observed=f"blocked; {left} batch(es); {leaked} of {sent} SYNs crossed",
        figure=f"{leaked} / {sent}",
    )
    assert sent > 20_000, f"only {sent} SYNs sent: the test proves nothing"
    assert leaked == 0, f"{leaked} of {sent} SYNs from an enforced pool crossed gw"
    assert left == 3 - committed, diff
    assert_settled(lab, policy, state)
