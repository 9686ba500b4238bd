"""The hole alarm in the lab gateway: real interfaces, real routes, a real Prometheus.

This kernel has no PPP, so sessions are stand-ins the notes describe: an `ifb` interface
named ppp<N> with the subscriber as its point-to-point peer (accel-ppp's PPPoE), a /32 or
/64 route `proto 100` on the subscriber-facing veth (accel-ppp's IPoE with `proto=100`),
and a blackhole aggregate `proto static` for a pool. Everything happens in the lab's gw
namespace; readiness is polled against deadlines.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from op25b_lab.lab import Lab, wait_for
from tests.e2e.test_daemon import CTL, PYTHON, Gateway, promql, start_prometheus
from tests.policytools import REPO

pytestmark = pytest.mark.root

RULES = REPO / "monitoring" / "prometheus" / "op25b-rules.yml"
HOLE = "198.51.100.200"  # in no pool: flets-west-dyn-1 is 198.51.100.0/25
DISCOVERY = """
  discovery:
    interfaces: ["ppp*"]
    routes:
      - protocols: [100]
        interfaces: [sub0]
      - protocols: [static]
        types: [blackhole]
"""
EXIT_HOLE = 5  # cli/context.py
DEADLINE = 10.0  # "within a few seconds", with slack for a loaded 2-core machine
STORM = 5_000  # routes added, then all but KEPT removed: 2 * STORM - KEPT events


@pytest.fixture
def gw(lab: Lab, tmp_path: Path) -> Gateway:
    g = Gateway(lab, tmp_path)
    gateway = g.policy / "gateway.yaml"
    gateway.write_text(gateway.read_text() + DISCOVERY)
    ip(lab, "link add ppp0 type ifb", "link set ppp0 up")
    ip(lab, "addr add 192.0.2.254 peer 192.0.2.20/32 dev ppp0")  # flets-east-dyn-1
    ip(lab, "route add 192.0.2.30/32 dev sub0 proto 100 scope link")  # IPoE, east-1
    ip(lab, "-6 route add 2001:db8:1000:5::/64 dev sub0 proto 100")  # IPoE v6, east-1
    ip(lab, "route add blackhole 192.0.2.64/26 proto static")  # east-2's aggregate
    return g


def ip(lab: Lab, *commands: str) -> None:
    for command in commands:
        lab.run(lab.ns_gw, ["ip", *command.split()])


def discover(lab: Lab, gw: Gateway, *extra: str) -> tuple[int, dict[str, Any]]:
    argv = [CTL, "discover", "--policy", str(gw.policy), "--state-dir", str(gw.state)]
    cp = lab.run(lab.ns_gw, [*argv, "-o", "json", *extra], check=False)
    assert cp.returncode in (0, EXIT_HOLE), cp.stderr
    return cp.returncode, json.loads(cp.stdout)


def add_session_hole(lab: Lab) -> None:
    ip(lab, "link add ppp1 type ifb", "link set ppp1 up")
    ip(lab, f"addr add 192.0.2.254 peer {HOLE}/32 dev ppp1")


def list_the_hole(gw: Gateway) -> None:
    pools = gw.policy / "pools.yaml"
    text = pools.read_text()
    assert "198.51.100.0/25" in text
    pools.write_text(text.replace("- 198.51.100.0/25", f"- 198.51.100.0/25\n  - {HOLE}/32"))


def firing(lab: Lab, api: str) -> list[str]:
    result = promql(lab, api, 'ALERTS{alertname="Op25bDiscoveryHole", alertstate="firing"}')
    return [r["metric"]["instance"] for r in result]


def test_discover_reports_a_session_outside_every_pool(lab: Lab, gw: Gateway) -> None:
    code, out = discover(lab, gw)
    assert code == 0 and out["uncovered"] == [], out
    covered = {c["pool"]: c["served_items"] for c in out["covered"]}
    assert covered == {"flets-east-dyn-1": 3, "flets-east-dyn-2": 1}
    assert out["unserved"] == ["flets-west-dyn-1", "static-biz"]

    add_session_hole(lab)
    code, out = discover(lab, gw)
    assert code == EXIT_HOLE
    assert out["uncovered"] == [
        {"prefix": f"{HOLE}/32", "addresses": 1, "served_items": 1, "seen_as": ["ppp1 peer"]}
    ]
    text = lab.run(
        lab.ns_gw, [CTL, "discover", "--policy", str(gw.policy), "--suggest"], check=False
    )
    assert text.returncode == EXIT_HOLE and f"- {HOLE}/32    # ppp1 peer" in text.stdout

    list_the_hole(gw)
    code, out = discover(lab, gw)
    assert code == 0 and out["uncovered"] == [], out
    # and nothing was written: discover never makes or changes a table
    assert gw.nft("list", "tables").strip() == ""


def test_daemon_metric_and_prometheus_alert_follow_a_hole(lab: Lab, gw: Gateway) -> None:
    gw.start()
    api = start_prometheus(lab, port=9091, rules=RULES)

    def uncovered() -> float | None:
        return gw.sample("op25b_discovery_uncovered_prefixes", family="ipv4")

    assert wait_for("first discovery check", lambda: uncovered() == 0, DEADLINE)
    checked = gw.sample("op25b_discovery_last_check_timestamp_seconds")
    assert checked is not None and checked > 0
    table_before = gw.nft("list", "table", "inet", "op25b")

    add_session_hole(lab)  # an event, not the 60 s periodic re-check, must bring it
    assert wait_for("the daemon to see the hole", lambda: uncovered() == 1, DEADLINE)
    assert gw.sample("op25b_discovery_uncovered_addresses", family="ipv4") == 1
    assert (
        gw.sample("op25b_discovery_uncovered_prefix", prefix=f"{HOLE}/32", seen_as="ppp1 peer") == 1
    )
    assert wait_for(
        "Prometheus to fire Op25bDiscoveryHole", lambda: firing(lab, api) == ["127.0.0.1:9625"], 30
    )
    assert gw.nft("list", "table", "inet", "op25b") == table_before  # discovery only reads

    list_the_hole(gw)  # the daemon reloads the policy; discovery re-checks with it at once
    assert wait_for("the hole to clear in the daemon", lambda: uncovered() == 0, DEADLINE)
    assert wait_for("the alert to clear", lambda: firing(lab, api) == [], 30)
    assert gw.sample("op25b_discovery_uncovered_addresses", family="ipv4") == 0
    code, _ = discover(lab, gw)
    assert code == 0
    gw.stop()


def test_a_storm_of_10000_route_events_ends_with_the_right_answer(lab: Lab, gw: Gateway) -> None:
    gw.start()
    assert wait_for(
        "first discovery check",
        lambda: gw.sample("op25b_discovery_uncovered_prefixes", family="ipv6") == 0,
        DEADLINE,
    )
    kept = 7
    base = int(ipaddress.IPv6Address("2001:db8:4000::"))  # in no pool
    addrs = [ipaddress.IPv6Address(base + i) for i in range(1, STORM + 1)]
    batch = [f"-6 route add {a}/128 dev sub0 proto 100" for a in addrs]
    batch += [f"-6 route del {a}/128 dev sub0 proto 100" for a in addrs[:-kept]]
    script = lab.workdir / "storm.batch"
    script.write_text("\n".join(line.removeprefix("-6 ") for line in batch) + "\n")
    lab.run(lab.ns_gw, ["ip", "-6", "-batch", str(script)], timeout=120)
    expect = list(ipaddress.summarize_address_range(addrs[-kept], addrs[-1]))

    def settled() -> bool:
        s = gw.samples()
        return (
            s.get(("op25b_discovery_uncovered_prefixes", frozenset({("family", "ipv6")})))
            == len(expect)
            and s.get(("op25b_discovery_uncovered_addresses", frozenset({("family", "ipv6")})))
            == kept
        )

    assert wait_for("the storm's answer", settled, 30)
    events = gw.sample("op25b_discovery_events_total") or 0
    resyncs = gw.sample("op25b_discovery_resyncs_total") or 0
    checks = gw.sample("op25b_discovery_checks_total") or 0
    assert events + resyncs > 0  # it was the watch that noticed
    assert checks < 100, checks  # debounced: not a read per event
    print(f"storm: {events:.0f} events, {resyncs:.0f} resyncs, {checks:.0f} checks")
    # still serving: in sync, answering scrapes, and the policy still enforced
    assert gw.sample("op25b_table_in_sync") == 1
    assert gw.plan_is_empty()
    code, out = discover(lab, gw)
    assert code == EXIT_HOLE
    assert [u["prefix"] for u in out["uncovered"]] == [str(n) for n in expect]
    gw.stop()


# --------------------------------------------------------------------------- the fleet


def test_fleet_status_marks_the_gateway_with_a_hole(tmp_path: Path) -> None:
    """Two gateways of a real etcd fleet; each judges its sessions against the pools it
    carries: a flets-east-dyn-2 session on bras-west-1 (which does not carry it) is a hole
    there, and `fleet status` says so until gateways.yaml gives bras-west-1 that pool."""
    import yaml

    from op25b_lab.fleet import FleetLab
    from tests.e2e.conftest import lab_unavailable
    from tests.fleetpolicy import fleet_policy

    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    names = ["bras-east-1", "bras-west-1"]
    policy = fleet_policy(tmp_path / "policy")
    gateway = policy / "gateway.yaml"
    gateway.write_text(gateway.read_text() + DISCOVERY)
    with FleetLab(names) as fleet:
        for name, session in (("bras-east-1", "192.0.2.70"), ("bras-west-1", "192.0.2.70")):
            lab = fleet.labs[name]
            ip(lab, "link add ppp5 type ifb", "link set ppp5 up")
            ip(lab, f"addr add 192.0.2.254 peer {session}/32 dev ppp5")  # flets-east-dyn-2
        assert fleet.publish(policy)["revision"] == 1
        for name in names:
            fleet.start(name)
        fleet.wait_applied(names, policy_revision=1)

        def rows() -> dict[str, dict[str, Any]]:
            cp = fleet.ctl("fleet", "status", "-o", "json", check=False)
            assert cp.returncode in (0, 4), cp.stderr  # 4: not all ok (bras-east-2 is absent)
            out = json.loads(cp.stdout)
            return {r["gateway"]: r for r in out["gateways"]}

        def states() -> dict[str, str]:
            return {n: r["state"] for n, r in rows().items() if n in names}

        want = {"bras-east-1": "ok", "bras-west-1": "HOLE"}
        assert wait_for("fleet status to show the hole", lambda: states() == want, 30)
        west = rows()["bras-west-1"]
        assert west["discovery"]["uncovered"] == ["192.0.2.70/32"]
        assert "HOLE: 1 served prefix(es) in no pool (192.0.2.70/32)" in west["problems"]
        text = fleet.ctl("fleet", "status", check=False).stdout
        assert "!bras-west-1" in text and "HOLE" in text
        # and on each gateway, `discover` against the published policy says the same
        for name, code in (("bras-east-1", 0), ("bras-west-1", EXIT_HOLE)):
            lab = fleet.labs[name]
            argv = [CTL, "discover", "--store", fleet.store_url, "--gateway", name, "-o", "json"]
            cp = lab.run(lab.ns_gw, [*argv, "--state-dir", str(tmp_path / name)], check=False)
            assert cp.returncode == code, cp.stderr
        assert json.loads(cp.stdout)["uncovered"][0]["prefix"] == "192.0.2.70/32"

        # bras-west-1 now carries flets-east-dyn-2: published, the hole closes there too
        data = yaml.safe_load((policy / "gateways.yaml").read_text())
        for gw in data["gateways"]:
            if gw["name"] == "bras-west-1":
                gw["pools"].append("flets-east-dyn-2")
        (policy / "gateways.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        assert fleet.publish(policy)["revision"] == 2
        fleet.wait_applied(names, policy_revision=2)
        ok = {"bras-east-1": "ok", "bras-west-1": "ok"}
        assert wait_for("the hole to close in the fleet", lambda: states() == ok, 30)


OVERFLOW = """
import json, subprocess, sys
from op25b_ctl.kernel.discovery import RouteEvents, read_served
from op25b_ctl.policy.discovery import Discovery

section = Discovery.model_validate({"routes": [{"protocols": [100], "interfaces": ["sess0"]}]})
events = RouteEvents(section, rcvbuf=4096)  # small on purpose: a storm overflows it
subprocess.run(["ip", "-6", "-batch", sys.argv[1]], check=True)
first = events.drain()
subprocess.run(["ip", "-6", "route", "add", "2001:db8:4100::1/128", "dev", "sess0", "proto", "100"], check=True)
second = events.drain()
other = subprocess.run(["ip", "-6", "route", "add", "2001:db8:4100::2/128", "dev", "sess0"], check=True)
third = events.drain()
print(json.dumps({
    "first": [first.messages, first.overflowed],
    "second": [second.messages, second.overflowed],
    "third": [third.messages, third.overflowed],
    "served": len(read_served(section)),
}))
"""


def test_an_overflowing_watch_says_so_and_keeps_working(netns: str, tmp_path: Path) -> None:
    """The kernel's ENOBUFS on the event socket, for real: reported as an overflow (the
    daemon then reads everything again), and the same socket goes on delivering."""
    subprocess.run(["ip", "-n", netns, "link", "add", "sess0", "type", "ifb"], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "sess0", "up"], check=True)
    base = int(ipaddress.IPv6Address("2001:db8:4000::"))
    batch = tmp_path / "routes.batch"
    batch.write_text(
        "".join(
            f"route add {ipaddress.IPv6Address(base + i)}/128 dev sess0 proto 100\n"
            for i in range(3000)
        )
    )
    cp = subprocess.run(
        ["ip", "netns", "exec", netns, PYTHON, "-c", OVERFLOW, str(batch)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert out["first"][1] is True  # 3,000 events into an 8 KiB queue: lost, and said so
    assert out["second"] == [1, False]  # the watch goes on: one relevant route event
    assert out["third"] == [0, False]  # a proto boot route no source reads: not counted
    assert out["served"] == 3001  # and the full read sees every route
