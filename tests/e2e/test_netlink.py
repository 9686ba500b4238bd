"""End-to-end tests of op25b_ctl.kernel.netlink against a real kernel, each in its own namespace.

The module reads the ruleset of the namespace it runs in, so the reads run in a subprocess
started with `ip netns exec NS <repo>/.venv/bin/python` and report JSON back to the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="needs root: creates network namespaces and loads nftables"
    ),
    pytest.mark.skipif(
        shutil.which("ip") is None or shutil.which("nft") is None,
        reason="needs the `ip` (iproute2) and `nft` (nftables) commands",
    ),
]

RULESET = """
table inet op25b {
    counter pool_a { packets 5 bytes 300 }
    counter pool_b { packets 7 bytes 4200 }
    counter unused { }

    set relays_v4 {
        type ipv4_addr
        flags interval
        elements = { 192.0.2.0/28, 198.51.100.7 }
    }

    map pools_v4 {
        type ipv4_addr : verdict
        flags interval
        elements = { 203.0.113.0/25 : jump pool_a, 203.0.113.128/25 : jump pool_b }
    }

    chain pool_a {
        counter name "pool_a" drop comment "op25b:aaaa"
    }

    chain pool_b {
        counter name "pool_b" reject with tcp reset
    }

    chain forward {
        type filter hook forward priority -5; policy accept;
        tcp dport { 25, 465 } ip daddr != @relays_v4 ip saddr vmap @pools_v4 comment "op25b:abc123"
    }
}

table ip other {
    counter o1 { packets 1 bytes 2 }
    set other_set { type ipv4_addr; }
    chain other_chain {
        type filter hook input priority 0; policy drop;
        accept comment "other:zzz"
    }
}

table inet elsewhere {
    counter e1 { packets 9 bytes 9 }
    map other_map { type ipv4_addr : verdict; }
    chain elsewhere_chain {
        type filter hook output priority 10; policy accept;
        accept comment "op25b:not-ours"
    }
}

table inet empty {
}
"""

# Runs inside the namespace: one read through op25b_ctl.kernel.netlink, printed as JSON.
# -W error: a read must not leave unclosed sockets behind.
READER = """
import dataclasses, json, sys
from op25b_ctl.kernel import netlink

op, args = sys.argv[1], sys.argv[2:]
try:
    if op == "counters":
        out = {k: {"packets": v.packets, "bytes": v.bytes} for k, v in netlink.read_counters(*args).items()}
    elif op == "elements":
        out = netlink.read_elements(*args)
    elif op == "generation":
        out = netlink.ruleset_generation()
    elif op == "skeleton":
        skel = netlink.read_skeleton(*args)
        out = None
        if skel is not None:
            out = dataclasses.asdict(skel) | {"counters": sorted(skel.counters)}
            for r in out["rules"]:
                r["expressions"] = len(r["expressions"])
            # the skeleton's own rule dump answers the digests as a second dump would
            digests = netlink.read_rule_digests(*args)
            out["digests_match"] = netlink.skeleton_digests(skel) == digests
            out["digests"] = len(digests)
    else:
        raise SystemExit(f"unknown op {op}")
except netlink.TableNotFound as e:
    out = {"TableNotFound": str(e)}
print(json.dumps(out))
"""


def run(argv: list[str], stdin: str | None = None) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout


def nft(ns: str, *args: str, stdin: str | None = None) -> str:
    return run(["ip", "netns", "exec", ns, "nft", *args], stdin=stdin)


def read(ns: str, op: str, *args: str) -> Any:
    out = run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            str(PYTHON),
            "-X",
            "dev",
            "-W",
            "error",
            "-c",
            READER,
            op,
            *args,
        ]
    )
    return json.loads(out)


@pytest.fixture
def loaded(netns: str) -> str:
    nft(netns, "-f", "-", stdin=RULESET)
    return netns


def test_counters_equal_what_nft_lists(loaded: str) -> None:
    listed = json.loads(nft(loaded, "-j", "list", "counters", "table", "inet", "op25b"))
    want = {
        item["counter"]["name"]: {
            "packets": item["counter"]["packets"],
            "bytes": item["counter"]["bytes"],
        }
        for item in listed["nftables"]
        if "counter" in item
    }

    got = read(loaded, "counters", "op25b")

    assert got == want
    assert got == {
        "pool_a": {"packets": 5, "bytes": 300},
        "pool_b": {"packets": 7, "bytes": 4200},
        "unused": {"packets": 0, "bytes": 0},
    }


def test_counters_of_other_family_and_empty_table(loaded: str) -> None:
    assert read(loaded, "counters", "other", "ip") == {"o1": {"packets": 1, "bytes": 2}}
    assert read(loaded, "counters", "empty") == {}


def test_missing_table(loaded: str) -> None:
    assert "TableNotFound" in read(loaded, "counters", "nope")
    # `other` exists, but as an ip table, not an inet one
    assert "TableNotFound" in read(loaded, "counters", "other")
    assert read(loaded, "skeleton", "nope") is None
    assert read(loaded, "skeleton", "other") is None


def test_missing_table_in_empty_namespace(netns: str) -> None:
    assert "TableNotFound" in read(netns, "counters", "op25b")
    assert read(netns, "skeleton", "op25b") is None
    assert isinstance(read(netns, "generation"), int)


def test_generation_changes_on_commit(loaded: str) -> None:
    first = read(loaded, "generation")
    assert read(loaded, "generation") == first  # reads do not bump it

    nft(loaded, "add", "chain", "inet", "op25b", "pool_c")

    second = read(loaded, "generation")
    assert second != first
    # a commit to any table counts, not only ours
    nft(loaded, "add", "chain", "ip", "other", "another")
    assert read(loaded, "generation") != second


def test_skeleton(loaded: str) -> None:
    skel = read(loaded, "skeleton", "op25b")

    assert skel["chains"] == [
        {"name": "pool_a", "hook": None, "priority": None, "policy": None},
        {"name": "pool_b", "hook": None, "priority": None, "policy": None},
        {"name": "forward", "hook": "forward", "priority": -5, "policy": "accept"},
    ]

    rules = [(r["chain"], r["comment"]) for r in skel["rules"]]
    assert rules == [("pool_a", "op25b:aaaa"), ("pool_b", None), ("forward", "op25b:abc123")]
    handles = json.loads(nft(loaded, "-j", "-a", "list", "table", "inet", "op25b"))
    want_handles = sorted(item["rule"]["handle"] for item in handles["nftables"] if "rule" in item)
    assert sorted(r["handle"] for r in skel["rules"]) == want_handles

    # named sets only: the anonymous `{ 25, 465 }` set of the forward rule is left out
    sets = {s["name"]: s for s in skel["sets"]}
    assert set(sets) == {"relays_v4", "pools_v4"}
    assert sets["relays_v4"]["is_map"] is False
    assert sets["pools_v4"]["is_map"] is True
    assert sets["relays_v4"]["flags"] & 0x4  # NFT_SET_INTERVAL
    assert sets["pools_v4"]["flags"] & 0x8  # NFT_SET_MAP

    assert skel["counters"] == ["pool_a", "pool_b", "unused"]
    assert all(r["expressions"] > 0 for r in skel["rules"])
    assert skel["digests_match"] and skel["digests"] == 3

    # nothing from the other tables leaked in
    text = json.dumps(skel)
    for foreign in ("other", "elsewhere", "o1", "e1", "zzz", "not-ours"):
        assert foreign not in text


def test_skeleton_base_chain_policy_drop_and_object_map(netns: str) -> None:
    nft(
        netns,
        "-f",
        "-",
        stdin="""
table ip6 op25b {
    counter c6 { }
    map ctr6 {
        type ipv6_addr : counter
        flags interval
        elements = { 2001:db8::/32 : "c6" }
    }
    chain postrouting {
        type filter hook postrouting priority 100; policy drop;
        counter name ip6 saddr map @ctr6 comment "op25b:v6"
    }
}
""",
    )

    skel = read(netns, "skeleton", "op25b", "ip6")

    assert skel["chains"] == [
        {"name": "postrouting", "hook": "postrouting", "priority": 100, "policy": "drop"}
    ]
    assert [r["comment"] for r in skel["rules"]] == ["op25b:v6"]
    (ctr6,) = skel["sets"]
    assert ctr6["name"] == "ctr6" and ctr6["is_map"] is True
    assert ctr6["flags"] & 0x40  # NFT_SET_OBJECT: an object map, not a data map
    assert skel["counters"] == ["c6"]
    assert read(netns, "skeleton", "op25b") is None  # no inet table of that name


RANGES = """
table inet op25b {
    set ranges_v4 {
        type ipv4_addr
        flags interval
        elements = { 192.0.2.3-192.0.2.9, 192.0.2.16/28, 192.0.2.32/28, 198.51.100.1 }
    }
    map ranges_v6 {
        type ipv6_addr : verdict
        flags interval
        elements = { 2001:db8::/48 : drop, 2001:db8:1::/48 : accept }
    }
    set empty_v4 { type ipv4_addr; flags interval; }
}
"""


def test_elements_paired_back_into_prefixes(netns: str) -> None:
    nft(netns, "-f", "-", stdin=RANGES)
    ranges = read(netns, "elements", "op25b", "ranges_v4")
    # a range becomes its CIDR blocks; adjacent prefixes stay separate (no auto-merge)
    assert ranges == {
        "192.0.2.3/32": None,
        "192.0.2.4/30": None,
        "192.0.2.8/31": None,
        "192.0.2.16/28": None,
        "192.0.2.32/28": None,
        "198.51.100.1/32": None,
    }
    assert read(netns, "elements", "op25b", "ranges_v6") == {
        "2001:db8::/48": "verdict:0",  # NF_DROP
        "2001:db8:1::/48": "verdict:1",  # NF_ACCEPT
    }
    assert read(netns, "elements", "op25b", "empty_v4") == {}
    assert "TableNotFound" in read(netns, "elements", "op25b", "no_such_set")


def test_elements_of_a_verdict_map_name_their_chains(loaded: str) -> None:
    assert read(loaded, "elements", "op25b", "pools_v4") == {
        "203.0.113.0/25": "pool_a",
        "203.0.113.128/25": "pool_b",
    }
