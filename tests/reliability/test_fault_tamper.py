"""Someone else edits our table while the daemon runs on a table that existed before it
started (after `apply`, after any restart): every edit is undone within the interval, and a
real TCP/25 connect from the enforced pool is refused again."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from op25b_lab.lab import DYN_A, FOREIGN_MX, Lab
from tests.e2e.conftest import lab, make_lab  # noqa: F401  (fixtures)
from tests.e2e.ctl import ctl
from tests.reliability.conftest import Recorder
from tests.reliability.kernelfaults import (
    EAST1_CHAIN,
    REPAIR_DEADLINE,
    Gateway,
    applied_gateway,
    assert_enforced,
    repaired_within,
    replace_rule_with_accept,
    status,
    wait_for,
)
from tests.reliability.prober import Prober

pytestmark = pytest.mark.root
SECTION = "fault"


@pytest.mark.parametrize("reference", ["saved by apply", "none saved"])
def test_rule_replaced_with_accept_is_repaired(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
    record: Recorder,
    reference: str,
) -> None:
    """Issue 10, item 1: `nft replace rule ... counter name blocked_<pool> accept comment
    "op25b:<id>"` with the daemon running on a pre-existing table."""
    lab.serve_tcp([25])
    other = tmp_path / "other-state" if reference == "none saved" else None
    gw = applied_gateway(lab, tmp_path, state=other)
    gw.start()
    assert ctl(lab, "plan", "--policy", str(gw.policy)).returncode == 0
    before = gw.sample("op25b_reconcile_changes_total")
    if reference == "none saved":  # nothing to compare with: every chain rewritten once
        assert before == 1 and gw.sample("op25b_drift_repairs_total") == 0
    else:
        assert before == 0
    prober = Prober(lab, DYN_A.v4, FOREIGN_MX.v4)
    prober.wait_attempts(3)

    replace_rule_with_accept(gw)
    took = repaired_within(gw, EAST1_CHAIN, time.monotonic())
    wait_for("a drift repair counted", lambda: gw.sample("op25b_drift_repairs_total") == 1)
    prober.wait_attempts(3)
    since_repair = prober.state()
    final = prober.stop()
    assert final["counts"].get("connected", 0) == since_repair["counts"].get("connected", 0)
    assert_enforced(lab, gw)
    assert gw.sample("op25b_table_in_sync") == 1
    assert "rules edited in place" in gw.log()
    record(
        f"rule replaced with accept ({reference})",
        done="nft replace rule ... counter name blocked_<pool> accept comment <ours>, "
        "daemon started on an existing table",
        expected=f"rewritten within the interval (0.5 s) + {REPAIR_DEADLINE - 0.5:.1f} s slack; "
        "TCP/25 refused again",
        observed=f"repaired in {took:.2f} s; {final['counts']} probes in all, "
        f"{len(final['leaks'])} connected while the edit stood",
        figure=f"{took:.2f} s",
    )


def test_status_and_apply_see_a_rule_edited_in_place(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
    record: Recorder,
) -> None:
    """No daemon: `status` must not say "rules in sync" over an edited rule; `apply` fixes it."""
    lab.serve_tcp([25])
    gw = applied_gateway(lab, tmp_path)
    good = status(lab, gw)
    assert good["rules_in_sync"] is True and good["statements_verified"] is True

    replace_rule_with_accept(gw)
    assert smtp_attempts_connected(lab)  # the edit really opens TCP/25
    bad = status(lab, gw)
    assert bad["rules_in_sync"] is False and bad["rules_edited"] == [EAST1_CHAIN]

    cp = ctl(lab, "apply", "--policy", str(gw.policy), "--state-dir", str(gw.state))
    assert cp.returncode == 0, cp.stderr
    assert status(lab, gw)["rules_in_sync"] is True
    assert_enforced(lab, gw)
    record(
        "rule replaced, status and apply",
        done="same edit, no daemon running",
        expected="status: rules_in_sync false, the chain named; apply rewrites it",
        observed=f"status named {bad['rules_edited']}; apply repaired; TCP/25 refused",
    )


def smtp_attempts_connected(lab: Lab) -> bool:  # noqa: F811  (not the fixture)
    return bool(lab.connect(DYN_A.v4, FOREIGN_MX.v4, 25).connected)


def _delete_table(gw: Gateway) -> None:
    gw.nft("delete", "table", "inet", "op25b")


def _flush_table(gw: Gateway) -> None:
    gw.nft("flush", "table", "inet", "op25b")


def _delete_element(gw: Gateway) -> None:
    gw.nft("delete", "element", "inet", "op25b", "pools_v4", "{", "192.0.2.0/26", "}")


TAMPER: dict[str, tuple[Callable[[Gateway], None], str]] = {
    "table deleted": (_delete_table, "nft delete table inet op25b"),
    "table flushed": (_flush_table, "nft flush table inet op25b"),
    "element deleted": (_delete_element, "nft delete element ... pools_v4 { 192.0.2.0/26 }"),
}


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_table_edits_are_repaired(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
    record: Recorder,
    case: str,
) -> None:
    lab.serve_tcp([25])
    gw = applied_gateway(lab, tmp_path)
    # element edits keep the table's shape: only the periodic full read sees them
    gw.start("--verify-interval", "1")
    prober = Prober(lab, DYN_A.v4, FOREIGN_MX.v4)
    prober.wait_attempts(3)
    tamper, how = TAMPER[case]
    tamper(gw)
    start = time.monotonic()
    wait_for(
        "a drift repair counted",
        lambda: gw.sample("op25b_drift_repairs_total") == 1,
        REPAIR_DEADLINE + 1,
    )
    took = time.monotonic() - start
    prober.wait_attempts(3)
    final = prober.stop()
    assert_enforced(lab, gw)
    assert gw.sample("op25b_reconcile_errors_total") == 0
    record(
        case,
        done=how,
        expected="repaired within the interval (element edits: the 1 s full verify); "
        "TCP/25 refused again; nothing else lost",
        observed=f"repaired after {took:.2f} s; probes {final['counts']}",
        figure=f"{took:.2f} s",
    )
