"""Rollout, overrides and exemptions on a real gateway: the CLI in the lab's gw namespace.

Every probe is a real TCP handshake from the subscriber namespace through gw; the action in
the example policy is `reject`, so a blocked connect is refused at once (no timeouts to wait).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from op25b_lab.lab import DYN_A, DYN_B, DYN_W, FOREIGN_MX, RELAY, Lab
from tests.policytools import EXAMPLE, REPO, edit, example_policy

pytestmark = pytest.mark.root

CLI = str(REPO / ".venv" / "bin" / "op25b-ctl")
E1, E2, W1 = "flets-east-dyn-1", "flets-east-dyn-2", "flets-west-dyn-1"
BEFORE_E1 = "2011-01-17T09:59:00+09:00"
AT_E1 = "2011-01-17T10:00:00+09:00"
NOW_2026 = "2026-11-27T12:00:00+09:00"


class Gw:
    """op25b-ctl in the lab's gateway with its own policy copy and state directory."""

    def __init__(self, lab: Lab, tmp_path: Path, policy: Path = EXAMPLE) -> None:
        self.lab = lab
        self.policy = policy
        self.state = tmp_path / "state"

    def argv(self, *args: str) -> list[str]:
        return [CLI, *args, "--policy", str(self.policy), "--state-dir", str(self.state)]

    def run(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        cp = self.lab.run(self.lab.ns_gw, self.argv(*args), check=False)
        assert cp.returncode == code, f"{args}: exit {cp.returncode}\n{cp.stdout}\n{cp.stderr}"
        return cp

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def counters(self, now: str) -> dict[str, int]:
        status = self.json("status", "--now", now)
        return {p["name"]: p["blocked"]["packets"] for p in status["pools"]} | {
            "exempted": status["exempted"]["packets"]
        }

    def ruleset(self) -> str:
        return self.lab.run(self.lab.ns_gw, ["nft", "list", "ruleset"]).stdout


def outcomes(lab: Lab, *targets: tuple[str, str]) -> list[str]:
    results = lab.connect_many(lab.ns_sub, [(s, d, 25) for s, d in targets], timeout=1.0)
    return [r.outcome.value for r in results]


@pytest.fixture
def served(lab: Lab) -> Lab:
    lab.serve_tcp([25])
    return lab


def test_tick_at_enforcement_date_starts_blocking(served: Lab, tmp_path: Path) -> None:
    gw = Gw(served, tmp_path)
    out = gw.run("rollout", "tick", "--now", BEFORE_E1).stdout
    assert "settings-change done" in out and len(out.splitlines()) == 1
    a4, a6, b4 = (DYN_A.v4, FOREIGN_MX.v4), (DYN_A.v6, FOREIGN_MX.v6), (DYN_B.v4, FOREIGN_MX.v4)
    assert outcomes(served, a4, a6, b4) == ["connected"] * 3  # monitor: counted, not blocked
    # the same minute again: nothing due, nothing printed (cron sends no mail), and the
    # policy is not even loaded: inputs, time window and ruleset generation are unchanged
    assert gw.run("rollout", "tick", "--now", BEFORE_E1).stdout == ""
    assert gw.json("rollout", "tick", "--now", BEFORE_E1)["idle"] is True

    out = gw.run("rollout", "tick", "--now", AT_E1).stdout
    assert f"{E1} monitor->enforce" in out and "stage enforce-east-1 done" in out
    assert outcomes(served, a4, a6, b4) == ["refused", "refused", "connected"]
    assert outcomes(served, (DYN_A.v4, RELAY.v4)) == ["connected"]  # the ISP's relay
    assert gw.counters(AT_E1)[E1] == 2

    calendar = gw.json("rollout", "status", "--now", AT_E1)
    assert [s["state"] for s in calendar["stages"]] == ["done", "done", "in 7d 0h", "tbd"]
    actions = [e["action"] for e in gw.json("audit")["entries"]]
    assert actions == ["rollout tick", "rollout tick"]


def test_rollback_one_pool_keeps_the_other_blocked_and_counting(
    served: Lab, tmp_path: Path
) -> None:
    gw = Gw(served, tmp_path)
    gw.run("rollout", "tick", "--now", NOW_2026)
    a4, w4, w6 = (DYN_A.v4, FOREIGN_MX.v4), (DYN_W.v4, FOREIGN_MX.v4), (DYN_W.v6, FOREIGN_MX.v6)
    assert outcomes(served, a4, w4, w6) == ["refused"] * 3
    before = gw.counters(NOW_2026)
    assert before[W1] == 2 and before[E1] == 1

    data = gw.json("pool", "rollback", E1, "--reason", "INC-42 relay outage", "--now", NOW_2026)
    assert data["changes"] == {E1: {"before": "enforce", "after": "off"}} and data["ops"] == 1
    # effective as soon as the command returned: no waiting, no retry
    assert outcomes(served, a4, w4, w6) == ["connected", "refused", "refused"]
    after = gw.counters(NOW_2026)
    assert after[W1] == before[W1] + 2  # W1's counter kept running, not reset
    assert after[E1] == before[E1]  # E1's counter object kept too (for the dashboards)

    # the override outlives this process: a later tick keeps it; clearing restores the stage
    assert gw.run("rollout", "tick", "--now", NOW_2026).stdout == ""
    assert outcomes(served, a4) == ["connected"]
    gw.run("pool", "clear", E1, "--reason", "relay back", "--now", NOW_2026)
    assert outcomes(served, a4) == ["refused"]
    entries = gw.json("audit")["entries"]
    assert [e["action"] for e in entries] == ["rollout tick", "pool rollback", "pool clear"]
    assert entries[1]["reason"] == "INC-42 relay outage" and entries[1]["user"]


EXEMPTIONS = f"""\
exemptions:
  - prefix: {DYN_A.v4}/32
    ticket: NMT-2026-0100
    reason: own MX, opt-out approved
  - prefix: {DYN_A.v6}/128
    ticket: NMT-2026-0101
    expires: 2026-12-01T00:00:00+09:00
"""


def test_exempted_subscriber_passes_until_expiry(served: Lab, tmp_path: Path) -> None:
    policy = example_policy(tmp_path / "policy", **{"exemptions.yaml": EXEMPTIONS})
    gw = Gw(served, tmp_path, policy)
    gw.run("rollout", "tick", "--now", NOW_2026)
    a4, a6, b4 = (DYN_A.v4, FOREIGN_MX.v4), (DYN_A.v6, FOREIGN_MX.v6), (DYN_W.v4, FOREIGN_MX.v4)
    assert outcomes(served, a4, a6, b4) == ["connected", "connected", "refused"]
    assert gw.counters(NOW_2026)["exempted"] >= 2  # packets: every segment of both connections
    why = gw.json("explain", DYN_A.v4, "--to", FOREIGN_MX.v4, "--now", NOW_2026)
    assert why["tcp25"] == "passes" and why["exemption"] == "NMT-2026-0100"
    assert why["live_agrees"] is True

    # the controller ends the v6 exemption at its expiry (not a kernel element timeout)
    out = gw.run("rollout", "tick", "--now", "2026-12-01T00:00:00+09:00").stdout
    assert f"exemption {DYN_A.v6}/128 removed" in out
    assert outcomes(served, a4, a6) == ["connected", "refused"]


def test_concurrent_tick_and_rollback_end_consistent(served: Lab, tmp_path: Path) -> None:
    gw = Gw(served, tmp_path)
    gw.run("rollout", "tick", "--now", BEFORE_E1)
    procs = [
        served.start(served.ns_gw, gw.argv("rollout", "tick", "--now", AT_E1)),
        served.start(
            served.ns_gw, gw.argv("pool", "rollback", E1, "--reason", "race", "--now", AT_E1)
        ),
    ]
    for proc in procs:
        assert proc.wait(60) == 0, served.output(proc)
        served.stop(proc)
    # whichever ran first, the override wins and the gateway matches the state on disk
    assert gw.json("plan", "--now", AT_E1)["changes"] == 0
    modes = {
        p["name"]: (p["mode"], p["live_mode"]) for p in gw.json("status", "--now", AT_E1)["pools"]
    }
    assert modes[E1] == ("off", "off") and modes[W1] == ("monitor", "monitor")
    assert outcomes(served, (DYN_A.v4, FOREIGN_MX.v4)) == ["connected"]
    overrides = json.loads((gw.state / "overrides.json").read_text())["overrides"]
    assert list(overrides) == [E1]
    lines = (gw.state / "audit.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # no torn or interleaved lines
    assert "pool rollback" in [json.loads(line)["action"] for line in lines]


def test_bad_schedule_or_override_leaves_live_ruleset_unchanged(
    served: Lab, tmp_path: Path
) -> None:
    policy = example_policy(tmp_path / "policy")
    gw = Gw(served, tmp_path, policy)
    gw.run("rollout", "tick", "--now", NOW_2026)
    before = gw.ruleset()
    bad = gw.run("pool", "rollback", "flets-north", "--reason", "x", code=2)
    assert "unknown pool 'flets-north'" in bad.stderr
    bad = gw.run("pool", "rollback", E1, "--reason", "x", "--until", "2026-12-01T09:00", code=2)
    assert "no UTC offset" in bad.stderr
    edit(policy / "rollout.yaml", "pools: [flets-west-dyn-1]", "pools: [flets-wets-dyn-1]")
    bad = gw.run("rollout", "tick", "--now", NOW_2026, code=2)
    assert "rollout.yaml:" in bad.stderr and "unknown pool 'flets-wets-dyn-1'" in bad.stderr
    assert gw.ruleset() == before
    assert outcomes(served, (DYN_W.v4, FOREIGN_MX.v4)) == ["refused"]


def test_tick_repairs_a_tampered_pool_chain(served: Lab, tmp_path: Path) -> None:
    gw = Gw(served, tmp_path)
    gw.run("rollout", "tick", "--now", NOW_2026)
    assert gw.json("rollout", "tick", "--now", NOW_2026)["idle"] is True
    served.run(served.ns_gw, ["nft", "flush", "chain", "inet", "op25b", f"pool_{E1}"])
    assert outcomes(served, (DYN_A.v4, FOREIGN_MX.v4)) == ["connected"]
    # the ruleset generation moved: the tick does the full comparison and repairs the chain
    out = gw.run("rollout", "tick", "--now", NOW_2026).stdout
    assert f"{E1} off->enforce" in out
    assert outcomes(served, (DYN_A.v4, FOREIGN_MX.v4)) == ["refused"]


def test_readiness_counts_the_subscribers_still_on_25(served: Lab, tmp_path: Path) -> None:
    """Settings-change period, a week before enforce-east-1: real SYNs from one subscriber
    of flets-east-dyn-1 over v4 and another over v6 (monitor: they pass) are two offenders
    against a threshold of 0, and `rollout status` says so; east-2's pool sent nothing."""
    gw = Gw(served, tmp_path)
    week_before = "2011-01-10T10:00:00+09:00"
    gw.run("rollout", "tick", "--now", week_before)
    a4, a6 = (DYN_A.v4, FOREIGN_MX.v4), (DYN_A.v6, FOREIGN_MX.v6)
    assert outcomes(served, a4, a6, a4) == ["connected"] * 3
    out = gw.run("rollout", "status", "--now", week_before).stdout
    assert (
        "  enforce-east-1 due 2011-01-17: 2 subscribers of flets-east-dyn-1 still sent on 25 "
        "in the last 7 days (threshold 0: NOT READY, due within 7d)\n"
    ) in out
    stages = {
        r["stage"]: r for r in gw.json("rollout", "status", "--now", week_before)["readiness"]
    }
    assert (stages["enforce-east-1"]["offenders"], stages["enforce-east-1"]["warning"]) == (2, True)
    assert (stages["enforce-east-2"]["offenders"], stages["enforce-east-2"]["ready"]) == (0, True)
