"""A set whose declaration changes (a schema change at upgrade time) while rules are live:
declared alone first, under a staging name, then swapped in; never a rule that points at a set
declared in its own batch (the leaking shape, docs/benchmarks.md)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from op25b_ctl.cli.main import main
from op25b_ctl.daemon.reconcile import Reconciler
from op25b_ctl.errors import KernelError
from op25b_ctl.kernel.memory import MemoryKernel
from op25b_ctl.kernel.netlink import NFT_DATA_VERDICT, SetInfo
from op25b_ctl.ops import applier
from op25b_ctl.plan.desired import from_policy
from op25b_ctl.plan.diff import diff, one_batch, steps_to
from op25b_ctl.plan.modes import decide, modes
from op25b_ctl.plan.render import describe, render
from op25b_ctl.plan.ruleset import POOLS_V4, RELAYS_V4, desired_table
from op25b_ctl.plan.table import NamedSet, Table
from op25b_ctl.plan.transaction import (
    AddChain,
    AddElements,
    AddRule,
    AddSet,
    DeleteSet,
    FlushSet,
    Transaction,
)
from op25b_ctl.policy.loader import load_policy
from op25b_ctl.policy.model import Policy
from op25b_ctl.source import rulerefs
from op25b_ctl.source.directory import DirectorySource
from op25b_ctl.source.state import StateDir
from tests.daemonpolicy import daemon_policy
from tests.policytools import EXAMPLE

NOW = datetime(2026, 1, 1, tzinfo=UTC)
KEY = ("inet", "op25b")
CONSTANT = frozenset({"constant", "interval"})


@pytest.fixture
def policy() -> Policy:
    return load_policy(EXAMPLE)


def want(policy: Policy) -> Table:
    return desired_table(policy, modes(decide(policy, NOW)))


def old_shape(table: Table, **flags: frozenset[str]) -> Table:
    """`table` as an older version declared it: the named sets with other flags."""
    sets = {n: replace(s, flags=flags[n]) if n in flags else s for n, s in table.sets.items()}
    return replace(table, sets=sets)


def loaded(table: Table) -> MemoryKernel:
    kernel = MemoryKernel()
    kernel.apply(one_batch(None, table))
    kernel.applied.clear()
    return kernel


def referenced(batch: Transaction) -> set[str]:
    return {
        m
        for op in batch.ops
        if isinstance(op, AddRule)
        for m in re.findall(r"@([\w-]+)", op.rule.text or "")
    }


def declared(batch: Transaction) -> set[str]:
    return {op.set.name for op in batch.ops if isinstance(op, AddSet)}


def assert_no_rule_meets_a_fresh_set(tx: Transaction) -> None:
    for k, batch in enumerate(tx.batches, 1):
        fresh = referenced(batch) & declared(batch)
        assert not fresh, f"batch {k} declares {fresh} and points rules at them"


def test_a_redeclared_map_takes_three_batches_in_order(policy: Policy) -> None:
    desired = want(policy)
    live = old_shape(desired, pools_v4=CONSTANT)
    tx = diff(live, desired)
    first, second, third = tx.batches

    # 1: the new map alone, under the staging name, filled; nothing else
    assert first.ops == (AddSet(replace(desired.sets[POOLS_V4], name="pools_v4_next")),)
    # 2: rules to the staged map; the old map goes, the new one is declared, unused yet
    assert referenced(second) >= {"pools_v4_next"} and "pools_v4" not in referenced(second)
    kinds = [
        (type(op).__name__, op.set.name) for op in second.ops if isinstance(op, AddSet | DeleteSet)
    ]
    assert kinds == [("DeleteSet", "pools_v4"), ("AddSet", "pools_v4")]
    (new,) = [op.set for op in second.ops if isinstance(op, AddSet)]
    assert new == desired.sets[POOLS_V4]
    # 3: rules back on the stable name, the staged map deleted
    assert "pools_v4" in referenced(third) and "pools_v4_next" not in referenced(third)
    assert [op.set.name for op in third.ops if isinstance(op, DeleteSet)] == ["pools_v4_next"]
    assert not declared(third)
    assert_no_rule_meets_a_fresh_set(tx)

    kernel = loaded(live)
    kernel.apply(tx)
    assert len(kernel.applied) == 3 and kernel.gen == 1 + 1 + 3  # one generation per batch
    assert kernel.tables[KEY] == desired  # the same names as before: no `_next` left
    assert not diff(kernel.tables[KEY], desired)


def test_two_sets_redeclared_at_once_share_the_batches(policy: Policy) -> None:
    desired = want(policy)
    live = old_shape(desired, pools_v4=CONSTANT, relays_v4=frozenset())
    tx = diff(live, desired)
    assert len(tx.batches) == 3
    assert declared(tx.batches[0]) == {"pools_v4_next", "relays_v4_next"}
    assert_no_rule_meets_a_fresh_set(tx)
    kernel = loaded(live)
    kernel.apply(tx)
    assert kernel.tables[KEY] == desired


def test_a_missing_set_is_declared_before_the_rules_that_use_it(policy: Policy) -> None:
    """A new version's new set, here a new pool too: its map's jump target must exist."""
    desired = want(policy)
    smtp = desired.chains["smtp"]
    live = replace(
        desired,
        sets={n: s for n, s in desired.sets.items() if n != RELAYS_V4},
        chains={
            **desired.chains,
            "smtp": replace(
                smtp, rules=tuple(r for r in smtp.rules if "@relays_v4" not in (r.text or ""))
            ),
        },
    )
    tx = diff(live, desired)
    first, second = tx.batches
    assert first.ops == (AddSet(desired.sets[RELAYS_V4]),)
    assert "relays_v4" in referenced(second)
    assert_no_rule_meets_a_fresh_set(tx)


def test_a_new_jump_target_is_added_empty_with_the_declaration(policy: Policy) -> None:
    desired = want(policy)
    chain = next(n for n in desired.chains if n.startswith("pool_"))
    maps = {n: s for n, s in desired.sets.items() if s.verdict_map}
    live = old_shape(desired, pools_v4=CONSTANT)
    live = replace(
        live,
        chains={n: c for n, c in live.chains.items() if n != chain},
        sets={
            **live.sets,
            **{
                n: replace(
                    live.sets[n], elements={k: v for k, v in s.elements.items() if v != chain}
                )
                for n, s in maps.items()
            },
        },
    )
    tx = diff(live, desired)
    first = tx.batches[0]
    assert AddChain(chain) in first.ops and not any(isinstance(op, AddRule) for op in first.ops)
    assert first.ops.index(AddChain(chain)) < first.ops.index(
        next(op for op in first.ops if isinstance(op, AddSet))
    )
    assert_no_rule_meets_a_fresh_set(tx)
    kernel = loaded(live)
    kernel.apply(tx)
    assert kernel.tables[KEY] == desired


def test_a_table_without_rules_is_still_made_in_one_batch(policy: Policy) -> None:
    desired = want(policy)
    assert len(diff(None, desired).batches) == 1
    flushed = old_shape(
        replace(desired, chains={n: replace(c, rules=()) for n, c in desired.chains.items()}),
        pools_v4=CONSTANT,
    )
    assert len(diff(flushed, desired).batches) == 1  # enforced nothing: nothing to protect
    assert steps_to(desired, desired) == [desired]


@pytest.mark.parametrize("fail_after", [1, 2])
def test_a_failure_between_batches_leaves_an_enforcing_table_the_next_plan_finishes(
    policy: Policy, fail_after: int
) -> None:
    desired = want(policy)
    live = old_shape(desired, pools_v4=CONSTANT)
    kernel = loaded(live)
    kernel.fail_next, kernel.fail_after = "injected: ENOMEM", fail_after
    with pytest.raises(KernelError, match=rf"commit {fail_after + 1} of 3.*complete and enforcing"):
        applier.apply(kernel, desired)
    mid = kernel.tables[KEY]
    # enforcing: every pool chain as desired, every set a rule uses exists with all elements
    for name, chain in desired.chains.items():
        if name.startswith("pool_"):
            assert mid.chains[name].rule_ids == chain.rule_ids
    texts = " ".join(r.text or "" for c in mid.chains.values() for r in c.rules)
    for used in set(re.findall(r"@([\w-]+)", texts)):
        base = used.removesuffix("_next")
        assert mid.sets[used].elements == desired.sets[base].elements, used
    # the next apply finishes it, from what is live, leak-free, with the stable names
    rest = applier.plan(kernel, desired)
    assert len(rest.batches) == 3 - fail_after
    assert_no_rule_meets_a_fresh_set(rest)
    applier.apply(kernel, desired)
    assert kernel.tables[KEY] == desired


def test_a_leftover_staging_set_is_refilled_or_avoided(policy: Policy) -> None:
    desired = want(policy)
    live = old_shape(desired, pools_v4=CONSTANT)
    stale = replace(desired.sets[POOLS_V4], name="pools_v4_next", elements={})
    tx = diff(replace(live, sets={**live.sets, "pools_v4_next": stale}), desired)
    first = tx.batches[0]
    assert isinstance(first.ops[0], FlushSet) and isinstance(first.ops[1], AddElements)
    assert not declared(first)  # same declaration: kept and refilled, not declared again

    odd = NamedSet("pools_v4_next", "ipv4_addr", flags=frozenset())
    tx = diff(replace(live, sets={**live.sets, "pools_v4_next": odd}), desired)
    assert declared(tx.batches[0]) == {"pools_v4_next2"}
    assert_no_rule_meets_a_fresh_set(tx)


def test_plan_output_shows_each_commit(policy: Policy) -> None:
    desired = want(policy)
    tx = diff(old_shape(desired, pools_v4=CONSTANT), desired)
    lines = describe(tx)
    assert [line for line in lines if line.startswith("-- commit")] == [
        "-- commit 1 of 3",
        "-- commit 2 of 3",
        "-- commit 3 of 3",
    ]
    assert lines[1].startswith("+ map pools_v4_next with 3 element(s)")
    script = render(tx)
    assert script.startswith("# commit 1 of 3\nadd map inet op25b pools_v4_next {")
    assert "- map pools_v4_next" in lines and not any("refilled" in line for line in lines)
    assert "# commit" not in render(diff(None, desired))  # one batch: the script as before


def test_a_trusted_fingerprint_does_not_hide_a_declaration_change(policy: Policy) -> None:
    """The fingerprint names elements, not declarations: an old-shaped table with the same
    elements carries the same fingerprint counter, and must still be read and replaced."""
    desired = want(policy)
    kernel = loaded(old_shape(desired, pools_v4=CONSTANT))
    live = applier.read_live(kernel, desired, trust_fingerprint=True)
    assert live is not None and live.sets[POOLS_V4].flags == CONSTANT
    assert len(applier.plan(kernel, desired, trust_fingerprint=True).batches) == 3


def test_the_live_declaration_is_read_as_nft_spells_it() -> None:
    ours = SetInfo("pools_v4", 0x8 | 0x4, True, key_type=7, key_len=4, data_type=NFT_DATA_VERDICT)
    assert ours.declaration == ("ipv4_addr", True, frozenset({"interval"}), 0, 0, False)
    assert NamedSet("x", *ours.declaration[:2], flags=ours.declaration[2]).same_shape(
        NamedSet("y", "ipv4_addr", True)
    )
    old = SetInfo("relays_v4", 0x2, False, key_type=7, key_len=4)
    assert old.declaration == ("ipv4_addr", False, frozenset({"constant"}), 0, 0, False)
    concat = SetInfo("s", 0x84, False, key_type=0x1CD, key_len=8)
    assert concat.declaration[0] == "type-461/8"
    marks = SetInfo("m", 0xC, True, key_type=7, key_len=4, data_type=19)
    assert marks.declaration[0] == "ipv4_addr : type-19"


def test_the_daemon_upgrades_a_table_in_batches_and_keeps_its_references(
    tmp_path: Path,
) -> None:
    """The package upgrade's path: a new daemon meets the old version's table."""
    policy_dir = daemon_policy(tmp_path / "policy")
    state = tmp_path / "state"
    state.mkdir()
    source = DirectorySource(policy_dir, state)
    desired = from_policy(source.load().policy, NOW, ()).table
    kernel = loaded(old_shape(desired, pools_v4=CONSTANT))
    reference = rulerefs.path_in(state)
    rec = Reconciler(kernel, source, clock=lambda: NOW, rule_reference=reference)

    kernel.fail_next, kernel.fail_after = "injected", 1  # the second batch is refused
    failed = rec.run_once()
    assert failed.error and "commit 2 of 3" in failed.error and not rec.in_sync
    assert "pools_v4_next" in kernel.tables[KEY].sets  # staged, unused: the old map enforces

    done = rec.run_once()
    assert done.ok and done.changed and rec.in_sync
    assert kernel.tables[KEY] == desired
    assert done.tx is not None and len(done.tx.batches) == 2  # what was left: swap, swap back
    # the reference holds the final rules' ids only, not the staged ones
    saved = rulerefs.load(reference)
    assert set(saved) == {r.id for c in desired.chains.values() for r in c.rules}
    # one generation per batch: the kernel's is trusted as ours, the next pass reads nothing
    kernel.reads.clear()
    assert rec.run_once().read == "fast" and kernel.reads == []


def test_a_command_on_record_still_replaces_a_set_with_its_elements(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's short cut after its own commit (the live record, no read, hollow sets) is not
    taken when the record's declarations differ from this version's: a set is never declared
    without its elements. After the three batches the record is trusted again."""
    kernel = MemoryKernel()
    state = StateDir(tmp_path / "state")
    argv = ["apply", "--policy", str(EXAMPLE), "--state-dir", str(state.path)]
    assert main(argv, kernel=kernel) == 0
    # the older version made the table and the record, with its own declaration of pools_v4
    kernel.tables[KEY] = old_shape(kernel.tables[KEY], pools_v4=CONSTANT)  # no new generation
    record = json.loads(state.live_file.read_text())
    record["table"]["sets"]["pools_v4"][2] = sorted(CONSTANT)
    state.live_file.write_text(json.dumps(record))
    kernel.applied.clear()
    capsys.readouterr()

    assert main(argv, kernel=kernel) == 0, capsys.readouterr().err
    first, _, _ = kernel.applied
    (staged,) = [op.set for op in first.ops if isinstance(op, AddSet)]
    assert staged.name == "pools_v4_next" and len(staged.elements) == 3
    live = kernel.tables[KEY]
    assert live.sets[POOLS_V4].flags == {"interval"} and len(live.sets[POOLS_V4].elements) == 3
    assert "pools_v4_next" not in live.sets

    kernel.reads.clear()
    assert main(argv, kernel=kernel) == 0
    assert kernel.reads == []  # three batches, three generations: the record holds
