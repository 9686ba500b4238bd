"""A real DHCP lease, read back: Debian's kea-dhcp4 hands an address to a real dhclient in
the lab, and `load_leases` finds that client's hwaddr for that address in Kea's own file."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from op25b_ctl.source.leases import load_leases
from op25b_lab.kea import (
    HOSTNAME,
    POOL_FIRST,
    POOL_LAST,
    VALID_LIFETIME,
    DhcpClient,
    KeaServer,
    wait_for_lease_row,
)
from op25b_lab.lab import FOREIGN_MX, Lab, Outcome
from tests.e2e.ctl import ctl, ctl_json
from tests.e2e.test_daemon import CTL, Gateway
from tests.policytools import example_policy

ENFORCED = "flets-east-dyn-1"  # the example policy today; the DHCP pool lies inside it


def _in_pool(address: str) -> bool:
    last = int(address.rsplit(".", 1)[1])
    return int(POOL_FIRST.rsplit(".", 1)[1]) <= last <= int(POOL_LAST.rsplit(".", 1)[1])


def test_kea_lease_names_the_clients_hwaddr(lab: Lab, kea: KeaServer) -> None:
    client = DhcpClient.start(lab)
    address = client.leased_address()
    assert _in_pool(address)
    wait_for_lease_row(kea.lease_file, address)
    now = datetime.now(UTC)

    leases = load_leases(kea.lease_file)
    lease = leases.lookup(address, now)
    assert lease is not None, kea.lease_file.read_text()
    assert lease.hwaddr == client.hwaddr()  # read from the interface, not from Kea
    assert lease.hostname == HOSTNAME
    assert lease.start <= now <= lease.end
    assert lease.end - lease.start == timedelta(seconds=VALID_LIFETIME)
    # outside its lifetime, or another address of the pool: nobody
    assert leases.lookup(address, lease.end + timedelta(seconds=1)) is None
    other = next(f"192.0.2.{n}" for n in range(40, 45) if f"192.0.2.{n}" != address)
    assert leases.lookup(other, now) is None


def test_a_renewal_by_the_same_client_is_one_holding(lab: Lab, kea: KeaServer) -> None:
    """dhclient restarted with its own lease file asks for the same address (INIT-REBOOT):
    Kea appends a second row, and the two rows are one holding of one client."""
    first = DhcpClient.start(lab)
    address = first.leased_address()
    hwaddr = first.hwaddr()
    first.stop()  # SIGTERM: dhclient exits without releasing
    second = DhcpClient.restart(first)
    assert second.leased_address() == address

    rows = [r for r in kea.lease_file.read_text().splitlines() if r.startswith(f"{address},")]
    assert len(rows) == 2
    leases = load_leases(kea.lease_file)
    held = [lease for lease in leases.holdings() if lease.address == address]
    assert len(held) == 1 and held[0].hwaddr == hwaddr and held[0].line == 3


def test_the_offenders_report_names_the_dhcp_clients_hwaddr(
    lab: Lab, kea: KeaServer, tmp_path: Path
) -> None:
    """The DHCP client makes TCP/25 attempts from its leased address through the enforcing
    gateway; `offenders --leases` names its hwaddr (from the interface) for that address."""
    client = DhcpClient.start(lab)
    address = client.leased_address()
    wait_for_lease_row(kea.lease_file, address)
    pol = example_policy(tmp_path / "policy")  # action reject: one SYN per attempt
    assert ctl(lab, "apply", "--policy", str(pol)).returncode == 0
    tries = lab.connect_many(lab.ns_sub, [(address, FOREIGN_MX.v4, 25)] * 3, timeout=2.0)
    assert {r.outcome for r in tries} == {Outcome.REFUSED}  # enforced: every attempt refused

    data = ctl_json(lab, "offenders", "--policy", str(pol), "--leases", str(kea.lease_file))
    row = next(r for r in data["offenders"] if r["source"] == address)
    assert (row["pool"], row["mode"], row["attempts"]) == (ENFORCED, "enforce", 3)
    assert row["lease"]["hwaddr"] == client.hwaddr()
    assert row["lease"]["hostname"] == HOSTNAME
    text = ctl(lab, "offenders", "--policy", str(pol), "--leases", str(kea.lease_file))
    assert text.returncode == 0
    line = next(ln for ln in text.stdout.splitlines() if ln.startswith(address + " "))
    assert f"{client.hwaddr()} {HOSTNAME}" in line

    # the same through the running daemon's command socket (its fork reads the file), and a
    # missing file there: the command's own exit 1 and message, the list still printed
    gw = Gateway(lab, tmp_path / "daemon")
    gw.policy = pol
    gw.start()
    via = ["env", "OP25B_DAEMON=require", CTL, "offenders", "--policy", str(pol)]
    via += ["--state-dir", str(gw.state), "--leases", str(kea.lease_file)]
    cp = lab.run(lab.ns_gw, [*via, "-o", "json"], check=False)
    assert cp.returncode == 0, cp.stderr
    row = next(r for r in json.loads(cp.stdout)["offenders"] if r["source"] == address)
    assert row["lease"]["hwaddr"] == client.hwaddr()
    cp = lab.run(lab.ns_gw, [*via, "--leases", str(tmp_path / "absent.csv")], check=False)
    assert cp.returncode == 1 and "absent.csv: no such lease file" in cp.stderr
    assert address in cp.stdout
    gw.stop()
