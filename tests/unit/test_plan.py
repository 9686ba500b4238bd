"""Planner, diff and renderer: the pure path from policy to one nftables transaction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from op25b_ctl.errors import KernelError, NotOurTableError
from op25b_ctl.kernel.memory import MemoryKernel
from op25b_ctl.ops import applier
from op25b_ctl.plan.diff import diff
from op25b_ctl.plan.modes import decide, modes
from op25b_ctl.plan.render import describe, render
from op25b_ctl.plan.ruleset import desired_table, mode_of_rules, pool_chain, pool_rules
from op25b_ctl.plan.table import Chain, Rule, Table
from op25b_ctl.plan.transaction import AddElements, AddRule, DeleteCounter, FlushChain
from op25b_ctl.policy.loader import load_policy
from op25b_ctl.policy.model import Mode, Policy
from tests.policytools import EXAMPLE, REPO

# a one-pool mode change: its chain flushed, its three rules (two record offenders) added
REWRITE = [FlushChain, AddRule, AddRule, AddRule]

GOLDEN = REPO / "tests" / "golden" / "nmtnet-initial.nft"
# the example's rollout schedule is all in the past: at any time after it, the modes are
# flets-east-dyn-1 enforce, flets-east-dyn-2 monitor (its stage is tbd), flets-west-dyn-1 enforce
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def policy() -> Policy:
    return load_policy(EXAMPLE)


def table_for(policy: Policy, override: Mapping[str, Mode] | None = None) -> Table:
    return desired_table(policy, {**modes(decide(policy, NOW)), **(override or {})})


def test_initial_transaction_matches_golden_file(policy: Policy, update_golden: bool) -> None:
    script = render(diff(None, table_for(policy)))
    if update_golden:
        GOLDEN.write_text(script)
    assert GOLDEN.exists(), f"{GOLDEN} is missing: regenerate with --update-golden"
    assert script == GOLDEN.read_text(), (
        f"the nft script differs from {GOLDEN.name}; if the change is intended, review it "
        "and regenerate with --update-golden"
    )


def test_static_pool_is_never_in_the_table(policy: Policy) -> None:
    t = table_for(policy)
    assert pool_chain("static-biz") not in t.chains
    assert "192.0.2.128/26" not in t.sets["pools_v4"].elements
    assert "2001:db8:3000::/40" not in t.sets["pools_v6"].elements


def test_relays_and_submission_are_never_matched(policy: Policy) -> None:
    t = table_for(policy)
    gate = [r.text or "" for r in t.chains["gate"].rules]
    assert gate == ["tcp dport 25 jump smtp"]  # 587 and 465 never enter our chains
    smtp = [r.text or "" for r in t.chains["smtp"].rules]
    assert smtp[0].startswith("ip daddr @relays_v4") and smtp[0].endswith("accept")
    assert smtp[1].startswith("ip6 daddr @relays_v6") and smtp[1].endswith("accept")
    assert t.sets["relays_v4"].elements.keys() == {"203.0.113.25/32"}


@pytest.mark.parametrize("mode", ["off", "monitor", "enforce"])
def test_mode_reads_back_from_rules(mode: Mode) -> None:
    ids = tuple(r.id for r in pool_rules("p", mode, "drop"))
    assert mode_of_rules("p", ids, "drop") == mode


def test_apply_is_idempotent(policy: Policy) -> None:
    backend = MemoryKernel()
    first = applier.apply(backend, table_for(policy))
    assert first
    second = applier.apply(backend, table_for(policy))
    assert not second.ops
    assert len(backend.applied) == 1


def test_one_pool_mode_change_rewrites_only_that_chain(policy: Policy) -> None:
    backend = MemoryKernel()
    applier.apply(backend, table_for(policy))
    tx = applier.apply(backend, table_for(policy, {"flets-east-dyn-2": "enforce"}))
    assert [type(op) for op in tx.ops] == REWRITE
    assert {
        op.name if isinstance(op, FlushChain) else op.chain if isinstance(op, AddRule) else None
        for op in tx.ops
    } == {"pool_flets-east-dyn-2"}
    assert not any(isinstance(op, (AddElements, DeleteCounter)) for op in tx.ops)


def test_prefix_change_refills_only_that_set(policy: Policy) -> None:
    """Issue 10 item 2: an element change flushes and refills that one set in the same batch
    (no per-element edit, which makes nft work through every element of the table)."""
    backend = MemoryKernel()
    applier.apply(backend, table_for(policy))
    pool = policy.pool("flets-east-dyn-1")
    moved = pool.model_copy(update={"prefixes": [*pool.prefixes, "192.0.2.128/26"]})
    others = tuple(p for p in policy.pools if p.name not in ("flets-east-dyn-1", "static-biz"))
    changed = replace(policy, pools=(moved, *others))
    want = desired_table(changed, modes(decide(changed, NOW)))
    tx = applier.apply(backend, want)
    lines = render(tx).splitlines()
    assert lines[0].startswith("add counter inet op25b elements_")  # the fingerprint, swapped
    assert lines[1] == "flush map inet op25b pools_v4"
    assert lines[2].startswith("add element inet op25b pools_v4 {")
    assert "192.0.2.128/26 : jump pool_flets-east-dyn-1" in lines[2]
    assert len(lines[2].split(" : jump ")) - 1 == len(want.sets["pools_v4"].elements)
    assert lines[3].startswith("delete counter inet op25b elements_")
    assert len(lines) == 4  # no chain, rule or other set touched
    assert (
        "~ map pools_v4 refilled: -0 +1 element(s); "
        "added 192.0.2.128/26 : jump pool_flets-east-dyn-1"
    ) in describe(tx)
    assert backend.tables[("inet", "op25b")].sets == want.sets
    assert not applier.plan(backend, want)


def test_fingerprint_lets_a_read_skip_elements(policy: Policy) -> None:
    backend = MemoryKernel()
    applier.apply(backend, table_for(policy))
    backend.reads.clear()
    tx = applier.apply(
        backend, table_for(policy, {"flets-east-dyn-2": "enforce"}), trust_fingerprint=True
    )
    assert [type(op) for op in tx.ops] == REWRITE
    assert backend.reads == [False]
    # a stale fingerprint forces a full read
    live = backend.tables[("inet", "op25b")]
    backend.tables[("inet", "op25b")] = replace(live, counters=frozenset({"relayed"}))
    backend.reads.clear()
    applier.plan(backend, table_for(policy), trust_fingerprint=True)
    assert backend.reads == [False, True]


def test_removing_a_pool_deletes_elements_before_its_chain(policy: Policy) -> None:
    backend = MemoryKernel()
    applier.apply(backend, table_for(policy))
    fewer = replace(policy, pools=policy.pools[:2] + policy.pools[3:])
    tx = applier.apply(backend, desired_table(fewer, modes(decide(fewer, NOW))))
    lines = render(tx).splitlines()
    # the map that jumps to the chain is emptied (and refilled without it) before the chain goes
    assert lines.index("flush map inet op25b pools_v4") < lines.index(
        "delete chain inet op25b pool_flets-west-dyn-1"
    )
    (refill,) = [x for x in lines if x.startswith("add element inet op25b pools_v4 ")]
    assert "198.51.100.0/25" not in refill
    assert "delete counter inet op25b monitored_flets-west-dyn-1" in lines[-3:]
    assert not applier.plan(backend, desired_table(fewer, modes(decide(fewer, NOW))))


def test_live_drift_is_repaired(policy: Policy) -> None:
    backend = MemoryKernel()
    want = table_for(policy)
    applier.apply(backend, want)
    live = backend.tables[("inet", "op25b")]
    tampered = replace(
        live,
        chains={**live.chains, "smtp": Chain("smtp", (Rule("foreign:7"),))},
        sets={
            **live.sets,
            "pools_v4": replace(
                live.sets["pools_v4"], elements={"192.0.2.0/26": "pool_flets-east-dyn-1"}
            ),
        },
    )
    backend.tables[("inet", "op25b")] = tampered
    tx = applier.apply(backend, want)
    assert FlushChain("smtp") in tx.ops
    assert not applier.plan(backend, want)


def test_failed_apply_changes_nothing(policy: Policy) -> None:
    backend = MemoryKernel()
    applier.apply(backend, table_for(policy))
    before = backend.tables.copy()
    backend.fail_next = "simulated kernel refusal"
    with pytest.raises(KernelError):
        applier.apply(backend, table_for(policy, {"flets-east-dyn-2": "enforce"}))
    assert backend.tables == before


def test_refuses_a_foreign_table_with_our_name(policy: Policy) -> None:
    foreign = Table("inet", "op25b", chains={"input": Chain("input", (Rule("foreign:1"),))})
    backend = MemoryKernel([foreign])
    with pytest.raises(NotOurTableError):
        applier.apply(backend, table_for(policy))
    assert backend.tables[("inet", "op25b")] == foreign


def test_teardown_deletes_only_our_table(policy: Policy) -> None:
    other = Table("ip", "docker", chains={"x": Chain("x", (Rule("foreign:1"),))})
    backend = MemoryKernel([other])
    applier.apply(backend, table_for(policy))
    assert applier.teardown(backend, "inet", "op25b")
    assert backend.tables == {("ip", "docker"): other}
    assert not applier.teardown(backend, "inet", "op25b")


def test_golden_file_is_in_repo() -> None:
    assert GOLDEN.exists(), f"{GOLDEN} missing: run the test suite once and commit it"
    assert Path(GOLDEN).read_text().startswith("add table inet op25b")


def test_recomputing_for_the_same_policy_reuses_its_sets(policy: Policy) -> None:
    a = table_for(policy)
    b = table_for(policy, {"flets-east-dyn-2": "enforce"})
    assert a.sets is b.sets  # same objects: diff() skips 100,000 elements without a look
    assert a.counters == b.counters
    tx = diff(a, b)
    assert [type(op) for op in tx.ops] == REWRITE


def test_cached_policy_is_reloaded_when_a_file_changes(tmp_path: Path) -> None:
    from op25b_ctl.policy.cache import load_policy_cached
    from tests.policytools import edit, example_policy

    d = example_policy(tmp_path)
    first = load_policy_cached(d)
    assert load_policy_cached(d) is first
    edit(d / "relays.yaml", "203.0.113.25", "203.0.113.26")
    again = load_policy_cached(d)
    assert again is not first and again.relay_prefixes()[0] == "203.0.113.26/32"


def test_exemptions_are_the_exempt_chain_and_a_change_rewrites_only_it(policy: Policy) -> None:
    """The exemptions in force are one rule per family in chain exempt, in no named set and
    not in the elements fingerprint: a change is one chain rewrite, the sets untouched; the
    diff's text abbreviates thousands of them, the script carries all."""
    few = desired_table(policy, {}, exemptions=["192.0.2.48/30"])
    many_prefixes = [f"2001:db8:1000:{k:x}::/64" for k in range(1, 1001)]
    many = desired_table(policy, {}, exemptions=["192.0.2.48/30", *many_prefixes])
    assert "exempt_v4" not in few.sets and few.sets == many.sets
    assert few.counters == many.counters  # the same elements fingerprint
    assert [r.text for r in few.chains["exempt"].rules] == [
        "ip saddr { 192.0.2.48/30 } counter name exempted accept"
    ]
    tx = diff(few, many)
    assert all(isinstance(op, FlushChain | AddRule) for op in tx.ops), tx.ops
    assert {op.chain for op in tx.ops if isinstance(op, AddRule)} == {"exempt"}
    assert {op.name for op in tx.ops if isinstance(op, FlushChain)} <= {"exempt"}
    shown = describe(tx)
    assert any("2001:db8:1000:1::/64" in line and "(+996 more)" in line for line in shown)
    assert max(len(line) for line in shown) < 300
    assert all(p in render(tx) for p in many_prefixes)


def test_a_full_read_rewrites_an_exempt_chain_whose_set_was_swapped(policy: Policy) -> None:
    """Same rule ids (so the same comments), other addresses in the set: a trusted read
    cannot tell, a full read marks the chain and the diff rewrites it."""
    want = desired_table(policy, {}, exemptions=["192.0.2.48/30"])
    kernel = MemoryKernel()
    applier.apply(kernel, want)
    live = kernel.tables[(want.family, want.name)]
    (rule,) = live.chains["exempt"].rules
    assert rule.text is not None
    wide = Rule(rule.id, rule.text.replace("192.0.2.48/30", "192.0.2.0/26"))
    chains = {**live.chains, "exempt": Chain("exempt", (wide,))}
    kernel.edit(want.family, want.name, replace(live, chains=chains))
    assert not applier.plan(kernel, want, trust_fingerprint=True)
    tx = applier.plan(kernel, want)
    assert [type(op) for op in tx.ops] == [FlushChain, AddRule]
    assert {op.chain for op in tx.ops if isinstance(op, AddRule)} == {"exempt"}
