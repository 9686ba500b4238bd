"""The discovery rows of `make bench`: `discover` at 100,000 routes, and what it costs the daemon.

    discover     `op25b-ctl discover -o json` as a whole process (fork to exit: start-up,
                 the cached 110,000-prefix policy, the kernel-filtered dumps, the comparison)
                 in a namespace holding 100,000 session routes (`proto 100`, /128s inside the
                 inventory's IPv6 pools, 100 more in no pool) and 20,000 `proto boot` routes
                 it must not read; goal <= 1 s. Baselines of the same rounds: `ip -6 route
                 show proto 100` (iproute2 listing the same routes) and `op25b-ctl validate`
                 (the same start-up and policy, no kernel read); beside them the same dump
                 with pyroute2 0.9's `get_routes(table=, proto=)` (userspace filtering), the
                 reason for the hand-written codec.
    daemon pass  the daemon's no-change pass (`Reconciler.run_once()`, read == "fast") over
                 the loaded 110,000-prefix table, timed with the discovery thread running
                 (watching the same 120,000 routes, after its first check) and without it,
                 in alternating blocks of one process; plus the thread's own check time.

Routes use documentation addresses only (2001:db8::/32), inside a throw-away namespace.
`python -m bench.discovery` (root) prints the rows (`--write`: also into docs/benchmarks.md,
between its markers, as `make bench` does); `python -m bench.run --only discovery` prints the
same.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import inventory as inv
from bench.netns import Namespaces
from bench.report import plain, table

CTL = str(Path(sys.executable).with_name("op25b-ctl"))
ROOT = Path(__file__).resolve().parent.parent
DISC_BEGIN = "<!-- discovery rows: written by `python -m bench.discovery --write` (make bench) -->"
DISC_END = "<!-- end of discovery rows -->"
ROUTES = 100_000
PER_PREFIX = ROUTES // inv.MAIN.v6  # session /128s in each of the inventory's /64s
HOLES = 100
NOISE = 20_000  # proto boot routes the kernel filter leaves out
DISCOVERY = """
  discovery:
    routes:
      - protocols: [100]
        interfaces: ["sess*"]
"""
HOLE_BASE = int(ipaddress.IPv6Address("2001:db8:4000::"))
NOISE_BASE = int(ipaddress.IPv6Address("2001:db8:5000::"))
GOAL_S = 1.0


def log(msg: str) -> None:
    print(f"[bench.discovery {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def route_batch() -> str:
    """`ip -6 -batch` lines: the sessions (inside the pools' IPv6 prefixes), the holes, the
    noise."""
    lines = []
    v6 = [
        p
        for pool in inv.synthetic_policy(inv.MAIN, validate=False).pools
        for p in pool.prefixes
        if ":" in p
    ]
    assert len(v6) == inv.MAIN.v6
    for prefix in v6:
        base = int(ipaddress.IPv6Network(prefix).network_address)
        lines += [
            f"route add {ipaddress.IPv6Address(base + j + 1)}/128 dev sess0 proto 100"
            for j in range(PER_PREFIX)
        ]
    lines += [
        f"route add {ipaddress.IPv6Address(HOLE_BASE + 2 * j)}/128 dev sess0 proto 100"
        for j in range(HOLES)
    ]
    lines += [
        f"route add {ipaddress.IPv6Address(NOISE_BASE + j)}/128 dev sess0" for j in range(NOISE)
    ]
    return "\n".join(lines) + "\n"


def _timed(
    argv: Sequence[str], ok: Sequence[int] = (0,), cwd: Path | None = None
) -> tuple[float, str]:
    t = time.perf_counter()
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=cwd)
    took = time.perf_counter() - t
    if cp.returncode not in ok:
        raise SystemExit(f"{' '.join(argv)} exited {cp.returncode}: {cp.stderr[-2000:]}")
    return took, cp.stdout


PYROUTE2 = """
import sys, time
t = time.perf_counter()
from pyroute2 import IPRoute
with IPRoute() as ipr:
    n = sum(1 for _ in ipr.get_routes(family=10, table=254, proto=100))
print(n, time.perf_counter() - t)
"""


def measure(work: Path, nss: Namespaces, rounds: int) -> dict[str, Any]:
    ns = nss.create()
    exec_ns = ["ip", "netns", "exec", ns]
    subprocess.run(["ip", "-n", ns, "link", "add", "sess0", "type", "ifb"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "sess0", "up"], check=True)
    batch = work / "routes.batch"
    batch.write_text(route_batch())
    t = time.perf_counter()
    subprocess.run(["ip", "-n", ns, "-6", "-batch", str(batch)], check=True)
    log(f"{ROUTES + HOLES + NOISE:,} routes loaded in {time.perf_counter() - t:.1f} s")
    policy_dir = work / "policy"
    policy_dir.mkdir()
    files = inv.policy_files(inv.synthetic_policy(inv.MAIN))
    files["gateway.yaml"] += DISCOVERY
    for name, text in files.items():
        (policy_dir / name).write_text(text)
    state = work / "state"
    common = ["--policy", str(policy_dir), "--state-dir", str(state)]
    os.environ["OP25B_DAEMON"] = "off"  # no daemon runs here; never look for one
    _timed([*exec_ns, CTL, "validate", *common])  # warms the validated-policy cache
    _, out = _timed([*exec_ns, CTL, "discover", *common, "-o", "json"], ok=(5,))
    answer = json.loads(out)
    expect_holes = len(list(_hole_nets()))
    if len(answer["uncovered"]) != expect_holes or answer["served_items"] != ROUTES + HOLES:
        raise SystemExit(
            f"discover answered {len(answer['uncovered'])} holes / {answer['served_items']} "
            f"served; expected {expect_holes} / {ROUTES + HOLES}"
        )
    times: dict[str, list[float]] = {"discover": [], "ip_route": [], "validate": []}
    for _ in range(rounds):
        times["discover"].append(
            _timed([*exec_ns, CTL, "discover", *common, "-o", "json"], (5,))[0]
        )
        times["ip_route"].append(_timed([*exec_ns, "ip", "-6", "route", "show", "proto", "100"])[0])
        times["validate"].append(_timed([*exec_ns, CTL, "validate", *common])[0])
    _, out = _timed([*exec_ns, sys.executable, "-c", PYROUTE2])
    n, pyroute2_s = out.split()
    if int(n) != ROUTES + HOLES:
        raise SystemExit(f"pyroute2 dump returned {n} routes")
    log("discover timed; now the daemon's pass with discovery on and off")
    argv = [*exec_ns, sys.executable, "-m", "bench.discovery", "--passes", str(policy_dir)]
    _, out = _timed([*argv, str(state)], cwd=ROOT)
    passes = json.loads(out)
    return {
        "times": times,
        "pyroute2_s": float(pyroute2_s),
        "passes": passes,
        "holes": expect_holes,
        "load": os.getloadavg(),
    }


def _hole_nets() -> list[ipaddress.IPv6Network]:
    """What the holes merge to: every second address, so each /128 stands alone."""
    return [ipaddress.IPv6Network(HOLE_BASE + 2 * j) for j in range(HOLES)]


def passes(policy_dir: Path, state: Path, blocks: int = 6, per_block: int = 30) -> dict[str, Any]:
    """In the namespace: load the table, then time no-change passes with discovery on/off."""
    from datetime import UTC, datetime

    from op25b_ctl.daemon.discovery import DiscoveryWatcher
    from op25b_ctl.daemon.reconcile import Reconciler
    from op25b_ctl.kernel.nft import NftKernel
    from op25b_ctl.source import rulerefs
    from op25b_ctl.source.directory import DirectorySource

    kernel = NftKernel()
    rec = Reconciler(
        kernel,
        DirectorySource(policy_dir, state),
        clock=lambda: datetime.now(UTC),
        rule_reference=rulerefs.path_in(state),
        sample_every_pass=True,  # as the daemon with its metrics on: a counter dump per pass
    )
    first = rec.run_once()
    if not first.ok:
        raise SystemExit(f"first pass failed: {first.error}")
    rec.run_once()
    samples: dict[str, list[float]] = {"off": [], "on": []}
    check_s: list[float] = []
    for b in range(blocks):
        mode = "on" if b % 2 else "off"
        watcher = None
        if mode == "on":
            watcher = DiscoveryWatcher(
                lambda: rec.view.desired.policy if rec.view.desired else None
            )
            watcher.start()
            deadline = time.monotonic() + 60
            while watcher.checks == 0 and time.monotonic() < deadline:
                time.sleep(0.05)  # the first check (a dump of 120,000 routes) must be done
            if watcher.checks == 0:
                raise SystemExit(f"discovery never checked: {watcher.view.error}")
            check_s.append(watcher.view.duration)
        for _ in range(per_block):
            t = time.perf_counter()
            result = rec.run_once()
            samples[mode].append(time.perf_counter() - t)
            if result.read != "fast" or result.changed:
                raise SystemExit(f"no-change pass was not fast: {result}")
        if watcher is not None:
            watcher.stop()
    # worst case: checks back to back in a thread (a storm keeps one running every 2 s at
    # most; this keeps one running all the time), the passes timed meanwhile
    import threading

    from op25b_ctl.kernel.discovery import read_served
    from op25b_ctl.plan.coverage import compare

    policy = rec.view.desired.policy if rec.view.desired else None
    section = policy.gateway.discovery if policy else None
    if policy is None or section is None:
        raise SystemExit("the policy has no discovery section")
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            compare(read_served(section), policy, section)

    busy = threading.Thread(target=churn)
    busy.start()
    samples["busy"] = []
    try:
        for _ in range(per_block * 2):
            t = time.perf_counter()
            result = rec.run_once()
            samples["busy"].append(time.perf_counter() - t)
            time.sleep(0.01)  # the loop's sleep between passes, where the thread runs
    finally:
        stop.set()
        busy.join()
    return {"samples": samples, "check_s": check_s}


def rows(res: dict[str, Any]) -> list[str]:
    med = {k: statistics.median(v) for k, v in res["times"].items()}
    on = statistics.median(res["passes"]["samples"]["on"])
    off = statistics.median(res["passes"]["samples"]["off"])
    busy = statistics.median(res["passes"]["samples"]["busy"])
    check = statistics.median(res["passes"]["check_s"])
    load = ", ".join(f"{x:.2f}" for x in res["load"])
    verdict = "met" if med["discover"] <= GOAL_S else "MISSED"
    return [
        "## Discovery (`python -m bench.discovery`, or `python -m bench.run --only discovery`)",
        "",
        f"{ROUTES:,} session routes (`proto 100`; {HOLES} of them in no pool) and {NOISE:,} "
        f"`proto boot` routes in one namespace; the 1,000-pool, 110,000-prefix inventory; "
        f"medians of {len(res['times']['discover'])} rounds; load average {load}.",
        "",
        *table(
            ("measurement", "value", "ratio"),
            [
                (
                    f"`op25b-ctl discover -o json`, whole process (goal <= {GOAL_S:g} s: {verdict})",
                    f"{med['discover']:.2f} s",
                    "-",
                ),
                (
                    "baseline: `ip -6 route show proto 100` (the same routes, iproute2)",
                    f"{med['ip_route']:.2f} s",
                    f"discover {med['discover'] / med['ip_route']:.2f}x",
                ),
                (
                    "baseline: `op25b-ctl validate` (same start-up and cached policy, no kernel)",
                    f"{med['validate']:.2f} s",
                    f"discover {med['discover'] / med['validate']:.2f}x",
                ),
                (
                    "pyroute2 0.9 `get_routes(table=254, proto=100)` alone (userspace filter)",
                    f"{res['pyroute2_s']:.2f} s",
                    f"{res['pyroute2_s'] / med['discover']:.1f}x the whole discover",
                ),
                (
                    "daemon no-change pass, discovery thread watching",
                    f"{on * 1e3:.2f} ms",
                    f"{on / off:.2f}x off",
                ),
                ("daemon no-change pass, no discovery", f"{off * 1e3:.2f} ms", "1.00x"),
                (
                    "daemon no-change pass while discovery checks back to back (worst case)",
                    f"{busy * 1e3:.2f} ms",
                    f"{busy / off:.2f}x off",
                ),
                (
                    f"one discovery check in the daemon ({ROUTES + HOLES:,} routes read and compared)",
                    f"{check:.2f} s",
                    "-",
                ),
            ],
        ),
    ]


def write(lines: list[str], path: Path) -> None:
    """Put the rows between DISC_BEGIN and DISC_END in the report (appended the first
    time; inside the hand-kept part, which `bench.run` keeps)."""
    text = path.read_text() if path.exists() else ""
    block = "\n".join([DISC_BEGIN, *lines, DISC_END]) + "\n"
    if DISC_BEGIN in text and DISC_END in text:
        head, rest = text.split(DISC_BEGIN, 1)
        tail = rest.split(DISC_END, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.discovery", description=__doc__.split("\n")[0]
    )
    p.add_argument("--rounds", type=int, default=5, help="whole-process rounds (default 5)")
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--write", action="store_true", help="also write the rows into --output")
    p.add_argument("--passes", nargs=2, metavar=("POLICY", "STATE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.passes:
        print(json.dumps(passes(Path(args.passes[0]), Path(args.passes[1]))))
        return 0
    if os.geteuid() != 0:
        print("bench.discovery: needs root (network namespaces, routes)", file=sys.stderr)
        return 2
    lines = run(args.rounds)
    print(plain(lines))
    if args.write:
        write(lines, args.output)
        log(f"wrote {args.output}")
    return 0


def run(rounds: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="op25b-bench-disc-") as tmp, Namespaces() as nss:
        res = measure(Path(tmp), nss, rounds)
    return rows(res)


if __name__ == "__main__":
    sys.exit(main())
