"""Validation: every kind of bad input is refused with the file, the field and the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from op25b_ctl.errors import PolicyError
from op25b_ctl.policy.loader import load_policy
from op25b_ctl.policy.model import Net, address_net, parse_net
from tests.policytools import EXAMPLE, edit, example_policy


def problems(directory: Path) -> list[str]:
    with pytest.raises(PolicyError) as exc:
        load_policy(directory)
    return [str(p) for p in exc.value.problems]


def test_example_policy_is_valid() -> None:
    policy = load_policy(EXAMPLE)
    assert [p.name for p in policy.pools] == [
        "flets-east-dyn-1",
        "flets-east-dyn-2",
        "flets-west-dyn-1",
        "static-biz",
    ]
    assert policy.gateway.table == "op25b"
    assert not policy.pool("static-biz").dynamic
    assert policy.relay_prefixes() == ["203.0.113.25/32", "2001:db8:ff00::25/128"]


def test_pool_by_name_finds_every_pool_and_refuses_unknown_names() -> None:
    policy = load_policy(EXAMPLE)
    assert all(policy.pool(p.name) is p for p in policy.pools)
    with pytest.raises(KeyError):
        policy.pool("no-such-pool")


def test_prefixes_are_normalised(tmp_path: Path) -> None:
    d = example_policy(tmp_path)
    edit(d / "pools.yaml", "2001:db8:1000::/40", "2001:DB8:1000:0::/40")
    assert load_policy(d).pool("flets-east-dyn-1").prefixes[1] == "2001:db8:1000::/40"


# (file, old text, new text, expected fragment of the one error, expected line)
BAD = {
    "malformed prefix": (
        "pools.yaml",
        "192.0.2.0/26",
        "192.0.2.300/26",
        "pools[0].prefixes[0]",
        13,
    ),
    "host bits": ("pools.yaml", "192.0.2.0/26", "192.0.2.1/26", "did you mean 192.0.2.0/26", 13),
    "prefix too long": (
        "pools.yaml",
        "192.0.2.0/26",
        "192.0.2.0/33",
        "not an IPv4 or IPv6 prefix",
        13,
    ),
    "overlapping pools": ("pools.yaml", "192.0.2.64/26", "192.0.2.0/25", "overlaps", None),
    "relay inside pool": ("relays.yaml", "203.0.113.25", "192.0.2.25", "inside subscriber pool", 5),
    "duplicate name": ("pools.yaml", "flets-east-dyn-2", "flets-east-dyn-1", "duplicate name", 15),
    "unsafe name": ("pools.yaml", "flets-west-dyn-1", "west; flush ruleset", "pools[2].name", 21),
    "uppercase name": ("pools.yaml", "flets-west-dyn-1", "Flets-West", "pools[2].name", 21),
    "unknown key": (
        "pools.yaml",
        "    tags: [flets, flets-west]",
        "    tagz: [flets]",
        "unknown key",
        23,
    ),
    "empty pool": ("pools.yaml", "[198.51.100.0/25, 2001:db8:2000::/40]", "[]", "at least 1", 25),
    "wrong type": ("pools.yaml", "    dynamic: false", '    dynamic: "no"', "valid boolean", 29),
    "bad mode": ("pools.yaml", 'mode: "off"   #', "mode: block   #", "pools[0].mode", 12),
    "static enforced": (
        "pools.yaml",
        "    dynamic: false",
        "    dynamic: false\n    mode: enforce",
        "static pool",
        30,
    ),
    "bad action": ("gateway.yaml", "action: reject", "action: accept", "gateway.action", 5),
    "table not ours": ("gateway.yaml", "table: op25b", "table: filter", "gateway.table", 3),
    "too broad": ("pools.yaml", "198.51.100.0/25", "0.0.0.0/0", "broader than /8", None),
    "duplicate key": (
        "relays.yaml",
        "  - name: smtp-relay",
        "  - name: smtp-relay\n    name: x",
        "duplicate key",
        None,
    ),
    "bad yaml": ("pools.yaml", "pools:", "pools: [", "not valid YAML", None),
    "priority range": ("gateway.yaml", "priority: 0", "priority: 9000", "gateway.priority", 4),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_with_location(tmp_path: Path, case: str) -> None:
    file, old, new, fragment, line = BAD[case]
    d = example_policy(tmp_path)
    edit(d / file, old, new)
    found = problems(d)
    assert any(fragment in p for p in found), found
    assert any(p.startswith(file) for p in found), found
    if line is not None:
        assert any(p.startswith(f"{file}:{line}:") for p in found), found


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    d = example_policy(tmp_path)
    edit(d / "pools.yaml", "192.0.2.0/26", "192.0.2.1/26")
    edit(d / "pools.yaml", "198.51.100.0/25", "198.51.100.999/25")
    assert len(problems(d)) == 2


def test_missing_and_unexpected_files(tmp_path: Path) -> None:
    d = example_policy(tmp_path)
    (d / "relays.yaml").unlink()
    (d / "extra.yaml").write_text("x: 1\n")
    found = problems(d)
    assert any(p.startswith("relays.yaml: missing") for p in found), found
    assert any(p.startswith("extra.yaml: unexpected policy file") for p in found), found


def test_missing_directory(tmp_path: Path) -> None:
    assert "policy directory not found" in problems(tmp_path / "nope")[0]


def test_prefix_index_finds_exactly_the_overlapping_prefixes() -> None:
    import random

    import netaddr

    from op25b_ctl.policy.model import PrefixIndex, parse_net

    rng = random.Random(7)
    nets = [netaddr.IPNetwork(f"198.51.100.{i * 8}/29") for i in range(0, 32, 2)]
    nets += [netaddr.IPNetwork(f"2001:db8:{i:x}::/48") for i in range(0, 64, 3)]
    index = PrefixIndex([(parse_net(str(n)), ("pools", k), str(n)) for k, n in enumerate(nets)])
    for _ in range(2000):
        if rng.random() < 0.5:
            q = netaddr.IPNetwork(f"198.51.100.{rng.randrange(256)}/{rng.randrange(24, 33)}").cidr
        else:
            q = netaddr.IPNetwork(f"2001:db8:{rng.randrange(70):x}::/{rng.randrange(40, 64)}").cidr
        want = [
            n for n in nets if n.version == q.version and n.first <= q.last and q.first <= n.last
        ]
        got = [text for _, _, text in index.overlapping(parse_net(str(q)))]
        assert got == [str(n) for n in sorted(want, key=lambda n: n.first)], q


def test_fast_prefix_parse_agrees_with_netaddr() -> None:
    """The C-parser fast path accepts only what netaddr reads as the same prefix and prints
    back unchanged; everything else (and every error message) is netaddr's."""
    import random

    import netaddr

    from op25b_ctl.policy.model import _canonical_net, _prefix, ipv4_mapped, parse_net

    rng = random.Random(11)

    def v6() -> str:
        groups = [rng.choice([0, 0, 1, 0xFFFF, rng.randrange(65536)]) for _ in range(8)]
        text = ":".join(f"{g:x}" for g in groups)
        return rng.choice([text, text.upper(), str(netaddr.IPAddress(text))])

    def v4() -> str:
        parts = [rng.choice([0, 1, 10, 255, rng.randrange(256)]) for _ in range(4)]
        text = ".".join(map(str, parts))
        return rng.choice([text, text.replace(".0", ".00", 1), "::ffff:" + text])

    odd = ["10.0.0.0/8 ", "10/8", "10.0.0.0/08", "1.2.3.4/33", "::/129", "::/0", "a/b", "1.2.3/24"]
    samples = odd + [f"{rng.choice([v4, v6])()}/{rng.randrange(0, 130)}" for _ in range(20000)]
    for _ in range(5000):  # canonical ones too, as written policies hold
        v = rng.choice([4, 6])
        samples.append(
            str(
                netaddr.IPNetwork(
                    (
                        rng.getrandbits(32 if v == 4 else 128),
                        rng.randrange(0, 33 if v == 4 else 129),
                    ),
                    v,
                ).cidr
            )
        )
    fast_hits = 0
    for text in samples:
        try:
            net = netaddr.IPNetwork(text)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            net = None
        fast = _canonical_net(text)
        if fast is not None:
            fast_hits += 1
            assert net is not None and str(net.cidr) == text and net.ip == net.network, text
            assert fast == (net.version, net.first, net.last, net.prefixlen), text
        try:
            got: str | None = _prefix(text)
        except ValueError:
            got = None
        want = str(net.cidr) if net is not None and net.ip == net.network else None
        if net is not None and ipv4_mapped(net):
            want = None  # refused on purpose: an IPv4-mapped prefix never matches (issue 10)
        assert got == want, text
        if net is not None and got is not None:
            assert parse_net(got) == (net.version, net.first, net.last, net.prefixlen), text
    assert fast_hits > 1000  # the comparison covered the fast path, not only the fallback


def test_pool_of_answers_which_pool_holds_an_address_or_a_prefix() -> None:
    policy = load_policy(EXAMPLE)
    for pool in policy.pools:
        for prefix in pool.prefixes:
            net = parse_net(prefix)
            assert policy.pool_of(net) is pool
            assert policy.pool_of(address_net(net.version, net.first)) is pool
            assert policy.pool_of(address_net(net.version, net.last)) is pool
            # a range reaching past the pool's prefix is not held by it
            assert policy.pool_of(net._replace(last=net.last + 1)) is None
    assert policy.pool_of(parse_net("203.0.113.25/32")) is None  # the relay: in no pool
    assert policy.pool_of(address_net(4, 0)) is None


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.tuples(st.integers(4, 6), st.integers(0, 2**20)), min_size=1, max_size=60))
def test_pool_index_agrees_with_the_prefix_index(seeds: list[tuple[int, int]]) -> None:
    """Packed spans and a bisect over sorted integers give the same pool for any address."""
    from op25b_ctl.policy.model import PrefixIndex
    from op25b_ctl.policy.poolindex import PoolIndex

    nets: list[tuple[Net, int]] = []
    for i, (kind, k) in enumerate(seeds):
        if kind == 6:
            first = (0x20010DB8 << 96) | (k << 64)
            nets.append((Net(6, first, first | ((1 << 64) - 1), 64), i))
        else:
            first = (k % (1 << 16)) << 8
            nets.append((Net(4, first, first | 0xFF, 24), i))
    unique: dict[tuple[int, int], tuple[Net, int]] = {(n.version, n.first): (n, i) for n, i in nets}
    items = list(unique.values())
    index = PoolIndex.build((n.version, n.first, n.last, i) for n, i in items)
    again = PoolIndex.from_json(json.loads(json.dumps(index.to_json())))
    reference = PrefixIndex([(n, ("pools", i), "") for n, i in items])
    for n, _ in items:
        for probe in (n.first, n.last, n.first - 1, n.last + 1):
            if probe < 0:
                continue
            addr = Net(n.version, probe, probe, 32 if n.version == 4 else 128)
            held = reference.holding(addr)
            expected = int(held[1][1]) if held is not None else None
            assert index.pool_at(n.version, probe, probe) == expected
            assert again.pool_at(n.version, probe, probe) == expected


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        (
            "gateway.yaml",
            "  discovery:\n",
            "  offenders:\n  discovery:\n",
            ": gateway.offenders: expected a mapping (`key: value` lines under it), got nothing",
        ),
        (
            "pools.yaml",
            "pools:\n",
            "pools:\n  - flets-new\n",
            "pools.yaml:9: pools[0]: expected a mapping (`key: value` lines under it), got a str",
        ),
        (
            "exemptions.yaml",
            "ticket: NMT-2011-0042",
            "ticket: NMT 2011/0042",
            "exemptions[0].ticket: 'NMT 2011/0042': a ticket is letters, digits and . _ : / # -",
        ),
        (
            "gateway.yaml",
            "  discovery:\n",
            "  offenders: {size: 65536.0}\n  discovery:\n",
            "gateway.offenders.size: Input should be a valid integer (got 65536.0)",
        ),
    ],
)
def test_a_wrong_shape_is_said_in_yaml_terms_and_shows_what_was_read(
    tmp_path: Path, file: str, old: str, new: str, expected: str
) -> None:
    """Not pydantic's "a valid dictionary or instance of Offenders" (a class name a user
    never wrote) nor a regular expression for a ticket, and a float where an integer belongs
    shows what was read."""
    d = example_policy(tmp_path)
    edit(d / file, old, new)
    found = problems(d)
    assert any(expected in p for p in found), found
    assert not any("instance of" in p or "pattern '^" in p for p in found), found


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        (
            "gateway.yaml",
            "  discovery:\n",
            "  offenders: {retention: 0m}\n  discovery:\n",
            "gateway.offenders.retention: '0m' is outside 1m..90d",
        ),
        (
            "rollout.yaml",
            "    pools: [flets-east-dyn-1]\n    mode: enforce\n",
            "    pools: [flets-east-dyn-1]\n    mode: enforce\n    warn_before: 0h\n",
            "warn_before: '0h': warn at least 1m before the stage",
        ),
    ],
)
def test_a_zero_duration_is_too_short_not_malformed(
    tmp_path: Path, file: str, old: str, new: str, expected: str
) -> None:
    """`0m` is a whole number with its unit: "not a duration like 90m" sent people looking
    for a typo that is not there."""
    d = example_policy(tmp_path)
    edit(d / file, old, new)
    found = problems(d)
    assert any(expected in p for p in found), found
    assert not any("not a duration" in p for p in found), found


MONITOR_WEST_FIRST = (
    "  - name: monitor-west-1\n    at: 2011-01-24T10:00:00+09:00\n"
    "    pools: [flets-west-dyn-1]\n    mode: {mode}\n\n  - name: enforce-west-1\n"
)


def test_two_stages_at_one_instant_moving_a_pool_to_two_modes_are_refused(
    tmp_path: Path,
) -> None:
    d = example_policy(tmp_path)
    edit(
        d / "rollout.yaml", "  - name: enforce-west-1\n", MONITOR_WEST_FIRST.format(mode="monitor")
    )
    found = problems(d)
    assert len(found) == 1, found
    assert found[0].startswith("rollout.yaml:35: stages[3].at: "), found
    assert "'enforce-west-1' (enforce)" in found[0] and "'monitor-west-1'" in found[0], found
    assert "'flets-west-dyn-1'" in found[0] and "ambiguous" in found[0], found


def test_two_stages_at_one_instant_with_the_same_mode_are_redundant_not_ambiguous(
    tmp_path: Path,
) -> None:
    d = example_policy(tmp_path)
    edit(
        d / "rollout.yaml", "  - name: enforce-west-1\n", MONITOR_WEST_FIRST.format(mode="enforce")
    )
    assert [s.name for s in load_policy(d).stages][2:4] == ["monitor-west-1", "enforce-west-1"]


def test_a_byte_that_is_not_utf8_is_located_file_colon_line(tmp_path: Path) -> None:
    d = example_policy(tmp_path)
    path = d / "pools.yaml"
    text = path.read_bytes()
    path.write_bytes(text.replace(b"PPPoE pool 2", b"PPPoE pool \xe9"))
    line = text[: text.index(b"PPPoE pool 2")].count(b"\n") + 1
    assert problems(d) == [f"pools.yaml:{line}: not UTF-8 (byte 0xe9)"]


def test_cross_file_checks_wait_until_every_file_is_valid_on_its_own(tmp_path: Path) -> None:
    """As README and docs/policy.md say: a field error anywhere holds back the cross-file
    round, and fixing it brings the cross-file problem to light."""
    d = example_policy(tmp_path)
    edit(d / "pools.yaml", "192.0.2.0/26", "192.0.2.1/26")
    edit(d / "rollout.yaml", "pools: [flets-east-dyn-1]", "pools: [no-such-pool]")
    first = problems(d)
    assert len(first) == 1 and first[0].startswith("pools.yaml:13: "), first
    edit(d / "pools.yaml", "192.0.2.1/26", "192.0.2.0/26")
    second = problems(d)
    assert len(second) == 1 and "unknown pool 'no-such-pool'" in second[0], second
