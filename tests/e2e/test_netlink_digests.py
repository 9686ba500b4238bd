"""netlink reads the daemon relies on: counter reference counts and rule digests (real kernel)."""

from __future__ import annotations

import json
import subprocess

import pytest

from op25b_ctl.kernel.base import UNREADABLE
from tests.policytools import REPO

pytestmark = pytest.mark.root

PYTHON = str(REPO / ".venv" / "bin" / "python")
RULESET = """
table inet op25b {
    counter used { }
    counter unused { packets 4 bytes 240 }
    chain pool_a {
        counter name "used" drop comment "op25b:aaaa"
        counter accept comment "op25b:bbbb"
    }
}
table inet other {
    chain c {
        accept comment "op25b:aaaa"
    }
}
"""
READER = """
import dataclasses, json, sys
from op25b_ctl.kernel import netlink
netlink.read_skeleton("op25b")  # the daemon's order: once, every digest read sha256(b"")
print(json.dumps({
    "objects": {k: dataclasses.asdict(v) for k, v in netlink.read_counters("op25b").items()},
    "digests": {f"{c}|{k}": d for (c, k), d in netlink.read_rule_digests("op25b").items()},
    "missing": netlink.read_rule_digests("nope"),
}))
"""


def sh(ns: str, *argv: str, stdin: str | None = None) -> str:
    cp = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True, timeout=60
    )
    assert cp.returncode == 0, cp.stderr
    return cp.stdout


def read(ns: str) -> dict[str, dict[str, object]]:
    return dict(json.loads(sh(ns, PYTHON, "-W", "error", "-c", READER)))


def test_counter_refs_and_rule_digests(netns: str) -> None:
    sh(netns, "nft", "-f", "-", stdin=RULESET)
    first = read(netns)
    assert first["objects"] == {
        "used": {"packets": 0, "bytes": 0, "refs": 1},  # a rule counts into it
        "unused": {"packets": 4, "bytes": 240, "refs": 0},
    }
    assert set(first["digests"]) == {"pool_a|op25b:aaaa", "pool_a|op25b:bbbb"}  # ours only
    assert first["missing"] == {}
    assert read(netns)["digests"] == first["digests"]  # stable between reads
    assert UNREADABLE not in str(first["digests"])
    assert len({str(d) for d in first["digests"].values()}) == 2  # two rules, two digests

    # same comment, different statement: the digest changes, the other rule's does not
    listing = json.loads(sh(netns, "nft", "-a", "-j", "list", "chain", "inet", "op25b", "pool_a"))
    handle = next(
        i["rule"]["handle"]
        for i in listing["nftables"]
        if i.get("rule", {}).get("comment") == "op25b:aaaa"
    )
    sh(netns, "nft", "replace", "rule", "inet", "op25b", "pool_a", "handle", str(handle),
       "counter", "name", "used", "accept", "comment", '"op25b:aaaa"')  # fmt: skip
    after = read(netns)
    assert after["digests"]["pool_a|op25b:aaaa"] != first["digests"]["pool_a|op25b:aaaa"]
    assert after["digests"]["pool_a|op25b:bbbb"] == first["digests"]["pool_a|op25b:bbbb"]
