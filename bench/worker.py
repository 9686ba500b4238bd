"""The timed operations, each run inside a namespace: `ip netns exec NS python -m bench.worker`.

One process per operation (or per series of warm operations), so the clock covers only the
operation itself: imports, unpickling the desired table and building inputs happen before it
starts. Prints one JSON object on stdout; anything unexpected (a change that touched
elements, a "no-change" pass that read the kernel) fails loudly instead of timing the wrong
thing.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from op25b_ctl.daemon.reconcile import Reconciler
from op25b_ctl.kernel.nft import NftKernel
from op25b_ctl.ops import applier
from op25b_ctl.plan.desired import from_policy
from op25b_ctl.plan.diff import diff
from op25b_ctl.plan.ruleset import Tracking, offender_set, pool_chain, pool_rules
from op25b_ctl.plan.table import Chain, Table
from op25b_ctl.plan.transaction import AddRule, DeleteTable, FlushChain, Transaction
from op25b_ctl.policy.loader import load_policy
from op25b_ctl.policy.model import Mode, Offenders
from op25b_ctl.policy.overrides import Override
from op25b_ctl.source import rulerefs
from op25b_ctl.source.directory import DirectorySource


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


# ------------------------------------------------------------------ operations


def cold_apply(desired: Table, variant: str) -> dict[str, Any]:
    """One full apply into an empty namespace.

    "ours" is what ships: `applier.apply` (read, diff, one commit; the kernel validates the
    whole batch and aborts all of it on any error). "checked" is the same with nft's dry run
    first (`backend.check`, then `backend.apply`): what the core did before, for context.
    """
    backend = NftKernel()
    t = time.perf_counter()
    if variant == "ours":
        tx = applier.apply(backend, desired)
    else:
        tx = applier.plan(backend, desired)
        backend.check(tx)
        backend.apply(tx)
    seconds = time.perf_counter() - t
    if not tx:
        raise SystemExit("cold apply planned nothing: the namespace was not empty")
    return {"seconds": seconds, "ops": len(tx.ops)}


_DEFAULTS = Offenders()
DEFAULT_TRACKING = Tracking(_DEFAULTS.size, _DEFAULTS.retention, _DEFAULTS.subscriber_prefix_v6)


def with_pool_mode(
    table: Table, pool: str, mode: Mode, action: str, tracking: Tracking | None = None
) -> Table:
    """`table` with one pool's chain holding another mode: exactly what ruleset.desired_table
    returns for the changed policy (elements, counters and fingerprint are unchanged).
    `tracking` defaults to the inventory's (gateway defaults) when the table has the pool's
    offender sets."""
    if tracking is None and offender_set(pool, 4) in table.sets:
        tracking = DEFAULT_TRACKING
    chains = dict(table.chains)
    chains[pool_chain(pool)] = Chain(pool_chain(pool), pool_rules(pool, mode, action, tracking))
    return replace(table, chains=chains)


WALK_TABLE = "op25b_walk"  # the empty-maps twin of our table, for the walk's share only


def without_elements(table: Table, name: str = WALK_TABLE) -> Table:
    """`table` under another name with every set and map empty: the same chains, rules and
    counters, and nothing for the kernel's validation to walk.

    At commit nf_tables validates the whole table whenever the batch adds a rule, and that
    walks every element of every verdict map reachable from a base chain (docs/performance.md,
    "One-pool change and the kernel's loop walk"). The same one-pool change committed here and
    in the real table costs the same in libnftables; the difference is that walk.
    """
    return replace(
        table, name=name, sets={n: replace(s, elements={}) for n, s in table.sets.items()}
    )


def walk_series(
    backend: NftKernel, desired: Table, pool: str, action: str, runs: int
) -> dict[str, list[float]]:
    """The daemon's one-pool change, alternately in our table ("full") and in its empty-maps
    twin ("empty"), `runs` times each; both end as `desired` has them, and the twin is gone."""
    twin = without_elements(desired)
    applier.apply(backend, twin)
    tables = {"full": desired, "empty": twin}
    live = dict(tables)
    times: dict[str, list[float]] = {k: [] for k in tables}
    try:
        for i in range(runs + 1):
            mode: Mode = "monitor" if i % 2 == 0 else "enforce"
            for key, base in tables.items():
                target = with_pool_mode(base, pool, mode, action)
                tx = diff(live[key], target)
                _expect_rewrite(tx, "walk probe")
                t = time.perf_counter()
                backend.apply(tx)
                if i:  # the first round is a warm-up
                    times[key].append(time.perf_counter() - t)
                live[key] = target
        backend.apply(diff(live["full"], desired))  # as it was: nothing if already
    finally:
        backend.apply(Transaction(twin.family, twin.name, (DeleteTable(),)))
    return times


def _is_chain_rewrite(tx: Transaction) -> bool:
    return bool(tx) and {type(op) for op in tx.ops} <= {FlushChain, AddRule}


def _expect_rewrite(tx: Transaction, what: str) -> None:
    if not _is_chain_rewrite(tx):
        kinds = sorted({type(op).__name__ for op in tx.ops})
        raise SystemExit(f"{what} was not a one-chain rewrite: {kinds}")


def whole_scrapes(rec: Reconciler, backend: NftKernel, runs: int) -> dict[str, list[float]]:
    """A whole metrics scrape as Prometheus gets it (collector + exposition text): "live"
    reads the counters from the kernel every time (the cache disabled, what one scraper a
    second costs), "cached" within the cache's second (what further scrapers cost)."""
    from prometheus_client import generate_latest

    from op25b_ctl.daemon.livecounters import LiveCounters
    from op25b_ctl.daemon.metrics import build_registry

    out: dict[str, list[float]] = {}
    for what, max_age in (("live", 0.0), ("cached", 3600.0)):
        live = LiveCounters(backend.counters, max_age=max_age)
        registry, _ = build_registry(lambda: rec.view, live)
        body = generate_latest(registry)  # warm-up (and the cache's one read)
        if b"op25b_pool_blocked_packets_total{" not in body:
            raise SystemExit("the scrape shows no per-pool counters")
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            generate_latest(registry)
            times.append(time.perf_counter() - t)
        out[what] = times
        if max_age and live.reads != 1:
            raise SystemExit(f"cached scrapes read the kernel {live.reads} times")
    return out


def no_change_passes(
    backend: NftKernel,
    desired: Table,
    policy_dir: Path | None,
    state_dir: Path | None,
    runs: int,
    scrapes: dict[str, list[float]] | None = None,
) -> tuple[str, list[float]]:
    """The daemon's no-change pass, timed `runs` times after a warm-up pass.

    With a policy directory: a real `Reconciler.run_once()`, which must report read == "fast"
    and no change (stat of the inputs, one generation id, nothing read from the kernel).
    Without one (the scaling rows have no YAML): what a pass costs when it cannot trust the
    generation, a fingerprint-trusting plan that must plan nothing.
    """
    if policy_dir is not None and state_dir is not None:
        rec = Reconciler(
            backend,
            DirectorySource(policy_dir, state_dir),
            clock=lambda: datetime.now(UTC),
            rule_reference=rulerefs.path_in(state_dir),
        )
        first = rec.run_once()  # start-up: compute + full read, must find the table in sync
        if not first.ok or first.changed:
            raise SystemExit(f"reconciler's first pass: changed={first.changed} {first.error}")
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            result = rec.run_once()
            times.append(time.perf_counter() - t)
            if result.read != "fast" or result.changed or not result.ok:
                raise SystemExit(f"no-change pass was not fast: {result}")
        if scrapes is not None:
            scrapes.update(whole_scrapes(rec, backend, runs))
        return 'Reconciler.run_once() (read == "fast")', times

    def core() -> None:
        tx = applier.plan(backend, desired, trust_fingerprint=True)
        if tx:
            raise SystemExit(f"no-change pass planned {len(tx.ops)} op(s)")

    core()
    return "applier.plan(trust_fingerprint=True)", [_timed(core) for _ in range(runs)]


def override_passes(
    backend: NftKernel, policy_dir: Path, state_dir: Path, pool: str, runs: int
) -> list[float]:
    """The daemon reacting to `pool monitor` / its removal: a real Reconciler pass each time.

    The override file changes, so the pass recomputes the desired state from the YAML
    (load_policy + desired.from_policy) and then commits the one-chain rewrite against what
    it last made live (read == "known": nothing read from the kernel).
    """
    source = DirectorySource(policy_dir, state_dir)
    rec = Reconciler(
        backend,
        source,
        clock=lambda: datetime.now(UTC),
        rule_reference=rulerefs.path_in(state_dir),
    )
    first = rec.run_once()
    if not first.ok or first.changed:
        raise SystemExit(f"reconciler's first pass: changed={first.changed} {first.error}")
    times: list[float] = []
    try:
        for i in range(runs):
            now = datetime.now(UTC)
            if i % 2 == 0:
                o = Override(pool, "monitor", "bench", "bench", now)
                source.set_override(o)
            else:
                source.clear_override(pool)
            t = time.perf_counter()
            result = rec.run_once()
            times.append(time.perf_counter() - t)
            if result.read != "known" or result.tx is None or not result.ok:
                raise SystemExit(f"override pass was not a known-state commit: {result}")
            _expect_rewrite(result.tx, "override pass")
    finally:
        source.clear_override(pool)
        rec.run_once()  # leave the pool as the policy has it
    return times


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
    backend = NftKernel()
    loaded = applier.apply(backend, desired)
    assert loaded, "the namespace already held a table"
    # as `op25b-ctl apply` does: the reconciler then trusts these rules' statements
    applier.remember_statements(backend, loaded, desired, rulerefs.path_in(state_dir))

    # The daemon's path for a due stage or an override (Reconciler, read == "known"): the
    # generation says nobody committed since our own last commit, so the change is diffed
    # against the table we last made live and committed; nothing is read from the kernel.
    expected = backend.generation()
    current = desired
    changes: list[float] = []
    cur: Mode = "enforce"
    for i in range(runs + 1):  # the first flip is a warm-up
        cur = "monitor" if cur == "enforce" else "enforce"
        target = with_pool_mode(desired, pool, cur, action)
        t = time.perf_counter()
        before = backend.generation()
        if before != expected:
            raise SystemExit(f"ruleset generation {before}, expected {expected}: not our commit")
        tx = diff(current, target)
        backend.apply(tx)
        after = backend.generation()
        seconds = time.perf_counter() - t
        _expect_rewrite(tx, "one-pool change")
        if after != before + 1:
            raise SystemExit(f"generation went {before} -> {after}: another commit slipped in")
        current, expected = target, after
        if i:
            changes.append(seconds)

    # The CLI's path (`op25b-ctl apply` after an edit): applier.apply(trust_fingerprint=True),
    # a netlink skeleton read trusting the elements by their fingerprint, diff, commit.
    cli: list[float] = []
    parts: dict[str, list[float]] = {"read": [], "diff": [], "commit": []}
    for i in range(max(4, runs)):  # alternately whole and step by step
        cur = "monitor" if cur == "enforce" else "enforce"
        target = with_pool_mode(desired, pool, cur, action)
        if i % 2 == 0:
            t = time.perf_counter()
            tx = applier.apply(backend, target, trust_fingerprint=True)
            cli.append(time.perf_counter() - t)
        else:  # the same, step by step
            t = time.perf_counter()
            live = applier.read_live(backend, target, trust_fingerprint=True)
            parts["read"].append(time.perf_counter() - t)
            t = time.perf_counter()
            tx = diff(live, target)
            parts["diff"].append(time.perf_counter() - t)
            t = time.perf_counter()
            backend.apply(tx)
            parts["commit"].append(time.perf_counter() - t)
        _expect_rewrite(tx, "CLI one-pool change")
    if cur != "enforce":  # leave the pool as the desired table has it
        applier.apply(backend, desired, trust_fingerprint=True)
    # How much of the commit is the kernel's walk of the verdict maps (without_elements).
    walk = walk_series(backend, desired, pool, action, runs)
    generations = [_timed(backend.generation) for _ in range(runs)]

    count = len(desired.counters)
    scrapes = []
    for _ in range(runs):
        t = time.perf_counter()
        got = backend.counters(desired.family, desired.name)
        scrapes.append(time.perf_counter() - t)
        if len(got) != count:
            raise SystemExit(f"read_counters returned {len(got)} counters, expected {count}")
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

    whole: dict[str, list[float]] = {}
    what, passes = no_change_passes(backend, desired, policy_dir, state_dir, runs, whole)
    recompute: list[float] = []
    if policy_dir is not None and state_dir is not None:
        recompute = override_passes(backend, policy_dir, state_dir, pool, max(2, runs // 3))
    return {
        "change": changes,
        "change_cli": cli,
        "change_parts": parts,
        "walk": walk,
        "scrape": scrapes,
        "scrape_whole": whole,  # {"live": [...], "cached": [...]} with a policy directory
        "nft_list_counters": nft_lists,
        "nft_list_cut": list_timeout if list_cut else None,
        "reconcile": passes,
        "reconcile_what": what,
        "recompute": recompute,
        "generation": generations,
        "counters": count,
    }


def daemonlike(policy_dir: Path) -> dict[str, Any]:
    """What the daemon does at start-up, step by step: policy from YAML, desired state, the
    apply, one scrape. Reports each step's time and the process's memory (the backend itself
    gives freed heap back after big libnftables calls)."""
    t0 = time.perf_counter()
    policy = load_policy(policy_dir)
    t1 = time.perf_counter()
    state = from_policy(policy, datetime.now(UTC))  # what the reconciler does after loading
    t2 = time.perf_counter()
    before_apply = rss()["VmRSS"]
    kernel = NftKernel()
    tx = applier.apply(kernel, state.table)
    t3 = time.perf_counter()
    counters = kernel.counters(state.table.family, state.table.name)
    t4 = time.perf_counter()
    mem = rss()  # `state` (policy + desired table) is alive here, as in a daemon
    return {
        "load_policy": t1 - t0,
        "compute": t2 - t1,
        "apply": t3 - t2,
        "ops": len(tx.ops),
        "read_counters": t4 - t3,
        "counters": len(counters),
        "VmRSS_before_apply": before_apply,
        **mem,
    }


def metrics(address: str) -> dict[str, Any]:
    """The daemon's reconcile pass counts by read kind, from its Prometheus endpoint."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    runs: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("op25b_reconcile_runs_total{"):
            labels, _, value = line.rpartition(" ")
            kind = labels.split('read="', 1)[1].split('"', 1)[0]
            runs[kind] = float(value)
    return {"runs": runs}


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.worker")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("apply", help="one cold full apply")
    a.add_argument("--desired", required=True)
    a.add_argument("--variant", choices=("ours", "checked"), default="ours")
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
    a = sub.add_parser("read", help="pickle our table as NftKernel reads it (for tests)")
    a.add_argument("--table", required=True)
    a.add_argument("--out", type=Path, required=True)
    a = sub.add_parser("metrics", help="a daemon's reconcile pass counts")
    a.add_argument("--address", required=True)
    a = sub.add_parser("loadgen", help="TCP connect attempts per second")
    a.add_argument(
        "--src", required=True, action="append",
        help="a source address; one process per --src, started together, rates summed",
    )  # fmt: skip
    a.add_argument("--dst", required=True)
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--seconds", type=float, default=1.5)
    a.add_argument("--window", type=int, default=32)
    a.add_argument(
        "--syn", action="store_true",
        help="raw SYNs instead of connects; counts the resets that come back",
    )  # fmt: skip
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
        out = {"ops": len(applier.apply(NftKernel(), _load(args.desired)).ops)}
    elif args.cmd == "counters":
        out = {k: v.packets for k, v in NftKernel().counters("inet", args.table).items()}
    elif args.cmd == "read":
        table = NftKernel().read("inet", args.table)
        args.out.write_bytes(pickle.dumps(table))
        out = {"found": table is not None}
    elif args.cmd == "metrics":
        out = metrics(args.address)
    else:
        from bench.datapath import connect_rates, syn_rate

        if args.syn:
            rate = syn_rate(args.src, args.dst, args.port, args.seconds)
        else:
            rate = connect_rates(args.src, args.dst, args.port, args.seconds, args.window)
        out = {
            **asdict(rate),
            "per_second": rate.per_second,
            "cpu_per_attempt": rate.cpu_per_attempt,
        }
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
