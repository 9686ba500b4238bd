"""Overrides, ticks, audit and explain through the CLI, against the in-memory backend."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

import pytest

from op25b_ctl.cli.main import main
from op25b_ctl.errors import StateError
from op25b_ctl.kernel.memory import MemoryKernel
from op25b_ctl.plan.transaction import AddRule, FlushChain
from op25b_ctl.source.directory import DirectorySource
from op25b_ctl.source.state import StateDir
from tests.policytools import EXAMPLE, edit, example_policy

# a one-pool mode change: its chain flushed, its three rules (two record offenders) added
REWRITE = [FlushChain, AddRule, AddRule, AddRule]

E1, E2, W1 = "flets-east-dyn-1", "flets-east-dyn-2", "flets-west-dyn-1"
ENFORCE_E1 = "2011-01-17T10:00:00+09:00"


class Gw:
    """The CLI against one in-memory gateway and one state directory."""

    def __init__(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        self.capsys = capsys
        self.backend = MemoryKernel()
        self.state = StateDir(tmp_path / "state")
        self.policy = EXAMPLE

    def __call__(self, *argv: str, now: str | None = None) -> tuple[int, str, str]:
        common = ["--policy", str(self.policy), "--state-dir", str(self.state.path)]
        if now:
            common += ["--now", now]
        code = main([*argv, *common], kernel=self.backend)
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str, now: str | None = None) -> dict[str, Any]:
        code, out, err = self(*argv, "-o", "json", now=now)
        assert code == 0, err
        data: dict[str, Any] = json.loads(out)
        return data

    def live_modes(self) -> dict[str, str]:
        table = self.backend.tables[("inet", "op25b")]
        out = {}
        for name, chain in table.chains.items():
            if name.startswith("pool_"):
                text = " ".join(r.text or "" for r in chain.rules)
                out[name[5:]] = (
                    "enforce"
                    if "blocked_" in text
                    else "monitor"
                    if "monitored_" in text
                    else "off"
                )
        return out

    def audit(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.json("audit", "-n", "0")["entries"]
        return entries


@pytest.fixture
def gw(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Gw:
    return Gw(capsys, tmp_path)


def test_tick_walks_the_schedule_and_is_idempotent(gw: Gw) -> None:
    code, out, _ = gw("rollout", "tick", now="2010-10-26T00:00:00+09:00")
    assert code == 0
    assert out.count("\n") == 1 and "settings-change" in out
    assert gw.live_modes() == {E1: "monitor", E2: "monitor", W1: "monitor"}
    applied = len(gw.backend.applied)
    # same minute again, and the next minute: nothing due, nothing printed, nothing applied
    for now in ("2010-10-26T00:00:00+09:00", "2010-10-26T00:01:00+09:00"):
        code, out, _ = gw("rollout", "tick", now=now)
        assert (code, out) == (0, "")
    assert len(gw.backend.applied) == applied
    code, out, _ = gw("rollout", "tick", now=ENFORCE_E1)
    assert f"{E1} monitor->enforce" in out and "stage enforce-east-1 done" in out
    assert [type(op) for op in gw.backend.applied[-1].ops] == REWRITE
    assert gw.live_modes() == {E1: "enforce", E2: "monitor", W1: "monitor"}
    status = gw.json("rollout", "status", now=ENFORCE_E1)
    assert [s["state"] for s in status["stages"]] == ["done", "done", "in 7d 0h", "tbd"]


def test_rollback_changes_one_chain_and_survives_restart(gw: Gw) -> None:
    gw("apply")
    assert gw.live_modes() == {E1: "enforce", E2: "monitor", W1: "enforce"}
    data = gw.json("pool", "rollback", E1, "--reason", "INC-42 relay outage", "--until", "4h")
    assert data["changes"] == {E1: {"before": "enforce", "after": "off"}}
    assert [type(op) for op in gw.backend.applied[-1].ops] == [FlushChain]
    (flush,) = gw.backend.applied[-1].ops
    assert isinstance(flush, FlushChain) and flush.name == f"pool_{E1}"
    assert gw.live_modes() == {E1: "off", E2: "monitor", W1: "enforce"}
    # a "restart": a fresh process reads the state; apply and tick keep the override
    assert gw("apply")[1].startswith("apply: no changes")
    assert gw("rollout", "tick") == (0, "", "")
    assert gw.live_modes()[E1] == "off"
    status = gw.json("status")
    mode = {p["name"]: p for p in status["pools"]}[E1]
    assert mode["mode"] == "off" and "INC-42" in mode["reason"]
    entry = gw.audit()[-1]
    assert entry["action"] == "pool rollback" and entry["pool"] == E1
    assert entry["reason"] == "INC-42 relay outage" and entry["user"]
    assert entry["changes"] == {E1: {"before": "enforce", "after": "off"}}
    assert entry["command"][:4] == ["op25b-ctl", "pool", "rollback", E1]


def test_override_expires_and_tick_restores_schedule(gw: Gw) -> None:
    gw("apply", now="2011-02-01T09:00:00+09:00")
    gw(
        "pool", "monitor", W1, "--reason", "complaint", "--until", "2011-02-01T12:00+09:00",
        now="2011-02-01T09:00:00+09:00",
    )  # fmt: skip
    assert gw.live_modes()[W1] == "monitor"
    assert gw("rollout", "tick", now="2011-02-01T11:59:00+09:00")[1] == ""
    code, out, _ = gw("rollout", "tick", now="2011-02-01T12:00:00+09:00")
    assert code == 0 and f"{W1} monitor->enforce" in out and f"override on {W1} expired" in out
    assert gw.state.overrides() == {}
    assert gw.audit()[-1]["action"] == "rollout tick"


def test_clear_returns_to_schedule(gw: Gw) -> None:
    gw("pool", "enforce", E2, "--reason", "spam wave from pool 2")
    assert gw.live_modes()[E2] == "enforce"
    data = gw.json("pool", "clear", E2, "--reason", "wave over")
    assert data["changes"] == {E2: {"before": "enforce", "after": "monitor"}}
    assert gw.state.overrides() == {}
    assert [e["action"] for e in gw.audit()] == ["pool enforce", "pool clear"]


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["pool", "enforce", "flets-north", "--reason", "x"], "unknown pool 'flets-north'"),
        (["pool", "enforce", "static-biz", "--reason", "x"], "static pool"),
        (["pool", "rollback", E1, "--reason", "x", "--until", "2011-01-31T18:00"], "no UTC offset"),
        (["pool", "rollback", E1, "--reason", "x", "--until", "2001-01-01T00:00Z"], "not in the future"),
        (["pool", "rollback", E1, "--reason", ""], "--reason"),
    ],
)  # fmt: skip
def test_bad_override_changes_nothing(gw: Gw, argv: list[str], fragment: str) -> None:
    gw("apply")
    before = dict(gw.backend.tables)
    code, _, err = gw(*argv)
    assert code == 2 and fragment in err and "nothing changed" in err
    assert gw.backend.tables == before
    assert gw.state.overrides() == {}
    assert [e["action"] for e in gw.audit()] == ["apply"]


def test_bad_schedule_changes_nothing(gw: Gw, tmp_path: Path) -> None:
    gw("apply")
    before = dict(gw.backend.tables)
    gw.policy = example_policy(tmp_path / "p")
    edit(gw.policy / "rollout.yaml", "at: 2011-01-24T10:00:00+09:00", "at: 2011-01-24T10:00:00")
    for argv in (["rollout", "tick"], ["pool", "rollback", E1, "--reason", "x"], ["apply"]):
        code, _, err = gw(*argv)
        assert code == 2 and "rollout.yaml:" in err and "no UTC offset" in err
    assert gw.backend.tables == before


def test_nft_refusal_restores_overrides(gw: Gw) -> None:
    gw("apply")
    gw.backend.fail_next = "simulated refusal"
    code, _, err = gw("pool", "rollback", E1, "--reason", "x")
    assert code == 1 and "simulated refusal" in err
    assert gw.state.overrides() == {}
    assert gw.live_modes()[E1] == "enforce"


def test_lock_busy_exits_75(gw: Gw) -> None:
    gw.state.path.mkdir(parents=True)
    fd = os.open(gw.state.lock_file, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"pid 1: rollout tick\n")
        code, _, err = gw("pool", "rollback", E1, "--reason", "x", "--lock-timeout", "0.2")
    finally:
        os.close(fd)
    assert code == 75 and "holds" in err and "rollout tick" in err
    assert gw.backend.tables == {}


def test_atomic_write_leaves_old_file_on_crash(gw: Gw, monkeypatch: pytest.MonkeyPatch) -> None:
    gw("pool", "rollback", E1, "--reason", "first")
    before = gw.state.overrides_file.read_text()

    def crash(src: str, dst: str) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    code, _, err = gw("pool", "enforce", E2, "--reason", "second")
    assert code == 1 and "simulated crash" in err
    assert gw.state.overrides_file.read_text() == before
    leftovers = [p.name for p in gw.state.path.iterdir() if p.name.startswith(".overrides")]
    assert leftovers == []  # the temp file was removed


def test_corrupt_state_is_a_clear_error(gw: Gw) -> None:
    gw.state.path.mkdir(parents=True)
    gw.state.overrides_file.write_text('{"format": 1, "overrides": {"x": {"pool": "x"}}}')
    code, _, err = gw("rollout", "tick")
    assert code == 1 and "overrides.json" in err and "malformed override" in err
    assert gw.backend.tables == {}


@pytest.mark.parametrize(
    "address,to,verdict,fragment",
    [
        ("192.0.2.10", "203.0.113.99", "blocked", "rollout stage 'enforce-east-1'"),
        ("192.0.2.10", "203.0.113.25", "passes", "relay 'smtp-relay'"),
        ("192.0.2.49", None, "passes", "NMT-2011-0042"),
        ("192.0.2.70", None, "passes", "monitor"),
        ("192.0.2.130", None, "passes", "static pool"),
        ("192.0.2.200", None, "passes", "not in any subscriber pool"),
        ("2001:db8:1000:ff00::1", None, "blocked", "has expired"),
    ],
)
def test_explain(gw: Gw, address: str, to: str | None, verdict: str, fragment: str) -> None:
    gw("apply")
    data = gw.json("explain", address, *(["--to", to] if to else []))
    assert data["tcp25"] == verdict
    assert any(fragment in w for w in data["why"]), data["why"]
    assert data["live_agrees"] is True


def test_explain_sees_live_drift_and_overrides(gw: Gw) -> None:
    data = gw.json("explain", "192.0.2.10")
    assert data["live_agrees"] is None and data["tcp25"] == "passes (table absent)"
    gw("apply")
    gw("pool", "rollback", E1, "--reason", "INC-9")
    data = gw.json("explain", "192.0.2.10")
    assert data["tcp25"] == "passes" and data["source"] == "override"
    gw.state.save_overrides({})  # someone removed the state behind our back
    data = gw.json("explain", "192.0.2.10")
    assert data["tcp25"] == "blocked" and data["live_agrees"] is False
    assert "pool_flets-east-dyn-1 differs" in " ".join(data["live"])


def test_rollout_status_preview(gw: Gw) -> None:
    code, out, _ = gw(
        "rollout", "status", "--at", "2011-01-20T00:00+09:00", now="2010-12-01T00:00+09:00"
    )
    assert code == 0
    assert "enforce-east-1       2011-01-17T10:00+09:00  enforce  due by then" in out
    assert "next change: 2011-01-24T10:00+09:00" in out
    assert f"{E1}         enforce" in out


def test_rollout_status_columns_fit_long_names_and_a_stage_minutes_away(gw: Gw) -> None:
    """docs/examples has a 22-character stage name (names may have 40): the columns stay
    aligned; a stage 25 minutes away says so instead of "in 0d 0h"."""
    gw.policy = EXAMPLE.parent.parent / "docs" / "examples"
    code, out, _ = gw("rollout", "status", now="2011-01-25T09:35:00+09:00")
    assert code == 0
    lines = out.splitlines()
    table = lines[lines.index(next(x for x in lines if "STAGE" in x)) : lines.index("modes:")]
    col = table[0].index(" AT ") + 1  # every row's time starts under the header's AT
    assert all(
        line[col - 1] == " " and line[col:].startswith(("AT", "20", "tbd")) for line in table
    )
    assert len(table) == 6, out
    assert "in 25m" in next(r for r in table if "east-2-back-to-monitor" in r)
    stages = gw.json("rollout", "status", now="2011-01-25T09:59:30+09:00")["stages"]
    assert stages[3]["state"] == "in 1m"


def test_rollout_status_does_not_call_a_group_stage_due_where_it_never_fires(gw: Gw) -> None:
    """docs/examples' enforce-east is for group east: with --policy alone (no gateway) it
    never fires, so "due" (a tick will apply it) was wrong; the modes agree."""
    gw.policy = EXAMPLE.parent.parent / "docs" / "examples"
    data = gw.json("rollout", "status", now="2011-01-20T09:00:00+09:00")
    states = {s["name"]: s["state"] for s in data["stages"]}
    assert states == {
        "settings-change": "due",
        "enforce-east": "groups only",
        "enforce-west": "in 4d 1h",
        "east-2-back-to-monitor": "in 5d 1h",  # when it would fire on an east gateway
        "enforce-east-2-again": "tbd",
    }
    assert data["modes"]["flets-east-dyn-1"]["mode"] == "monitor"


def test_audit_filters_by_pool(gw: Gw) -> None:
    gw("apply", now="2011-02-01T09:00:00+09:00")
    gw("pool", "rollback", E1, "--reason", "a", now="2011-02-01T09:00:00+09:00")
    gw("pool", "monitor", W1, "--reason", "b", now="2011-02-01T09:30:00Z")
    code, out, _ = gw("audit", "--pool", W1)
    lines = out.splitlines()
    # the first apply changed W1 too; the rollback of E1 did not
    assert code == 0 and len(lines) == 2 and " apply  [" in lines[0]
    assert lines[1].startswith("2011-02-01T18:30:00+09:00  ")  # shown in the policy's zone
    assert "pool monitor flets-west-dyn-1  [flets-west-dyn-1 enforce->monitor]  reason: b" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["pool", "rollback"],
        ["pool", "clear"],
        ["rollout", "tick"],
        ["rollout", "status"],
        ["audit"],
        ["explain"],
    ],
)
def test_new_commands_have_help(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    assert "--state-dir" in capsys.readouterr().out


def test_tick_removes_expired_exemption(gw: Gw) -> None:
    gw("rollout", "tick", now="2011-03-31T23:59:00+09:00")
    table = gw.backend.tables[("inet", "op25b")]
    assert gw.backend.rule_elements("inet", "op25b", "exempt") == [
        "192.0.2.48/30",
        "2001:db8:1000:ff00::/56",
    ]
    code, out, _ = gw("rollout", "tick", now="2011-03-31T23:59:59+09:00")
    assert code == 0 and "exemption 2001:db8:1000:ff00::/56 removed" in out
    assert "192.0.2.48/30" not in out  # still in force: neither added nor removed
    assert gw.backend.rule_elements("inet", "op25b", "exempt") == ["192.0.2.48/30"]
    table = gw.backend.tables[("inet", "op25b")]
    assert not {"exempt_v4", "exempt_v6"} & table.sets.keys()  # rules' own sets, no named ones


def test_moved_stage_date_is_scheduled_again(gw: Gw, tmp_path: Path) -> None:
    gw.policy = example_policy(tmp_path / "p")
    gw("rollout", "tick", now="2011-01-25T00:00:00+09:00")
    assert gw.live_modes()[W1] == "enforce"
    # the date is "adjusted": West moves to February; the next tick takes the pool back
    edit(
        gw.policy / "rollout.yaml", "at: 2011-01-24T10:00:00+09:00", "at: 2011-02-07T10:00:00+09:00"
    )
    code, out, _ = gw("rollout", "tick", now="2011-01-25T00:01:00+09:00")
    assert code == 0 and f"{W1} enforce->monitor" in out
    status = gw.json("rollout", "status", now="2011-01-25T00:01:00+09:00")
    assert [s["state"] for s in status["stages"]] == ["done", "done", "in 13d 9h", "tbd"]


def test_idle_tick_cache(tmp_path: Path) -> None:
    from datetime import datetime

    from op25b_ctl.ops import operate
    from op25b_ctl.plan.desired import from_policy
    from op25b_ctl.plan.transaction import Transaction
    from op25b_ctl.policy.loader import load_policy

    state = StateDir(tmp_path / "state")
    policy_dir = example_policy(tmp_path / "p")
    now = datetime.fromisoformat("2011-01-17T09:00:00+09:00")
    digest = DirectorySource(policy_dir, state.path).digest()
    RS = "boot:namespace"  # noqa: N806
    assert not operate.tick_is_idle(state, digest, now, 7, RS)  # no cache yet
    want = from_policy(load_policy(policy_dir), now)
    applied = operate.Outcome(want, Transaction("inet", "op25b", ()), {}, applied=True, commits=1)
    operate.remember_tick(state, digest, now, applied, before=6, after=7, ruleset=RS)
    assert operate.tick_is_idle(state, digest, now, 7, RS)
    later = datetime.fromisoformat("2011-01-17T09:59:59+09:00")
    assert operate.tick_is_idle(state, digest, later, 7, RS)
    # the stage at 10:00 is due; the ruleset changed; the clock went back; the inputs changed
    assert not operate.tick_is_idle(state, digest, datetime.fromisoformat(ENFORCE_E1), 7, RS)
    assert not operate.tick_is_idle(state, digest, later, 8, RS)
    assert not operate.tick_is_idle(
        state, digest, datetime.fromisoformat("2011-01-17T08:00:00+09:00"), 7, RS
    )
    # the same generation in another namespace or after a reboot is another ruleset
    assert not operate.tick_is_idle(state, digest, later, 7, "boot:other-namespace")
    assert not operate.tick_is_idle(state, digest, later, 7, None)
    state.save_overrides({})
    assert DirectorySource(policy_dir, state.path).digest() != digest
    edit(policy_dir / "exemptions.yaml", "NMT-2011-0042", "NMT-2011-0044")
    assert DirectorySource(policy_dir, tmp_path / "other").digest() != digest
    # someone else committed around our apply: no cache, the next tick does the full work
    operate.remember_tick(state, digest, now, applied, before=6, after=8, ruleset=RS)
    assert not state.tick_cache_file.exists()


def test_empty_state_object_means_no_overrides(gw: Gw) -> None:
    gw.state.path.mkdir(parents=True)
    gw.state.overrides_file.write_text("{}")
    assert gw.state.overrides() == {}
    gw.state.overrides_file.write_text('{"overrides": {}}')
    with pytest.raises(StateError, match="format 1 expected"):
        gw.state.overrides()


def test_stage_applied_without_record_shows_done(gw: Gw) -> None:
    from datetime import datetime

    from op25b_ctl.ops import applier
    from op25b_ctl.plan.desired import from_policy
    from op25b_ctl.policy.loader import load_policy

    now = "2011-01-20T00:00:00+09:00"
    # applied by something that keeps no record (e.g. the daemon)
    want = from_policy(load_policy(EXAMPLE), datetime.fromisoformat(now))
    applier.apply(gw.backend, want.table)
    status = gw.json("rollout", "status", now=now)
    assert [s["state"] for s in status["stages"]] == ["done", "done", "in 4d 10h", "tbd"]
    assert status["stages"][1]["applied_at"] == "seen on the gateway"
    # an engineer's override does not make the stage look undone
    gw("pool", "rollback", E1, "--reason", "x", now=now)
    status = gw.json("rollout", "status", now="2011-01-20T00:01:00+09:00")
    assert status["stages"][1]["state"] == "done"


# ---------------------------------------------------------------- .live.json: what we made live


def test_a_command_after_our_own_commit_reads_nothing(gw: Gw) -> None:
    assert gw("apply")[0] == 0
    assert gw.state.live_file.exists()
    gw.backend.reads.clear()
    commits = len(gw.backend.applied)
    code, _, err = gw("pool", "enforce", E2, "--reason", "test")
    assert code == 0, err
    assert gw.backend.reads == []  # neither the table's shape nor its elements were read
    assert [type(op) for op in gw.backend.applied[-1].ops] == REWRITE
    assert gw.live_modes()[E2] == "enforce"
    for argv in (("apply",), ("rollout", "tick"), ("status",), ("explain", "192.0.2.10")):
        assert gw(*argv)[0] == 0
    assert gw.backend.reads == []
    assert len(gw.backend.applied) == commits + 1


def test_any_other_commit_or_another_ruleset_means_a_read(gw: Gw) -> None:
    assert gw("apply")[0] == 0
    gw.backend.gen += 1  # someone committed something, to any table
    gw.backend.reads.clear()
    assert gw("apply")[0] == 0
    assert gw.backend.reads == [False]
    # the same generation number in another boot or namespace is another ruleset
    gw.backend.identity = "memory:another-namespace"
    gw.backend.reads.clear()
    assert gw("apply")[0] == 0
    assert gw.backend.reads == [False]
    # a kernel that cannot name its ruleset never takes the short cut
    gw.backend.identity = None
    gw.backend.reads.clear()
    assert gw("apply")[0] == 0
    assert gw("apply")[0] == 0
    assert gw.backend.reads == [False, False]


def test_a_hand_edit_after_our_command_is_still_repaired(gw: Gw) -> None:
    assert gw("apply")[0] == 0
    made = gw.backend.tables[("inet", "op25b")]
    gw.backend.flush_chains("inet", "op25b")  # bumps the generation, as any commit does
    assert not any(c.rules for c in gw.backend.tables[("inet", "op25b")].chains.values())
    assert gw("apply")[0] == 0
    assert gw.backend.tables[("inet", "op25b")].chains == made.chains


def test_a_garbage_record_is_only_a_cache(gw: Gw) -> None:
    assert gw("apply")[0] == 0
    for garbage in (b"\xff", b"[]", b'{"format": 1}', b'{"format": 1, "ruleset": 5}', b"{"):
        gw.state.live_file.write_bytes(garbage)
        gw.backend.reads.clear()
        code, _, err = gw("apply")
        assert code == 0, err
        assert gw.backend.reads == [False]


def test_changed_sets_are_diffed_against_the_elements_our_last_commit_wrote(
    gw: Gw, tmp_path: Path
) -> None:
    """A policy edit that changes the sets: while nothing has committed since our last
    commit, its remembered elements are the kernel's, and nothing is read back."""
    gw.policy = example_policy(tmp_path / "p")
    assert gw("apply")[0] == 0
    edit(gw.policy / "relays.yaml", "203.0.113.25", "203.0.113.26")
    gw.backend.reads.clear()
    code, out, err = gw("apply")
    assert code == 0, err
    assert gw.backend.reads == []
    assert "203.0.113.26/32" in out  # the diff says what changed, as after a read
    table = gw.backend.tables[("inet", "op25b")]
    assert set(table.sets["relays_v4"].elements) == {"203.0.113.26/32"}


def test_changed_sets_are_read_after_another_commit_or_a_damaged_memory(
    gw: Gw, tmp_path: Path
) -> None:
    gw.policy = example_policy(tmp_path / "p")
    assert gw("apply")[0] == 0
    edit(gw.policy / "relays.yaml", "203.0.113.25", "203.0.113.26")
    gw.backend.gen += 1  # someone else's commit: the kernel may hold anything now
    gw.backend.reads.clear()
    assert gw("apply")[0] == 0
    assert gw.backend.reads[0] is False  # the skeleton; the new fingerprint differs: elements
    table = gw.backend.tables[("inet", "op25b")]
    assert set(table.sets["relays_v4"].elements) == {"203.0.113.26/32"}
    # remembered elements that are not the ones the fingerprint names are never trusted
    remembered = gw.state.live_sets_file
    text = remembered.read_text()
    assert "203.0.113.26/32" in text
    remembered.write_text(text.replace("203.0.113.26/32", "203.0.113.27/32"))
    edit(gw.policy / "relays.yaml", "203.0.113.26", "203.0.113.28")
    gw.backend.reads.clear()
    assert gw("apply")[0] == 0
    assert gw.backend.reads and gw.backend.reads[-1] is True  # every element read
    table = gw.backend.tables[("inet", "op25b")]
    assert set(table.sets["relays_v4"].elements) == {"203.0.113.28/32"}


def test_after_another_commit_unchanged_sets_are_not_built_again(
    gw: Gw, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record's sets key still names the sets: a skeleton read and the fingerprint
    counter in it are enough, as `read_live(trust_fingerprint=True)` would trust them."""
    from dataclasses import replace

    from op25b_ctl.plan import ruleset

    assert gw("apply")[0] == 0
    built: list[object] = []
    real = ruleset._sets_for

    def spy(*args: Any) -> Any:
        built.append(args)
        return real(*args)

    monkeypatch.setattr(ruleset, "_sets_for", spy)
    ruleset._sets_cache.clear()  # as in a new process
    ruleset._filled_cache.clear()
    gw.backend.gen += 1  # someone else's commit
    gw.backend.reads.clear()
    code, _, err = gw("pool", "enforce", E2, "--reason", "test")
    assert code == 0, err
    assert gw.backend.reads == [False] and built == []
    assert gw.live_modes()[E2] == "enforce"
    # the kernel's fingerprint gone (elements unknown): the sets are built, every element read
    key = ("inet", "op25b")
    table = gw.backend.tables[key]
    gw.backend.tables[key] = replace(
        table, counters=frozenset(c for c in table.counters if not c.startswith("elements_"))
    )
    gw.backend.gen += 1
    gw.backend.reads.clear()
    assert gw("apply")[0] == 0
    assert gw.backend.reads == [False, False, True] and len(built) == 1
    assert any(c.startswith("elements_") for c in gw.backend.tables[key].counters)


def test_an_added_exemption_rewrites_only_the_exempt_chain(gw: Gw, tmp_path: Path) -> None:
    """Adding an exemption: one rewrite of chain exempt (no element op, no set touched, no
    table read: the sets' key is unchanged)."""
    gw.policy = example_policy(tmp_path / "p")
    assert gw("apply")[0] == 0
    before = gw.backend.tables[("inet", "op25b")]
    edit(gw.policy / "exemptions.yaml", "192.0.2.48/30", "192.0.2.48/30\n    ticket: NMT-T-1\n"
         "  - prefix: 192.0.2.52/30")  # fmt: skip
    gw.backend.reads.clear()
    code, out, err = gw("apply")
    assert code == 0, err
    assert "+ rule exempt: ip saddr { 192.0.2.48/30, 192.0.2.52/30 } counter" in out
    assert gw.backend.reads == []
    (tx,) = gw.backend.applied[-1:]
    assert all(isinstance(op, FlushChain | AddRule) for op in tx.ops), tx.ops
    assert {op.chain for op in tx.ops if isinstance(op, AddRule)} == {"exempt"}
    assert {op.name for op in tx.ops if isinstance(op, FlushChain)} <= {"exempt"}
    assert [type(op) for op in tx.ops] == [FlushChain, AddRule]  # the v6 one has expired
    after = gw.backend.tables[("inet", "op25b")]
    assert after.sets == before.sets and after.counters == before.counters
    assert gw.backend.rule_elements("inet", "op25b", "exempt") == [
        "192.0.2.48/30",
        "192.0.2.52/30",
    ]
