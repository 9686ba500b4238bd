"""Shared pieces of the kernel-side fault and churn tests: a daemon on the lab gateway that
was applied *before* it started (the production case), a prober, and enforcement checks."""

from __future__ import annotations

import json
import time
from pathlib import Path

from op25b_lab.lab import DYN_A, DYN_W, FOREIGN_MX, RELAY, Lab, wait_for
from tests.e2e.ctl import ctl, ctl_json
from tests.e2e.test_daemon import EAST1_CHAIN, REPAIR_DEADLINE, Gateway, smtp_attempts

__all__ = [
    "EAST1_CHAIN",
    "REPAIR_DEADLINE",
    "Gateway",
    "applied_gateway",
    "assert_enforced",
    "replace_rule_with_accept",
    "wait_for",
]


def applied_gateway(lab: Lab, tmp: Path, *, state: Path | None = None) -> Gateway:
    """`op25b-ctl apply` first (with `state`, default the daemon's state dir), as a gateway
    that has run before; the daemon is not started yet."""
    gw = Gateway(lab, tmp)
    cp = ctl(
        lab,
        "apply",
        "--policy",
        str(gw.policy),
        "--state-dir",
        str(state or gw.state),
        "-o",
        "json",
    )
    assert cp.returncode == 0, cp.stderr
    return gw


def replace_rule_with_accept(gw: Gateway, chain: str = EAST1_CHAIN) -> None:
    """The issue's edit: same counter, same comment, `accept` instead of the pool's verdict."""
    listing = json.loads(gw.nft("-a", "-j", "list", "chain", "inet", "op25b", chain))
    # the verdict rule: the last one (the two before it record offenders)
    rule = [i["rule"] for i in listing["nftables"] if "rule" in i][-1]
    counter = f"blocked_{chain.removeprefix('pool_')}"
    gw.nft(
        "replace", "rule", "inet", "op25b", chain, "handle", str(rule["handle"]),
        "counter", "name", counter, "accept", "comment", f'"{rule["comment"]}"',
    )  # fmt: skip


def assert_enforced(lab: Lab, gw: Gateway) -> None:
    """The intended enforcement, with real TCP: both enforced pools refused on 25 (v4 and v6),
    the relay reachable, and a full read of every element finds nothing to change."""
    assert smtp_attempts(lab, DYN_A.v4, FOREIGN_MX.v4, 1) == ["refused"]
    assert smtp_attempts(lab, DYN_A.v6, FOREIGN_MX.v6, 1) == ["refused"]
    assert smtp_attempts(lab, DYN_W.v4, FOREIGN_MX.v4, 1) == ["refused"]
    assert smtp_attempts(lab, DYN_A.v4, RELAY.v4, 1) == ["connected"]
    assert gw.plan_is_empty()


def status(lab: Lab, gw: Gateway) -> dict[str, object]:
    return dict(ctl_json(lab, "status", "--policy", str(gw.policy), "--state-dir", str(gw.state)))


def repaired_within(gw: Gateway, chain: str, since: float) -> float:
    """Seconds from `since` until `chain` holds its pool's verdict again (polled)."""
    wait_for(
        f"{chain} repaired",
        lambda: "accept" not in gw.nft("list", "chain", "inet", "op25b", chain),
        REPAIR_DEADLINE,
    )
    return time.monotonic() - since
