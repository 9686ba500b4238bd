"""The timed operations, each run inside a namespace: `ip netns exec NS python -m bench.worker`.

One process per operation (or per series of warm operations), so the clock covers only the
operation itself: imports, unpickling the desired table and building inputs happen before it
starts. Prints one JSON object on stdout; anything unexpected (a change that touched
elements, a "no-change" pass that planned changes) fails loudly instead of timing the wrong
thing.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from op25b_ctl import applier, netlink
from op25b_ctl.backend import NftBackend
from op25b_ctl.diff import diff
from op25b_ctl.model import Mode
from op25b_ctl.render import render_op
from op25b_ctl.ruleset import pool_chain, pool_rules
from op25b_ctl.table import Chain, Table
from op25b_ctl.transaction import AddElements, AddRule, AddSet, FlushChain, Transaction


def _load(path: str) -> Table:
    with open(path, "rb") as fh:
        table = pickle.load(fh)
    assert isinstance(table, Table)
    return table


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _run(argv: Sequence[str], timeout: float | None = None) -> None:
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if cp.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({cp.returncode}): {cp.stderr[:2000]}")


def rss() -> dict[str, float]:
    """This process's resident (VmRSS) and peak resident (VmHWM) memory in MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


# ------------------------------------------------------------------ a render variant


def render_declared(tx: Transaction) -> str:
    """Our transaction with each new set's elements inside its `add set/map` declaration.

    Not what op25b-ctl ships (render.py writes separate `add element` lines): measured as a
    diagnostic, because nft 1.0.6 spends far longer on `add element` commands for a set
    created in the same batch than on the same elements declared with the set.
    """
    created = {op.set.name for op in tx.ops if isinstance(op, AddSet)}
    elements = {
        op.set: op.elements
        for op in tx.ops
        if isinstance(op, AddElements) and op.set in created and op.elements
    }
    lines: list[str] = []
    for op in tx.ops:
        if isinstance(op, AddElements) and op.set in elements:
            continue
        if isinstance(op, AddSet) and op.set.name in elements:
            (line,) = render_op(tx.spec, op)
            items = ", ".join(
                f"{k} : jump {v}" if v is not None else k for k, v in elements[op.set.name].items()
            )
            lines.append(line[: -len("}")] + f"elements = {{ {items} }}; }}")
            continue
        lines.extend(render_op(tx.spec, op))
    return "\n".join(lines) + "\n"


class DeclaredBackend(NftBackend):
    """NftBackend writing with `render_declared` (bench diagnostic only)."""

    def check(self, tx: Transaction) -> None:
        if tx:
            self._cmd(render_declared(tx), dry_run=True)

    def apply(self, tx: Transaction) -> None:
        if tx:
            self._cmd(render_declared(tx))


# ------------------------------------------------------------------ operations


def cold_apply(desired: Table, variant: str) -> dict[str, Any]:
    """One full apply into an empty namespace, the way `variant` does it."""
    backend: NftBackend = DeclaredBackend() if variant.startswith("declared") else NftBackend()
    t = time.perf_counter()
    if variant in ("full", "declared"):
        tx = applier.apply(backend, desired)
    else:  # "nocheck" / "declared-nocheck": plan and commit, no dry run first
        tx = applier.plan(backend, desired)
        backend.apply(tx)
    seconds = time.perf_counter() - t
    if not tx:
        raise SystemExit("cold apply planned nothing: the namespace was not empty")
    return {"seconds": seconds, "ops": len(tx.ops)}


def with_pool_mode(table: Table, pool: str, mode: Mode, action: str) -> Table:
    """`table` with one pool's chain holding another mode: exactly what ruleset.desired_table
    returns for the changed policy (elements, counters and fingerprint are unchanged)."""
    chains = dict(table.chains)
    chains[pool_chain(pool)] = Chain(pool_chain(pool), pool_rules(pool, mode, action))
    return replace(table, chains=chains)


def reconcile_pass(
    backend: NftBackend, desired: Table, policy_dir: Path | None, state_dir: Path | None
) -> tuple[str, Callable[[], object]]:
    """The daemon's no-change pass if the daemon exists on this branch, else its core.

    The daemon's contract: `op25b_ctl.reconcile.Reconciler(backend, policy_dir, state_dir,
    clock=...)` with `.run_once()`. Without it: the generation id and a fingerprint-trusting
    plan, which is what a pass has to do when it cannot skip on an unchanged generation.
    """
    try:
        from op25b_ctl.reconcile import Reconciler  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        Reconciler = None
    if Reconciler is not None and policy_dir is not None and state_dir is not None:
        rec = Reconciler(backend, policy_dir, state_dir, clock=lambda: datetime.now(UTC))
        return "Reconciler.run_once()", rec.run_once

    def core() -> None:
        netlink.ruleset_generation()
        tx = applier.plan(backend, desired, trust_fingerprint=True)
        if tx:
            raise SystemExit(f"no-change pass planned {len(tx.ops)} op(s)")

    return "applier.plan(trust_fingerprint=True) + netlink.ruleset_generation()", core


def warm(
    desired: Table,
    *,
    pool: str,
    action: str,
    runs: int,
    list_runs: int,
    list_timeout: float,
    policy_dir: Path | None,
    state_dir: Path | None,
) -> dict[str, Any]:
    """Load the table, then time one-pool mode changes, scrapes and no-change passes."""
    backend = NftBackend()
    loaded = applier.apply(backend, desired)
    assert loaded, "the namespace already held a table"

    changes: list[float] = []
    cur: Mode = "enforce"
    for i in range(runs + 1):  # the first flip is a warm-up (imports, first netlink socket)
        cur = "monitor" if cur == "enforce" else "enforce"
        target = with_pool_mode(desired, pool, cur, action)
        t = time.perf_counter()
        tx = applier.apply(backend, target, trust_fingerprint=True)
        seconds = time.perf_counter() - t
        kinds = {type(op) for op in tx.ops}
        if not tx or not kinds <= {FlushChain, AddRule}:
            raise SystemExit(f"one-pool change was not a chain rewrite: {sorted(map(str, kinds))}")
        if i:
            changes.append(seconds)
    if cur != "enforce":  # leave the pool as the desired table has it
        applier.apply(backend, desired, trust_fingerprint=True)
        cur = "enforce"

    # Where a change's time goes: the skeleton read, the diff, nft's dry run, the commit.
    parts: dict[str, list[float]] = {"read": [], "diff": [], "check": [], "commit": []}
    for _ in range(max(3, runs // 2)):
        cur = "monitor" if cur == "enforce" else "enforce"
        target = with_pool_mode(desired, pool, cur, action)
        t = time.perf_counter()
        live = applier.read_live(backend, target, trust_fingerprint=True)
        parts["read"].append(time.perf_counter() - t)
        t = time.perf_counter()
        tx = diff(live, target)
        parts["diff"].append(time.perf_counter() - t)
        t = time.perf_counter()
        backend.check(tx)
        parts["check"].append(time.perf_counter() - t)
        t = time.perf_counter()
        backend.apply(tx)
        parts["commit"].append(time.perf_counter() - t)
    if cur != "enforce":
        applier.apply(backend, desired, trust_fingerprint=True)
    generations = [_timed(netlink.ruleset_generation) for _ in range(runs)]

    expected = len(desired.counters)
    scrapes = []
    for _ in range(runs):
        t = time.perf_counter()
        got = netlink.read_counters(desired.name, desired.family)
        scrapes.append(time.perf_counter() - t)
        if len(got) != expected:
            raise SystemExit(f"read_counters returned {len(got)} counters, expected {expected}")
    # `nft list counters` loads every element first; at 1,000,000 prefixes that takes minutes,
    # so it is cut off at `list_timeout` and reported as "more than".
    nft_lists: list[float] = []
    list_cut = False
    argv = ["nft", "list", "counters", "table", desired.family, desired.name]
    for _ in range(list_runs):
        try:
            nft_lists.append(_timed(lambda: _run(argv, timeout=list_timeout)))
        except subprocess.TimeoutExpired:
            list_cut = True
            break

    what, one_pass = reconcile_pass(backend, desired, policy_dir, state_dir)
    one_pass()  # warm-up; a reconciler's first pass may also settle its own state
    passes = [_timed(one_pass) for _ in range(runs)]
    return {
        "change": changes,
        "scrape": scrapes,
        "nft_list_counters": nft_lists,
        "nft_list_cut": list_timeout if list_cut else None,
        "reconcile": passes,
        "reconcile_what": what,
        "change_parts": parts,
        "generation": generations,
        "counters": expected,
    }


def daemonlike(policy_dir: Path) -> dict[str, Any]:
    """What a daemon holds with the inventory loaded: policy from YAML, desired state, the
    applied table, one scrape. Reports each step's time and the process's memory."""
    from op25b_ctl.desired import from_policy
    from op25b_ctl.loader import load_policy

    t0 = time.perf_counter()
    policy = load_policy(policy_dir)
    t1 = time.perf_counter()
    state = from_policy(policy, datetime.now(UTC))  # what desired.compute does after loading
    t2 = time.perf_counter()
    before_apply = rss()["VmRSS"]
    tx = applier.apply(NftBackend(), state.table)
    t3 = time.perf_counter()
    counters = netlink.read_counters(state.table.name, state.table.family)
    t4 = time.perf_counter()
    mem = rss()  # `state` (policy + desired table) is alive here, as in a daemon
    # How much of that is heap glibc merely keeps (freed by libnftables) rather than live data.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    trimmed = rss()["VmRSS"]
    return {
        "load_policy": t1 - t0,
        "compute": t2 - t1,
        "apply": t3 - t2,
        "ops": len(tx.ops),
        "read_counters": t4 - t3,
        "counters": len(counters),
        "VmRSS_before_apply": before_apply,
        "VmRSS_after_trim": trimmed,
        **mem,
    }


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.worker")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("apply", help="one cold full apply")
    a.add_argument("--desired", required=True)
    a.add_argument(
        "--variant", choices=("full", "nocheck", "declared", "declared-nocheck"), default="full"
    )
    a = sub.add_parser("run", help="time one command (nft -f, ipset restore, ...)")
    a.add_argument("argv", nargs=argparse.REMAINDER)
    a = sub.add_parser("warm", help="load, then time changes, scrapes and no-change passes")
    a.add_argument("--desired", required=True)
    a.add_argument("--pool", required=True)
    a.add_argument("--action", default="reject")
    a.add_argument("--runs", type=int, default=7)
    a.add_argument("--list-runs", type=int, default=3)
    a.add_argument("--list-timeout", type=float, default=60.0)
    a.add_argument("--policy-dir", type=Path)
    a.add_argument("--state-dir", type=Path)
    a = sub.add_parser("daemonlike", help="load YAML, compute, apply, scrape; report memory")
    a.add_argument("--policy-dir", type=Path, required=True)
    a = sub.add_parser("load", help="apply a desired table (untimed set-up)")
    a.add_argument("--desired", required=True)
    a = sub.add_parser("counters", help="packet counts of a table's named counters")
    a.add_argument("--table", required=True)
    a = sub.add_parser("loadgen", help="TCP connect attempts per second")
    a.add_argument("--src", required=True)
    a.add_argument("--dst", required=True)
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--seconds", type=float, default=1.5)
    a.add_argument("--window", type=int, default=32)
    args = p.parse_args(None if argv is None else list(argv))

    out: dict[str, Any]
    if args.cmd == "apply":
        out = cold_apply(_load(args.desired), args.variant)
    elif args.cmd == "run":
        out = {"seconds": _timed(lambda: _run(args.argv))}
    elif args.cmd == "warm":
        out = warm(
            _load(args.desired),
            pool=args.pool,
            action=args.action,
            runs=args.runs,
            list_runs=args.list_runs,
            list_timeout=args.list_timeout,
            policy_dir=args.policy_dir,
            state_dir=args.state_dir,
        )
    elif args.cmd == "daemonlike":
        out = daemonlike(args.policy_dir)
    elif args.cmd == "load":
        out = {"ops": len(applier.apply(NftBackend(), _load(args.desired)).ops)}
    elif args.cmd == "counters":
        out = {k: v.packets for k, v in netlink.read_counters(args.table).items()}
    else:
        from bench.datapath import connect_rate

        rate = connect_rate(args.src, args.dst, args.port, args.seconds, args.window)
        out = {**asdict(rate), "per_second": rate.per_second}
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
