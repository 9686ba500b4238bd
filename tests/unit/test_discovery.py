"""Discovery's pure parts: the section's validation, the served-versus-listed comparison,
the suggestion, the watcher's debounce and resync (fake reader and events), the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from op25b_ctl.cli.context import EXIT_HOLE, Context
from op25b_ctl.cli.discover import cmd_discover
from op25b_ctl.cli.main import build_parser
from op25b_ctl.daemon.discovery import DiscoveryWatcher
from op25b_ctl.errors import PolicyError
from op25b_ctl.plan.coverage import Served, compare, range_to_nets, suggest
from op25b_ctl.policy.discovery import RT_PROTOS, Discovery
from op25b_ctl.policy.loader import load_policy, parse_policy
from op25b_ctl.policy.model import Policy, parse_net
from tests.discoverytools import FakeEvents, served, with_discovery
from tests.policytools import EXAMPLE, example_policy

SECTION = Discovery(interfaces=["ppp*"])


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(EXAMPLE)


def files_with(section: str) -> dict[str, str]:
    texts = {p.name: p.read_text() for p in EXAMPLE.glob("*.yaml")}
    base = texts["gateway.yaml"].split("\n  discovery:")[0]
    texts["gateway.yaml"] = base + "\n  discovery:\n" + section
    return texts


def problems(section: str) -> list[str]:
    with pytest.raises(PolicyError) as exc:
        parse_policy(files_with(section))
    return [str(p) for p in exc.value.problems]


# ----------------------------------------------------------------------------- validation


def test_the_example_section_is_valid_and_reads_ppp_interfaces(policy: Policy) -> None:
    assert policy.gateway.discovery is not None
    assert policy.gateway.discovery.interfaces == ["ppp*"]


def test_the_examples_commented_sources_are_valid_when_uncommented() -> None:
    text = (EXAMPLE / "gateway.yaml").read_text()
    out = []
    for line in text.splitlines():
        m = re.match(r"^    # (routes:|min_prefixlen|ignore|interval)(.*)$", line)
        if m:
            line = f"    {m.group(1)}{m.group(2)}"
        elif line.startswith("    #   "):
            line = "      " + line[8:]
        out.append(line)
    texts = files_with("")
    texts["gateway.yaml"] = "\n".join(out) + "\n"
    found = parse_policy(texts).gateway.discovery
    assert found is not None and len(found.routes) == 3
    assert found.routes[1].types == ["blackhole", "unreachable", "prohibit"]
    assert found.routes[1].protocols == [RT_PROTOS["static"], RT_PROTOS["bird"]]
    assert found.ignore == ["192.0.2.255/32"]


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("    routes: [{protocols: [boot]}]\n", "proto boot in the main table alone"),
        ("    routes: [{protocols: [3]}]\n", "proto boot in the main table alone"),
        ("    routes: [{protocols: [kernel]}]\n", "proto kernel in the main table"),
        (
            "    routes: [{}]\n",
            "any protocol (no `protocols:`, so boot and kernel too) in the main",
        ),
        ("    routes: [{protocols: [boot], tables: [main, 100]}]\n", "proto boot in the main"),
        ("    routes: [{protocols: [bootx]}]\n", "unknown route protocol name 'bootx'"),
        ("    routes: [{protocols: [256]}]\n", "route protocol 256 is outside 0..255"),
        ("    routes: [{protocols: ['100']}]\n", "route protocol '100' is quoted, so a name"),
        ("    routes: [{tables: ['100'], protocols: [100]}]\n", "routing table '100' is quoted"),
        ("    routes: [{protocols: [true]}]\n", "expected a name or a number"),
        ("    routes: [{tables: [mian], protocols: [100]}]\n", "unknown routing table name"),
        ("    routes: [{tables: [0], protocols: [100]}]\n", "routing table 0 is outside"),
        ("    routes: [{types: [local], protocols: [100]}]\n", "unicast"),
        (
            "    routes: [{types: [blackhole], interfaces: [ppp*]}]\n",
            "go out of no interface",
        ),
        ("    interfaces: ['*']\n", "matches every interface"),
        ("    interfaces: ['ppp 0']\n", "not an interface name pattern"),
        ("    interfaces: []\n", "discovery reads nothing"),
        ("    interfaces: [ppp*]\n    ignore: [192.0.2.1/24]\n", "has host bits set"),
        ("    interfaces: [ppp*]\n    ignore: [nope]\n", "is not an IPv4 or IPv6 prefix"),
        ("    interfaces: [ppp*]\n    min_prefixlen: {ipv4: 33}\n", "less than or equal to 32"),
        ("    interfaces: [ppp*]\n    interval: 0\n", "greater than or equal to 1"),
        ("    interfaces: [ppp*]\n    protocol: 100\n", "unknown key"),
    ],
)
def test_a_bad_section_is_refused_with_file_line_and_field(section: str, expected: str) -> None:
    found = problems(section)
    assert any(expected in p for p in found), found
    assert all(p.startswith("gateway.yaml:") for p in found), found
    assert any(re.match(r"gateway\.yaml:\d+: gateway\.discovery", p) for p in found), found


@pytest.mark.parametrize(
    "section",
    [
        "    routes: [{protocols: [boot], interfaces: [ipoe*]}]\n",  # restricted by interface
        "    routes: [{protocols: [boot], tables: [100]}]\n",  # a table of its own
        "    routes: [{types: [blackhole, prohibit]}]\n",  # aggregates, any protocol
        "    routes: [{protocols: [100, bird], tables: [main, 1000]}]\n",
    ],
)
def test_restricted_boot_and_aggregates_are_accepted(section: str) -> None:
    assert parse_policy(files_with(section)).gateway.discovery is not None


def test_a_gateway_of_the_fleet_has_its_own_section(tmp_path: Path) -> None:
    texts = {p.name: p.read_text() for p in EXAMPLE.glob("*.yaml")}
    texts["gateways.yaml"] = yaml.safe_dump(
        {
            "gateways": [
                {"name": "bras-1", "pools": ["flets-east-dyn-1"]},
                {
                    "name": "bras-2",
                    "pools": ["flets-west-dyn-1"],
                    "discovery": {"routes": [{"protocols": [100], "interfaces": ["ipoe*"]}]},
                },
            ]
        }
    )
    fleet = parse_policy(texts)
    one, two = fleet.for_gateway("bras-1"), fleet.for_gateway("bras-2")
    assert one.gateway.discovery == fleet.gateway.discovery  # gateway.yaml's
    assert two.gateway.discovery is not None and two.gateway.discovery.interfaces == []
    assert two.gateway.discovery.routes[0].interfaces == ["ipoe*"]
    texts["gateways.yaml"] = texts["gateways.yaml"].replace("ipoe*", "'*'")
    with pytest.raises(PolicyError) as exc:
        parse_policy(texts)
    assert "gateways.yaml:" in str(exc.value) and "matches every interface" in str(exc.value)


def test_the_builtin_protocol_names_are_debians_rt_protos() -> None:
    path = Path("/etc/iproute2/rt_protos")
    if not path.exists():
        pytest.skip("no /etc/iproute2/rt_protos here")
    listed = {}
    for line in path.read_text().splitlines():
        parts = line.split("#")[0].split()
        if len(parts) == 2 and parts[0].isdigit():
            listed[parts[1]] = int(parts[0])
    assert listed == RT_PROTOS


# ----------------------------------------------------------------------------- comparison


def test_holes_static_and_unserved(policy: Policy) -> None:
    cov = compare(
        [
            served("192.0.2.9/32"),  # flets-east-dyn-1
            served("192.0.2.9/32", "route main proto 100 dev eth1"),  # the same, counted once
            served("192.0.2.130/32", "ppp7 peer"),  # static-biz
            served("203.0.113.9/32", "ppp1 peer"),  # in no pool
            served("203.0.113.8/32", "ppp2 peer"),  # adjacent: merged into one /31
            served("2001:db8:9::/56", "route main proto 100 dev ppp3"),  # v6 hole
            served("fe80::/64", "ppp0 subnet"),  # link-local: never a subscriber's
            served("10.0.0.0/7", "route main proto 100 dev eth9"),  # broader than /8
        ],
        policy,
        SECTION,
    )
    assert [h.prefix for h in cov.holes] == ["203.0.113.8/31", "2001:db8:9::/56"]
    assert cov.holes[0].origins == ("ppp2 peer", "ppp1 peer") and cov.holes[0].items == 2
    assert cov.uncovered_prefixes(4) == 1 and cov.uncovered_addresses(4) == 2
    assert cov.uncovered_addresses(6) == 1 << 72
    assert cov.static == (("192.0.2.130/32", "static-biz", "ppp7 peer"),)
    assert cov.unserved == ["flets-east-dyn-2", "flets-west-dyn-1"]
    assert (cov.served, cov.skipped) == (5, 2)


def test_an_aggregate_wider_than_a_pool_is_a_hole_for_the_rest(policy: Policy) -> None:
    # 192.0.2.0/24: pools hold .0/26, .64/26 (dynamic) and .128/26 (static); .192/26 is not
    cov = compare([served("192.0.2.0/24", "blackhole main proto static")], policy, SECTION)
    assert [h.prefix for h in cov.holes] == ["192.0.2.192/26"]
    assert cov.holes[0].origins == ("blackhole main proto static",)
    assert {p.name for p in cov.pools if p.served} == {
        "flets-east-dyn-1",
        "flets-east-dyn-2",
        "static-biz",
    }


def test_ignore_and_min_prefixlen(policy: Policy) -> None:
    section = Discovery.model_validate(
        {
            "interfaces": ["ppp*"],
            "ignore": ["203.0.113.0/28"],
            "min_prefixlen": {"ipv4": 24, "ipv6": 48},
        }
    )
    cov = compare(
        [
            served("203.0.113.9/32"),  # ignored
            served("203.0.113.0/27"),  # half ignored: the other half is a hole
            served("198.18.0.0/23"),  # broader than /24
            served("2001:db8:9::/56"),
        ],
        policy,
        section,
    )
    assert [h.prefix for h in cov.holes] == ["203.0.113.16/28", "2001:db8:9::/56"]
    assert cov.skipped == 2


def test_no_holes_when_every_served_address_is_listed(policy: Policy) -> None:
    cov = compare([served("192.0.2.1/32"), served("2001:db8:1000::/56")], policy, SECTION)
    assert cov.holes == () and cov.unserved == [
        "flets-east-dyn-2",
        "flets-west-dyn-1",
        "static-biz",
    ]


@pytest.mark.parametrize(
    ("first", "last", "expected"),
    [
        ("192.0.2.0", "192.0.2.255", ["192.0.2.0/24"]),
        (
            "192.0.2.3",
            "192.0.2.17",
            ["192.0.2.3/32", "192.0.2.4/30", "192.0.2.8/29", "192.0.2.16/31"],
        ),
        ("0.0.0.0", "255.255.255.255", ["0.0.0.0/0"]),
        ("2001:db8::", "2001:db8::1", ["2001:db8::/127"]),
    ],
)
def test_range_to_nets(first: str, last: str, expected: list[str]) -> None:
    import ipaddress

    a, b = ipaddress.ip_address(first), ipaddress.ip_address(last)
    got = range_to_nets(a.version, int(a), int(b))
    want = [parse_net(e) for e in expected]
    assert got == want
    assert [str(n) for n in ipaddress.summarize_address_range(a, b)] == expected


def test_suggest_is_valid_yaml_that_closes_the_holes(policy: Policy, tmp_path: Path) -> None:
    items = [served("203.0.113.9/32", "ppp1 peer"), served("2001:db8:9::/56", "ppp3")]
    text = suggest(compare(items, policy, SECTION), note='on "bras-1"')
    pasted = yaml.safe_load("pools:\n" + text)["pools"]
    assert pasted[0]["prefixes"] == ["203.0.113.9/32", "2001:db8:9::/56"]
    assert pasted[0]["mode"] == "off" and pasted[0]["dynamic"] is True
    assert pasted[0]["description"] == 'on "bras-1"'
    # pasted into the policy, it validates and leaves no hole
    texts = {p.name: p.read_text() for p in EXAMPLE.glob("*.yaml")}
    texts["pools.yaml"] = texts["pools.yaml"].rstrip() + "\n\n" + text
    fixed = parse_policy(texts)
    assert compare(items, fixed, SECTION).holes == ()
    assert "no holes" in suggest(compare(items, fixed, SECTION))


def test_100000_served_addresses_compare_in_one_pass(policy: Policy) -> None:
    base = parse_net("198.18.0.0/15").first
    items = [
        Served(parse_net(f"198.{18 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32"), "route")
        for i in range(100_000)
    ]
    assert base == items[0].net.first
    cov = compare(items, policy, SECTION)
    # 100,000 consecutive /32s from 198.18.0.0: the fewest prefixes holding exactly them
    assert sum(h.addresses for h in cov.holes) == 100_000
    assert [h.prefix for h in cov.holes][:2] == ["198.18.0.0/16", "198.19.0.0/17"]


# ----------------------------------------------------------------------------- the watcher


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def watcher_with(
    policy: Policy, answer: list[Served]
) -> tuple[DiscoveryWatcher, Clock, FakeEvents, list[int]]:
    clock = Clock()
    events = FakeEvents()
    reads: list[int] = []
    current = {"policy": with_discovery(policy, interfaces=["ppp*"], interval=60)}

    def read(section: Discovery) -> list[Served]:
        reads.append(1)
        return list(answer)

    w = DiscoveryWatcher(
        lambda: current["policy"],
        read=read,
        events=lambda s: events,
        monotonic=clock,
        wall=clock,
        quiet=0.3,
        max_delay=2.0,
    )
    w.current = current  # type: ignore[attr-defined]
    return w, clock, events, reads


def test_watcher_checks_at_once_then_debounces_a_storm(policy: Policy) -> None:
    answer = [served("203.0.113.9/32")]
    w, clock, events, reads = watcher_with(policy, answer)
    assert w.step() and len(reads) == 1  # the first check runs at once
    assert w.view.coverage is not None and len(w.view.coverage.holes) == 1
    first = w.view
    # a storm: an event every 0.1 s for 5 s: checks at most every max_delay, not per event
    for _ in range(50):
        clock.t += 0.1
        events.pending = 200
        w.step()
    assert 2 <= len(reads) <= 4, reads
    answer.clear()  # the storm removed the session
    clock.t += 0.31  # quiet: the last check sees the settled answer
    assert w.step()
    assert w.view is not first and w.view.coverage is not None
    assert not w.view.coverage.holes
    n = len(reads)
    clock.t += 59
    assert not w.step() and len(reads) == n  # idle: nothing read
    clock.t += 1.01
    assert w.step() and len(reads) == n + 1  # the periodic re-check
    assert w.events_seen == 50 * 200


def test_watcher_resyncs_on_overflow_and_follows_the_policy(policy: Policy) -> None:
    w, clock, events, reads = watcher_with(policy, [served("203.0.113.9/32")])
    w.step()
    events.overflow = True
    clock.t += 0.01
    w.step()
    clock.t += 0.3
    assert w.step() and w.resyncs == 1 and len(reads) == 2
    # the hole is added to a pool: a new policy object is checked at once, and clears it
    texts = {p.name: p.read_text() for p in EXAMPLE.glob("*.yaml")}
    texts["pools.yaml"] = texts["pools.yaml"].replace(
        "198.51.100.0/25", "198.51.100.0/25, 203.0.113.0/28"
    )
    w.current["policy"] = parse_policy(texts)  # type: ignore[attr-defined]
    clock.t += 0.01
    assert w.step()
    assert w.view.coverage is not None and w.view.coverage.holes == ()
    # the section removed: nothing configured, nothing exported
    w.current["policy"] = dataclasses_replace_no_discovery(w.current["policy"])  # type: ignore[attr-defined]
    assert not w.step() and not w.view.configured and events.closed


def dataclasses_replace_no_discovery(policy: Policy) -> Policy:
    import dataclasses

    return dataclasses.replace(
        policy, gateway=policy.gateway.model_copy(update={"discovery": None})
    )


def test_a_failed_read_keeps_the_last_answer(policy: Policy) -> None:
    from op25b_ctl.errors import KernelError

    w, clock, events, reads = watcher_with(policy, [served("203.0.113.9/32")])
    w.step()

    def broken(section: Discovery) -> list[Served]:
        raise KernelError("reading routes failed: Operation not permitted")

    w.read = broken
    clock.t += 61
    w.step()
    assert w.errors == 1 and w.view.error is not None and "not permitted" in w.view.error
    assert w.view.coverage is not None and len(w.view.coverage.holes) == 1
    assert w.report() == {
        "uncovered_prefixes": 1,
        "uncovered": ["203.0.113.9/32"],
        "unserved_pools": 4,
        "error": "reading routes failed: Operation not permitted",
    }


# ----------------------------------------------------------------------------- the command


def run_discover(
    tmp_path: Path, answer: list[Served], *argv: str, policy: Path | None = None
) -> tuple[int, str]:
    policy = policy or example_policy(tmp_path / "policy")
    args = build_parser().parse_args(
        ["discover", "--policy", str(policy), "--state-dir", str(tmp_path / "state"), *argv]
    )
    return cmd_discover(Context(args), read=lambda s: list(answer)), ""


def test_discover_exit_status_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run_discover(tmp_path, [served("203.0.113.9/32", "ppp1 peer")], "-o", "json")
    out = json.loads(capsys.readouterr().out)
    assert code == EXIT_HOLE == 5
    assert out["uncovered"] == [
        {"prefix": "203.0.113.9/32", "addresses": 1, "served_items": 1, "seen_as": ["ppp1 peer"]}
    ]
    assert out["holes"] is True and len(out["unserved"]) == 4
    code, _ = run_discover(tmp_path, [served("192.0.2.9/32")])
    captured = capsys.readouterr()
    assert code == 0 and "no holes" in captured.out
    assert "warning: 3 pool(s) listed but not served here" in captured.err


def test_discover_text_counts_ipv6_holes_in_64s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A /63 is two subscriber LANs, not 36893488147419103232 addresses spilling out of the
    ADDRS column; -o json keeps the exact count (and the metric)."""
    holes = [served("2001:db8:c000::/63"), served("2001:db8:c001::1/128"), served("203.0.113.9/32")]
    code, _ = run_discover(tmp_path, holes)
    out = capsys.readouterr().out
    assert code == EXIT_HOLE
    assert "(1 IPv4 addresses, IPv6 2x/64+1)" in out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines() if "/" in line[:44]}
    assert rows == {
        "2001:db8:c000::/63": "2x/64",
        "2001:db8:c001::1/128": "1",
        "203.0.113.9/32": "1",
    }
    assert "36893488147419103232" not in out
    run_discover(tmp_path, holes, "-o", "json")
    data = json.loads(capsys.readouterr().out)
    assert data["uncovered_addresses"]["ipv6"] == 2 * 2**64 + 1


def test_discover_suggest_prints_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = example_policy(tmp_path / "policy")
    before = {p.name: p.read_bytes() for p in policy.iterdir()}
    code, _ = run_discover(tmp_path, [served("203.0.113.9/32")], "--suggest", policy=policy)
    assert code == EXIT_HOLE
    assert "- 203.0.113.9/32" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in policy.iterdir()} == before


def test_discover_without_a_section_is_a_usage_error(tmp_path: Path) -> None:
    policy = example_policy(tmp_path / "policy")
    text = (policy / "gateway.yaml").read_text()
    (policy / "gateway.yaml").write_text(text.split("\n  discovery:")[0] + "\n")
    with pytest.raises(PolicyError) as exc:
        run_discover(tmp_path, [], policy=policy)
    assert "no discovery section" in str(exc.value)


# ----------------------------------------------------------------------------- the fleet


def test_fleet_status_marks_a_gateway_with_a_hole(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from op25b_ctl.cli.fleet import fleet_rows
    from op25b_ctl.source.etcd import Published
    from tests.fleetpolicy import fleet_policy

    policy = load_policy(fleet_policy(tmp_path / "p"))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ok = {"policy_revision": 5, "store_revision": 40, "reported_at": now.isoformat()}
    found: dict[str, Any] = {
        "uncovered_prefixes": 5,
        "uncovered": ["203.0.113.9/32", "203.0.113.64/26", "2001:db8:9::/56"],
        "unserved_pools": 0,
        "error": None,
    }
    hole = {**ok, "discovery": found}
    clean = {**ok, "discovery": {**found, "uncovered_prefixes": 0, "uncovered": []}}
    rows = fleet_rows(
        Published(5, "d", {}),
        policy,
        {"bras-east-1": hole, "bras-east-2": clean, "bras-west-1": ok},
        40,
        now,
    )
    by = {r["gateway"]: r for r in rows}
    assert {g: r["state"] for g, r in by.items()} == {
        "bras-east-1": "HOLE",
        "bras-east-2": "ok",
        "bras-west-1": "ok",
    }
    assert by["bras-east-1"]["problems"] == [
        "HOLE: 5 served prefix(es) in no pool (203.0.113.9/32, 203.0.113.64/26, 2001:db8:9::/56, ...)"
    ]
    assert by["bras-east-1"]["discovery"]["uncovered_prefixes"] == 5


def test_the_fleet_report_carries_the_watchers_answer(tmp_path: Path, policy: Policy) -> None:
    from op25b_ctl.daemon.fleet import FleetReporter
    from op25b_ctl.daemon.reconcile import Reconciler
    from op25b_ctl.kernel.memory import MemoryKernel
    from op25b_ctl.source.directory import DirectorySource
    from op25b_ctl.source.etcd import EtcdStore, parse_store_url
    from op25b_ctl.source.fleet import FleetSource

    source = FleetSource(EtcdStore(parse_store_url("etcd://127.0.0.1:9/op25b")), "gw1", tmp_path)
    sent: list[dict[str, Any]] = []
    source.report = lambda status: sent.append(dict(status))  # type: ignore[method-assign]
    rec = Reconciler(MemoryKernel(), DirectorySource(example_policy(tmp_path / "policy")))
    w, _, _, _ = watcher_with(policy, [served("203.0.113.9/32")])
    w.step()
    reporter = FleetReporter(rec, source, discovery=w)
    reporter.after_pass(rec.run_once())
    assert sent[-1]["discovery"]["uncovered"] == ["203.0.113.9/32"]
    assert "discovery" not in _report_without(rec, source)


def _report_without(rec: Any, source: Any) -> dict[str, Any]:
    from op25b_ctl.daemon.fleet import FleetReporter

    sent: list[dict[str, Any]] = []
    source.report = lambda status: sent.append(dict(status))
    FleetReporter(rec, source).after_pass(rec.run_once())
    return sent[-1]


def test_discover_gateway_without_store_is_a_usage_error(tmp_path: Path) -> None:
    from op25b_ctl.errors import StoreUsageError

    with pytest.raises(StoreUsageError, match="--gateway goes with --store"):
        run_discover(tmp_path, [], "--gateway", "bras-1")
