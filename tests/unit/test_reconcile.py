"""Reconciler: cheap no-change passes, drift repair, last-good policy, periodic full verify."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from op25b_ctl.daemon.metrics import build_registry
from op25b_ctl.daemon.reconcile import Reconciler, carry_counters
from op25b_ctl.kernel.base import UNREADABLE, Counter, RuleDigests
from op25b_ctl.kernel.memory import MemoryKernel
from op25b_ctl.plan import desired
from op25b_ctl.plan.desired import Desired
from op25b_ctl.plan.render import render
from op25b_ctl.plan.ruleset import pool_chain
from op25b_ctl.plan.table import Rule
from op25b_ctl.plan.transaction import AddCounter, AddTable, Transaction
from op25b_ctl.policy.model import Policy
from op25b_ctl.policy.overrides import Override
from op25b_ctl.source.directory import DirectorySource, input_identity
from op25b_ctl.source.state import StateDir
from tests.daemonpolicy import EAST1 as EAST1_POOL
from tests.daemonpolicy import EAST2, break_prefix, daemon_policy, fix_prefix, set_mode
from tests.policytools import EXAMPLE

NOW = datetime(2011, 1, 31, 9, 0, tzinfo=UTC)
KEY = ("inet", "op25b")
EAST1 = pool_chain("flets-east-dyn-1")


class Timer:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    return daemon_policy(tmp_path / "policy")


@pytest.fixture
def kernel() -> MemoryKernel:
    return MemoryKernel()


@pytest.fixture
def timer() -> Timer:
    return Timer()


@pytest.fixture
def rec(kernel: MemoryKernel, policy_dir: Path, tmp_path: Path, timer: Timer) -> Reconciler:
    return Reconciler(
        kernel,
        DirectorySource(policy_dir, tmp_path / "state"),
        clock=lambda: NOW,
        verify_interval=60,
        timer=timer,
    )


def test_first_pass_applies_with_a_full_read_then_passes_read_nothing(
    rec: Reconciler, kernel: MemoryKernel
) -> None:
    first = rec.run_once()
    assert first.ok and first.changed and first.read == "full" and first.desired_changed
    assert not first.drift_repaired  # nothing was ours before: not drift
    assert kernel.tables[KEY] == rec.desired.table if rec.desired else False
    assert rec.in_sync

    kernel.reads.clear()
    for _ in range(3):
        again = rec.run_once()
        assert again.ok and not again.changed and again.read == "fast"
    assert kernel.reads == []  # the fast path touched neither libnftables nor netlink


def test_commit_to_another_table_costs_one_skeleton_read(
    rec: Reconciler, kernel: MemoryKernel
) -> None:
    rec.run_once()
    kernel.gen += 1  # e.g. docker changed its own table
    kernel.reads.clear()
    result = rec.run_once()
    assert result.read == "skeleton" and not result.changed
    assert kernel.reads == [False]  # one read, without elements
    assert rec.run_once().read == "fast"  # the new generation is trusted again


@pytest.mark.parametrize("tamper", ["delete", "flush", "edit-rule", "edit-keeping-comment"])
def test_drift_is_repaired_at_once_then_every_element_verified(
    rec: Reconciler, kernel: MemoryKernel, tamper: str
) -> None:
    rec.run_once()
    good = kernel.tables[KEY]
    if tamper == "delete":
        kernel.edit(*KEY, None)
    elif tamper == "flush":
        kernel.flush_chains(*KEY)
    elif tamper == "edit-rule":
        chain = replace(good.chains[EAST1], rules=(Rule("foreign:7", "accept"),))
        kernel.edit(*KEY, replace(good, chains={**good.chains, EAST1: chain}))
    else:  # a dumped ruleset, edited and reloaded: our comment, someone else's statement
        ours, *rest = good.chains[EAST1].rules
        chain = replace(good.chains[EAST1], rules=(replace(ours, text="counter accept"), *rest))
        kernel.edit(*KEY, replace(good, chains={**good.chains, EAST1: chain}))
    kernel.reads.clear()

    result = rec.run_once()

    assert result.ok and result.changed and result.drift_repaired
    assert result.read == "skeleton"  # cheap: the rules are back within one pass
    assert not result.desired_changed
    assert kernel.tables[KEY].chains == good.chains
    assert kernel.tables[KEY].chains[EAST1].rules[0].text == good.chains[EAST1].rules[0].text
    assert kernel.tables[KEY].sets == good.sets
    kernel.reads.clear()
    verify = rec.run_once()  # whoever did it may have touched elements: read them all
    assert verify.read == "full" and kernel.reads == [True] and not verify.changed
    assert rec.run_once().read == "fast"


def test_policy_change_is_applied_and_is_not_drift(
    rec: Reconciler, kernel: MemoryKernel, policy_dir: Path
) -> None:
    rec.run_once()
    before = rec.digest
    set_mode(policy_dir, EAST2, "enforce")

    result = rec.run_once()

    assert result.changed and result.desired_changed and not result.drift_repaired
    assert rec.desired is not None
    assert rec.desired.decisions[EAST2].mode == "enforce"
    assert rec.digest != before
    assert "counter name blocked_flets-east-dyn-2" in (
        kernel.tables[KEY].chains[pool_chain(EAST2)].rules[-1].text or ""
    )


def test_touching_files_without_changing_them_changes_nothing(
    rec: Reconciler, kernel: MemoryKernel, policy_dir: Path
) -> None:
    rec.run_once()
    text = (policy_dir / "pools.yaml").read_text()
    (policy_dir / "pools.yaml").write_text(text)
    applied = len(kernel.applied)
    result = rec.run_once()
    assert not result.changed and not result.desired_changed
    assert len(kernel.applied) == applied
    assert rec.run_once().read == "fast"


def test_invalid_policy_is_refused_once_and_last_good_stays_enforced(
    rec: Reconciler, kernel: MemoryKernel, policy_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rec.run_once()
    good = kernel.tables[KEY]
    break_prefix(policy_dir)

    refused = rec.run_once()

    assert refused.policy_rejected and refused.ok and not refused.changed
    assert rec.policy_error is not None
    assert re.search(r"pools.yaml:\d+: pools\[0\].prefixes\[0\]", caplog.text)
    assert "last good policy stays enforced" in caplog.text
    assert kernel.tables[KEY] is good
    # not reported again while the files stay the same ...
    assert not rec.run_once().policy_rejected
    # ... and the last good state is still defended
    kernel.edit(*KEY, None)
    repaired = rec.run_once()
    assert repaired.drift_repaired and kernel.tables[KEY].chains == good.chains

    fix_prefix(policy_dir)
    fixed = rec.run_once()
    assert fixed.ok and rec.policy_error is None and not fixed.changed


def test_no_valid_policy_at_start_touches_nothing(
    kernel: MemoryKernel, policy_dir: Path, timer: Timer
) -> None:
    (policy_dir / "relays.yaml").write_text("relays: []\n")
    rec = Reconciler(kernel, DirectorySource(policy_dir), clock=lambda: NOW, timer=timer)
    result = rec.run_once()
    assert result.error and "no valid policy" in result.error and result.policy_rejected
    assert kernel.applied == [] and kernel.reads == []


def test_full_verify_every_interval_and_on_request(
    rec: Reconciler, kernel: MemoryKernel, timer: Timer
) -> None:
    rec.run_once()
    timer.t += 59
    assert rec.run_once().read == "fast"
    timer.t += 1
    assert rec.run_once().read == "full"
    assert rec.run_once().read == "fast"
    rec.request_verify()
    assert rec.run_once().read == "full"
    rec.request_reload()
    assert rec.run_once().read == "full"


def test_backend_failure_is_reported_and_retried_with_a_full_read(
    rec: Reconciler, kernel: MemoryKernel
) -> None:
    rec.run_once()
    kernel.edit(*KEY, None)
    kernel.fail_next = "Error: simulated"
    failed = rec.run_once()
    assert failed.error == "Error: simulated" and not failed.changed
    assert not rec.in_sync
    retried = rec.run_once()
    assert retried.ok and retried.changed and rec.in_sync and retried.read == "full"


def test_without_a_generation_every_pass_reads_the_skeleton(policy_dir: Path, timer: Timer) -> None:
    kernel = MemoryKernel(generations=False)
    rec = Reconciler(kernel, DirectorySource(policy_dir), clock=lambda: NOW, timer=timer)
    rec.run_once()
    assert rec.run_once().read == "skeleton"


def test_inputs_are_recomputed_only_when_files_change_or_a_change_is_due(
    rec: Reconciler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[datetime] = []
    real = desired.from_policy

    def counting(policy: Policy, now: datetime, overrides: Iterable[Override]) -> Desired:
        calls.append(now)
        return replace(real(policy, now, overrides), next_change=NOW + timedelta(hours=1))

    monkeypatch.setattr("op25b_ctl.daemon.reconcile.from_policy", counting)
    rec.run_once()
    rec.run_once()
    assert len(calls) == 1  # unchanged files: no YAML parsed again
    state = tmp_path / "state"
    state.mkdir()
    (state / "overrides.json").write_text("{}")
    assert rec.run_once().read == "fast"  # recomputed, same table: still nothing to do
    assert len(calls) == 2
    assert rec.next_wakeup() == NOW + timedelta(hours=1)
    rec.run_once(NOW + timedelta(hours=1))  # the stage is due
    assert calls[-1] == NOW + timedelta(hours=1)


def test_input_identity_sees_every_edit(tmp_path: Path) -> None:
    d = daemon_policy(tmp_path / "p")
    first = input_identity(d, tmp_path / "missing")
    assert first == input_identity(d, tmp_path / "missing")
    (d / "pools.yaml").write_text((d / "pools.yaml").read_text() + "\n")
    assert input_identity(d, tmp_path / "missing") != first
    (d / ".pools.yaml.swp").write_text("x")  # editor droppings are ignored
    second = input_identity(d)
    (d / ".other.swp").write_text("y")
    (d / "audit.jsonl").write_text("{}\n")  # logs are not inputs
    assert input_identity(d) == second


def test_carry_counters_only_touches_recreated_counters() -> None:
    tx = Transaction("inet", "op25b", (AddTable("c"), AddCounter("a"), AddCounter("b")))
    carried = carry_counters(tx, {"a": Counter(5, 300), "z": Counter(1, 1)})
    assert carried.ops == (AddTable("c"), AddCounter("a", 5, 300), AddCounter("b"))
    assert "add counter inet op25b a { packets 5 bytes 300 }" in render(carried)
    assert "add counter inet op25b b\n" in render(carried)


def test_a_pass_never_runs_while_a_command_holds_the_state_lock(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    backend = MemoryKernel()
    rec = Reconciler(backend, DirectorySource(EXAMPLE, state))
    with StateDir(state).lock("pool rollback (test)", timeout=0):
        skipped = rec.run_once()
    assert not skipped.changed and backend.applied == []
    assert rec.run_once().changed  # the next pass, lock free, does the work


def test_a_desired_change_on_an_untouched_kernel_is_committed_without_reading(
    rec: Reconciler, kernel: MemoryKernel, policy_dir: Path
) -> None:
    rec.run_once()
    set_mode(policy_dir, EAST2, "enforce")  # e.g. a stage fell due
    kernel.reads.clear()
    result = rec.run_once()
    assert result.read == "known" and result.changed and result.desired_changed
    assert kernel.reads == []  # nothing listed, not even the skeleton
    assert result.tx is not None
    assert {type(op).__name__ for op in result.tx.ops} == {"FlushChain", "AddRule"}
    assert kernel.tables[KEY].chains[pool_chain(EAST2)].rule_ids == (
        rec.desired.table.chains[pool_chain(EAST2)].rule_ids if rec.desired else ()
    )
    assert rec.run_once().read == "fast"


def test_a_desired_change_after_someone_elses_commit_reads_the_skeleton(
    rec: Reconciler, kernel: MemoryKernel, policy_dir: Path
) -> None:
    rec.run_once()
    kernel.gen += 1  # another table changed: the kernel may no longer hold what we made
    set_mode(policy_dir, EAST2, "enforce")
    kernel.reads.clear()
    result = rec.run_once()
    assert result.read == "skeleton" and result.changed
    assert kernel.reads == [False]


def test_after_a_chain_rewrite_only_that_chains_digests_are_read(
    policy_dir: Path, tmp_path: Path, timer: Timer
) -> None:
    asked: list[list[str] | None] = []

    class Asked(MemoryKernel):
        def rule_digests(
            self, family: str, name: str, chains: Iterable[str] | None = None
        ) -> RuleDigests:
            asked.append(None if chains is None else sorted(chains))
            return super().rule_digests(family, name, chains)

    kernel = Asked()
    rec = Reconciler(
        kernel, DirectorySource(policy_dir, tmp_path / "state"), clock=lambda: NOW, timer=timer
    )
    rec.run_once()
    set_mode(policy_dir, EAST2, "enforce")
    asked.clear()
    assert rec.run_once().read == "known"
    assert asked == [[pool_chain(EAST2)]]
    # a hand edit of that chain that keeps our comment is still caught afterwards
    live = kernel.tables[KEY]
    chain = live.chains[pool_chain(EAST2)]
    edited = replace(chain, rules=(Rule(chain.rules[0].id, "counter accept"),))
    kernel.edit("inet", "op25b", replace(live, chains={**live.chains, chain.name: edited}))
    result = rec.run_once()
    assert result.drift_repaired and result.changed


@pytest.mark.parametrize("every_pass", [True, False])
def test_a_policy_change_and_a_deleted_table_in_one_pass_keep_the_counters(
    kernel: MemoryKernel, policy_dir: Path, tmp_path: Path, timer: Timer, every_pass: bool
) -> None:
    rec = Reconciler(
        kernel,
        DirectorySource(policy_dir, tmp_path / "state"),
        clock=lambda: NOW,
        timer=timer,
        sample_every_pass=every_pass,
    )
    registry, metrics = build_registry(lambda: rec.view)
    metrics.observe(rec.run_once(), now=1.0)
    blocked = f"blocked_{EAST1_POOL}"
    kernel.values[blocked] = (7, 420)
    if not every_pass:
        kernel.gen += 1  # someone committed elsewhere: the next pass reads (and samples)
    metrics.observe(rec.run_once(), now=2.0)
    assert rec.view.counters[blocked] == Counter(7, 420, refs=1)

    set_mode(policy_dir, EAST2, "enforce")  # the policy changes ...
    kernel.edit(*KEY, None)  # ... and someone deletes the table, before the same pass
    result = rec.run_once()
    metrics.observe(result, now=3.0)

    assert result.ok and result.changed and result.desired_changed
    assert result.drift_repaired  # a deleted table is drift, whatever else changed
    assert registry.get_sample_value("op25b_drift_repairs_total") == 1
    assert kernel.values[blocked] == (7, 420)  # not back to 0
    assert rec.desired is not None and kernel.tables[KEY] == rec.desired.table
    assert "counter name blocked_flets-east-dyn-2" in (
        kernel.tables[KEY].chains[pool_chain(EAST2)].rules[-1].text or ""
    )


def test_counters_we_deleted_ourselves_start_again_at_zero(
    rec: Reconciler, kernel: MemoryKernel, policy_dir: Path
) -> None:
    rec.run_once()
    monitored = f"monitored_{EAST2}"
    kernel.values[monitored] = (5, 300)
    kernel.gen += 1
    rec.run_once()  # sampled
    pools = policy_dir / "pools.yaml"
    saved = pools.read_text()
    data = yaml.safe_load(saved)
    data["pools"] = [p for p in data["pools"] if p["name"] != EAST2]
    pools.write_text(yaml.safe_dump(data))
    assert rec.run_once().changed and monitored not in kernel.tables[KEY].counters
    pools.write_text(saved)
    assert rec.run_once().changed and kernel.values[monitored] == (0, 0)


def _edit_in_place(kernel: MemoryKernel, chain_name: str, text: str = "counter accept") -> None:
    """`nft replace rule ... comment "op25b:<id>"`: our comment, someone else's statement."""
    live = kernel.tables[KEY]
    chain = live.chains[chain_name]
    edited = replace(chain, rules=(Rule(chain.rules[0].id, text), *chain.rules[1:]))
    kernel.edit(*KEY, replace(live, chains={**live.chains, chain_name: edited}))


def _reconciler(
    kernel: MemoryKernel, policy_dir: Path, state: Path, timer: Timer, *, saved: bool = True
) -> Reconciler:
    state.mkdir(exist_ok=True)
    return Reconciler(
        kernel,
        DirectorySource(policy_dir, state),
        clock=lambda: NOW,
        verify_interval=60,
        timer=timer,
        rule_reference=state / ".rule-digests.json" if saved else None,
    )


def test_a_table_made_before_the_daemon_is_verified_then_edits_in_place_are_repaired(
    kernel: MemoryKernel, policy_dir: Path, tmp_path: Path, timer: Timer
) -> None:
    """Issue 10 item 1: the table exists when the daemon starts (after `apply`, a restart)."""
    _reconciler(kernel, policy_dir, tmp_path / "elsewhere", timer).run_once()
    _edit_in_place(kernel, EAST1)  # ... and was already edited when the daemon starts
    rec = _reconciler(kernel, policy_dir, tmp_path / "state", timer)

    first = rec.run_once()
    # nothing to judge against: every chain of ours is rewritten once, which undoes the edit
    assert first.ok and first.changed and not first.drift_repaired
    assert rec.desired is not None
    assert kernel.tables[KEY].chains == rec.desired.table.chains
    assert rec.in_sync

    _edit_in_place(kernel, EAST1)
    repaired = rec.run_once()
    assert repaired.changed and repaired.drift_repaired and repaired.read == "skeleton"
    assert kernel.tables[KEY].chains[EAST1] == rec.desired.table.chains[EAST1]
    assert not rec.run_once().changed


def test_the_reference_survives_a_restart(
    kernel: MemoryKernel, policy_dir: Path, tmp_path: Path, timer: Timer
) -> None:
    _reconciler(kernel, policy_dir, tmp_path / "state", timer).run_once()
    _edit_in_place(kernel, EAST1)  # while the daemon is down
    first = _reconciler(kernel, policy_dir, tmp_path / "state", timer).run_once()
    assert first.drift_repaired and first.tx is not None
    assert len(first.tx.ops) == 4  # only that chain: flush + its three rules
    # an untouched table and a saved reference: a restart rewrites nothing
    again = _reconciler(kernel, policy_dir, tmp_path / "state", timer).run_once()
    assert again.ok and not again.changed


def test_an_unreadable_digest_is_drift_never_a_match(
    policy_dir: Path, tmp_path: Path, timer: Timer
) -> None:
    class Broken(MemoryKernel):
        broken = False

        def rule_digests(
            self, family: str, name: str, chains: Iterable[str] | None = None
        ) -> RuleDigests:
            real = super().rule_digests(family, name, chains)
            if not self.broken:
                return real
            return {k: tuple(UNREADABLE for _ in v) for k, v in real.items()}

    kernel = Broken()
    rec = _reconciler(kernel, policy_dir, tmp_path / "state", timer)
    rec.run_once()
    kernel.broken = True
    kernel.gen += 1  # someone committed somewhere: the next pass looks
    result = rec.run_once()
    assert result.changed and result.drift_repaired  # loud: repaired (and logged), not trusted


def test_long_passes_report_progress_between_phases(rec: Reconciler) -> None:
    """The daemon feeds systemd's watchdog from `progress`: a pass that loads, reads and
    commits (seconds each at 100,000 prefixes) reports after every phase, not only at its end."""
    calls: list[str] = []
    rec.progress = lambda: calls.append("tick")
    first = rec.run_once()  # load + full read + commit
    assert first.changed and len(calls) >= 4
    calls.clear()
    assert rec.run_once().read == "fast" and len(calls) == 1  # a pass that reads nothing
