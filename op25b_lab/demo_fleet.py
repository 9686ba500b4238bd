"""`make demo-fleet`: two lab gateways follow one policy in a real etcd; a fleet rollback.

Starts Debian's etcd on the host's loopback (temporary data directory, free ports), builds
two lab gateways (sub/gw/out namespaces each), publishes the example NMTnet policy with a
gateways.yaml naming them, runs `op25b-ctl daemon --store ... --gateway NAME` in each, shows
TCP/25 blocked on both, then one `pool rollback --store` from outside the gateways lets it
through on both. Everything it made is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from op25b_lab.fleet import FleetLab
from op25b_lab.lab import DYN_A, FOREIGN_MX, RELAY, Lab

REPO = Path(__file__).resolve().parent.parent
POLICY = REPO / "policies" / "nmtnet"
POOL = "flets-east-dyn-1"
GATEWAYS = """\
# The fleet: which gateway terminates which pools (the demo's two lab gateways).
gateways:
  - name: bras-tokyo-1
    group: east
    tags: [flets-east]
  - name: bras-osaka-1
    group: west
    pools: [flets-east-dyn-1]   # a pool served from both regions
    tags: [flets-west]
"""


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _show(text: str) -> None:
    print("\n".join(f"  {line}" for line in text.rstrip().splitlines()), flush=True)


def _port25(lab: Lab) -> str:
    direct = lab.connect(DYN_A.v4, FOREIGN_MX.v4, 25, timeout=1.0).outcome.value
    relay = lab.connect(DYN_A.v4, RELAY.v4, 25, timeout=1.0).outcome.value
    return f"{DYN_A.v4} -> foreign MX :25 {direct:<9}  -> relay :25 {relay}"


def run() -> int:
    policy = Path(tempfile.mkdtemp(prefix="op25b-demo-fleet-policy-"))
    names = ["bras-tokyo-1", "bras-osaka-1"]
    try:
        for f in POLICY.glob("*.yaml"):
            shutil.copy(f, policy / f.name)
        (policy / "gateways.yaml").write_text(GATEWAYS)
        with FleetLab(names) as fleet:
            print(
                f"etcd {fleet.etcd.client_url} (pid {fleet.etcd.proc.pid if fleet.etcd.proc else '?'})"
            )
            for name, lab in fleet.labs.items():
                print(f"gateway {name}: namespaces {', '.join(lab.namespaces)}")
                lab.serve_tcp([25, 587])

            _say(f"op25b-ctl publish --policy {POLICY}+gateways.yaml --store {fleet.store_url}")
            _show(fleet.ctl("publish", "--policy", str(policy), "--reason", "demo").stdout)

            _say("op25b-ctl daemon --store ... --gateway NAME   (in each gateway's namespace)")
            for name in names:
                fleet.start(name)
            fleet.wait_applied(names, policy_revision=1)
            for name in names:
                _show(f"{name}: {_port25(fleet.labs[name])}")

            _say("op25b-ctl fleet status")
            _show(fleet.ctl("fleet", "status", check=False).stdout)  # exit 4: not all ok

            _say(
                f"op25b-ctl pool rollback {POOL} --reason ... --until 2h --wait 5   (from the host)"
            )
            start = time.monotonic()
            cp = fleet.ctl(
                "pool", "rollback", POOL, "--reason", "demo: relay outage", "--until", "2h",
                "--wait", "5",
            )  # fmt: skip
            _show(cp.stdout)
            print(f"  (command done in {time.monotonic() - start:.2f} s)")
            for name in names:
                _show(f"{name}: {_port25(fleet.labs[name])}")

            _say("op25b-ctl audit --store ...")
            _show(fleet.ctl("audit").stdout)

            _say(f"op25b-ctl pool clear {POOL} --reason ... --wait 5")
            _show(
                fleet.ctl(
                    "pool", "clear", POOL, "--reason", "demo: relay fixed", "--wait", "5"
                ).stdout
            )
            for name in names:
                _show(f"{name}: {_port25(fleet.labs[name])}")
    finally:
        shutil.rmtree(policy, ignore_errors=True)
    print(
        "\netcd, both lab gateways and their daemons removed; the host's namespace and ruleset were never touched."
    )
    return 0


def main() -> int:
    if os.geteuid() != 0:
        print("demo-fleet: needs root (it creates network namespaces); try: sudo make demo-fleet")
        return 2
    return run()


if __name__ == "__main__":
    sys.exit(main())
