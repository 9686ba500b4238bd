"""The fleet end to end: a real etcd, three real daemons in three lab gateways (two groups),
real TCP/25 from their subscribers, operations from the host ("outside the gateways").

    bras-east-1  east  flets-east-dyn-1 (enforce), flets-east-dyn-2 (monitor)
    bras-east-2  east  flets-east-dyn-1 (enforce), flets-west-dyn-1 (monitor)
    bras-west-1  west  flets-east-dyn-1 (enforce), flets-west-dyn-1 (monitor)

The gateways' action is `reject`: blocked is an RST ("refused"), passing is "connected".
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from op25b_lab.fleet import CTL, FleetLab
from op25b_lab.lab import DYN_A, DYN_B, DYN_W, FOREIGN_MX, RELAY, Lab, Outcome, wait_for
from tests.daemonpolicy import EAST1, EAST2, set_mode
from tests.e2e.conftest import lab_unavailable
from tests.fleetpolicy import GATEWAYS, fleet_policy

pytestmark = pytest.mark.root

NAMES = list(GATEWAYS)
REFUSED, CONNECTED = Outcome.REFUSED, Outcome.CONNECTED


@pytest.fixture
def fleet() -> Iterator[FleetLab]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    with FleetLab(NAMES) as f:
        for lab in f.labs.values():
            lab.serve_tcp([25, 587])
        yield f


def outcomes(lab: Lab, *checks: tuple[str, str, int]) -> list[Outcome]:
    return [r.outcome for r in lab.connect_many(lab.ns_sub, checks, timeout=1.0)]


def expect(lab: Lab, checks: dict[tuple[str, str, int], Outcome], deadline: float = 15.0) -> None:
    """Poll real connects until each gives the outcome wanted (or fail with what it gave)."""
    targets = list(checks)
    got: list[Outcome] = []

    def ok() -> bool:
        nonlocal got
        got = outcomes(lab, *targets)
        return got == [checks[t] for t in targets]

    try:
        wait_for("outcomes", ok, deadline)
    except AssertionError:
        raise AssertionError(f"{lab.ns_gw}: wanted {list(checks.values())}, got {got}") from None


def start_all(fleet: FleetLab, revision: int) -> None:
    for name in NAMES:
        fleet.start(name)
    fleet.wait_applied(NAMES, policy_revision=revision)


def test_each_gateway_enforces_its_pools_and_an_east_stage_stays_in_the_east(
    fleet: FleetLab, tmp_path: Path
) -> None:
    policy = fleet_policy(tmp_path / "policy")
    assert fleet.publish(policy)["revision"] == 1
    start_all(fleet, 1)
    east1, east2, west1 = (fleet.labs[n] for n in NAMES)
    a, b, w = (
        (DYN_A.v4, FOREIGN_MX.v4, 25),
        (DYN_B.v4, FOREIGN_MX.v4, 25),
        (DYN_W.v4, FOREIGN_MX.v4, 25),
    )
    relay, submission = (DYN_A.v4, RELAY.v4, 25), (DYN_A.v4, FOREIGN_MX.v4, 587)
    a6 = (DYN_A.v6, FOREIGN_MX.v6, 25)
    # flets-east-dyn-1 blocked everywhere (v4 and v6), relay and 587 open; a pool a gateway
    # does not carry is not in its table at all; monitor lets through
    expect(
        east1,
        {
            a: REFUSED,
            a6: REFUSED,
            relay: CONNECTED,
            submission: CONNECTED,
            b: CONNECTED,
            w: CONNECTED,
        },
    )
    expect(
        east2,
        {
            a: REFUSED,
            a6: REFUSED,
            relay: CONNECTED,
            submission: CONNECTED,
            b: CONNECTED,
            w: CONNECTED,
        },
    )
    expect(west1, {a: REFUSED, relay: CONNECTED, w: CONNECTED, b: CONNECTED})

    # revision 2: a stage for group east enforcing flets-west-dyn-1, due in a few seconds
    at = datetime.now(UTC) + timedelta(seconds=3)
    fleet_policy(policy, east_stage_at=at)
    assert fleet.publish(policy)["revision"] == 2
    fleet.wait_applied(NAMES, policy_revision=2)
    wait_for("the stage's time", lambda: datetime.now(UTC) > at + timedelta(seconds=0.5), 30)
    expect(east2, {w: REFUSED, a: REFUSED})  # the east gateway carrying the pool: enforced
    expect(west1, {w: CONNECTED, a: REFUSED})  # the west one: still monitor
    expect(east1, {w: CONNECTED})  # an east gateway without the pool: nothing to do
    status = json.loads(fleet.ctl("fleet", "status", "-o", "json").stdout)
    assert status["ok"] and status["policy_revision"] == 2
    rows = {r["gateway"]: r for r in status["gateways"]}
    assert rows["bras-east-2"]["pools"] == {"enforce": 2}
    assert rows["bras-west-1"]["pools"] == {"enforce": 1, "monitor": 1}


def test_fleet_rollback_reaches_every_gateway_carrying_the_pool(
    fleet: FleetLab, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    fleet.publish(fleet_policy(tmp_path / "policy"))
    start_all(fleet, 1)
    for name in NAMES:
        expect(fleet.labs[name], {(DYN_A.v4, FOREIGN_MX.v4, 25): REFUSED})
    probers = {n: fleet.first_through(n, DYN_A.v4, FOREIGN_MX.v4) for n in NAMES}
    start = time.monotonic()
    cp = fleet.ctl("pool", "rollback", EAST1, "--reason", "INC-4711 relay outage", "-o", "json")
    through = {n: fleet.through_at(n, p) - start for n, p in probers.items()}
    assert json.loads(cp.stdout)["gateways"] == NAMES
    last = max(through.values())
    record_property("fleet_rollback_to_first_packet_s", round(last, 3))
    print(f"rollback -> first TCP/25 through: { ({n: round(t, 3) for n, t in through.items()}) }")
    # the figure the benchmarks report (target < 1 s); bounded generously for a busy CI
    assert last < 5.0, through
    # only that pool: flets-east-dyn-2 still monitor on bras-east-1, and the audit says who
    expect(fleet.labs["bras-east-1"], {(DYN_B.v4, FOREIGN_MX.v4, 25): CONNECTED})
    audit = json.loads(fleet.ctl("audit", "-o", "json").stdout)["entries"]
    assert audit[-1]["action"] == "pool rollback" and audit[-1]["reason"] == "INC-4711 relay outage"
    # cleared for one group only: the east enforces again, the west stays rolled back
    fleet.ctl("pool", "clear", EAST1, "--reason", "fixed")
    fleet.ctl("pool", "rollback", EAST1, "--group", "west", "--reason", "west still broken")
    for name in ("bras-east-1", "bras-east-2"):
        expect(fleet.labs[name], {(DYN_A.v4, FOREIGN_MX.v4, 25): REFUSED})
    expect(fleet.labs["bras-west-1"], {(DYN_A.v4, FOREIGN_MX.v4, 25): CONNECTED})
    # a fleet exemption: one subscriber of the pool let through where the pool is enforced
    fleet.ctl("exempt", "add", f"{DYN_A.v4}/32", "--ticket", "OPT-77", "--reason", "opt-out")
    for name in ("bras-east-1", "bras-east-2"):
        expect(
            fleet.labs[name],
            {(DYN_A.v4, FOREIGN_MX.v4, 25): CONNECTED, (DYN_A.v6, FOREIGN_MX.v6, 25): REFUSED},
        )
    fleet.ctl("exempt", "remove", "OPT-77", "--reason", "ticket closed")
    expect(fleet.labs["bras-east-1"], {(DYN_A.v4, FOREIGN_MX.v4, 25): REFUSED})


def test_store_down_gateways_keep_enforcing_then_converge(fleet: FleetLab, tmp_path: Path) -> None:
    policy = fleet_policy(tmp_path / "policy")
    fleet.publish(policy)
    start_all(fleet, 1)
    # revision 2 carries a stage due shortly after etcd will be gone: every gateway has it
    at = datetime.now(UTC) + timedelta(seconds=4)
    stage = policy / "rollout.yaml"
    stage.write_text(
        "stages:\n"
        f"  - {{name: east2-on, at: '{at.isoformat()}', mode: enforce, pools: [{EAST2}]}}\n"
    )
    fleet.publish(policy)
    fleet.wait_applied(NAMES, policy_revision=2)
    fleet.etcd.kill()
    east1 = fleet.labs["bras-east-1"]
    b = (DYN_B.v4, FOREIGN_MX.v4, 25)
    a = (DYN_A.v4, FOREIGN_MX.v4, 25)
    # still enforcing, and a deleted table comes back without the store
    east1.run(east1.ns_gw, ["nft", "delete", "table", "inet", "op25b"])
    for name in NAMES:
        expect(fleet.labs[name], {a: REFUSED})
    # the stage falls due while etcd is down: applied from the local snapshot
    wait_for("the stage's time", lambda: datetime.now(UTC) > at, 30)
    expect(east1, {b: REFUSED})
    for name in NAMES:
        assert fleet.daemons[name].poll() is None, fleet.log(name)
        assert "store lost" in fleet.log(name)
    # a daemon restarted while etcd is down enforces its local snapshot (stage included)
    west1 = fleet.labs["bras-west-1"]
    assert fleet.stop("bras-west-1") == 0
    west1.run(west1.ns_gw, ["nft", "delete", "table", "inet", "op25b"])
    fleet.start("bras-west-1")
    expect(west1, {a: REFUSED})
    assert "enforcing the local snapshot" in fleet.log("bras-west-1")
    # etcd back: a change made now reaches everyone, and fleet status says all in sync
    fleet.etcd.start()
    set_mode(policy, EAST1, "monitor")
    fleet.publish(policy)
    fleet.wait_applied(NAMES, policy_revision=3, deadline=60)
    for name in NAMES:
        expect(fleet.labs[name], {a: CONNECTED})
    status = json.loads(fleet.ctl("fleet", "status", "-o", "json").stdout)
    assert status["ok"], status
    assert {r["policy_revision"] for r in status["gateways"]} == {3}


def test_unknown_gateway_is_a_clear_error_at_start(fleet: FleetLab, tmp_path: Path) -> None:
    fleet.publish(fleet_policy(tmp_path / "policy"))
    lab = fleet.labs["bras-east-1"]
    cp = lab.run(
        lab.ns_gw,
        [CTL, "daemon", "--store", fleet.store_url, "--gateway", "bras-nowhere",
         "--state-dir", str(tmp_path / "s")],
        check=False,
    )  # fmt: skip
    assert cp.returncode == 2
    assert "bras-nowhere" in cp.stderr and "not in gateways.yaml" in cp.stderr
    assert "op25b" not in lab.run(lab.ns_gw, ["nft", "list", "tables"]).stdout
