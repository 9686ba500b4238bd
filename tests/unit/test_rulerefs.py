"""Judging our rules' statements against what we wrote (source.rulerefs)."""

from __future__ import annotations

from pathlib import Path

from op25b_ctl.kernel.base import UNREADABLE
from op25b_ctl.kernel.nlcodec import expressions_digest
from op25b_ctl.source import rulerefs


def test_judge_edits_unknown_and_unreadable() -> None:
    live = {
        ("pool_a", "op25b:a1"): ("d1",),
        ("pool_b", "op25b:b1"): ("changed",),
        ("pool_c", "op25b:c1"): ("d3",),  # no reference yet
        ("pool_d", "op25b:d1"): (UNREADABLE,),  # even with a reference: never a match
        ("pool_e", "handle:7"): ("x",),  # not ours: the shape diff sees it
        ("elsewhere", "op25b:z"): ("changed",),  # not one of our chains
    }
    ref = {"a1": "d1", "b1": "d2", "d1": UNREADABLE}
    v = rulerefs.judge(live, ref, ["pool_a", "pool_b", "pool_c", "pool_d", "pool_e"])
    assert v.tampered == {"pool_b", "pool_d"} and v.unverified == {"pool_c"}
    assert v.unreadable == 1 and not v.ok
    assert rulerefs.judge({("pool_a", "op25b:a1"): ("d1",)}, ref, ["pool_a"]).ok


def test_learn_keeps_readable_digests_of_wanted_rules_only() -> None:
    written = {
        ("p", "op25b:new"): ("n",),
        ("p", "op25b:bad"): (UNREADABLE,),
        ("p", "handle:3"): ("h",),
    }
    out = rulerefs.learn({"old": "o", "gone": "g"}, written, keep=["old", "new", "bad"])
    assert out == {"old": "o", "new": "n"}


def test_empty_expressions_are_unreadable() -> None:
    assert expressions_digest(b"") == UNREADABLE
    assert expressions_digest(b"\x08\x00\x01\x00") == UNREADABLE  # an element without a name


def test_saved_reference_round_trips_and_garbage_means_none(tmp_path: Path) -> None:
    path = rulerefs.path_in(tmp_path)
    assert path is not None
    rulerefs.save(path, {"a": "1"})
    assert rulerefs.load(path) == {"a": "1"}
    for junk in (b"\xff\xfe", b"[1, 2]", b'{"format": 9, "digests": {}}', b'{"format": 1}'):
        path.write_bytes(junk)
        assert rulerefs.load(path) == {}
    assert rulerefs.load(None) == {} and rulerefs.load(tmp_path / "missing") == {}
    rulerefs.save(tmp_path / "no-such-dir" / rulerefs.FILE, {"a": "1"})  # never creates it
    assert not (tmp_path / "no-such-dir").exists()


def test_as_read_judges_a_known_table_as_a_read_of_it_would() -> None:
    """`status` with a current live record judges without reading the rules: the kernel
    holds what was read back into the reference, so that is what a read would give."""
    from op25b_ctl.plan.table import Chain, Rule, Table

    a, b, c = Rule.of("counter name x drop"), Rule.of("jump smtp"), Rule.of("accept")
    table = Table("inet", "op25b", {"p": Chain("p", (a, b)), "q": Chain("q", (c,))})
    reference = {a.id: "d-a", b.id: "d-b"}  # c was never learned
    read = {("p", a.comment): ("d-a",), ("p", b.comment): ("d-b",), ("q", c.comment): ("zz",)}
    assert rulerefs.as_read(table, reference) == {
        ("p", a.comment): ("d-a",),
        ("p", b.comment): ("d-b",),
        ("q", c.comment): (rulerefs.NOT_LEARNED,),
    }
    assert rulerefs.judge(rulerefs.as_read(table, reference), reference, ["p", "q"]) == (
        rulerefs.judge(read, reference, ["p", "q"])
    )
