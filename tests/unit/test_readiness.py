"""Readiness of the schedule: pending enforcement stages against their offender threshold,
in rollout.yaml, `rollout status` and the stage metrics."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from op25b_ctl.cli import ops as cli_ops
from op25b_ctl.cli.main import main
from op25b_ctl.daemon.stagemetrics import StageCollector, stage_families
from op25b_ctl.daemon.view import View
from op25b_ctl.errors import PolicyError
from op25b_ctl.kernel.memory import MemoryKernel
from op25b_ctl.plan.desired import from_policy
from op25b_ctl.plan.readiness import describe, readiness, span
from op25b_ctl.plan.ruleset import offender_set
from op25b_ctl.policy import cache, loader
from op25b_ctl.policy.loader import load_policy
from op25b_ctl.policy.model import Policy
from op25b_ctl.policy.overrides import Override
from tests.policytools import EXAMPLE, example_policy

E1, E2, W1 = "flets-east-dyn-1", "flets-east-dyn-2", "flets-west-dyn-1"
JST = "+09:00"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text + JST)


def policy(tmp_path: Path, old: str = "", new: str = "") -> Policy:
    text = (EXAMPLE / "rollout.yaml").read_text()
    if old:
        assert old in text
        text = text.replace(old, new)
    return load_policy(example_policy(tmp_path / "p", rollout_yaml=text))


THRESHOLD_E1 = (
    "    pools: [flets-east-dyn-1]\n    mode: enforce\n",
    "    pools: [flets-east-dyn-1]\n    mode: enforce\n    max_offenders: 10\n"
    "    warn_before: 36h\n",
)


def test_pending_enforce_stages_with_counts(tmp_path: Path) -> None:
    p = policy(tmp_path)
    got = readiness(p, at("2011-01-10T09:00"), {E1: 37, W1: 2, E2: 0})
    assert [r.stage for r in got] == ["enforce-east-1", "enforce-west-1", "enforce-east-2"]
    east1, west1, east2 = got
    assert (east1.offenders, east1.threshold, east1.ready) == (37, 0, False)
    assert east1.warn_before == timedelta(days=7) and not east1.within_warning  # 7d 1h ahead
    assert (west1.offenders, west1.ready) == (2, False)
    assert (east2.due, east2.offenders, east2.ready, east2.within_warning) == (None, 0, True, False)
    # the settings-change stage (to monitor) is no readiness question; done stages drop out
    later = readiness(p, at("2011-01-20T00:00"), {E1: 37, W1: 2, E2: 0})
    assert [r.stage for r in later] == ["enforce-west-1", "enforce-east-2"]


def test_warning_is_due_within_warn_before_and_over_threshold(tmp_path: Path) -> None:
    p = policy(tmp_path, *THRESHOLD_E1)
    due = at("2011-01-17T10:00")
    just_outside = readiness(p, due - timedelta(hours=36, seconds=1), {E1: 11})[0]
    assert just_outside.ready is False and not just_outside.warning
    inside = readiness(p, due - timedelta(hours=36), {E1: 11})[0]
    assert inside.within_warning and inside.warning
    ready = readiness(p, due - timedelta(hours=1), {E1: 10})[0]
    assert ready.ready is True and ready.within_warning and not ready.warning


def test_unknown_counts_are_never_ready(tmp_path: Path) -> None:
    p = policy(tmp_path)
    none = readiness(p, at("2011-01-16T12:00"), None)[0]
    assert (none.offenders, none.ready, none.warning) == (None, None, False)
    assert none.pools[0].why_unknown == "offender tracking not available"
    # a pool that is off now has no offender set: a count for it would be stale
    before = readiness(p, at("2010-10-01T00:00"), {E1: 5, W1: 5, E2: 5})[0]
    assert before.pools[0].mode == "off" and before.offenders is None
    assert before.pools[0].why_unknown == "not tracked while the pool is off"
    # rolled back by an engineer: off, so unknown too
    now = at("2011-01-16T12:00")
    rollback = Override(E1, "rollback", "INC-1", "alice", now - timedelta(hours=1))
    assert readiness(p, now, {E1: 5}, [rollback])[0].offenders is None
    # a tracked pool missing from the counts is unknown, not zero
    assert readiness(p, now, {})[0].offenders is None


def test_describe_says_who_and_how_long(tmp_path: Path) -> None:
    p = policy(tmp_path)
    east1 = readiness(p, at("2011-01-10T09:00"), {E1: 37})[0]
    assert describe(east1, "2011-01-17", timedelta(days=7)) == (
        "enforce-east-1 due 2011-01-17: 37 subscribers of flets-east-dyn-1 still sent on 25 "
        "in the last 7 days (threshold 0: NOT READY)"
    )
    soon = readiness(p, at("2011-01-16T09:00"), {E1: 1})[0]
    assert describe(soon, "2011-01-17", None).endswith(
        "1 subscriber of flets-east-dyn-1 still sent on 25 in the offender retention window "
        "(threshold 0: NOT READY, due within 7d)"
    )
    unknown = readiness(p, at("2011-01-16T09:00"), None)[0]
    assert describe(unknown, "2011-01-17", None) == (
        "enforce-east-1 due 2011-01-17: offender tracking not available (flets-east-dyn-1)"
    )
    assert [span(timedelta(hours=h)) for h in (1, 36, 48)] == ["1 hour", "36 hours", "2 days"]


@pytest.mark.parametrize(
    ("new", "message"),
    [
        ("    max_offenders: \"5\"\n", "rollout.yaml:{line}: stages[1].max_offenders: Input should be a valid integer"),
        ("    max_offenders: -1\n", "rollout.yaml:{line}: stages[1].max_offenders: Input should be greater than or equal to 0"),
        ("    warn_before: 7\n", "rollout.yaml:{line}: stages[1].warn_before: Input should be a valid string"),
        ("    warn_before: 7 days\n", "rollout.yaml:{line}: stages[1].warn_before: '7 days' is not a duration like 90m"),
        ("    warn_before: 400d\n", "rollout.yaml:{line}: stages[1].warn_before: '400d' is longer than 366d"),
        ("    warn_before: 0h\n", "rollout.yaml:{line}: stages[1].warn_before: '0h': warn at least 1m before the stage"),
    ],
)  # fmt: skip
def test_readiness_settings_are_strict(tmp_path: Path, new: str, message: str) -> None:
    text = (EXAMPLE / "rollout.yaml").read_text()
    line = text[: text.index(THRESHOLD_E1[0])].count("\n") + 3  # the line after `mode:`
    message = message.format(line=line)
    with pytest.raises(PolicyError) as err:
        policy(tmp_path, THRESHOLD_E1[0], THRESHOLD_E1[0] + new)
    assert any(str(p).startswith(message) for p in err.value.problems), str(err.value)


def test_readiness_settings_only_on_stages_to_enforce(tmp_path: Path) -> None:
    old = "    tags: [flets]\n    mode: monitor\n"
    with pytest.raises(PolicyError) as err:
        policy(tmp_path, old, old + "    max_offenders: 3\n")
    assert "stages[0].max_offenders: readiness settings apply to stages to enforce" in str(
        err.value
    )
    ok = policy(tmp_path, *THRESHOLD_E1)
    assert (ok.stages[1].max_offenders, ok.stages[1].warn_before_seconds) == (10, 36 * 3600)


def test_stage_metrics(tmp_path: Path) -> None:
    p = policy(tmp_path, *THRESHOLD_E1)
    now = at("2011-01-16T09:00")
    registry = CollectorRegistry(auto_describe=False)
    want = from_policy(p, now)
    counts: dict[str, int] | None = {E1: 37}
    registry.register(StageCollector(lambda: View(desired=want), lambda: now, lambda: counts))

    def value(name: str, stage: str) -> float | None:
        return registry.get_sample_value(f"op25b_stage_{name}", {"stage": stage})

    assert value("due_timestamp_seconds", "enforce-east-1") == at("2011-01-17T10:00").timestamp()
    assert value("offenders", "enforce-east-1") == 37
    assert value("offender_threshold", "enforce-east-1") == 10
    assert value("warn_before_seconds", "enforce-east-1") == 36 * 3600
    assert value("warn_before_seconds", "enforce-west-1") == 7 * 86400
    assert value("offenders", "enforce-west-1") is None  # W1 has no count
    assert value("due_timestamp_seconds", "enforce-east-2") is None  # tbd: no due time
    counts = None
    assert value("offenders", "enforce-east-1") is None
    assert value("offender_threshold", "enforce-east-1") == 10
    assert [f.name for f in stage_families([])] == [
        "op25b_stage_due_timestamp_seconds",
        "op25b_stage_offenders",
        "op25b_stage_offender_threshold",
        "op25b_stage_warn_before_seconds",
    ]


def test_stage_collector_without_a_count_source(tmp_path: Path) -> None:
    """No count source wired: due, threshold and warn time, and no offenders series."""
    p = policy(tmp_path)
    now = at("2011-01-16T09:00")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StageCollector(lambda: View(desired=from_policy(p, now)), lambda: now))
    east1 = {"stage": "enforce-east-1"}
    assert registry.get_sample_value("op25b_stage_offender_threshold", east1) == 0
    assert registry.get_sample_value("op25b_stage_offenders", east1) is None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StageCollector(View, lambda: now))  # no policy yet: nothing at all
    assert registry.get_sample_value("op25b_stage_offender_threshold", east1) is None


def run_status(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    argv = ["rollout", "status", "--policy", str(EXAMPLE), "--state-dir", str(tmp_path / "s")]
    code = main([*argv, "--now", "2011-01-10T09:00:00+09:00", *extra], kernel=MemoryKernel())
    out, _ = capsys.readouterr()
    return code, out


def test_rollout_status_readiness_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = run_status(tmp_path, capsys)
    assert code == 0
    assert (
        "readiness:\n"
        "  enforce-east-1 due 2011-01-17: offender tracking not available (flets-east-dyn-1)\n"
    ) in out
    monkeypatch.setattr(
        cli_ops, "offender_counts", lambda ctx, policy: ({E1: 37, W1: 0, E2: 3}, timedelta(days=7))
    )
    code, out = run_status(tmp_path, capsys)
    assert (
        "  enforce-east-1 due 2011-01-17: 37 subscribers of flets-east-dyn-1 still sent on 25 "
        "in the last 7 days (threshold 0: NOT READY)\n"
        "  enforce-west-1 due 2011-01-24: 0 subscribers of flets-west-dyn-1 still sent on 25 "
        "in the last 7 days (threshold 0: ready)\n"
        "  enforce-east-2 due tbd: 3 subscribers of flets-east-dyn-2"
    ) in out
    code, out = run_status(tmp_path, capsys, "-o", "json")
    data = json.loads(out)
    assert data["offender_tracking"] is True and data["offender_window_seconds"] == 7 * 86400
    first = data["readiness"][0]
    assert first["stage"] == "enforce-east-1" and first["due"] == "2011-01-17T10:00+09:00"
    assert (first["offenders"], first["threshold"], first["ready"]) == (37, 0, False)
    assert first["pools"] == [{"pool": E1, "mode": "monitor", "offenders": 37, "unknown": None}]


def test_readiness_settings_survive_the_policy_cache(tmp_path: Path) -> None:
    p = policy(tmp_path, *THRESHOLD_E1)
    where = tmp_path / "cache"
    cache.load(tmp_path / "p", where)  # validates and stores
    digest = loader.texts_digest(loader.read_policy_files(tmp_path / "p"))
    again = cache.lookup(tmp_path / "p", digest, where)  # the stored entry, nothing else
    assert again is not None
    assert [(s.max_offenders, s.warn_before) for s in again.stages] == [
        (s.max_offenders, s.warn_before) for s in p.stages
    ]
    assert again.stages[1].warn_before_seconds == 36 * 3600


def test_rollout_status_counts_from_the_offender_sets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real count source: the kernel's offender sets (distinct sources per pool)."""
    kernel = MemoryKernel()
    state = ["--policy", str(EXAMPLE), "--state-dir", str(tmp_path / "s")]
    now = ["--now", "2011-01-10T09:00:00+09:00"]
    assert main(["apply", *state, *now], kernel=kernel) == 0
    week = 7 * 86400 * 1000
    kernel.seen[offender_set(E1, 4)] = [(bytes([192, 0, 2, n]), 1, 0, week) for n in (10, 11, 12)]
    kernel.seen[offender_set(E1, 6)] = [(bytes(16), 1, 0, week)]
    capsys.readouterr()
    assert main(["rollout", "status", *state, *now], kernel=kernel) == 0
    out = capsys.readouterr().out
    assert (
        "  enforce-east-1 due 2011-01-17: 4 subscribers of flets-east-dyn-1 still sent on 25 "
        "in the last 7 days (threshold 0: NOT READY)\n"
    ) in out
    assert "  enforce-west-1 due 2011-01-24: 0 subscribers of flets-west-dyn-1" in out
