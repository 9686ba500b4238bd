"""Offenders end to end: real SYNs through the lab gateway fill the kernel's offender sets,
and `op25b-ctl offenders` and the daemon's metrics read them back over netlink."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from op25b_lab.lab import DYN_A, DYN_B, FOREIGN_MX, IF_SUB, Lab, Outcome, wait_for
from tests.e2e.ctl import ctl, ctl_json
from tests.e2e.test_daemon import Gateway
from tests.policytools import example_policy

pytestmark = pytest.mark.root

ENFORCED, MONITORED = "flets-east-dyn-1", "flets-east-dyn-2"  # the example policy, today
# three subscribers of each pool: the lab's own one and two more on the same link
EAST1 = (DYN_A.v4, "192.0.2.11", "192.0.2.12")
EAST2 = (DYN_B.v4, "192.0.2.71", "192.0.2.72")
EXTRA_V6 = "2001:db8:1000::11"  # the same /64 as DYN_A.v6: one subscriber
ATTEMPTS = (1, 3, 7)

GATEWAY = """\
gateway:
  table: op25b
  action: reject
  offenders:
    size: {size}
    retention: 2h
"""


def policy(tmp: Path, size: int = 65536) -> Path:
    return example_policy(tmp / "policy", **{"gateway.yaml": GATEWAY.format(size=size)})


def add_sources(lab: Lab, *addresses: str) -> None:
    for address in addresses:
        width = 128 if ":" in address else 32
        extra = ["nodad"] if ":" in address else []
        lab.run(lab.ns_sub, ["ip", "addr", "add", f"{address}/{width}", "dev", IF_SUB, *extra])


def attempt(lab: Lab, sources: tuple[str, ...], dst: str) -> list[Outcome]:
    """ATTEMPTS[i] TCP/25 connects from sources[i], all in one prober."""
    targets = [(src, dst, 25) for src, n in zip(sources, ATTEMPTS, strict=True) for _ in range(n)]
    return [r.outcome for r in lab.connect_many(lab.ns_sub, targets, timeout=1.0)]


def offenders(lab: Lab, pol: Path, *args: str) -> dict[str, Any]:
    data: dict[str, Any] = ctl_json(lab, "offenders", "--policy", str(pol), *args)
    return data


def test_offenders_are_ranked_by_attempts_in_monitor_and_enforce_pools(
    lab: Lab, tmp_path: Path
) -> None:
    pol = policy(tmp_path)
    lab.serve_tcp([25])
    add_sources(lab, *EAST1[1:], *EAST2[1:], EXTRA_V6)
    assert ctl(lab, "apply", "--policy", str(pol)).returncode == 0

    blocked = attempt(lab, EAST1, FOREIGN_MX.v4)
    passed = attempt(lab, EAST2, FOREIGN_MX.v4)
    assert set(blocked) == {Outcome.REFUSED}  # enforce: every attempt refused
    assert set(passed) == {Outcome.CONNECTED}  # monitor: every attempt passes
    v6 = lab.connect_many(
        lab.ns_sub, [(DYN_A.v6, FOREIGN_MX.v6, 25)] * 2 + [(EXTRA_V6, FOREIGN_MX.v6, 25)]
    )
    assert {r.outcome for r in v6} == {Outcome.REFUSED}

    for pool, mode, sources in ((ENFORCED, "enforce", EAST1), (MONITORED, "monitor", EAST2)):
        data = offenders(lab, pol, "--pool", pool)
        rows = [r for r in data["offenders"] if ":" not in r["source"]]
        assert [(r["source"], r["attempts"]) for r in rows] == [
            (sources[2], 7),
            (sources[1], 3),
            (sources[0], 1),
        ]
        assert {(r["pool"], r["mode"], r["exempted"]) for r in rows} == {(pool, mode, False)}
        for r in rows:
            assert r["last_seen"] >= data["time"][:10]  # today, in the retention window
        (summary,) = data["pools"]
        assert summary["mode"] == mode and summary["v4"] == 3

    # IPv6: two addresses of one /64 are one subscriber with all three attempts
    v6_rows = [
        r for r in offenders(lab, pol, "--pool", ENFORCED)["offenders"] if ":" in r["source"]
    ]
    assert [(r["source"], r["attempts"]) for r in v6_rows] == [("2001:db8:1000::/64", 3)]

    # --mode and --top narrow the list; the text table has the columns
    only = offenders(lab, pol, "--mode", "monitor", "--top", "1")
    assert [(r["source"], r["pool"]) for r in only["offenders"]] == [(EAST2[2], MONITORED)]
    text = ctl(lab, "offenders", "--policy", str(pol), "--pool", ENFORCED).stdout
    assert "SOURCE" in text and "LAST SEEN" in text and EAST1[2] in text

    # a re-apply (and a plan) keeps the kernel's elements: they are data, not drift; the
    # recording rules' statements read back as written (their digests exclude nothing live)
    assert ctl_json(lab, "plan", "--policy", str(pol))["changes"] == 0
    status = ctl_json(lab, "status", "--policy", str(pol))
    assert status["rules_in_sync"] and status["statements_verified"], status
    assert ctl(lab, "apply", "--policy", str(pol)).returncode == 0
    again = offenders(lab, pol, "--pool", ENFORCED)["offenders"]
    assert [r["attempts"] for r in again if ":" not in r["source"]] == [7, 3, 1]


def test_a_full_set_still_blocks_new_sources_and_the_fill_metric_reads_one(
    lab: Lab, tmp_path: Path
) -> None:
    size = 16
    gw = Gateway(lab, tmp_path)
    gw.policy = policy(tmp_path, size=size)
    lab.serve_tcp([25])
    assert ctl(lab, "apply", "--policy", str(gw.policy)).returncode == 0
    # fill the enforced pool's v4 set to its size from userspace (addresses of the pool),
    # before the daemon starts: it finds them there
    filler = ", ".join(f"192.0.2.{20 + i}" for i in range(size))
    gw.nft("add", "element", "inet", "op25b", f"offenders_{ENFORCED}_v4", f"{{ {filler} }}")
    gw.start()
    wait_for(
        "fill ratio 1.0",
        lambda: (
            gw.sample("op25b_pool_offender_set_fill_ratio", pool=ENFORCED, family="ipv4") == 1.0
            or None
        ),
    )
    assert gw.sample("op25b_pool_offenders", pool=ENFORCED, mode="enforce") == size

    # a new source of the full pool: the accounting rule breaks at its update, the drop
    # rule after it still refuses every attempt (0 connections through)
    results = lab.connect_many(lab.ns_sub, [(DYN_A.v4, FOREIGN_MX.v4, 25)] * 5, timeout=1.0)
    assert [r.outcome for r in results] == [Outcome.REFUSED] * 5
    data = offenders(lab, gw.policy, "--pool", ENFORCED, "--top", "0")
    assert DYN_A.v4 not in {r["source"] for r in data["offenders"]}  # not recorded: full
    assert data["pools"][0]["fill_v4"] == 1.0
    counters = ctl_json(lab, "status", "--policy", str(gw.policy))
    east1 = next(p for p in counters["pools"] if p["name"] == ENFORCED)
    assert east1["blocked"]["packets"] >= 5  # every attempt hit the drop rule

    # through the daemon's socket, first seen comes from the daemon's record: a source that
    # appears after the daemon's first look is exact, one that was there before is a bound
    lab.connect_many(lab.ns_sub, [(DYN_B.v4, FOREIGN_MX.v4, 25)] * 2, timeout=1.0)
    via = ["--state-dir", str(gw.state), "--top", "0"]
    rows = {r["source"]: r for r in offenders(lab, gw.policy, *via)["offenders"]}
    assert rows[DYN_B.v4]["first_seen_exact"] and rows[DYN_B.v4]["attempts"] == 2
    assert rows[DYN_B.v4]["first_seen"] <= rows[DYN_B.v4]["last_seen"]
    assert not rows["192.0.2.20"]["first_seen_exact"]
    assert rows["192.0.2.20"]["first_seen"] is not None
    # standalone (no daemon socket): first seen is not known
    alone = offenders(lab, gw.policy, "--top", "0")["offenders"]
    assert {r["first_seen"] for r in alone} == {None}
    gw.stop()
