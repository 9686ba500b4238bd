"""Issue 10, the parts that need no kernel: the daemon survives its own inputs, one clock rule
for the daemon and `rollout tick`, the audit log decides the exit status, teardown's checks.
(The same cases against a real kernel, with byte-identity of the ruleset and the state files,
are in tests/reliability/.)"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from op25b_ctl.cli.main import main
from op25b_ctl.daemon.loop import Daemon
from op25b_ctl.daemon.metrics import build_registry
from op25b_ctl.daemon.reconcile import Reconciler
from op25b_ctl.errors import NotRecordedError, StateError
from op25b_ctl.kernel.memory import MemoryKernel
from op25b_ctl.ops import operate
from op25b_ctl.plan.ruleset import pool_chain
from op25b_ctl.plan.table import Chain, Table
from op25b_ctl.policy.loader import load_policy
from op25b_ctl.source import audit
from op25b_ctl.source.directory import DirectorySource, input_identity
from op25b_ctl.source.state import StateDir
from tests.daemonpolicy import EAST1, EAST2, daemon_policy
from tests.policytools import EXAMPLE

NOW = datetime(2011, 1, 31, 9, 0, tzinfo=UTC)
STAGE_AT = datetime(2011, 2, 1, 0, 0, tzinfo=UTC)


def with_stage(policy: Path) -> Path:
    """EAST2 (monitor at baseline) is enforced by a stage at STAGE_AT."""
    (policy / "rollout.yaml").write_text(
        "stages:\n  - name: east2-on\n    at: 2011-02-01T00:00:00+00:00\n"
        f"    mode: enforce\n    pools: [{EAST2}]\n"
    )
    return policy


def chain_mode(kernel: MemoryKernel, pool: str) -> tuple[str, ...]:
    table = kernel.read("inet", "op25b")
    assert table is not None
    return tuple(r.text or r.id for r in table.chains[pool_chain(pool)].rules)


# --------------------------------------------------------------------------- daemon inputs


@pytest.mark.parametrize(
    "content",
    [
        b'{"format": 1, "overrides": {"flets-',
        b"\xff\xfe{\x00",
        b"[1, 2]",
        b'{"format": 1, "overrides": 3}',
    ],
    ids=["truncated", "non-utf8", "a-list", "wrong-shape"],
)
def test_corrupt_overrides_keep_the_last_good_state_and_raise_the_metric(
    tmp_path: Path, content: bytes
) -> None:
    kernel = MemoryKernel()
    state = tmp_path / "state"
    state.mkdir()
    rec = Reconciler(
        kernel, DirectorySource(daemon_policy(tmp_path / "p"), state), clock=lambda: NOW
    )
    registry, metrics = build_registry(lambda: rec.view)
    daemon = Daemon(rec, metrics=metrics)
    daemon.step()
    good = kernel.read("inet", "op25b")
    (state / "overrides.json").write_bytes(content)
    result = daemon.step()
    assert result.ok and result.policy_rejected
    assert kernel.read("inet", "op25b") == good
    assert rec.state_error is not None and "overrides.json" in rec.state_error
    assert registry.get_sample_value("op25b_state_valid") == 0
    (state / "overrides.json").write_text("{}")
    daemon.step()
    assert rec.state_error is None and registry.get_sample_value("op25b_state_valid") == 1


def test_corrupt_overrides_at_start_enforce_the_policy_without_them(tmp_path: Path) -> None:
    kernel = MemoryKernel()
    state = tmp_path / "state"
    state.mkdir()
    (state / "overrides.json").write_bytes(b'{"format": 1, "overri')
    rec = Reconciler(
        kernel, DirectorySource(daemon_policy(tmp_path / "p"), state), clock=lambda: NOW
    )
    assert rec.run_once().ok
    assert kernel.read("inet", "op25b") is not None and rec.state_error is not None


def test_symlink_loops_in_the_state_dir_neither_crash_nor_recurse(tmp_path: Path) -> None:
    kernel = MemoryKernel()
    state = tmp_path / "state"
    state.mkdir()
    (state / "loop").symlink_to("loop")
    (state / "sub").mkdir()
    (state / "sub" / "up").symlink_to("..")  # a directory cycle
    (state / "overrides.json").symlink_to("overrides.json")
    assert input_identity(state)  # no RecursionError, no OSError
    rec = Reconciler(
        kernel, DirectorySource(daemon_policy(tmp_path / "p"), state), clock=lambda: NOW
    )
    result = rec.run_once()
    assert result.ok and kernel.read("inet", "op25b") is not None
    assert rec.state_error is not None and "symlink" in rec.state_error


def test_a_pass_that_raises_is_logged_and_the_loop_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kernel = MemoryKernel()
    rec = Reconciler(kernel, DirectorySource(daemon_policy(tmp_path / "p")), clock=lambda: NOW)
    registry, metrics = build_registry(lambda: rec.view)
    daemon = Daemon(rec, metrics=metrics)
    real = rec.run_once

    def boom(now: datetime | None = None) -> object:
        raise RuntimeError("a bug")

    rec.run_once = boom  # type: ignore[method-assign,assignment]
    result = daemon.step()
    assert not result.ok and "internal error" in (result.error or "")
    assert registry.get_sample_value("op25b_daemon_internal_errors_total") == 1
    assert "Traceback" in caplog.text
    rec.run_once = real  # type: ignore[method-assign]
    assert daemon.step().ok


@pytest.mark.parametrize(
    "argv",
    [
        ["daemon", "--interval", "inf"],
        ["daemon", "--interval", "nan"],
        ["daemon", "--interval", "-1"],
        ["daemon", "--verify-interval", "nan"],
        ["daemon", "--interval", "1e9"],
        ["apply", "--lock-timeout", "nan"],
        ["apply", "--lock-timeout", "inf"],
        ["apply", "--lock-timeout", "-1"],
    ],
)
def test_non_finite_or_negative_seconds_are_refused_at_parse_time(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "seconds" in capsys.readouterr().err


# --------------------------------------------------------------------------- one clock rule


def test_a_clock_step_back_across_a_stage_undoes_it_in_the_daemon_as_in_tick(
    tmp_path: Path,
) -> None:
    policy_dir = with_stage(daemon_policy(tmp_path / "p"))
    clock = [STAGE_AT - timedelta(minutes=1)]
    kernel = MemoryKernel()
    rec = Reconciler(kernel, DirectorySource(policy_dir), clock=lambda: clock[0])
    registry, metrics = build_registry(lambda: rec.view)
    daemon = Daemon(rec, metrics=metrics)
    daemon.step()
    before = chain_mode(kernel, EAST2)
    clock[0] = STAGE_AT + timedelta(minutes=1)  # forward across the stage
    daemon.step()
    enforced = chain_mode(kernel, EAST2)
    assert enforced != before and rec.desired is not None
    assert rec.desired.decisions[EAST2].mode == "enforce"
    clock[0] = STAGE_AT - timedelta(minutes=1)  # and back
    result = daemon.step()
    assert result.clock_stepped_back and result.changed
    assert chain_mode(kernel, EAST2) == before
    assert registry.get_sample_value("op25b_clock_steps_back_total") == 1

    # rollout tick at the same times gives the same modes
    tick_kernel = MemoryKernel()
    policy = load_policy(policy_dir)
    state = StateDir(tmp_path / "tick-state")
    source = DirectorySource(policy_dir, state.path)
    for at in (STAGE_AT - timedelta(minutes=1), STAGE_AT + timedelta(minutes=1)):
        operate.tick(tick_kernel, policy, source, state, at, ["tick"])
    assert chain_mode(tick_kernel, EAST2) == enforced
    operate.tick(tick_kernel, policy, source, state, STAGE_AT - timedelta(minutes=1), ["tick"])
    assert chain_mode(tick_kernel, EAST2) == before


# --------------------------------------------------------------------------- audit vs exit


def test_an_unwritable_audit_log_refuses_the_change_before_anything_is_touched(
    tmp_path: Path,
) -> None:
    kernel = MemoryKernel()
    policy_dir = daemon_policy(tmp_path / "p")
    policy = load_policy(policy_dir)
    state = StateDir(tmp_path / "state")
    source = DirectorySource(policy_dir, state.path)
    operate.apply_all(kernel, policy, source, state, NOW, ["apply"])
    before = dict(kernel.tables)
    state.audit_file.unlink()
    state.audit_file.mkdir()  # cannot be opened for appending
    with pytest.raises(StateError, match="nothing changed"):
        operate.set_override(
            kernel,
            policy,
            source,
            state,
            NOW,
            ["pool"],
            pool=EAST1,
            action="rollback",
            reason="x",
        )
    assert kernel.tables == before and state.overrides() == {}


def test_a_record_that_fails_after_the_commit_says_the_change_was_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kernel = MemoryKernel()
    policy_dir = daemon_policy(tmp_path / "p")
    state = tmp_path / "state"
    assert main(["apply", "--policy", str(policy_dir), "--state-dir", str(state)], kernel) == 0

    def full(path: Path, entry: audit.Entry) -> None:
        raise StateError(f"cannot append to audit log {path}: no space left on device")

    monkeypatch.setattr(audit, "append", full)
    argv = ["pool", "rollback", EAST1, "--reason", "INC-1", "--policy", str(policy_dir)]
    assert main([*argv, "--state-dir", str(state)], kernel) == 3
    err = capsys.readouterr().err
    assert "WAS changed" in err and "no space left" in err
    assert "op25b-ctl: live ruleset left unchanged" not in err
    with pytest.raises(NotRecordedError):
        operate.set_override(
            kernel,
            load_policy(policy_dir),
            DirectorySource(policy_dir, state),
            StateDir(state),
            NOW,
            ["pool"],
            pool=EAST2,
            action="enforce",
            reason="y",
        )


# --------------------------------------------------------------------------- state dir trust


def test_lock_and_audit_symlinks_are_refused_and_their_targets_untouched(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    state = StateDir(tmp_path / "state")
    state.make()
    state.lock_file.symlink_to(target)
    with pytest.raises(StateError, match="symlink"), state.lock("x"):
        pass
    state.lock_file.unlink()
    state.audit_file.symlink_to(target)
    entry = audit.Entry(at=NOW, user="u", command=["c"], action="a")
    with pytest.raises(StateError, match="symlink"):
        audit.append(state.audit_file, entry)
    with pytest.raises(StateError, match="symlink"):
        audit.read_all(state.audit_file)
    assert target.read_text() == "keep me\n"


def test_missing_parents_are_not_world_writable_under_umask_000(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        state = StateDir(tmp_path / "a" / "b" / "state")
        with state.lock("x"):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o755
    assert state.path.stat().st_mode & 0o777 == 0o750
    assert state.lock_file.stat().st_mode & 0o777 == 0o640


def test_a_world_writable_state_dir_is_refused(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.make()
    state.path.chmod(0o777)
    with pytest.raises(StateError, match="writable by anyone"), state.lock("x"):
        pass


def test_garbage_tick_cache_is_only_a_cache(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.make()
    for garbage in (b"\xff\xfe", b"[]", b'{"format": 1, "at": 5}', b"{"):
        state.tick_cache_file.write_bytes(garbage)
        assert not operate.tick_is_idle(state, "digest", NOW, 1, "boot:ns")
    state.tick_cache_file.unlink()
    state.tick_cache_file.mkdir()  # cannot even be replaced: the tick must not fail for it
    state.save_tick_cache({"inputs": "x"})
    state.forget_tick_cache()


def test_garbage_lines_in_the_audit_log_are_skipped_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = StateDir(tmp_path / "state")
    entry = audit.Entry(at=NOW, user="u", command=["c"], action="pool enforce", reason="ok")
    audit.append(state.audit_file, entry)
    with state.audit_file.open("ab") as fh:
        fh.write(b"garbage\n\xff\xfe\n[1]\n" + json.dumps({"changes": [1]}).encode() + b"\n")
        fh.write(json.dumps({"action": "x\x1b[2Jy", "reason": "a\nb"}).encode() + b"\n")
    audit.append(state.audit_file, entry)
    entries, skipped = audit.read_all(state.audit_file)
    assert len(entries) == 3 and [s.line for s in skipped] == [2, 3, 4, 5]
    assert main(["audit", "--state-dir", str(state.path), "--policy", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert out.count("pool enforce") == 2
    assert "\x1b" not in out and "x\\x1b[2Jy" in out and "a\\nb" in out
    assert "audit.jsonl:2: skipped: not JSON" in err and "audit.jsonl:3: skipped: not UTF-8" in err


# --------------------------------------------------------------------------- teardown


def test_teardown_needs_no_policy_refuses_foreign_tables_and_is_audited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kernel = MemoryKernel()
    policy_dir = daemon_policy(tmp_path / "p")
    state = tmp_path / "state"
    assert main(["apply", "--policy", str(policy_dir), "--state-dir", str(state)], kernel) == 0
    foreign = Table("inet", "op25b_other", chains={"smtp": Chain("smtp")})
    kernel.tables[("inet", "op25b_other")] = foreign
    common = ["--state-dir", str(state), "--policy", str(tmp_path / "missing")]
    assert main(["teardown", "--yes", "--table", "op25b_other", *common], kernel) == 2
    assert kernel.tables[("inet", "op25b_other")] == foreign
    assert main(["teardown", "--yes", *common], kernel) == 0  # default name, no policy
    assert ("inet", "op25b") not in kernel.tables
    assert "policy not usable" in capsys.readouterr().err
    entries = audit.read(Path(state) / "audit.jsonl")
    assert entries[-1]["action"] == "teardown"
    for bad in ("op25b; flush ruleset", "filter", "op25b X"):
        with pytest.raises(SystemExit) as exc:
            main(["teardown", "--yes", "--table", bad, *common], kernel)
        assert exc.value.code == 2
