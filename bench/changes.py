"""Policy changes that touch set elements at ISP scale, against a cold full apply (issue 10).

`python -m bench.changes` (root) loads the synthetic inventory (bench/inventory.py: 1,000
pools, 100,000 IPv4 + 10,000 IPv6 prefixes) into a throw-away namespace, then times, each
as a ratio to the cold full apply of the same run:

    remove 100 / 300 / 10,000 prefixes, add 100 prefixes, remove a whole pool,
    shrink the table to 3 pools, one pool's mode change (a chain rewrite, for scale)

each through `applier.apply_to` exactly as the CLI and the daemon commit (diff, one batch),
and checks after each that the kernel holds exactly the desired elements (netlink dump).
`--old-path N` also times removing N prefixes the way it was done before the rebuild
(`delete element` through libnftables), for the record; it takes tens of seconds.
Prints one JSON object; docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.inventory import MAIN, desired, pool_name, synthetic_policy, with_mode
from bench.netns import Namespaces
from op25b_ctl.plan.table import Table
from op25b_ctl.plan.transaction import DeleteElements, FlushSet, Transaction
from op25b_ctl.policy.model import Policy


def _drop(policy: Policy, n: int, *, skip: int = 0) -> Policy:
    """`policy` with the first n IPv4 prefixes of pools from the middle on removed, 1 a pool
    round-robin (so no pool empties)."""
    pools = list(policy.pools)
    i = 0
    left = n
    while left:
        k = (500 + skip + i) % len(pools)
        p = pools[k]
        v4 = [x for x in p.prefixes if ":" not in x]
        if len(v4) > 1:
            gone = v4[1]
            pools[k] = p.model_copy(update={"prefixes": [x for x in p.prefixes if x != gone]})
            left -= 1
        i += 1
    return Policy(policy.gateway, tuple(pools), policy.relays)


def _add(policy: Policy, n: int) -> Policy:
    """`policy` with n new /30s (beyond the inventory's range) in pool 7."""
    extra = [f"11.0.{i // 64}.{(i % 64) * 4}/30" for i in range(n)]
    pools = tuple(
        p.model_copy(update={"prefixes": [*p.prefixes, *extra]}) if p.name == pool_name(7) else p
        for p in policy.pools
    )
    return Policy(policy.gateway, pools, policy.relays)


def worker(old_path: int) -> dict[str, Any]:
    """Runs inside the namespace."""
    from op25b_ctl.kernel.nft import NftKernel
    from op25b_ctl.ops import applier

    kernel = NftKernel()
    policy = synthetic_policy(MAIN)
    base = desired(policy)
    out: dict[str, Any] = {"elements": sum(len(s.elements) for s in base.sets.values())}

    def commit(live: Table | None, want: Table) -> tuple[float, Transaction]:
        t = time.perf_counter()
        tx = applier.apply_to(kernel, live, want)
        seconds = time.perf_counter() - t
        live = kernel.read(want.family, want.name)  # every element, over netlink
        for name, s in want.sets.items():  # the kernel holds exactly what was asked for
            if live is None or name not in live.sets or live.sets[name].elements != s.elements:
                raise SystemExit(f"set {name} differs from the desired one after the commit")
        return seconds, tx

    out["cold_apply_s"], _ = commit(None, base)
    cases = {
        "remove 100 prefixes": desired(_drop(policy, 100)),
        "remove 300 prefixes": desired(_drop(policy, 300, skip=100)),
        "remove 10,000 prefixes": desired(_drop(policy, 10_000, skip=200)),
        "add 100 prefixes": desired(_add(policy, 100)),
        "remove one pool (100 v4 + 10 v6 prefixes, its chain, 2 counters)": desired(
            Policy(policy.gateway, policy.pools[:3] + policy.pools[4:], policy.relays)
        ),
        "one pool's mode change (chain rewrite)": desired(
            with_mode(policy, pool_name(2), "monitor")
        ),
        "shrink to 3 pools (300 v4 + 30 v6 prefixes)": desired(
            Policy(policy.gateway, policy.pools[:3], policy.relays)
        ),
    }
    rows = []
    live = base
    for what, want in cases.items():
        if live is not base:  # every change starts from the full inventory
            commit(live, base)
        seconds, tx = commit(base, want)
        refilled = sorted(op.set.name for op in tx.ops if isinstance(op, FlushSet))
        rows.append({"change": what, "seconds": seconds, "ops": len(tx.ops), "refilled": refilled})
        live = want
    commit(live, base)
    out["changes"] = rows
    if old_path:
        # the per-element path this replaced, for the record (libnftables `delete element`)
        keys = tuple(list(base.sets["pools_v4"].elements)[1000 : 1000 + old_path])
        tx = Transaction(base.family, base.name, (DeleteElements("pools_v4", keys),))
        t = time.perf_counter()
        kernel.apply(tx)
        out["old_path"] = {"prefixes": old_path, "seconds": time.perf_counter() - t}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.changes", description=__doc__)
    parser.add_argument("--old-path", type=int, default=0, metavar="N")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        json.dump(worker(args.old_path), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if os.geteuid() != 0:
        print("bench.changes: needs root (network namespaces, nftables)", file=sys.stderr)
        return 1
    with Namespaces() as spaces:
        ns = spaces.create()
        argv2 = [
            sys.executable,
            "-m",
            "bench.changes",
            "--worker",
            "--old-path",
            str(args.old_path),
        ]
        cp = subprocess.run(["ip", "netns", "exec", ns, *argv2], capture_output=True, text=True)
        if cp.returncode != 0:
            print(cp.stderr, file=sys.stderr)
            return 1
    result = json.loads(cp.stdout)
    cold = result["cold_apply_s"]
    for row in result["changes"]:
        row["x_cold"] = round(row["seconds"] / cold, 3)
    result["load_average"] = os.getloadavg()
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
