"""`make demo`: the main job on a built-in default, in a lab gateway made of namespaces.

Builds sub/gw/out namespaces, applies the example NMTnet policy to the lab gateway with the
real CLI, then shows with real TCP and SMTP that direct port 25 from an enforced FLET'S pool
is blocked while the relay and submission (587) work, and prints the per-pool counters, the
offenders the kernel recorded, and a hole `discover` finds (a session address in no pool).
Everything it made is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from op25b_lab.lab import (
    DYN_A,
    DYN_B,
    FOREIGN_MX,
    RELAY,
    STATIC,
    Endpoint,
    Lab,
    Outcome,
    swaks_outcome,
)

REPO = Path(__file__).resolve().parent.parent
POLICY = REPO / "policies" / "nmtnet"
CTL = str(Path(sys.executable).parent / "op25b-ctl")
# two PPPoE sessions for `discover`: in flets-east-dyn-1, and in no pool (a hole)
SESSIONS = ("192.0.2.20", "192.0.2.220")
GW_PPP = "192.0.2.253"  # the gateway's side of each session


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _probe(lab: Lab, src: Endpoint, dst: Endpoint, port: int) -> str:
    rows = []
    for family, (s, d) in (("v4", (src.v4, dst.v4)), ("v6", (src.v6, dst.v6))):
        r = lab.connect(s, d, port, timeout=1.0)
        rows.append(f"{family} {r.outcome.value}")
    return ", ".join(rows)


def run(policy: Path) -> int:
    with Lab.create() as lab:
        print(f"lab namespaces: {', '.join(lab.namespaces)}")
        lab.serve_smtp(25, also=(587,))

        # the lab's own state directory (overrides, audit log), never the host's
        state = ["--state-dir", str(lab.workdir / "state")]
        _say(f"op25b-ctl apply --policy {policy}   (in {lab.ns_gw})")
        cp = lab.run(lab.ns_gw, [CTL, "apply", "--policy", str(policy), *state], check=False)
        print(cp.stdout.rstrip() or cp.stderr.rstrip())
        if cp.returncode != 0:
            print(cp.stderr, file=sys.stderr)
            return cp.returncode

        _say("TCP connects from subscribers through the gateway")
        cases = [
            (DYN_A, FOREIGN_MX, 25, "enforced FLET'S pool -> foreign MX :25 (blocked)"),
            (DYN_A, RELAY, 25, "enforced FLET'S pool -> NMTnet relay :25 (allowed)"),
            (DYN_A, FOREIGN_MX, 587, "enforced FLET'S pool -> foreign MX :587 (allowed)"),
            (DYN_B, FOREIGN_MX, 25, "monitor pool -> foreign MX :25 (counted, allowed)"),
            (STATIC, FOREIGN_MX, 25, "static-IP pool -> foreign MX :25 (never blocked)"),
        ]
        for src, dst, port, label in cases:
            print(f"  {label:<52} {_probe(lab, src, dst, port)}")

        _say("real SMTP with swaks from an enforced pool")
        for port in (25, 587):
            cp = lab.swaks(DYN_A.v4, FOREIGN_MX.v4, port, subject=f"demo via {port}")
            outcome = swaks_outcome(cp)
            shown = outcome.value if isinstance(outcome, Outcome) else outcome
            print(f"  swaks {DYN_A.v4} -> {FOREIGN_MX.v4}:{port:<4} {shown}")

        _say(f"op25b-ctl status --policy {policy}")
        cp = lab.run(lab.ns_gw, [CTL, "status", "--policy", str(policy), *state], check=False)
        print(cp.stdout.rstrip() or cp.stderr.rstrip())

        _say("op25b-ctl offenders   (who tried TCP/25, from the kernel's offender sets)")
        cp = lab.run(lab.ns_gw, [CTL, "offenders", "--policy", str(policy), *state], check=False)
        print(cp.stdout.rstrip() or cp.stderr.rstrip())

        # PPPoE sessions stand in as an ifb interface with peer addresses (no PPP here), none
        # of them a lab source: one subscriber in a pool, one in no pool (a hole)
        lab.run(lab.ns_gw, ["ip", "link", "add", "ppp0", "type", "ifb"])
        lab.run(lab.ns_gw, ["ip", "link", "set", "ppp0", "up"])
        for peer in SESSIONS:
            lab.run(lab.ns_gw, ["ip", "addr", "add", GW_PPP, "peer", f"{peer}/32", "dev", "ppp0"])
        _say(f"op25b-ctl discover   (PPPoE session peers on ppp0: {', '.join(SESSIONS)})")
        cp = lab.run(lab.ns_gw, [CTL, "discover", "--policy", str(policy), *state], check=False)
        print(cp.stdout.rstrip())
        print(f"  exit status {cp.returncode} (5: a hole)")

        _say(f"nft list table inet op25b   (in {lab.ns_gw})")
        print(lab.run(lab.ns_gw, ["nft", "list", "table", "inet", "op25b"]).stdout.rstrip())

        _say("op25b-ctl rollout status   (the staged introduction from the notice)")
        cp = lab.run(lab.ns_gw, [CTL, "rollout", "status", "--policy", str(policy), *state])
        print(cp.stdout.rstrip())

        _say(f"op25b-ctl pool rollback {DYN_A.pool} --reason ... --until 2h   (one pool, at once)")
        argv = [
            "pool",
            "rollback",
            str(DYN_A.pool),
            "--reason",
            "demo: relay outage",
            "--until",
            "2h",
        ]
        cp = lab.run(lab.ns_gw, [CTL, *argv, "--policy", str(policy), *state], check=False)
        print(cp.stdout.rstrip() or cp.stderr.rstrip())
        print(
            f"  {'enforced pool rolled back -> foreign MX :25':<52} {_probe(lab, DYN_A, FOREIGN_MX, 25)}"
        )
        cp = lab.run(lab.ns_gw, [CTL, "explain", DYN_A.v4, "--policy", str(policy), *state])
        print(cp.stdout.rstrip())
        cp = lab.run(lab.ns_gw, [CTL, "audit", "--policy", str(policy), *state])
        print(cp.stdout.rstrip())
    print("\nlab removed; the host's own namespace and ruleset were never touched.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m op25b_lab.demo", description=__doc__)
    parser.add_argument("--policy", type=Path, default=POLICY, help="policy directory")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: needs root (it creates network namespaces); try: sudo make demo")
        return 2
    return run(args.policy)


if __name__ == "__main__":
    sys.exit(main())
