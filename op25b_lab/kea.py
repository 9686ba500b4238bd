"""A real DHCP server and client in the lab: Debian's `kea-dhcp4` in `gw`, `dhclient` in `sub`.

What `offenders --leases` reads in production is a Kea memfile lease file; this makes one the
honest way. `KeaServer` runs `kea-dhcp4` in the lab's gateway namespace on the subscriber
link (`sub0`, 192.0.2.254/24), serving a small documentation-address pool inside pool
flets-east-dyn-1, with its memfile, pid and lock files in a temp dir (never /var/lib/kea).
`DhcpClient` runs ISC `dhclient` in `sub` on `eth0` with its own lease, pid and config files
and its own client script, which only adds or removes the leased address as a /32 (Debian's
dhclient-script would rewrite the host's /etc/resolv.conf and set routes). Both are started
through `Lab.start`, so the lab kills them by pid on teardown; readiness is the server's own
start message and the address on the interface, polled with a deadline.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from op25b_lab.lab import GW_SUB, IF_GW_SUB, IF_SUB, LabError, wait_for

if TYPE_CHECKING:
    from op25b_lab.lab import Lab

KEA_PATHS = ("/usr/sbin/kea-dhcp4",)
DHCLIENT_PATHS = ("/usr/sbin/dhclient", "/sbin/dhclient")
# Inside flets-east-dyn-1 (192.0.2.0/26), clear of the lab's fixed sources (192.0.2.10) and
# of the example policy's exemption (192.0.2.48/30).
POOL_FIRST, POOL_LAST = "192.0.2.40", "192.0.2.44"
SUBNET = "192.0.2.0/24"  # the gateway's subscriber link
VALID_LIFETIME = 3600
HOSTNAME = "sub-lab-pc"  # the client sends it (option 12); Kea writes it into the lease

# The client's script: the leased address as a /32 on the interface, nothing else (routes
# exist already in `sub`; DNS is not the lab's business). dhclient passes everything in the
# environment; the script never builds a command line from it beyond quoted arguments.
CLIENT_SCRIPT = """#!/bin/sh
# op25b lab: add or remove the leased address only; never touch /etc/resolv.conf.
case "$reason" in
  PREINIT) ip link set dev "$interface" up ;;
  BOUND|RENEW|REBIND|REBOOT)
    if [ -n "$old_ip_address" ] && [ "$old_ip_address" != "$new_ip_address" ]; then
      ip addr del "$old_ip_address/32" dev "$interface" 2>/dev/null
    fi
    ip addr replace "$new_ip_address/32" dev "$interface" ;;
  EXPIRE|FAIL|RELEASE|STOP)
    [ -n "$old_ip_address" ] && ip addr del "$old_ip_address/32" dev "$interface" 2>/dev/null ;;
esac
exit 0
"""


def _binary(paths: tuple[str, ...], name: str) -> str | None:
    found = shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    return found or next((p for p in paths if Path(p).exists()), None)


def kea_binary() -> str | None:
    return _binary(KEA_PATHS, "kea-dhcp4")


def dhclient_binary() -> str | None:
    return _binary(DHCLIENT_PATHS, "dhclient")


def kea_config(workdir: Path, interface: str = IF_GW_SUB) -> dict[str, object]:
    """kea-dhcp4's configuration: one subnet on `interface`, a memfile in `workdir`."""
    return {
        "Dhcp4": {
            "interfaces-config": {"interfaces": [interface]},
            "lease-database": {
                "type": "memfile",
                "persist": True,
                "name": str(workdir / "kea-leases4.csv"),
                "lfc-interval": 0,  # no kea-lfc child process to track
            },
            "valid-lifetime": VALID_LIFETIME,
            "renew-timer": VALID_LIFETIME // 2,
            "rebind-timer": VALID_LIFETIME * 7 // 8,
            "subnet4": [
                {
                    "id": 1,
                    "subnet": SUBNET,
                    "pools": [{"pool": f"{POOL_FIRST} - {POOL_LAST}"}],
                    "option-data": [{"name": "routers", "data": GW_SUB.v4}],
                }
            ],
            "loggers": [
                {
                    "name": "kea-dhcp4",
                    "output_options": [{"output": "stdout"}],
                    "severity": "INFO",
                }
            ],
        }
    }


@dataclass
class KeaServer:
    """kea-dhcp4 running in the lab's gateway namespace."""

    lab: Lab
    workdir: Path
    proc: subprocess.Popen[str]

    @property
    def lease_file(self) -> Path:
        return self.workdir / "kea-leases4.csv"

    @classmethod
    def start(cls, lab: Lab, deadline: float = 20.0) -> KeaServer:
        """Start the server and return once it logged that it serves (DHCP4_STARTED)."""
        binary = kea_binary()
        if binary is None:
            raise LabError("kea-dhcp4 not installed (package kea-dhcp4-server; scripts/bootstrap)")
        workdir = lab.workdir / "kea"
        workdir.mkdir(mode=0o700)
        config = workdir / "kea-dhcp4.json"
        config.write_text(json.dumps(kea_config(workdir), indent=2))
        # `env` sets Kea's pid and lock file directories for this process only.
        argv = [
            "env",
            f"KEA_PIDFILE_DIR={workdir}",
            f"KEA_LOCKFILE_DIR={workdir}",
            binary,
            "-c",
            str(config),
        ]
        proc = lab.start(lab.ns_gw, argv)
        server = cls(lab, workdir, proc)
        try:
            wait_for("kea-dhcp4 to start serving", server._started, deadline)
        except BaseException:
            lab.stop(proc)
            raise
        return server

    def _started(self) -> bool:
        if self.proc.poll() is not None:
            raise LabError(
                f"kea-dhcp4 exited with {self.proc.returncode}:\n{self.lab.output(self.proc)}"
            )
        return "DHCP4_STARTED" in self.lab.output(self.proc)

    def stop(self) -> None:
        self.lab.stop(self.proc)


@dataclass
class DhcpClient:
    """ISC dhclient in the lab's subscriber namespace, with files of its own."""

    lab: Lab
    workdir: Path
    proc: subprocess.Popen[str]
    interface: str = IF_SUB

    @classmethod
    def start(cls, lab: Lab, interface: str = IF_SUB) -> DhcpClient:
        """A new client with fresh files (config, script, lease database) in the lab."""
        workdir = lab.workdir / "dhclient"
        workdir.mkdir(mode=0o700)
        script = workdir / "client-script"
        script.write_text(CLIENT_SCRIPT)
        script.chmod(0o700)
        conf = workdir / "dhclient.conf"
        conf.write_text(  # no DNS options asked for; a hostname the lease file records
            f'request subnet-mask, routers;\nsend host-name "{HOSTNAME}";\n'
        )
        return cls._launch(lab, workdir, interface)

    @classmethod
    def restart(cls, old: DhcpClient) -> DhcpClient:
        """The same client again (its lease database kept): it asks for its old address."""
        old.stop()
        return cls._launch(old.lab, old.workdir, old.interface)

    @classmethod
    def _launch(cls, lab: Lab, workdir: Path, interface: str) -> DhcpClient:
        binary = dhclient_binary()
        if binary is None:
            raise LabError("dhclient not installed (package isc-dhcp-client; scripts/bootstrap)")
        argv = [
            binary,
            "-4",
            "-d",  # stay in the foreground: the lab tracks and kills it by pid
            "-v",
            "-cf", str(workdir / "dhclient.conf"),
            "-lf", str(workdir / "dhclient.leases"),
            "-pf", str(workdir / "dhclient.pid"),
            "-sf", str(workdir / "client-script"),
            interface,
        ]  # fmt: skip
        return cls(lab, workdir, lab.start(lab.ns_sub, argv), interface)

    def hwaddr(self) -> str:
        """The interface's MAC address, as the kernel reports it (lowercase, colons)."""
        cp = self.lab.run(self.lab.ns_sub, ["ip", "-j", "link", "show", "dev", self.interface])
        return str(json.loads(cp.stdout)[0]["address"]).lower()

    def leased_address(self, deadline: float = 30.0) -> str:
        """The address the server handed out, once the client script put it on the link."""

        def bound() -> str | None:
            if self.proc.poll() is not None:
                raise LabError(
                    f"dhclient exited with {self.proc.returncode}:\n{self.lab.output(self.proc)}"
                )
            for line in self.lab.output(self.proc).splitlines():
                if line.startswith("bound to "):
                    address = line.split()[2]
                    if self._on_link(address):
                        return address
            return None

        return wait_for("dhclient to bind a lease", bound, deadline)

    def _on_link(self, address: str) -> bool:
        cp = self.lab.run(
            self.lab.ns_sub, ["ip", "-j", "-4", "addr", "show", "dev", self.interface]
        )
        return any(
            info.get("local") == address
            for link in json.loads(cp.stdout)
            for info in link.get("addr_info", [])
        )

    def stop(self) -> None:
        self.lab.stop(self.proc)


def wait_for_lease_row(path: Path, address: str, deadline: float = 10.0) -> None:
    """Until the server's lease file holds a row for `address` (it writes before it ACKs,
    so this is at once true once the client is bound; the poll only guards a slow disk)."""
    end = time.monotonic() + deadline
    while True:
        if path.exists() and any(
            line.split(",", 1)[0] == address for line in path.read_text().splitlines()
        ):
            return
        if time.monotonic() >= end:
            raise AssertionError(f"no lease row for {address} in {path} after {deadline}s")
        time.sleep(0.02)  # poll interval for a real condition
