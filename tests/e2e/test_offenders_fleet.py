"""Offenders across the fleet: each gateway's one status key carries its per-pool counts and
a bounded top list; `offenders --store` and `fleet status` show the fleet-wide picture."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from op25b_lab.fleet import FleetLab
from op25b_lab.lab import DYN_A, FOREIGN_MX, Outcome, wait_for
from tests.daemonpolicy import EAST1
from tests.e2e.conftest import lab_unavailable
from tests.fleetpolicy import fleet_policy

pytestmark = pytest.mark.root

NAMES = ["bras-east-1", "bras-east-2"]  # both carry flets-east-dyn-1 (enforce)


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch) -> Iterator[FleetLab]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv("OP25B_OFFENDERS_REPORT_EVERY", "1")  # not 30 s in a test
    with FleetLab(NAMES) as f:
        for lab in f.labs.values():
            lab.serve_tcp([25])
        yield f


def test_status_keys_carry_counts_and_a_top_list_and_the_store_view_merges_them(
    fleet: FleetLab, tmp_path: Path
) -> None:
    assert fleet.publish(fleet_policy(tmp_path / "policy"))["revision"] == 1
    for name in NAMES:
        fleet.start(name)
    fleet.wait_applied(NAMES, policy_revision=1)
    for name, n in zip(NAMES, (2, 5), strict=True):
        lab = fleet.labs[name]
        got = lab.connect_many(lab.ns_sub, [(DYN_A.v4, FOREIGN_MX.v4, 25)] * n, timeout=1.0)
        assert {r.outcome for r in got} == {Outcome.REFUSED}

    def reported() -> dict[str, Any] | None:
        st = fleet.statuses()
        tops = {n: (st.get(n, {}).get("offenders") or {}).get("top") or [] for n in NAMES}
        return st if all(t and t[0]["attempts"] > 0 for t in tops.values()) else None

    statuses = wait_for("offenders in both status keys", reported, 30)
    for name, n in zip(NAMES, (2, 5), strict=True):
        section = statuses[name]["offenders"]
        assert section["pools"][EAST1] == 1
        (top,) = [r for r in section["top"] if r["pool"] == EAST1]
        assert (top["source"], top["attempts"], top["mode"]) == (DYN_A.v4, n, "enforce")
        assert set(top) == {"source", "pool", "mode", "attempts", "last_seen"}  # metadata only

    out = json.loads(fleet.ctl("offenders", "--pool", EAST1, "-o", "json").stdout)
    assert out["pools"][EAST1] == {"distinct": 2, "by_gateway": dict.fromkeys(NAMES, 1)}
    assert [(r["gateway"], r["attempts"]) for r in out["offenders"]] == [
        ("bras-east-2", 5),
        ("bras-east-1", 2),
    ]
    # exit 4: bras-west-1 of gateways.yaml does not run in this test
    rows = json.loads(fleet.ctl("fleet", "status", "-o", "json", check=False).stdout)["gateways"]
    assert {r["gateway"]: r["offenders"][EAST1] for r in rows if r["gateway"] in NAMES} == {
        "bras-east-1": 1,
        "bras-east-2": 1,
    }
    # no key per address: the store holds exactly one status key per gateway
    assert sorted(fleet.statuses()) == sorted(NAMES)
