"""Readiness from real packets: the daemon's op25b_stage_* metrics count the subscribers of a
pending stage's pool who really sent TCP/25 through the lab gateway."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from op25b_lab.lab import DYN_B, FOREIGN_MX, Lab, Outcome, wait_for
from tests.e2e.test_daemon import Gateway
from tests.policytools import edit, example_policy

pytestmark = pytest.mark.root

STAGE = {"stage": "enforce-east-2"}  # flets-east-dyn-2, in monitor since the settings change
DUE = datetime(2099, 1, 1, tzinfo=timezone(timedelta(hours=9)))


def test_the_daemon_exports_a_pending_stages_offenders_from_real_syns(
    lab: Lab, tmp_path: Path
) -> None:
    gw = Gateway(lab, tmp_path)
    gw.policy = example_policy(tmp_path / "policy")
    # the example's tbd stage gets a date (in the future whatever today is) and a threshold
    edit(
        gw.policy / "rollout.yaml",
        "    at: tbd\n",
        f"    at: {DUE.isoformat()}\n    max_offenders: 1\n    warn_before: 36h\n",
    )
    lab.serve_tcp([25])
    gw.start()
    assert gw.sample("op25b_stage_due_timestamp_seconds", **STAGE) == DUE.timestamp()
    assert gw.sample("op25b_stage_offender_threshold", **STAGE) == 1
    assert gw.sample("op25b_stage_warn_before_seconds", **STAGE) == 36 * 3600
    assert gw.sample("op25b_stage_offenders", **STAGE) == 0
    assert gw.sample("op25b_stage_offenders", stage="enforce-east-1") is None  # done: gone

    # one subscriber of the pool over IPv4, another over IPv6 (its /64): monitor lets them pass
    tries = [(DYN_B.v4, FOREIGN_MX.v4, 25), (DYN_B.v4, FOREIGN_MX.v4, 25)]
    tries += [(DYN_B.v6, FOREIGN_MX.v6, 25)]
    assert {r.outcome for r in lab.connect_many(lab.ns_sub, tries)} == {Outcome.CONNECTED}
    wait_for(
        "two offenders for the stage",
        lambda: gw.sample("op25b_stage_offenders", **STAGE) == 2 or None,
    )
    gw.stop()
