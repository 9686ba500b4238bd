"""Offender tracking, the pure parts: the rule design, the diff's treatment of the kernel's
data, the model's settings, ranking, first seen, and the element codec."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from op25b_ctl.kernel import nlcodec
from op25b_ctl.kernel.memory import MemoryKernel
from op25b_ctl.ops import applier
from op25b_ctl.ops.offenders import distinct_offenders, read_pools
from op25b_ctl.plan.diff import diff
from op25b_ctl.plan.offenders import (
    Exemptions,
    FirstSeen,
    PoolSeen,
    distinct_by_pool,
    ranked,
    source_text,
)
from op25b_ctl.plan.ruleset import (
    Tracking,
    desired_table,
    elements_fingerprint,
    offender_pool,
    offender_set,
    pool_chain,
    pool_rules,
    tracking_of,
    v6_mask,
)
from op25b_ctl.plan.table import hollow_from_json, hollow_to_json
from op25b_ctl.plan.transaction import AddRule, AddSet, DeleteSet, FlushChain, FlushSet
from op25b_ctl.policy.loader import load_policy
from op25b_ctl.policy.model import Gateway, Mode, Policy
from tests.policytools import EXAMPLE, edit, example_policy

EAST1, EAST2 = "flets-east-dyn-1", "flets-east-dyn-2"
NOW = datetime(2011, 1, 20, 9, 0, tzinfo=UTC)
T = Tracking(size=4, timeout=3600, prefix_v6=64)


@pytest.fixture
def policy() -> Policy:
    return load_policy(EXAMPLE)


def modes(**m: Mode) -> dict[str, Mode]:
    base: dict[str, Mode] = {EAST1: "enforce", EAST2: "monitor", "flets-west-dyn-1": "off"}
    return {**base, **m}


# -- rule design


def test_tracking_rules_carry_no_verdict_and_the_verdict_stays_alone(policy: Policy) -> None:
    tracking = tracking_of(policy, EAST1)
    assert tracking is not None
    enforce = [r.text or "" for r in pool_rules(EAST1, "enforce", "drop", tracking)]
    assert len(enforce) == 3
    for text in enforce[:2]:  # a full set ends these rules: nothing may follow the update
        assert "update @offenders_" in text and text.startswith("tcp flags & (syn | ack) == syn")
        assert not any(v in text for v in ("drop", "reject", "accept", "counter name"))
    assert enforce[2] == f"counter name blocked_{EAST1} drop"
    monitor = [r.text or "" for r in pool_rules(EAST1, "monitor", "drop", tracking)]
    assert monitor[-1].endswith(f"counter name monitored_{EAST1}") and len(monitor) == 3
    assert pool_rules(EAST1, "off", "drop", tracking) == ()


def test_v6_key_is_the_subscriber_prefix() -> None:
    assert v6_mask(64) == "ffff:ffff:ffff:ffff::"
    assert v6_mask(56) == "ffff:ffff:ffff:ff00::"
    rules = pool_rules("p", "enforce", "drop", Tracking(8, 60, 56))
    assert "ip6 saddr & ffff:ffff:ffff:ff00:: }" in (rules[1].text or "")
    assert "{ ip6 saddr }" in (
        pool_rules("p", "enforce", "drop", Tracking(8, 60, 128))[1].text or ""
    )


def test_sets_are_declared_for_every_dynamic_pool_with_explicit_flags(policy: Policy) -> None:
    table = desired_table(policy, modes())
    dynamic = {n: s for n, s in table.sets.items() if s.dynamic}
    pools = [p.name for p in policy.pools if p.dynamic]
    assert set(dynamic) == {offender_set(p, v) for p in pools for v in (4, 6)}
    s = dynamic[offender_set("flets-west-dyn-1", 4)]  # off, and still declared
    assert (s.flags, s.size, s.timeout, s.counter) == (
        frozenset({"dynamic", "timeout"}),
        65536,
        7 * 86400,
        True,
    )
    assert offender_pool(offender_set(EAST1, 6)) == EAST1
    assert offender_pool("pools_v4") is None
    # the elements fingerprint covers only our own elements
    fixed = [s for s in table.sets.values() if not s.dynamic]
    assert elements_fingerprint(fixed) in table.counters


def test_a_mode_change_keeps_the_sets_and_rewrites_one_chain(policy: Policy) -> None:
    kernel = MemoryKernel()
    applier.apply(kernel, desired_table(policy, modes()))
    tx = applier.apply(kernel, desired_table(policy, {**modes(), EAST1: "off"}))
    assert [type(op) for op in tx.ops] == [FlushChain]  # no set deleted: the list stays
    assert offender_set(EAST1, 4) in kernel.tables[("inet", "op25b")].sets


def test_kernel_elements_are_never_drift(policy: Policy) -> None:
    table = desired_table(policy, modes())
    kernel = MemoryKernel()
    applier.apply(kernel, table)
    kernel.seen[offender_set(EAST1, 4)] = [(bytes([192, 0, 2, 10]), 7, 0, 3_000_000)]
    assert not diff(kernel.read("inet", "op25b"), table)  # nothing to flush or refill
    assert not applier.apply(kernel, table)
    assert kernel.offender_elements("inet", "op25b", offender_set(EAST1, 4))


def test_a_size_change_re_declares_the_sets_in_one_batch_with_only_their_chains(
    tmp_path: Path,
) -> None:
    before = load_policy(example_policy(tmp_path / "a"))
    gw = "gateway:\n  action: reject\n  offenders: {size: 1024}\n"
    after = load_policy(example_policy(tmp_path / "b", **{"gateway.yaml": gw}))
    kernel = MemoryKernel()
    applier.apply(kernel, desired_table(before, modes()))
    tx = applier.apply(kernel, desired_table(after, modes()))
    assert not tx.breaks  # one batch: a rule meeting an empty dynamic set loses nothing
    flushed = {op.name for op in tx.ops if isinstance(op, FlushChain)}
    assert flushed == {pool_chain(EAST1), pool_chain(EAST2)}  # not smtp, gate or others
    assert {op.set.name for op in tx.ops if isinstance(op, DeleteSet)} == {
        op.set.name for op in tx.ops if isinstance(op, AddSet)
    }
    assert not any(isinstance(op, FlushSet) for op in tx.ops)
    assert kernel.tables[("inet", "op25b")].sets[offender_set(EAST1, 4)].size == 1024
    # each delete comes after its chain's flush, each re-add of a rule after its set
    kinds = [type(op) for op in tx.ops]
    assert kinds.index(FlushChain) < kinds.index(DeleteSet) < kinds.index(AddSet)
    assert kinds.index(AddSet) < kinds.index(AddRule)


def test_tracking_off_declares_nothing_and_removes_the_sets(tmp_path: Path) -> None:
    on = load_policy(example_policy(tmp_path / "a"))
    gw = "gateway:\n  action: reject\n  offenders: {track: false}\n"
    off = load_policy(example_policy(tmp_path / "b", **{"gateway.yaml": gw}))
    assert not any(s.dynamic for s in desired_table(off, modes()).sets.values())
    kernel = MemoryKernel()
    applier.apply(kernel, desired_table(on, modes()))
    applier.apply(kernel, desired_table(off, modes()))
    live = kernel.tables[("inet", "op25b")]
    assert not any(s.dynamic for s in live.sets.values())
    assert live.chains["smtp"].rules  # the dispatch chain was never in question


def test_hollow_records_carry_the_declaration_and_read_old_ones(policy: Policy) -> None:
    table = desired_table(policy, modes())
    back = hollow_from_json(hollow_to_json(table))
    assert back.sets[offender_set(EAST1, 4)].same_shape(table.sets[offender_set(EAST1, 4)])
    old = hollow_to_json(table)
    old["sets"] = {"pools_v4": ["ipv4_addr", True, ["interval"]]}  # before this change
    assert hollow_from_json(old).sets["pools_v4"].size == 0
    old["sets"] = {"pools_v4": ["ipv4_addr", True, ["interval"], "65536", 0, True]}
    with pytest.raises(ValueError):
        hollow_from_json(old)


# -- the model


@pytest.mark.parametrize(
    ("offenders", "message"),
    [
        ({"retention": "91d"}, "outside 1m..90d"),
        ({"retention": 3600}, "not a duration"),
        ({"retention": "30s"}, "outside 1m..90d"),
        ({"size": 8}, "greater than or equal to 16"),
        ({"size": 1 << 21}, "less than or equal to 1048576"),
        ({"size": "65536"}, "valid integer"),
        ({"subscriber_prefix_v6": 16}, "greater than or equal to 32"),
        ({"unknown": 1}, "Extra inputs"),
    ],
)
def test_offender_settings_are_validated(offenders: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Gateway.model_validate({"offenders": offenders})


def test_offender_settings_round_trip_through_the_cache_form() -> None:
    gw = Gateway.model_validate({"offenders": {"retention": "36h", "size": 1024}})
    assert gw.offenders.retention == 36 * 3600
    assert Gateway.model_validate(gw.model_dump(mode="json")) == gw


def test_a_pool_may_count_v6_per_its_own_prefix_length(tmp_path: Path) -> None:
    pools = (EXAMPLE / "pools.yaml").read_text()
    marker = "  - name: flets-east-dyn-1\n"
    assert marker in pools
    pools = pools.replace(marker, marker + "    subscriber_prefix_v6: 56\n")
    policy = load_policy(example_policy(tmp_path, **{"pools.yaml": pools}))
    assert tracking_of(policy, EAST1) == Tracking(65536, 7 * 86400, 56)
    assert tracking_of(policy, EAST2) == Tracking(65536, 7 * 86400, 64)
    assert tracking_of(policy, "static-biz") is None


# -- ranking and first seen


def v4(last: int, attempts: int, age_ms: int, timeout_ms: int = 0) -> tuple[bytes, int, int, int]:
    return (bytes([192, 0, 2, last]), attempts, timeout_ms, 3_600_000 - age_ms)


def test_ranked_by_attempts_then_recency_with_last_seen_from_the_timeout() -> None:
    ps = PoolSeen(
        EAST1, "enforce", T, [v4(10, 1, 5000), v4(11, 3, 9000), v4(12, 7, 60_000), v4(13, 3, 1000)]
    )
    rows = ranked([ps], NOW)
    assert [(r.source, r.attempts) for r in rows] == [
        ("192.0.2.12", 7),
        ("192.0.2.13", 3),  # same attempts, more recent
        ("192.0.2.11", 3),
        ("192.0.2.10", 1),
    ]
    assert rows[0].last_seen == NOW - timedelta(seconds=60)
    assert [r.source for r in ranked([ps], NOW, top=2)] == ["192.0.2.12", "192.0.2.13"]
    assert rows[0].first_seen is None and rows[0].mode == "enforce"


def test_an_element_timeout_of_its_own_wins_over_the_sets() -> None:
    element = (bytes([192, 0, 2, 1]), 1, 120_000, 100_000)
    (row,) = ranked([PoolSeen("p", "monitor", T, [element])], NOW)
    assert row.last_seen == NOW - timedelta(seconds=20)


def test_sources_are_addresses_or_subscriber_prefixes() -> None:
    assert source_text(bytes([198, 51, 100, 7]), 64) == "198.51.100.7"
    key = bytes.fromhex("20010db8000100020000000000000000")
    assert source_text(key, 64) == "2001:db8:1:2::/64"
    assert source_text(key, 128) == "2001:db8:1:2::"


def test_exempted_sources_are_marked() -> None:
    ex = Exemptions(["192.0.2.48/30", "2001:db8:1:2::/64"])
    assert ex.covers("192.0.2.49") and not ex.covers("192.0.2.52")
    assert ex.covers("2001:db8:1:2::/64") and ex.coverage("2001:db8:1:2::/64") == "all"
    assert not Exemptions([]).covers("192.0.2.49")


def test_a_source_with_only_a_part_exempted_is_partly_exempted_not_exempted() -> None:
    """A /56 subscriber prefix with one /60 exempted: the other fifteen /60s are blocked."""
    ex = Exemptions(["2001:db8:1:10::/60", "192.0.2.48/30"])
    assert ex.coverage("2001:db8:1::/56") == "part" and not ex.covers("2001:db8:1::/56")
    assert ex.coverage("2001:db8:1:10::/64") == "all"  # inside the /60
    assert ex.coverage("2001:db8:2::/56") == "none"
    # exemptions that fill the source between them exempt all of it
    halves = Exemptions(["2001:db8:1::/57", "2001:db8:1:80::/57"])
    assert halves.coverage("2001:db8:1::/56") == "all"


def test_offenders_says_partly_when_an_exemption_lies_inside_the_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """exemptions.yaml exempts 2001:db8:1000:ff00::/56; with /48 subscriber prefixes the
    source 2001:db8:1000::/48 holds it: JSON keeps `exempted` a boolean (false: not all of
    it) and adds `partly_exempted`; the text column says `partly`."""
    from op25b_ctl.cli.main import main

    d = example_policy(tmp_path)
    edit(
        d / "pools.yaml",
        "    prefixes: [192.0.2.0/26, 2001:db8:1000::/40]",
        "    prefixes: [192.0.2.0/26, 2001:db8:1000::/40]\n    subscriber_prefix_v6: 48",
    )
    kernel = MemoryKernel()
    at = ["--policy", str(d), "--now", "2011-01-20T09:00+09:00"]  # before the /56's expiry
    assert main(["apply", *at], kernel=kernel) == 0
    key = bytes.fromhex("20010db8100000000000000000000000")
    kernel.seen[offender_set(EAST1, 6)] = [(key, 5, 0, 3_000_000)]
    kernel.seen[offender_set(EAST1, 4)] = [v4(49, 7, 2000)]
    capsys.readouterr()
    assert main(["offenders", *at, "-o", "json"], kernel=kernel) == 0
    rows = {r["source"]: r for r in json.loads(capsys.readouterr().out)["offenders"]}
    part = rows["2001:db8:1000::/48"]
    assert (part["exempted"], part["partly_exempted"]) == (False, True)
    assert (rows["192.0.2.49"]["exempted"], rows["192.0.2.49"]["partly_exempted"]) == (True, False)
    assert main(["offenders", *at], kernel=kernel) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[-1] for ln in lines if ln.startswith(("2001:", "192.0.2.49"))] == [
        "yes",
        "partly",
    ]


def test_first_seen_is_a_bound_at_the_first_look_then_exact() -> None:
    book = FirstSeen(active=True)
    name = offender_set(EAST1, 4)
    book.observe(name, [v4(10, 2, 30_000)], T, NOW)  # there before the daemon looked
    later = NOW + timedelta(minutes=1)
    book.observe(name, [v4(10, 5, 1000), v4(11, 1, 10_000)], T, later)
    first, exact = book.lookup(name, bytes([192, 0, 2, 10]))
    assert (first, exact) == (NOW - timedelta(seconds=30), False)
    first, exact = book.lookup(name, bytes([192, 0, 2, 11]))
    assert (first, exact) == (later - timedelta(seconds=10), True)
    # forgotten and recorded anew (its counter restarted): a new first seen
    book.observe(name, [v4(10, 1, 0)], T, later + timedelta(hours=2))
    assert book.lookup(name, bytes([192, 0, 2, 10]))[0] == later + timedelta(hours=2)
    assert book.lookup(name, bytes([192, 0, 2, 11])) == (None, False)  # gone: dropped
    idle = FirstSeen()
    idle.observe(name, [v4(10, 2, 0)], T, NOW)
    assert idle.book == {}  # a standalone command keeps nothing


def test_distinct_counts_and_fill(policy: Policy) -> None:
    ps = PoolSeen(EAST1, "enforce", T, [v4(1, 1, 0), v4(2, 1, 0)], [v4(3, 1, 0)] * 4)
    assert ps.distinct == 6 and ps.fill(4) == 0.5 and ps.fill(6) == 1.0
    assert distinct_by_pool([ps]) == {EAST1: 6}
    kernel = MemoryKernel()
    applier.apply(kernel, desired_table(policy, modes()))
    kernel.seen[offender_set(EAST1, 4)] = [v4(1, 1, 0), v4(2, 1, 0)]
    kernel.seen[offender_set(EAST2, 6)] = [v4(1, 1, 0)]
    assert distinct_offenders(kernel, policy) == {EAST1: 2, EAST2: 1, "flets-west-dyn-1": 0}
    read = read_pools(kernel, policy, modes(), pools=[EAST2])
    assert [(p.pool, p.mode, p.distinct) for p in read] == [(EAST2, "monitor", 1)]
    assert distinct_offenders(MemoryKernel(), policy) == {EAST1: 0, EAST2: 0, "flets-west-dyn-1": 0}


# -- the element codec


def element(key: bytes, packets: int, expires: int, timeout: int | None = None) -> bytes:
    value = nlcodec.nla(1, key)  # NFTA_DATA_VALUE
    counter = nlcodec.nla(1, b"counter\0") + nlcodec.nla(
        2,
        nlcodec.nla(1, struct.pack("!Q", packets * 60))
        + nlcodec.nla(2, struct.pack("!Q", packets)),
    )
    body = nlcodec.nla(1, value) + nlcodec.nla(7, counter)
    if timeout is not None:
        body += nlcodec.nla(4, struct.pack("!Q", timeout))
    body += nlcodec.nla(5, struct.pack("!Q", expires))
    return nlcodec.nla(1, body)  # NFTA_LIST_ELEM


@pytest.mark.parametrize("timeout", [None, 7_200_000])
@pytest.mark.parametrize("key", [bytes([192, 0, 2, 9]), bytes(range(16))])
def test_fast_path_equals_the_attribute_walk(key: bytes, timeout: int | None) -> None:
    elems = b"".join(element(key, n, 1000 * n, timeout) for n in range(1, 50))
    fast = nlcodec._fast_elements(elems)
    assert fast is not None and len(fast) == 49
    assert fast == nlcodec._walk_elements(elems)
    assert fast[2] == (key, 3, timeout or 0, 3000)


def test_an_unexpected_layout_falls_back_to_the_walk() -> None:
    odd = element(bytes([192, 0, 2, 9]), 1, 5) + nlcodec.nla(
        1, nlcodec.nla(1, nlcodec.nla(1, bytes(4)))
    )
    assert nlcodec._fast_elements(odd) is None
    walked = nlcodec._walk_elements(odd)
    assert walked[0] == (bytes([192, 0, 2, 9]), 1, 0, 5) and walked[1] == (bytes(4), 0, 0, 0)


# -- the command


def test_offenders_command_ranks_filters_and_marks_exemptions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from op25b_ctl.cli.main import main

    kernel = MemoryKernel()
    assert main(["apply", "--policy", str(EXAMPLE)], kernel=kernel) == 0
    kernel.seen[offender_set(EAST1, 4)] = [v4(10, 1, 1000), v4(49, 7, 2000), v4(12, 3, 3000)]
    kernel.seen[offender_set(EAST2, 4)] = [v4(70, 2, 0)]
    capsys.readouterr()
    assert main(["offenders", "--policy", str(EXAMPLE), "-o", "json"], kernel=kernel) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(r["source"], r["attempts"]) for r in data["offenders"]] == [
        ("192.0.2.49", 7),
        ("192.0.2.12", 3),
        ("192.0.2.70", 2),
        ("192.0.2.10", 1),
    ]
    assert data["offenders"][0]["exempted"]  # 192.0.2.48/30 is in exemptions.yaml
    assert not data["offenders"][1]["exempted"]
    assert {p["pool"]: p["distinct"] for p in data["pools"]}[EAST1] == 3
    argv = ["offenders", "--policy", str(EXAMPLE), "--pool", EAST2, "--top", "1"]
    assert main(argv, kernel=kernel) == 0
    text = capsys.readouterr().out
    assert "192.0.2.70" in text and "192.0.2.49" not in text and "EXEMPTED" in text
    assert main(["offenders", "--policy", str(EXAMPLE), "--pool", "nope"], kernel=kernel) == 2
    assert "no such pool" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["offenders", "--help"])
    assert exc.value.code == 0 and "--top" in capsys.readouterr().out


def test_a_deleted_offender_set_is_drift_and_comes_back_in_one_batch(policy: Policy) -> None:
    from dataclasses import replace as dc_replace

    table = desired_table(policy, modes())
    kernel = MemoryKernel()
    applier.apply(kernel, table)
    live = kernel.tables[("inet", "op25b")]
    name = offender_set(EAST1, 4)
    # someone flushed the pool's chain and deleted its set (the rules had to go first)
    chains = {
        **live.chains,
        pool_chain(EAST1): dc_replace(live.chains[pool_chain(EAST1)], rules=()),
    }
    sets = {n: s for n, s in live.sets.items() if n != name}
    kernel.edit("inet", "op25b", dc_replace(live, chains=chains, sets=sets))
    tx = applier.apply(kernel, table)
    assert not tx.breaks  # no declare-first batch for a dynamic set
    assert [op.set.name for op in tx.ops if isinstance(op, AddSet)] == [name]
    assert kernel.tables[("inet", "op25b")] == table


def test_the_daemon_reader_caches_a_second_and_observes_without_scrapes(policy: Policy) -> None:
    from op25b_ctl.daemon.offenders import OffenderCollector, OffenderReader
    from op25b_ctl.daemon.view import View
    from op25b_ctl.ops.offenders import FIRST_SEEN
    from op25b_ctl.plan.desired import from_policy

    kernel = MemoryKernel()
    want = from_policy(policy, NOW, ())
    applier.apply(kernel, want.table)
    clock = [100.0]
    reader = OffenderReader(kernel, lambda: View(desired=want), monotonic=lambda: clock[0])
    try:
        kernel.seen[offender_set(EAST1, 4)] = [v4(10, 1, 0)]
        started: list[int] = []
        hook = reader.after(lambda: started.append(1))
        hook()  # the first pass reads
        assert started == [1] and reader.distinct()[EAST1] == 1
        kernel.seen[offender_set(EAST1, 4)] = [v4(10, 1, 0), v4(11, 1, 0)]
        clock[0] += 0.5
        assert reader.distinct()[EAST1] == 1  # cached for a second
        clock[0] += 30
        hook()  # nothing read for 30 s < OBSERVE_EVERY: the hook does not read
        assert reader.distinct()[EAST1] == 2  # but a reader (a scrape) does, past the cache
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in OffenderCollector(reader).collect()
            for s in family.samples
        }
        mode = want.decisions[EAST1].mode
        assert samples[("op25b_pool_offenders", (("mode", mode), ("pool", EAST1)))] == 2
        key = ("op25b_pool_offender_set_fill_ratio", (("family", "ipv4"), ("pool", EAST1)))
        assert samples[key] == 2 / 65536
        assert not any("192.0.2" in str(k) for k in samples)  # never a label per address
    finally:
        FIRST_SEEN.active = False
        FIRST_SEEN.book.clear()


def test_offenders_says_when_the_table_is_absent_or_nothing_matches_the_filters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An absent table reads as empty sets: "0 sources" must not pass for "nobody sent on
    25". A --pool/--mode that leaves no pool says why, not "no pool tracks offenders"."""
    from op25b_ctl.cli.main import main

    kernel = MemoryKernel()
    assert main(["offenders", "--policy", str(EXAMPLE)], kernel=kernel) == 0
    assert "table inet op25b is absent: nothing is recorded" in capsys.readouterr().out
    assert main(["offenders", "--policy", str(EXAMPLE), "-o", "json"], kernel=kernel) == 0
    assert json.loads(capsys.readouterr().out)["present"] is False
    assert main(["apply", "--policy", str(EXAMPLE)], kernel=kernel) == 0
    capsys.readouterr()
    assert main(["offenders", "--policy", str(EXAMPLE), "-o", "json"], kernel=kernel) == 0
    assert json.loads(capsys.readouterr().out)["present"] is True
    before = ["--now", "2010-01-01T00:00:00+09:00"]  # every pool at its baseline, off
    assert (
        main(["offenders", "--policy", str(EXAMPLE), "--mode", "monitor", *before], kernel=kernel)
        == 0
    )
    out = capsys.readouterr().out
    assert "absent" not in out and "no pool tracks offenders" not in out
    assert out.startswith("no tracked pool matches --mode monitor")
    assert f"{EAST1} (off)" in out
    assert main(["offenders", "--policy", str(EXAMPLE), "--pool", "static-biz"], kernel=kernel) == 0
    assert "no tracked pool matches --pool static-biz (static pools" in capsys.readouterr().out


def test_the_store_view_shows_last_seen_in_the_published_policys_zone(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`offenders --store` shows times as the local `offenders` does: the policy's zone
    (rollout.yaml `timezone`), not the UTC the gateways report in; JSON keeps the report."""

    from op25b_ctl.cli import fleet as cli_fleet
    from op25b_ctl.cli.main import main
    from op25b_ctl.source.etcd import Published

    seen = datetime(2011, 1, 20, 0, 30, tzinfo=UTC).isoformat()
    top = [{"source": "192.0.2.40", "pool": "p1", "mode": "enforce", "attempts": 3,
            "last_seen": seen}]  # fmt: skip
    rollout = {"rollout.yaml": "timezone: America/New_York\nstages: []\n"}

    class Store:
        files: dict[str, str] = {}

        def statuses(self) -> dict[str, Any]:
            return {"gw1": {"offenders": {"pools": {"p1": 1}, "top": top}}}

        def published(self) -> Published | None:
            return Published(1, "d", self.files) if self.files else None

    store = Store()
    monkeypatch.setattr(cli_fleet, "store_of", lambda ctx: store)
    argv = ["offenders", "--store", "etcd://127.0.0.1:9/op25b"]
    for files, shown in (
        ({}, "2011-01-20 09:30:00"),  # nothing published: the default zone, Asia/Tokyo
        (rollout, "2011-01-19 19:30:00"),
        ({"rollout.yaml": "timezone: Mars/Olympus\n"}, "2011-01-20 09:30:00"),
    ):
        store.files = files
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert shown in out and seen not in out, out
    assert main([*argv, "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["offenders"][0]["last_seen"] == seen
