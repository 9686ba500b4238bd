"""A fleet daemon's start with a resolver it cannot reach (issue 17, item 3).

The gateway's namespace gets its own resolv.conf (`ip netns exec` bind-mounts
/etc/netns/<ns>/resolv.conf) naming a documentation-address nameserver that gw routes into a
veth whose far end, in `out`, drops every frame silently (addressed to a MAC nobody has):
a query leaves, is counted on that veth, and times out. With `--metrics-address` on gw's
subscriber-side address (not loopback), a reverse lookup of it anywhere in the start path
(http.server's `getfqdn`) would hold the loop for the resolver's timeout. The test shows
READY, and a store change applied, within 1 s of the start-up sync; a change made as soon
as the status key says ok is applied within 1 s too; and not one DNS packet leaves gw.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from op25b_ctl.cli.fleet import fleet_rows
from op25b_ctl.policy.loader import parse_policy
from op25b_ctl.policy.overrides import Action, Override
from op25b_ctl.source.etcd import EtcdStore, Scope, parse_store_url
from op25b_lab.fleet import CTL, FleetLab
from op25b_lab.lab import DYN_A, FOREIGN_MX, GW_SUB, Lab, wait_for
from tests.daemonpolicy import EAST1
from tests.e2e.conftest import lab_unavailable
from tests.fleetpolicy import fleet_policy

pytestmark = pytest.mark.root

GATEWAY = "bras-east-1"
NAMESERVER = "198.51.100.253"  # documentation address, in no pool of the lab
METRICS = f"{GW_SUB.v4}:9625"  # a management address, not loopback
RESOLVER_TIMEOUT = 2  # seconds per try (resolv.conf `options timeout:`), 2 tries
WITHIN = 1.0  # the bound: READY and a store change within 1 s of the sync

# From sub: TCP/25 to FOREIGN_MX until each wanted outcome has been seen once, in order;
# prints the CLOCK_MONOTONIC time of each (the same clock in every namespace).
OUTCOMES = """
import socket, sys, time
src, dst, deadline, wanted = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
print("probing", flush=True)
end = time.monotonic() + deadline
while wanted and time.monotonic() < end:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(0.2)
    try:
        s.bind((src, 0))
        s.connect((dst, 25))
        got = "connected"
    except ConnectionRefusedError:
        got = "refused"
    except OSError:
        got = "other"
    finally:
        s.close()
    if got == wanted[0]:
        print(f"{wanted.pop(0)} {time.monotonic():.6f}", flush=True)
    else:
        time.sleep(0.002)
sys.exit(1 if wanted else 0)
"""


@pytest.fixture
def fleet() -> Iterator[FleetLab]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    with FleetLab([GATEWAY]) as f:
        f.labs[GATEWAY].serve_tcp([25])
        yield f


@pytest.fixture
def dns_sent(fleet: FleetLab) -> Iterator[Any]:
    """gw's resolver unreachable; yields a function counting the packets sent towards it."""
    lab = fleet.labs[GATEWAY]
    gw, out = lab.ns_gw, lab.ns_out
    ip = shutil.which("ip") or "/usr/sbin/ip"

    def run(*argv: str) -> None:
        lab.run(gw, [ip, *argv])

    run("link", "add", "dns0", "type", "veth", "peer", "name", "dnsbh0", "netns", out)
    lab.run(gw, ["sysctl", "-qw", "net.ipv6.conf.dns0.disable_ipv6=1"])  # no ND noise
    run("link", "set", "dns0", "up")
    lab.run(out, [ip, "link", "set", "dnsbh0", "up"])
    run("route", "add", f"{NAMESERVER}/32", "dev", "dns0")
    # no ARP: frames go to a MAC nobody has, and `out` drops them without a word
    run("neigh", "replace", NAMESERVER, "lladdr", "02:00:00:00:00:53", "dev", "dns0")
    run("neigh", "change", NAMESERVER, "lladdr", "02:00:00:00:00:53", "dev", "dns0", "nud",
        "permanent")  # fmt: skip
    conf = Path("/etc/netns") / gw
    conf.mkdir(parents=True, exist_ok=False)
    try:
        (conf / "resolv.conf").write_text(
            f"nameserver {NAMESERVER}\noptions timeout:{RESOLVER_TIMEOUT} attempts:2\n"
        )

        def sent() -> int:
            stats = json.loads(lab.run(gw, [ip, "-s", "-j", "link", "show", "dns0"]).stdout)
            return int(stats[0]["stats64"]["tx"]["packets"])

        yield sent
    finally:
        shutil.rmtree(conf)


def probe(lab: Lab, *wanted: str, deadline: float = 30.0) -> Any:
    proc = lab.start(
        lab.ns_sub,
        [sys.executable, "-c", OUTCOMES, DYN_A.v4, FOREIGN_MX.v4, str(deadline), *wanted],
    )
    wait_for("prober running", lambda: "probing" in lab.output(proc), 10)
    return proc


def seen(lab: Lab, proc: Any, outcome: str, deadline: float = 30.0) -> float:
    """The monotonic time the prober first saw `outcome` (waits for it)."""

    def line() -> float | None:
        for text in lab.output(proc).splitlines():
            if text.startswith(f"{outcome} "):
                return float(text.split()[1])
        if proc.poll() is not None:
            raise AssertionError(f"prober ended without {outcome}: {lab.output(proc)}")
        return None

    return wait_for(f"prober saw {outcome}", line, deadline)


def override(store: EtcdStore, action: Action | None, reason: str) -> int:
    """A fleet-wide `pool rollback|clear` of EAST1 written straight into the store (the CLI's
    own start-up would only add noise to the timing)."""
    record = None
    if action is not None:
        o = Override(EAST1, action, reason, "test", datetime.now(UTC))
        record = {**o.to_json(), "host": "test", "scope": "all", "policy_revision": 1}
    return store.set_override(EAST1, Scope(), record, {"action": f"pool {action}"})


def gateway_state(store: EtcdStore) -> str | None:
    snap = store.snapshot()
    published = snap.published(store.keys)
    assert published is not None
    policy = parse_policy(published.files, origin="published")
    rows = fleet_rows(
        published, policy, store.statuses(), store.config_revision(), datetime.now(UTC)
    )
    return next(str(r["state"]) for r in rows if r["gateway"] == GATEWAY)


def test_an_unreachable_resolver_delays_neither_ready_nor_the_stores_changes(
    fleet: FleetLab, dns_sent: Any, tmp_path: Path
) -> None:
    lab = fleet.labs[GATEWAY]
    # the resolver really is unreachable, and a query waits for its timeout (no fast fail)
    before = dns_sent()
    start = time.monotonic()
    lab.run(lab.ns_gw, [sys.executable, "-c", f"import socket; socket.getfqdn('{GW_SUB.v4}')"])
    assert time.monotonic() - start >= RESOLVER_TIMEOUT * 0.9
    assert dns_sent() > before
    fleet.publish(fleet_policy(tmp_path / "policy"))
    store = EtcdStore(parse_store_url(fleet.store_url), timeout=2.0)
    quiet = dns_sent()
    prober = probe(lab, "refused", "connected")  # the table comes, then the rollback
    path = lab.workdir / "notify.sock"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            sock.settimeout(30)
            argv = ["env", f"NOTIFY_SOCKET={path}", CTL, "daemon", "--store", fleet.store_url,
                    "--gateway", GATEWAY, "--state-dir", str(fleet.state_dir(GATEWAY)),
                    "--interval", "30", "--metrics-address", METRICS]  # fmt: skip
            fleet.daemons[GATEWAY] = lab.start(lab.ns_gw, argv)
            first = sock.recv(4096).decode()
            synced = time.monotonic()  # the first pass's STATUS: the start-up sync is applied
            assert first.startswith("STATUS=") and "in sync" in first, first
            rev = override(store, "rollback", "INC-17 during start-up")
            message = first
            while "READY=1" not in message:
                message = sock.recv(4096).decode()
            ready = time.monotonic()
        through = seen(lab, prober, "connected") - synced
        blocked = seen(lab, prober, "refused")
        print(f"READY {ready - synced:.3f} s, rollback through {through:.3f} s after the sync")
        assert blocked <= synced + 0.5  # the start-up sync did enforce the pool
        assert ready - synced < WITHIN, fleet.log(GATEWAY)
        assert through < WITHIN, fleet.log(GATEWAY)
        fleet.wait_applied([GATEWAY], store_revision=rev)

        # "ok" in the status key means the gateway follows the store now: a change made the
        # moment it says so is applied within the bound as well
        wait_for("status ok", lambda: gateway_state(store) == "ok", 10)
        prober = probe(lab, "refused")
        issued = time.monotonic()
        override(store, None, "INC-17 fixed")
        assert seen(lab, prober, "refused") - issued < WITHIN, fleet.log(GATEWAY)

        # the metrics are served on that address, and nothing asked the resolver anything
        fetch = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read())"
        cp = lab.run(lab.ns_gw, [sys.executable, "-c", fetch, f"http://{METRICS}/metrics"])
        assert "op25b_table_in_sync 1.0" in cp.stdout
        assert dns_sent() == quiet, "the daemon sent DNS queries"
    finally:
        store.close()
