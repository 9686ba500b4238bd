"""The rollout schedule under an injected clock: the NMTnet calendar walked date by date."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from op25b_ctl.errors import OverrideError, PolicyError
from op25b_ctl.plan.desired import Desired, from_policy
from op25b_ctl.plan.modes import decide, modes, next_change, upcoming
from op25b_ctl.policy.loader import load_policy
from op25b_ctl.policy.model import Policy
from op25b_ctl.policy.overrides import Override, check, parse_when
from op25b_ctl.source.directory import DirectorySource
from op25b_ctl.source.state import StateDir
from tests.policytools import EXAMPLE, edit, example_policy

JST = timezone(timedelta(hours=9))
E1, E2, W1, ST = "flets-east-dyn-1", "flets-east-dyn-2", "flets-west-dyn-1", "static-biz"


def jst(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=JST)


@pytest.fixture
def policy() -> Policy:
    return load_policy(EXAMPLE)


# (time, expected modes of E1, E2, W1, ST)
CALENDAR = [
    (jst(2010, 10, 1), ("off", "off", "off", "off")),
    (jst(2010, 10, 25, 23, 59, 59), ("off", "off", "off", "off")),
    (jst(2010, 10, 26), ("monitor", "monitor", "monitor", "off")),
    (jst(2010, 12, 31, 23, 59), ("monitor", "monitor", "monitor", "off")),
    (jst(2011, 1, 17, 9, 59), ("monitor", "monitor", "monitor", "off")),
    (jst(2011, 1, 17, 10, 0), ("enforce", "monitor", "monitor", "off")),
    (jst(2011, 1, 24, 10, 0), ("enforce", "monitor", "enforce", "off")),
    (jst(2011, 2, 28), ("enforce", "monitor", "enforce", "off")),
    # today: the modes the foundation's e2e and demo tests rely on
    (datetime(2026, 11, 27, tzinfo=UTC), ("enforce", "monitor", "enforce", "off")),
]


@pytest.mark.parametrize("now,expected", CALENDAR, ids=[c[0].isoformat() for c in CALENDAR])
def test_example_calendar(policy: Policy, now: datetime, expected: tuple[str, ...]) -> None:
    got = modes(decide(policy, now))
    assert (got[E1], got[E2], got[W1], got[ST]) == expected


def test_stage_fires_at_its_instant_in_any_zone(policy: Policy) -> None:
    # 2011-01-17T10:00+09:00 is 01:00 UTC: one second earlier in UTC is still monitor
    assert modes(decide(policy, datetime(2011, 1, 17, 0, 59, 59, tzinfo=UTC)))[E1] == "monitor"
    assert modes(decide(policy, datetime(2011, 1, 17, 1, 0, 0, tzinfo=UTC)))[E1] == "enforce"


def test_reasons_name_the_stage(policy: Policy) -> None:
    d = decide(policy, jst(2011, 1, 20))
    assert d[E1].source == "stage" and d[E1].stage == "enforce-east-1"
    assert "2011-01-17T10:00+09:00" in d[E1].reason
    assert d[ST].source == "static"
    assert decide(policy, jst(2010, 1, 1))[E1].source == "baseline"


def test_next_change_walks_the_calendar(policy: Policy) -> None:
    assert next_change(policy, jst(2010, 1, 1)) == jst(2010, 10, 26)
    assert next_change(policy, jst(2010, 10, 26)) == jst(2011, 1, 17, 10)
    assert next_change(policy, jst(2011, 1, 20)) == jst(2011, 1, 24, 10)
    # the tbd stage never comes due; the NMT-2011-0043 exemption expires at end of March
    assert next_change(policy, jst(2011, 1, 25)) == datetime(2011, 3, 31, 23, 59, 59, tzinfo=JST)
    assert next_change(policy, jst(2011, 4, 1)) is None
    kinds = [c.kind for c in upcoming(policy, jst(2010, 1, 1))]
    assert kinds == ["stage", "stage", "stage", "exemption-expiry"]


def test_override_outranks_schedule_until_it_expires(policy: Policy) -> None:
    o = Override(E1, "rollback", "INC-7 mail outage", "alice", jst(2011, 1, 18), jst(2011, 1, 19))
    during = decide(policy, jst(2011, 1, 18, 12), [o])
    assert during[E1].mode == "off" and during[E1].source == "override"
    assert "alice" in during[E1].reason and "INC-7" in during[E1].reason
    assert during[W1].mode == "monitor"  # other pools follow the schedule
    after = decide(policy, jst(2011, 1, 19), [o])
    assert after[E1].mode == "enforce" and after[E1].source == "stage"
    assert next_change(policy, jst(2011, 1, 18, 12), [o]) == jst(2011, 1, 19)
    # an override can also bring a stage forward; without expiry it stays
    early = Override(E2, "enforce", "abuse wave", "bob", jst(2011, 1, 18))
    assert decide(policy, jst(2030, 1, 1), [early])[E2].mode == "enforce"


def test_exemptions_expire_by_the_controller(policy: Policy) -> None:
    before = from_policy(policy, jst(2011, 3, 31, 23, 59))
    after = from_policy(policy, jst(2011, 4, 1))
    assert [e.ticket for e in before.exemptions] == ["NMT-2011-0042", "NMT-2011-0043"]
    assert [e.ticket for e in after.exemptions] == ["NMT-2011-0042"]
    assert [r.text for r in before.table.chains["exempt"].rules] == [
        "ip saddr { 192.0.2.48/30 } counter name exempted accept",
        "ip6 saddr { 2001:db8:1000:ff00::/56 } counter name exempted accept",
    ]
    assert [r.text for r in after.table.chains["exempt"].rules] == [
        "ip saddr { 192.0.2.48/30 } counter name exempted accept"
    ]
    # the sets are the pools' and relays': an exemption's expiry leaves them as they were
    assert after.table.sets == before.table.sets


def test_directory_source_reads_overrides_from_state_dir(tmp_path: Path) -> None:
    def at_jan_2(source: DirectorySource) -> Desired:
        snap = source.load()
        return from_policy(snap.policy, jst(2026, 1, 2), snap.overrides.values())

    o = Override(W1, "monitor", "customer complaint", "carol", jst(2026, 1, 1))
    source = DirectorySource(EXAMPLE, tmp_path / "state")
    source.set_override(o)
    assert StateDir(tmp_path / "state").overrides() == {W1: o}
    want = at_jan_2(source)
    assert want.decisions[W1].mode == "monitor" and want.overrides == (o,)
    absent = DirectorySource(EXAMPLE, tmp_path / "absent")
    assert at_jan_2(absent).decisions[W1].mode == "enforce"
    assert at_jan_2(DirectorySource(EXAMPLE)).decisions[W1].mode == "enforce"
    source.clear_override(W1)
    assert at_jan_2(source).decisions[W1].mode == "enforce"


def test_override_for_removed_pool_is_ignored(policy: Policy) -> None:
    ghost = Override("gone-pool", "enforce", "x", "a", jst(2011, 1, 1))
    want = from_policy(policy, jst(2011, 1, 20), [ghost])
    assert "gone-pool" not in want.decisions and want.overrides == ()


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2011-01-31T18:00+09:00", jst(2011, 1, 31, 18)),
        ("2011-01-31T09:00:00Z", jst(2011, 1, 31, 18)),
        ("4h", jst(2011, 1, 20, 4)),
        ("+90m", jst(2011, 1, 20, 1, 30)),
        ("2d", jst(2011, 1, 22)),
    ],
)
def test_parse_when(text: str, expected: datetime) -> None:
    assert parse_when(text, jst(2011, 1, 20)) == expected


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("2011-01-31T18:00", "no UTC offset"),
        ("2011-01-31", "date without a time"),
        ("tomorrow", "not an ISO 8601 time"),
        ("0h", "positive"),
    ],
)
def test_parse_when_refuses_naive_or_garbage(text: str, fragment: str) -> None:
    with pytest.raises(OverrideError, match=fragment):
        parse_when(text, jst(2011, 1, 20))


@pytest.mark.parametrize(
    "pool,reason,until,fragment",
    [
        ("nope", "r", None, "unknown pool 'nope'"),
        (ST, "r", None, "static pool"),
        (E1, "  ", None, "--reason"),
        (E1, "r", jst(2011, 1, 19), "not in the future"),
    ],
)
def test_override_checks(
    policy: Policy, pool: str, reason: str, until: datetime | None, fragment: str
) -> None:
    with pytest.raises(OverrideError, match=fragment):
        check(policy, pool, reason, until, jst(2011, 1, 20))


# --------------------------------------------------------------------------- validation

STAGE = """\
timezone: Asia/Tokyo
stages:
  - name: one
    at: {at1}
    {sel1}
    mode: {mode1}
  - name: two
    at: {at2}
    {sel2}
    mode: {mode2}{extra}
"""


def rollout(**kw: str) -> str:
    values = {
        "at1": "2010-10-26T00:00:00+09:00",
        "at2": "2011-01-17T10:00:00+09:00",
        "sel1": "tags: [flets]",
        "sel2": "pools: [flets-east-dyn-1]",
        "mode1": "monitor",
        "mode2": "enforce",
        "extra": "",
    }
    return STAGE.format(**{**values, **kw})


BAD_ROLLOUT = {
    "naive time": ({"at2": "2011-01-17T10:00:00"}, "rollout.yaml:8: stages[1].at", "no UTC offset"),
    "date only": ({"at2": "2011-01-17"}, "stages[1].at", "date without a time"),
    "unknown pool": (
        {"sel2": "pools: [flets-north]"},
        "rollout.yaml:9: stages[1].pools[0]",
        "unknown pool 'flets-north'",
    ),
    "unknown tag": (
        {"sel1": "tags: [adsl]"},
        "stages[0].tags[0]",
        "no dynamic pool has tag 'adsl'",
    ),
    "static pool": ({"sel2": "pools: [static-biz]"}, "stages[1].pools[0]", "static pool"),
    "out of order": (
        {"at2": "2010-10-01T00:00:00+09:00"},
        "rollout.yaml:8: stages[1].at",
        "out of order",
    ),
    "backwards": (
        {"mode2": "monitor", "mode1": "enforce"},
        "stages[1].mode",
        "backwards (enforce -> monitor)",
    ),
    "no selector": ({"sel2": "description: x"}, "stages[1]", "selects no pools"),
    "bad mode": ({"mode2": "block"}, "stages[1].mode", "'off', 'monitor' or 'enforce'"),
    "tbd first": ({"at1": "tbd"}, "stages[1].at", "tbd"),
    "unknown key": ({"extra": "\n    when: now"}, "stages[1].when", "unknown key"),
    "bad zone": ({}, "timezone", "not a known time zone"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROLLOUT))
def test_bad_rollout_is_refused_with_location(tmp_path: Path, case: str) -> None:
    kw, where, fragment = BAD_ROLLOUT[case]
    text = rollout(**kw)
    if case == "bad zone":
        text = text.replace("Asia/Tokyo", "Asia/Edo")
    d = example_policy(tmp_path, **{"rollout.yaml": text})
    with pytest.raises(PolicyError) as exc:
        load_policy(d)
    found = [str(p) for p in exc.value.problems]
    assert any(where in p and fragment in p for p in found), found


def test_backwards_allowed_when_said(tmp_path: Path) -> None:
    text = rollout(mode1="enforce", mode2="monitor", extra="\n    allow_backwards: true")
    policy = load_policy(example_policy(tmp_path, **{"rollout.yaml": text}))
    assert modes(decide(policy, jst(2011, 2, 1)))[E1] == "monitor"


def test_rollout_file_is_optional(tmp_path: Path) -> None:
    d = example_policy(tmp_path)
    (d / "rollout.yaml").unlink()
    (d / "exemptions.yaml").unlink()
    policy = load_policy(d)
    assert policy.stages == () and policy.exemptions == ()
    assert set(modes(decide(policy, jst(2026, 1, 1))).values()) == {"off"}


EXEMPT = "exemptions:\n  - prefix: {prefix}\n    ticket: {ticket}\n{more}"

BAD_EXEMPTIONS = {
    "outside pools": ({"prefix": "203.0.113.0/28"}, "not inside any subscriber pool"),
    "static pool": ({"prefix": "192.0.2.128/30"}, "static pool 'static-biz'"),
    "whole pool": ({"prefix": "192.0.2.0/26"}, "pool rollback"),
    "host bits": ({"prefix": "192.0.2.9/30"}, "host bits"),
    "bad ticket": ({"ticket": "'two words'"}, "exemptions[0].ticket"),
    "naive expiry": ({"more": "    expires: 2011-03-31T00:00:00\n"}, "no UTC offset"),
    "overlap": (
        {"more": "  - prefix: 192.0.2.10/32\n    ticket: T-2\n"},
        "overlaps 192.0.2.8/30",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_EXEMPTIONS))
def test_bad_exemption_is_refused(tmp_path: Path, case: str) -> None:
    kw, fragment = BAD_EXEMPTIONS[case]
    values = {"prefix": "192.0.2.8/30", "ticket": "T-1", "more": "", **kw}
    d = example_policy(tmp_path, **{"exemptions.yaml": EXEMPT.format(**values)})
    with pytest.raises(PolicyError) as exc:
        load_policy(d)
    found = [str(p) for p in exc.value.problems]
    assert any(p.startswith("exemptions.yaml") and fragment in p for p in found), found


def test_yaml_boolean_off_gets_a_hint(tmp_path: Path) -> None:
    d = example_policy(tmp_path)
    edit(d / "pools.yaml", 'mode: "off"   #', "mode: off   #")
    with pytest.raises(PolicyError, match='quote it, e.g. "off"'):
        load_policy(d)
