"""Impossible dates (month 13, 30 February, hour 25, offset +24:00) are refused as input,
with file, line and field, wherever the tool reads a time: never a traceback.

PyYAML's timestamp constructor raised ValueError for these before the model's checks ran
(issue 17, item 1); the loader now hands such a scalar to the model as text.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from op25b_ctl.errors import OverrideError, PolicyError, StateError
from op25b_ctl.ops.operate import tick_is_idle
from op25b_ctl.policy.loader import load_policy, parse_policy
from op25b_ctl.policy.model import impossible_time
from op25b_ctl.policy.overrides import parse_when
from op25b_ctl.source.state import StateDir
from tests.policytools import EXAMPLE, edit, example_policy

GOOD_AT = "at: 2011-01-17T10:00:00+09:00"
GOOD_EXPIRES = "expires: 2011-03-31T23:59:59+09:00"

# written bare, as a user writes them: YAML reads these as timestamps
IMPOSSIBLE = {
    "month 13": ("2011-13-17T10:00:00+09:00", "month must be in 1..12"),
    "30 February": ("2011-02-30T10:00:00+09:00", "day is out of range for month"),
    "hour 25": ("2011-01-17T25:00:00+09:00", "hour must be in 0..23"),
    "offset +24:00": ("2011-01-17T10:00:00+24:00", "UTC offset +24:00 is out of range"),
    "minute 60": ("2011-01-17T10:60:00+09:00", "minute must be in 0..59"),
    "date only, 31 April": ("2011-04-31", "day is out of range for month"),
}


@pytest.mark.parametrize("case", sorted(IMPOSSIBLE))
def test_impossible_stage_time_is_a_policy_error_with_line(tmp_path: Path, case: str) -> None:
    text, why = IMPOSSIBLE[case]
    d = example_policy(tmp_path)
    edit(d / "rollout.yaml", GOOD_AT, f"at: {text}")
    line = 1 + (d / "rollout.yaml").read_text().split(f"at: {text}")[0].count("\n")
    with pytest.raises(PolicyError) as exc:
        load_policy(d)
    found = [str(p) for p in exc.value.problems]
    want = f"rollout.yaml:{line}: stages[1].at: '{text}' is not a real time: {why}"
    assert any(p.startswith(want) for p in found), found


def test_every_impossible_date_is_reported_not_just_the_first(tmp_path: Path) -> None:
    d = example_policy(tmp_path)
    edit(d / "rollout.yaml", GOOD_AT, "at: 2011-13-17T10:00:00+09:00")
    edit(d / "exemptions.yaml", GOOD_EXPIRES, "expires: 2011-02-30T23:59:59+09:00")
    with pytest.raises(PolicyError) as exc:
        load_policy(d)
    where = {(p.file, p.where) for p in exc.value.problems}
    assert ("rollout.yaml", "stages[1].at") in where
    assert ("exemptions.yaml", "exemptions[1].expires") in where
    assert all(p.line for p in exc.value.problems)


def test_published_policy_texts_are_checked_the_same() -> None:
    texts = {p.name: p.read_text() for p in EXAMPLE.glob("*.yaml")}
    texts["rollout.yaml"] = texts["rollout.yaml"].replace(GOOD_AT, "at: 2011-01-17T25:00:00+09:00")
    with pytest.raises(PolicyError, match=r"rollout\.yaml:\d+: stages\[1\]\.at: .*hour"):
        parse_policy(texts)


def test_real_times_still_load_as_times(tmp_path: Path) -> None:
    policy = load_policy(example_policy(tmp_path))
    at = policy.stages[1].scheduled
    assert at is not None and at.isoformat() == "2011-01-17T10:00:00+09:00"


@pytest.mark.parametrize("case", sorted(IMPOSSIBLE))
def test_impossible_command_line_time(case: str) -> None:
    text, why = IMPOSSIBLE[case]
    with pytest.raises(OverrideError, match=re.escape(f"{text!r} is not a real time: {why}")):
        parse_when(text, datetime(2011, 1, 20, tzinfo=UTC))


def test_impossible_time_only_explains_time_shapes() -> None:
    assert impossible_time("2011-01-17T10:00:00+09:00") is None
    assert impossible_time("tomorrow") is None
    assert impossible_time("2011-02-29") == "day is out of range for month"
    assert impossible_time("2012-02-29") is None  # a leap year


def _override(set_at: str, until: str | None) -> bytes:
    record = {
        "pool": "flets-east-dyn-1",
        "action": "rollback",
        "mode": "monitor",
        "reason": "INC-1",
        "user": "ops",
        "set_at": set_at,
        "until": until,
    }
    return json.dumps({"format": 1, "overrides": {"flets-east-dyn-1": record}}).encode()


@pytest.mark.parametrize(
    "set_at,until",
    [
        ("2011-13-01T00:00:00+09:00", None),
        ("2011-01-20T00:00:00+09:00", "2011-02-30T00:00:00+09:00"),
        ("2011-01-20T00:00:00+24:00", None),
    ],
)
def test_impossible_date_in_overrides_is_an_unusable_state_file(
    tmp_path: Path, set_at: str, until: str | None
) -> None:
    state = StateDir(tmp_path)
    state.overrides_file.write_bytes(_override(set_at, until))
    with pytest.raises(StateError, match=r"overrides\.json: .*not a real time"):
        state.overrides()


def test_impossible_date_in_the_tick_cache_means_a_full_tick(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.tick_cache_file.write_text(
        json.dumps(
            {
                "format": 1,
                "inputs": "d",
                "at": "2011-13-01T00:00:00+09:00",
                "next_change": "2011-02-30T00:00:00+09:00",
                "generation": 7,
                "ruleset": "r",
            }
        )
    )
    assert not tick_is_idle(state, "d", datetime(2011, 1, 20, tzinfo=UTC), 7, "r")


def test_impossible_dates_from_the_fleet_store_are_logged_and_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fleet override or exemption (keys in the store, kept in the local snapshot) with an
    impossible date is ignored with a log line; the gateway keeps the rest."""
    from op25b_ctl.source.etcd import Scope
    from op25b_ctl.source.fleet import gateway_overrides, with_fleet_exemptions

    record = json.loads(_override("2011-01-20T00:00:00+09:00", "2011-02-30T00:00:00+09:00"))
    bad = record["overrides"]["flets-east-dyn-1"]
    good = {**bad, "pool": "flets-east-dyn-2", "until": None}
    got = gateway_overrides([(Scope(), bad), (Scope(), good)], "gw", None)
    assert list(got) == ["flets-east-dyn-2"]
    policy = load_policy(example_policy(tmp_path))
    merged = with_fleet_exemptions(
        policy,
        [{"prefix": "192.0.2.64/30", "ticket": "T-1", "expires": "2011-13-01T00:00:00+09:00"}],
    )
    assert merged.exemptions == policy.exemptions
    assert "not a real time" in caplog.text
