"""The exemptions as the rules of their own chain (`exempt`, anonymous sets), on a real kernel:
changes under a SYN flood, the upgrade from the named sets `exempt_v4`/`exempt_v6`, and
hand edits of the chain repaired by the daemon.

A change of the exemptions in force is a rewrite of `exempt` (flush + add rule, one batch).
An anonymous set created in that batch may match nothing until the set backend's commit
step (docs/benchmarks.md): for that moment an exempted sender meets the pool's verdict (fail
closed), while a non-exempt one is never let through. The flood checks the second half.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import netaddr
import pytest
import yaml

from op25b_ctl.plan.desired import from_policy
from op25b_ctl.plan.ruleset import (
    DISPATCH_CHAIN,
    EXEMPT_CHAIN,
    EXEMPTED_COUNTER,
    FINGERPRINT_PREFIX,
    elements_fingerprint,
)
from op25b_ctl.plan.table import Chain, NamedSet, Rule, Table
from op25b_ctl.policy.loader import load_policy
from op25b_lab.lab import DYN_A, DYN_W, FOREIGN_MX, Lab, wait_for
from tests.daemonpolicy import daemon_policy
from tests.e2e.conftest import lab, make_lab  # noqa: F401  (fixtures)
from tests.e2e.ctl import ctl, ctl_json
from tests.e2e.test_bulk_changes import set_extra, synthetic
from tests.e2e.test_daemon import REPAIR_DEADLINE, Gateway, smtp_attempts
from tests.reliability.conftest import Recorder
from tests.reliability.test_rebuild_leak import COUNT_LEAKS, crossed
from tests.reliability.test_redeclare_leak import craft, flooding

pytestmark = pytest.mark.root

SECTION = "fault"
ELEMENTS = 5_000
COMMITS = 10
# exempted: DYN_A's neighbour (same enforced pool) and DYN_W (the other enforced pool)
NEIGHBOUR = "192.0.2.11/32"
EXEMPT = [NEIGHBOUR, f"{DYN_W.v4}/32", "2001:db8:1000::11/128"]


def write_exemptions(policy: Path, prefixes: list[str]) -> None:
    items = [{"prefix": p, "ticket": f"NMT-2026-{i:04d}"} for i, p in enumerate(prefixes)]
    (policy / "exemptions.yaml").write_text(yaml.safe_dump({"exemptions": items}))


def _apply(lab: Lab, policy: Path, state: Path) -> dict[str, object]:  # noqa: F811
    cp = ctl(lab, "apply", "--policy", str(policy), "--state-dir", str(state), "-o", "json")
    assert cp.returncode == 0, cp.stderr
    return dict(json.loads(cp.stdout))


def test_exemption_changes_leak_no_syn_from_the_pool_they_are_in(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
    record: Recorder,
) -> None:
    """Exemptions of DYN_A's neighbour and of the other pool come and go, one `apply` each,
    while raw SYNs pour out of DYN_A (enforced, never exempted): not one may cross."""
    policy, state = daemon_policy(tmp_path / "policy"), tmp_path / "state"
    set_extra(policy, synthetic(ELEMENTS))
    write_exemptions(policy, EXEMPT)
    _apply(lab, policy, state)
    lab.run(lab.ns_out, ["nft", "-f", "-"], input=COUNT_LEAKS)  # the lab's `out`, not gw
    sent = 0
    with flooding(lab, tmp_path, "exempt") as count:
        for i in range(COMMITS):
            write_exemptions(policy, EXEMPT[: 1 + i % 3] if i % 4 else [])
            diff = _apply(lab, policy, state)["diff"]
            assert isinstance(diff, list) and diff, "each round changes the exemptions"
            # the exempt chain's rules and nothing else
            assert all(f" {EXEMPT_CHAIN}" in line for line in diff), diff
    sent = count[0]
    leaked = crossed(lab)
    record(
        "exemptions changed under a SYN flood",
        done=(
            f"{COMMITS} `apply`s, each adding or removing exemptions in the pool the flood "
            f"comes from (and another), {ELEMENTS} extra prefixes; 2 raw-SYN flooders from "
            "a non-exempt source of an enforced pool"
        ),
        expected="no SYN crosses gw; each change one rewrite of chain exempt, no element op",
        observed=f"{leaked} of {sent} SYNs crossed",
        figure=f"{leaked} / {sent}",
    )
    assert sent > 50_000, f"only {sent} SYNs sent: the test proves nothing"
    assert leaked == 0, f"{leaked} of {sent} SYNs from a non-exempt source crossed gw"


def old_table(policy: Path) -> Table:
    """What the version before the exempt chain made: the exemptions as the named interval
    sets exempt_v4/exempt_v6, matched from smtp, in the elements fingerprint."""
    want = from_policy(load_policy(policy), datetime.now(UTC), ())
    table = want.table
    prefixes = [e.prefix for e in want.exemptions]
    sets = {
        **table.sets,
        "exempt_v4": NamedSet("exempt_v4", "ipv4_addr", elements=dict.fromkeys(
            p for p in prefixes if ":" not in p)),
        "exempt_v6": NamedSet("exempt_v6", "ipv6_addr", elements=dict.fromkeys(
            p for p in prefixes if ":" in p)),
    }  # fmt: skip
    filled = [s for s in sets.values() if not s.dynamic]
    counters = {c for c in table.counters if not c.startswith(FINGERPRINT_PREFIX)}
    smtp = [r.text for r in table.chains[DISPATCH_CHAIN].rules]
    at = smtp.index(f"jump {EXEMPT_CHAIN}")
    smtp[at : at + 1] = [
        f"ip saddr @exempt_v4 counter name {EXEMPTED_COUNTER} accept",
        f"ip6 saddr @exempt_v6 counter name {EXEMPTED_COUNTER} accept",
    ]
    chains = {n: c for n, c in table.chains.items() if n != EXEMPT_CHAIN}
    chains[DISPATCH_CHAIN] = Chain(DISPATCH_CHAIN, tuple(Rule.of(t or "") for t in smtp))
    return replace(
        table,
        sets=sets,
        chains=chains,
        counters=frozenset({*counters, elements_fingerprint(filled)}),
    )


def test_the_upgrade_from_exempt_sets_leaks_no_syn_and_keeps_the_exemptions(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
    record: Recorder,
) -> None:
    """The older version's table (exempt sets declared, filled and referenced), then `apply`
    under a flood: one batch, no SYN crosses, the sets are gone, exempted senders pass."""
    lab.serve_tcp([25])
    policy, state = daemon_policy(tmp_path / "policy"), tmp_path / "state"
    set_extra(policy, synthetic(ELEMENTS))
    write_exemptions(policy, EXEMPT)
    craft(lab, old_table(policy))
    listed = lab.run(lab.ns_gw, ["nft", "list", "set", "inet", "op25b", "exempt_v4"]).stdout
    assert DYN_W.v4 in listed  # the old declaration, really in the kernel
    assert smtp_attempts(lab, DYN_W.v4, FOREIGN_MX.v4, 1) == ["connected"]
    lab.run(lab.ns_out, ["nft", "-f", "-"], input=COUNT_LEAKS)
    with flooding(lab, tmp_path, "upgrade") as count:
        out = _apply(lab, policy, state)
    diff = out["diff"]
    assert isinstance(diff, list)
    leaked, sent = crossed(lab), count[0]
    commits = max(1, sum(line.startswith("-- commit") for line in diff))
    listed = lab.run(lab.ns_gw, ["nft", "list", "table", "inet", "op25b"]).stdout
    record(
        "upgrade from the exempt sets under a SYN flood",
        done=(
            "the older version's table (exempt_v4/exempt_v6 filled, matched from smtp), then "
            "`op25b-ctl apply` while 2 raw-SYN flooders send from an enforced pool"
        ),
        expected="one batch; no SYN crosses; the sets deleted; exempted senders still pass",
        observed=f"{commits} batch(es); {leaked} of {sent} SYNs crossed",
        figure=f"{leaked} / {sent}",
    )
    assert sent > 20_000, f"only {sent} SYNs sent: the test proves nothing"
    assert leaked == 0, f"{leaked} of {sent} SYNs from an enforced pool crossed gw"
    assert commits == 1, diff
    assert "- set exempt_v4" in diff and "- set exempt_v6" in diff, diff
    assert "exempt_v4" not in listed and "exempt_v6" not in listed
    assert f"chain {EXEMPT_CHAIN} {{" in listed and DYN_W.v4 in listed
    assert smtp_attempts(lab, DYN_W.v4, FOREIGN_MX.v4, 1) == ["connected"]
    assert smtp_attempts(lab, DYN_A.v4, FOREIGN_MX.v4, 1) == ["refused"]
    again = ctl_json(lab, "plan", "--policy", str(policy), "--state-dir", str(state))
    assert again["changes"] == 0, again["diff"]
    status = ctl_json(lab, "status", "--policy", str(policy), "--state-dir", str(state))
    assert status["rules_in_sync"] and status["statements_verified"], status
    why = ctl_json(lab, "explain", DYN_W.v4, "--to", FOREIGN_MX.v4, "--policy", str(policy),
                   "--state-dir", str(state))  # fmt: skip
    assert why["tcp25"] == "passes" and why["live_agrees"] is True, why


def _replace_exempt_rule(gw: Gateway) -> None:
    """Same comment and counter, a wider set: DYN_A's whole /26 let through."""
    listing = json.loads(gw.nft("-a", "-j", "list", "chain", "inet", "op25b", EXEMPT_CHAIN))
    rule = next(i["rule"] for i in listing["nftables"] if "rule" in i)
    gw.nft(
        "replace", "rule", "inet", "op25b", EXEMPT_CHAIN, "handle", str(rule["handle"]),
        "ip", "saddr", "{", "192.0.2.0/26", "}", "counter", "name", EXEMPTED_COUNTER,
        "accept", "comment", f'"{rule["comment"]}"',
    )  # fmt: skip


def _delete_exempt_rule(gw: Gateway) -> None:
    listing = json.loads(gw.nft("-a", "-j", "list", "chain", "inet", "op25b", EXEMPT_CHAIN))
    rule = next(i["rule"] for i in listing["nftables"] if "rule" in i)
    gw.nft("delete", "rule", "inet", "op25b", EXEMPT_CHAIN, "handle", str(rule["handle"]))


def _swap_exempt_elements(gw: Gateway) -> None:
    """Delete the v4 rule (one commit), then insert one with the same comment at its place
    and DYN_A's whole /26 in its set: the freed set name `__set<n>` is reused, so the
    rule's digest is the same; only a full read of the set's elements sees it."""
    listing = json.loads(gw.nft("-a", "-j", "list", "chain", "inet", "op25b", EXEMPT_CHAIN))
    first, second = [i["rule"] for i in listing["nftables"] if "rule" in i][:2]
    gw.nft("delete", "rule", "inet", "op25b", EXEMPT_CHAIN, "handle", str(first["handle"]))
    gw.nft(
        "insert", "rule", "inet", "op25b", EXEMPT_CHAIN, "handle", str(second["handle"]),
        "ip", "saddr", "{", "192.0.2.0/26,", f"{DYN_W.v4}", "}", "counter", "name",
        EXEMPTED_COUNTER, "accept", "comment", f'"{first["comment"]}"',
    )  # fmt: skip


EDITS = {
    "replaced": _replace_exempt_rule,
    "deleted": _delete_exempt_rule,
    "elements swapped": _swap_exempt_elements,
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_hand_edit_of_the_exempt_chain_is_repaired(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
    record: Recorder,
    edit: str,
) -> None:
    """The daemon, on a table `apply` made: the exempt rule replaced by a wider one under our
    comment (it lets DYN_A through), or deleted (DYN_W no longer exempted); repaired."""
    lab.serve_tcp([25])
    gw = Gateway(lab, tmp_path)
    write_exemptions(gw.policy, EXEMPT)
    _apply(lab, gw.policy, gw.state)
    # a same-digest edit is seen by the periodic full read only
    gw.start(*(["--verify-interval", "1"] if edit == "elements swapped" else []))
    try:
        good = gw.nft("list", "chain", "inet", "op25b", EXEMPT_CHAIN)
        EDITS[edit](gw)
        start = time.monotonic()
        assert gw.nft("list", "chain", "inet", "op25b", EXEMPT_CHAIN) != good
        wait_for(
            "the exempt chain repaired",
            lambda: gw.nft("list", "chain", "inet", "op25b", EXEMPT_CHAIN) == good,
            REPAIR_DEADLINE,
        )
        took = time.monotonic() - start
        wait_for("a drift repair counted", lambda: gw.sample("op25b_drift_repairs_total") == 1)
        assert smtp_attempts(lab, DYN_A.v4, FOREIGN_MX.v4, 1) == ["refused"]
        assert smtp_attempts(lab, DYN_W.v4, FOREIGN_MX.v4, 1) == ["connected"]
        assert gw.sample("op25b_table_in_sync") == 1
    finally:
        gw.stop()
    record(
        f"exempt rule {edit} by hand",
        done={
            "replaced": "nft replace rule ... exempt ... ip saddr { 192.0.2.0/26 } ... "
            "comment <ours>",
            "deleted": "nft delete rule ... exempt handle <n>",
            "elements swapped": "delete the v4 rule, then insert it again under our comment "
            "with 192.0.2.0/26 in its set (same set name, same digest); --verify-interval 1",
        }[edit],
        expected="the daemon rewrites chain exempt; DYN_A refused, DYN_W exempted",
        observed=f"repaired in {took:.2f} s",
        figure=f"{took:.2f} s",
    )


def test_ten_thousand_exemptions_are_one_rule_and_read_back(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
) -> None:
    """10,000 exemptions: one anonymous set of 10,000 prefixes, applied, read back exactly over
    netlink, and a second `apply` changes nothing."""
    lab.serve_tcp([25])
    policy, state = daemon_policy(tmp_path / "policy"), tmp_path / "state"
    many = [f"2001:db8:1000:{k:x}::/64" for k in range(1, 10_000)] + [f"{DYN_W.v4}/32"]
    write_exemptions(policy, many)
    _apply(lab, policy, state)
    code = (
        "import json; from op25b_ctl.kernel.nft import NftKernel; "
        "print(json.dumps(NftKernel().rule_elements('inet', 'op25b', 'exempt')))"
    )
    held = json.loads(lab.run(lab.ns_gw, [sys.executable, "-c", code]).stdout)
    # nft merges adjacent prefixes of an anonymous set: the same addresses, fewer ranges
    assert netaddr.IPSet(held) == netaddr.IPSet(many) and len(held) < len(many)
    assert _apply(lab, policy, state)["applied"] is False
    assert smtp_attempts(lab, DYN_W.v4, FOREIGN_MX.v4, 1) == ["connected"]
    assert smtp_attempts(lab, DYN_A.v4, FOREIGN_MX.v4, 1) == ["refused"]
