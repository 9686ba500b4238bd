"""Worker run inside a test's network namespace: apply policies, say what the kernel holds.

    ip netns exec NS python -m tests.reliability.nftworker

Reads one JSON request per line, {"policy": DIR, "fresh": bool, "now": ISO}, and answers one
JSON line: the policy is loaded from DIR by the real loader, its desired table applied with
the real kernel binding (after deleting the table when `fresh`), the table read back in
full (every element) and compared with the model. {"ok": true, "ops": N} or
{"ok": false, "error": ..., "diff": [...]}. A long-lived process, so each example costs the
apply and the read, not an interpreter start.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any

from op25b_ctl.errors import Op25bError
from op25b_ctl.kernel.nft import NftKernel
from op25b_ctl.ops import applier
from op25b_ctl.plan.desired import from_policy
from op25b_ctl.plan.diff import diff
from op25b_ctl.plan.render import describe
from op25b_ctl.plan.table import Table
from op25b_ctl.plan.transaction import DeleteTable, Transaction
from op25b_ctl.policy.loader import load_policy


def differences(live: Table | None, want: Table) -> list[str]:
    """What differs between the kernel's table and the model, element by element."""
    if live is None:
        return ["table absent"]
    out = describe(diff(live, want))
    for name, s in want.sets.items():
        got = live.sets.get(name)
        if got is None:
            out.append(f"set {name} absent")
        elif dict(got.elements) != dict(s.elements):
            missing = sorted(set(s.elements) - set(got.elements))[:5]
            extra = sorted(set(got.elements) - set(s.elements))[:5]
            out.append(f"set {name}: missing {missing}, extra {extra}")
    for name, c in want.chains.items():
        got_chain = live.chains.get(name)
        if got_chain is None or got_chain.rule_ids != c.rule_ids:
            out.append(f"chain {name}: rules differ")
    if not set(want.counters) <= set(live.counters):
        out.append(f"counters missing: {sorted(set(want.counters) - set(live.counters))[:5]}")
    return out


def handle(kernel: NftKernel, request: dict[str, Any]) -> dict[str, Any]:
    policy = load_policy(request["policy"])
    want = from_policy(policy, datetime.fromisoformat(request["now"])).table
    if request.get("fresh") and kernel.read(want.family, want.name, elements=False) is not None:
        kernel.apply(Transaction(want.family, want.name, (DeleteTable(),)))
    t0 = time.perf_counter()
    tx = applier.apply(kernel, want)
    took = time.perf_counter() - t0
    live = kernel.read(want.family, want.name, elements=True)
    problems = differences(live, want)
    return {"ok": not problems, "ops": len(tx.ops), "diff": problems[:20], "seconds": took}


def main() -> int:
    kernel = NftKernel()
    for line in sys.stdin:
        try:
            answer = handle(kernel, json.loads(line))
        except (Op25bError, OSError, ValueError, KeyError) as exc:
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
