"""The CLI's contract: exit codes, JSON for scripts, nothing applied on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from op25b_ctl.cli.main import main
from op25b_ctl.kernel.memory import MemoryKernel
from tests.policytools import EXAMPLE, edit, example_policy


def run(
    capsys: pytest.CaptureFixture[str], *argv: str, kernel: MemoryKernel | None = None
) -> tuple[int, str, str]:
    code = main(list(argv), kernel=kernel or MemoryKernel())
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_ok_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", "--policy", str(EXAMPLE), "-o", "json")
    assert code == 0
    data = json.loads(out)
    assert data["ok"] is True
    assert {p["name"]: p["mode"] for p in data["pools"]}["static-biz"] == "off"


def test_invalid_policy_exits_2_and_applies_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = example_policy(tmp_path)
    edit(d / "pools.yaml", "192.0.2.0/26", "192.0.2.1/26")
    backend = MemoryKernel()
    code, out, err = run(capsys, "apply", "--policy", str(d), "-o", "json", kernel=backend)
    assert code == 2
    assert json.loads(out)["errors"][0]["line"] == 13
    assert "pools.yaml:13: pools[0].prefixes[0]" in err
    assert "nothing applied" in err
    assert backend.applied == [] and backend.tables == {}


def test_plan_apply_plan(capsys: pytest.CaptureFixture[str]) -> None:
    backend = MemoryKernel()
    code, out, _ = run(capsys, "plan", "--policy", str(EXAMPLE), "-o", "json", kernel=backend)
    assert code == 0 and json.loads(out)["changes"] > 0 and not backend.applied
    code, out, _ = run(capsys, "apply", "--policy", str(EXAMPLE), "-o", "json", kernel=backend)
    assert code == 0 and json.loads(out)["applied"] is True
    code, out, _ = run(capsys, "plan", "--policy", str(EXAMPLE), kernel=backend)
    assert code == 0 and "no changes" in out


def test_apply_dry_run_commits_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    backend = MemoryKernel()
    code, out, _ = run(
        capsys, "apply", "--dry-run", "--policy", str(EXAMPLE), "-o", "json", kernel=backend
    )
    assert code == 0 and json.loads(out)["applied"] is False
    assert backend.tables == {}


def test_backend_failure_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    backend = MemoryKernel()
    backend.fail_next = "Error: simulated"
    code, _, err = run(capsys, "apply", "--policy", str(EXAMPLE), kernel=backend)
    assert code == 1
    assert "simulated" in err and "left unchanged" in err
    assert backend.tables == {}


def test_teardown_needs_confirmation(capsys: pytest.CaptureFixture[str]) -> None:
    backend = MemoryKernel()
    run(capsys, "apply", "--policy", str(EXAMPLE), kernel=backend)
    code, _, err = run(capsys, "teardown", "--policy", str(EXAMPLE), kernel=backend)
    assert code == 2 and "--yes" in err and backend.tables
    code, out, _ = run(
        capsys, "teardown", "--yes", "--policy", str(EXAMPLE), "-o", "json", kernel=backend
    )
    assert code == 0 and json.loads(out)["removed"] is True and backend.tables == {}


@pytest.mark.parametrize("command", ["validate", "plan", "apply", "status", "teardown"])
def test_every_command_has_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "--policy" in capsys.readouterr().out


def test_status_reads_the_live_table_through_the_kernel_it_is_given(
    capsys: pytest.CaptureFixture[str],
) -> None:
    kernel = MemoryKernel()
    code, out, _ = run(capsys, "status", "--policy", str(EXAMPLE), "-o", "json", kernel=kernel)
    assert code == 0 and json.loads(out)["present"] is False
    run(capsys, "apply", "--policy", str(EXAMPLE), kernel=kernel)
    enforced = [
        n[len("blocked_") :]
        for n, c in kernel.counters("inet", "op25b").items()
        if n.startswith("blocked_") and c.refs
    ]
    assert enforced  # the example policy enforces some pool today
    kernel.values[f"blocked_{enforced[0]}"] = (12, 720)
    kernel.values["relayed"] = (3, 180)
    code, out, _ = run(capsys, "status", "--policy", str(EXAMPLE), "-o", "json", kernel=kernel)
    data = json.loads(out)
    assert code == 0 and data["present"] is True and data["rules_in_sync"] is True
    pool = {p["name"]: p for p in data["pools"]}[enforced[0]]
    assert pool["blocked"] == {"packets": 12, "bytes": 720}
    assert pool["live_mode"] == "enforce"
    assert data["relayed"] == {"packets": 3, "bytes": 180}


def test_validate_warns_when_a_stage_applied_here_is_moved_later(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A fired stage dated later again takes its pool out of enforce at the next apply or
    tick: `validate` says so (stderr and JSON), and stays exit 0 (it may be meant)."""
    d = example_policy(tmp_path / "policy")
    state = tmp_path / "state"
    now = "2011-01-20T12:00:00+09:00"  # after enforce-east-1 (01-17), before west (01-24)
    backend = MemoryKernel()
    common = ("--policy", str(d), "--state-dir", str(state), "--now", now)
    code, _, _ = run(capsys, "rollout", "tick", *common, kernel=backend)
    assert code == 0
    code, out, err = run(capsys, "validate", *common, "-o", "json", kernel=backend)
    assert code == 0 and json.loads(out)["warnings"] == [] and "warning" not in err

    edit(d / "rollout.yaml", "at: 2011-01-17T10:00:00+09:00", "at: 2011-01-22T10:00:00+09:00")
    code, out, err = run(capsys, "validate", *common, "-o", "json", kernel=backend)
    assert code == 0
    (warning,) = json.loads(out)["warnings"]
    assert "stage enforce-east-1 was applied here" in warning
    assert "2011-01-22T10:00+09:00" in warning  # the policy zone, as `rollout status` shows it
    assert "flets-east-dyn-1 -> monitor" in warning
    assert f"op25b-ctl: warning: {warning}" in err
