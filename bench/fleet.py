"""The fleet rows of `make bench`: how fast a rollback written to etcd is enforced.

    gateways   three real daemons in three lab gateways (namespaces, nftables, real TCP):
               from the start of `op25b-ctl pool rollback --store` on the host to the first
               TCP/25 connection through on the last of the three gateways
    fan-out    N watching gateway agents in this one process, each the real FleetSource
               (its own etcd client, watch and lease) driving a real Reconciler over the
               in-memory kernel, with the real status report; from the override's commit to
               each agent's pass that applied it: p50 / p99 / max over agents x rounds

Writes its own block into docs/benchmarks.md (between FLEET_BEGIN and FLEET_END, inside the
hand-kept part that `bench.run` keeps), so `python -m bench.fleet` can run alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
FLEET_BEGIN = "<!-- fleet rows: written by `python -m bench.fleet` (make bench) -->"
FLEET_END = "<!-- end of fleet rows -->"
POOL = "flets-east-dyn-1"


def log(msg: str) -> None:
    print(f"[bench.fleet {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ---------------------------------------------------------------------------- fan-out


@dataclass
class Agent:
    """One lightweight gateway: FleetSource + Reconciler (memory kernel) + status report."""

    name: str
    source: Any
    reconciler: Any
    reporter: Any
    applied: dict[int, float]  # store revision -> monotonic time its pass completed
    thread: threading.Thread | None = None


def fan_out(n_agents: int, rounds: int) -> dict[str, Any]:
    from op25b_ctl.daemon.fleet import FleetReporter
    from op25b_ctl.daemon.reconcile import Reconciler
    from op25b_ctl.kernel.memory import MemoryKernel
    from op25b_ctl.policy.loader import read_policy_files
    from op25b_ctl.source.etcd import EtcdStore, Scope, parse_store_url
    from op25b_ctl.source.fleet import FleetSource
    from op25b_lab.etcd import EtcdServer
    from tests.daemonpolicy import daemon_policy

    work = Path(tempfile.mkdtemp(prefix="op25b-bench-fleet-"))
    policy = daemon_policy(work / "policy")
    names = [f"bras-{i:03d}" for i in range(n_agents)]
    gateways = [
        {"name": n, "group": "east" if i % 2 else "west", "pools": [POOL]}
        for i, n in enumerate(names)
    ]
    (policy / "gateways.yaml").write_text(yaml.safe_dump({"gateways": gateways}))
    stop = threading.Event()
    agents: list[Agent] = []
    with EtcdServer(prefix="/bench") as etcd:
        config = parse_store_url(etcd.store_url)
        admin = EtcdStore(config)
        admin.publish(read_policy_files(policy), {}, base=None, meta={}, now=datetime.now(UTC))
        for name in names:
            source = FleetSource(EtcdStore(config), name, work / "state" / name)
            source.start()
            reconciler = Reconciler(MemoryKernel(), source, verify_interval=None)
            agents.append(Agent(name, source, reconciler, FleetReporter(reconciler, source), {}))

        def loop(agent: Agent) -> None:
            while not stop.is_set():
                since = agent.source.revision()
                result = agent.reconciler.run_once()
                agent.reporter.after_pass(result)
                rev = agent.reconciler.revision
                if result.ok and isinstance(rev, int) and rev not in agent.applied:
                    agent.applied[rev] = time.monotonic()
                agent.source.wait(since, 5.0)

        for agent in agents:
            agent.thread = threading.Thread(target=loop, args=(agent,), daemon=True)
            agent.thread.start()
        deadline = time.monotonic() + 120
        while len(admin.statuses()) < n_agents and time.monotonic() < deadline:
            time.sleep(0.1)  # poll: every agent reported once
        latencies: list[float] = []
        for r in range(rounds):
            record = {
                "pool": POOL,
                "action": "rollback" if r % 2 == 0 else "enforce",
                "reason": "bench",
                "user": "bench",
                "set_at": datetime.now(UTC).isoformat(),
            }
            t0 = time.monotonic()
            rev = admin.set_override(POOL, Scope(), record, None)
            t_commit = time.monotonic()
            end = t_commit + 60
            while time.monotonic() < end and not all(
                any(k >= rev for k in a.applied) for a in agents
            ):
                time.sleep(0.01)  # poll the agents' own records
            for a in agents:
                done = [t for k, t in a.applied.items() if k >= rev]
                if done:
                    latencies.append(min(done) - t0)
            log(f"round {r + 1}/{rounds}: {len(latencies)} samples so far")
        stop.set()
        for a in agents:
            a.source.stop()
        missing = rounds * n_agents - len(latencies)
    return {
        "agents": n_agents,
        "rounds": rounds,
        "samples": len(latencies),
        "missing": missing,
        "p50": quantile(latencies, 0.5),
        "p99": quantile(latencies, 0.99),
        "max": max(latencies),
    }


# ---------------------------------------------------------------------------- real gateways


def real_gateways(rounds: int) -> dict[str, Any]:
    from op25b_lab.fleet import FleetLab
    from op25b_lab.lab import DYN_A, FOREIGN_MX
    from tests.fleetpolicy import GATEWAYS, fleet_policy

    names = list(GATEWAYS)
    work = Path(tempfile.mkdtemp(prefix="op25b-bench-fleet-gw-"))
    samples: list[float] = []
    with FleetLab(names) as fleet:
        for lab in fleet.labs.values():
            lab.serve_tcp([25])
        fleet.publish(fleet_policy(work / "policy"))
        for name in names:
            fleet.start(name)
        fleet.wait_applied(names, policy_revision=1)
        for r in range(rounds):
            probers = {n: fleet.first_through(n, DYN_A.v4, FOREIGN_MX.v4) for n in names}
            start = time.monotonic()
            fleet.ctl("pool", "rollback", POOL, "--reason", f"bench {r}")
            last = max(fleet.through_at(n, p) for n, p in probers.items()) - start
            samples.append(last)
            log(f"gateways round {r + 1}/{rounds}: last gateway through after {last:.3f} s")
            fleet.ctl("pool", "clear", POOL, "--reason", "bench", "--wait", "10")
    startup = []
    for _ in range(3):
        t = time.monotonic()
        fleet_ctl_version()
        startup.append(time.monotonic() - t)
    return {
        "gateways": len(names),
        "rounds": rounds,
        "samples": samples,
        "startup": statistics.median(startup),
    }


def fleet_ctl_version() -> None:
    """`op25b-ctl --version`: the command's start-up alone (interpreter and imports)."""
    import subprocess

    from op25b_lab.fleet import CTL

    subprocess.run([CTL, "--version"], check=True, capture_output=True, timeout=60)


# ---------------------------------------------------------------------------- report


def render(fan: dict[str, Any], gw: dict[str, Any] | None, when: str, load: str) -> list[str]:
    out = [
        FLEET_BEGIN,
        "",
        "## Fleet: a rollback through etcd",
        "",
        f"Measured {when}, load average {load} on {os.cpu_count()} CPUs, etcd 3.4 on loopback.",
        "",
        "| what | figure | target |",
        "| --- | --- | --- |",
    ]
    if gw is not None:
        s = gw["samples"]
        out.append(
            f"| `pool rollback --store` start -> first TCP/25 through on the last of "
            f"{gw['gateways']} real gateways (daemons, nftables, namespaces); median of "
            f"{len(s)} (min {min(s):.2f} s, max {max(s):.2f} s) "
            f"| {statistics.median(s):.2f} s | < 1 s |"
        )
        out.append(
            f"| of which the command's own start-up (`op25b-ctl --version`, median of 3) "
            f"| {gw['startup']:.2f} s | - |"
        )
    out.append(
        f"| one override fanned out to {fan['agents']} watching agents in one process "
        f"(FleetSource + Reconciler on the in-memory kernel), commit -> applied, "
        f"{fan['samples']} samples over {fan['rounds']} rounds ({fan['missing']} missing) "
        f"| p50 {fan['p50'] * 1000:.0f} ms, p99 {fan['p99'] * 1000:.0f} ms, "
        f"max {fan['max'] * 1000:.0f} ms | - |"
    )
    out += [
        "",
        "The first figure is what an engineer sees: the command's start-up, one etcd",
        "transaction, the watch event, each gateway's pass rewriting one chain, and a real",
        "handshake. The last row isolates the store's fan-out: one watch event to every agent,",
        "each recomputing its desired state, saving its snapshot and reporting its status.",
        "",
        FLEET_END,
    ]
    return out


def write(lines: list[str], path: Path) -> None:
    text = path.read_text() if path.exists() else ""
    block = "\n".join(lines) + "\n"
    if FLEET_BEGIN in text and FLEET_END in text:
        head, rest = text.split(FLEET_BEGIN, 1)
        tail = rest.split(FLEET_END, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n")[0])
    p.add_argument("--agents", type=int, default=100, help="watching agents (default 100)")
    p.add_argument("--rounds", type=int, default=5, help="rollbacks measured (default 5)")
    p.add_argument("--no-gateways", action="store_true", help="skip the real-gateway row")
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    if not args.no_gateways and os.geteuid() != 0:
        print("bench.fleet: the gateway row needs root (or --no-gateways)", file=sys.stderr)
        return 2
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    gw = None if args.no_gateways else real_gateways(args.rounds)
    fan = fan_out(args.agents, args.rounds)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = render(fan, gw, when, load)
    print("\n".join(lines))
    if not args.no_write:
        write(lines, args.output)
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
