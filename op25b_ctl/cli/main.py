"""`op25b-ctl`: a thin shell over the library; every command also speaks JSON for scripts.

Exit status: 0 success (for `plan`, whether or not changes are pending), 1 nftables or
runtime failure (live ruleset unchanged), 2 invalid policy, usage, or a foreign table under
our name (nothing applied), 3 the gateway WAS changed but the change could not be recorded
(audit log or state file write failed after the commit; stderr says what changed),
4 `fleet status` ran but not every gateway is ok, 5 `discover` found a hole (a served prefix in
no pool), 75 (EX_TEMPFAIL) another op25b-ctl command held the state lock (nothing changed;
retry).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from op25b_ctl import __version__
from op25b_ctl.cli import discover as cli_discover
from op25b_ctl.cli import fleet as cli_fleet
from op25b_ctl.cli import offenders as cli_offenders
from op25b_ctl.cli import ops as cli_ops
from op25b_ctl.cli.context import (
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_NOT_RECORDED,
    EXIT_OK,
    Context,
    positive_seconds,
    seconds_or_zero,
)
from op25b_ctl.daemon import DEFAULT_INTERVAL, DEFAULT_METRICS_ADDRESS, DEFAULT_VERIFY_INTERVAL
from op25b_ctl.errors import (
    ConcurrentPublish,
    KernelError,
    LockBusy,
    NotOurTableError,
    NotRecordedError,
    Op25bError,
    OverrideError,
    PolicyError,
    StateError,
    StoreError,
    StoreUsageError,
    TableNotFound,
)
from op25b_ctl.kernel.base import Counter, Kernel, RuleDigests
from op25b_ctl.ops import applier, operate
from op25b_ctl.plan import desired
from op25b_ctl.plan.modes import Decision, decide, local
from op25b_ctl.plan.render import describe, render
from op25b_ctl.plan.ruleset import (
    EXEMPTED_COUNTER,
    FAMILY,
    RELAYED_COUNTER,
    blocked_counter,
    mode_of_rules,
    monitored_counter,
    pool_chain,
    tracking_of,
)
from op25b_ctl.plan.table import Table
from op25b_ctl.plan.transaction import Transaction
from op25b_ctl.policy.loader import DEFAULT_POLICY_DIR
from op25b_ctl.policy.model import TABLE_RE, Gateway, Policy, split_families
from op25b_ctl.source import audit, rulerefs
from op25b_ctl.source.state import DEFAULT_STATE_DIR


def _desired(ctx: Context, policy: Policy) -> tuple[Table, dict[str, Decision]]:
    want = desired.from_policy(policy, ctx.now, ctx.source.overrides().values())
    return want.table, want.decisions


def postponed_stages(policy: Policy, ctx: Context, decisions: dict[str, Decision]) -> list[str]:
    """Stages this gateway already applied whose date now lies ahead (or is `tbd`).

    Moving a fired stage later is valid, and sometimes meant, but its pools then leave the
    stage's mode at the next apply or tick, until the new date: say so before it happens.
    Read from this gateway's rollout record; nothing is said without a readable one."""
    try:
        done = ctx.state.applied_stages()
    except StateError:
        return []
    out = []
    for stage in policy.stages:
        at = stage.scheduled
        if (
            stage.name not in done
            or not policy.applies(stage)
            or (at is not None and at <= ctx.now)
        ):
            continue
        leaving = [p for p in policy.stage_pools(stage) if decisions[p].mode != stage.mode]
        if not leaving:
            continue
        modes = ", ".join(f"{p} -> {decisions[p].mode}" for p in leaving)
        out.append(
            f"stage {stage.name} was applied here ({done[stage.name]}) and is now dated "
            f"{local(policy, at)}: "
            f"at the next apply or tick its pools leave {stage.mode} until then ({modes})"
        )
    return out


def cmd_validate(ctx: Context) -> int:
    policy = ctx.policy()
    try:
        overrides = list(ctx.source.overrides().values())
    except StateError:  # validating the files needs no (readable) state directory
        overrides = []
    decisions = decide(policy, ctx.now, overrides)
    warnings = postponed_stages(policy, ctx, decisions)
    pools: list[dict[str, Any]] = []
    for pool in policy.pools:
        v4, v6 = split_families(pool.prefixes)
        pools.append(
            {
                "name": pool.name,
                "dynamic": pool.dynamic,
                "mode": decisions[pool.name].mode,
                "prefixes_v4": len(v4),
                "prefixes_v6": len(v6),
            }
        )
    data = {
        "ok": True,
        "table": f"{FAMILY} {policy.gateway.table}",
        "action": policy.gateway.action,
        "pools": pools,
        "relays": [r.name for r in policy.relays],
        "stages": [s.name for s in policy.stages],
        "exemptions": len(policy.exemptions),
        "gateways": [
            {"name": g.name, "group": g.group, "pools": policy.gateway_pools(g)}
            for g in policy.gateways
        ],
        "warnings": warnings,
    }
    for w in warnings:
        print(f"op25b-ctl: warning: {w}", file=sys.stderr)
    n_prefixes = sum(len(p.prefixes) for p in policy.pools)
    ctx.emit(
        data,
        [
            f"policy OK: {len(policy.pools)} pools ({n_prefixes} prefixes), "
            f"{len(policy.relays)} relays, table {FAMILY} {policy.gateway.table}, "
            f"action {policy.gateway.action}, {len(policy.stages)} rollout stages, "
            f"{len(policy.exemptions)} exemptions"
            + (
                f", {len(policy.gateways)} gateways in {len(policy.groups())} group(s)"
                if policy.gateways
                else ""
            )
        ],
    )
    return EXIT_OK


def _tx_report(ctx: Context, tx: Transaction, *, applied: bool, verb: str) -> int:
    lines = describe(tx)
    data: dict[str, Any] = {"changes": len(tx.ops), "applied": applied, "diff": lines}
    if ctx.args.script:
        data["script"] = render(tx)
    text = (
        [f"{verb}: no changes; table {tx.spec} is up to date"]
        if not tx
        else [
            f"{verb}: {len(tx.ops)} change(s) to table {tx.spec}",
            *lines,
        ]
    )
    if ctx.args.script and tx:
        text += ["", "# nft script:", render(tx).rstrip()]
    ctx.emit(data, text)
    return EXIT_OK


def cmd_plan(ctx: Context) -> int:
    desired, _ = _desired(ctx, ctx.policy())
    tx = applier.plan(ctx.kernel, desired)
    return _tx_report(ctx, tx, applied=False, verb="plan")


def cmd_apply(ctx: Context) -> int:
    # overrides and due stages count (through desired.from_policy, as in the daemon), and the change is
    # audited, so `apply` never silently undoes an engineer's `pool rollback`
    policy = ctx.policy()  # invalid policy: exit 2 before taking the lock
    with ctx.lock("apply"):
        out = operate.apply_all(
            ctx.kernel,
            policy,
            ctx.source,
            ctx.state,
            ctx.now,
            ctx.command,
            dry_run=ctx.args.dry_run,
        )
    return _tx_report(ctx, out.tx, applied=out.applied, verb="apply")


def _live_view(
    kernel: Kernel, desired: Table, reference: Path | None, known: Table | None
) -> tuple[dict[str, tuple[str, ...]] | None, dict[str, Counter], rulerefs.Verdict | None]:
    """Rule ids per chain, counter values, and our rules' statements judged against what
    was read back after our own commits: the table's shape only (cheap at any size), or
    none of it when `known` is the table as our last command left it, nothing committed since."""
    live = known if known is not None else kernel.read(FAMILY, desired.name, elements=False)
    if live is None:
        return None, {}, None
    learned = rulerefs.load(reference)
    if known is not None:
        # Nothing has committed since our last command read its rules back into the
        # reference: the kernel holds exactly those statements (reading 3,000 rules to
        # hash them again cost ~50 ms at 1,000 pools). A rule not learned stays unverified.
        digests: RuleDigests = rulerefs.as_read(known, learned)
    else:
        digests = kernel.rule_digests(FAMILY, desired.name)
    verdict = rulerefs.judge(digests, learned, desired.chains)
    try:
        counters = kernel.counters(FAMILY, desired.name)
    except TableNotFound:  # deleted between the reads
        return None, {}, None
    return {name: chain.rule_ids for name, chain in live.chains.items()}, counters, verdict


def cmd_status(ctx: Context) -> int:
    policy = ctx.policy()
    # decisions and chains only: the sets' 110,000 elements are never shown
    want = desired.from_policy(policy, ctx.now, ctx.source.overrides().values(), shape_only=True)
    known = operate.known_table(*operate.known_live(ctx.kernel, ctx.state), want.table)
    decisions = want.decisions
    chains, counters, verdict = _live_view(
        ctx.kernel, want.table, rulerefs.path_in(ctx.state.path), known
    )

    def counter(name: str) -> dict[str, int]:
        value = counters.get(name)
        return (
            {"packets": value.packets, "bytes": value.bytes}
            if value
            else {"packets": 0, "bytes": 0}
        )

    pools: list[dict[str, Any]] = []
    for pool in policy.pools:
        live_mode: str | None = None
        chain = pool_chain(pool.name)
        if chains is not None and pool.dynamic and chain in chains:
            tracking = tracking_of(policy, pool.name)
            live_mode = (
                mode_of_rules(pool.name, chains[chain], policy.gateway.action, tracking)
                or "unknown"
            )
        elif chains is not None and not pool.dynamic:
            live_mode = "off"
        v4, v6 = split_families(pool.prefixes)
        pools.append(
            {
                "name": pool.name,
                "dynamic": pool.dynamic,
                "mode": decisions[pool.name].mode,
                "reason": decisions[pool.name].reason,
                "live_mode": live_mode,
                "prefixes_v4": len(v4),
                "prefixes_v6": len(v6),
                "blocked": counter(blocked_counter(pool.name)),
                "monitored": counter(monitored_counter(pool.name)),
            }
        )
    # rule ids (comments) equal, and no rule of ours edited in place or unreadable
    in_sync = (
        chains is not None
        and all(chains.get(n) == c.rule_ids for n, c in want.table.chains.items())
        and verdict is not None
        and not verdict.tampered
    )
    # and every statement matched what op25b-ctl read back after writing it
    verified = in_sync and verdict is not None and not verdict.unverified
    edited = sorted(verdict.tampered) if verdict is not None else []
    data: dict[str, Any] = {
        "table": f"{FAMILY} {policy.gateway.table}",
        "present": chains is not None,
        "rules_in_sync": in_sync,
        "statements_verified": verified,
        "rules_edited": edited,
        "action": policy.gateway.action,
        "pools": pools,
        "relayed": counter(RELAYED_COUNTER),
        "exempted": counter(EXEMPTED_COUNTER),
    }
    text = [
        f"table {FAMILY} {policy.gateway.table}: "
        + ("absent (no enforcement)" if chains is None else "present")
        + (
            ""
            if chains is None
            else (
                ("; rules in sync" if verified else "; rules in sync (statements unverified)")
                if in_sync
                else "; rules DIFFER from policy"
                + (f" (edited in place: {', '.join(edited)})" if edited else "")
            )
        )
        + f"; action {policy.gateway.action}",
        f"{'POOL':<24} {'MODE':<8} {'LIVE':<8} {'V4':>6} {'V6':>6} "
        f"{'BLOCKED PKTS':>13} {'BYTES':>11} {'MONITORED':>10}",
    ]
    for p in pools:
        text.append(
            f"{p['name']:<24} {p['mode']:<8} {p['live_mode'] or '-':<8} {p['prefixes_v4']:>6} "
            f"{p['prefixes_v6']:>6} {p['blocked']['packets']:>13} {p['blocked']['bytes']:>11} "
            f"{p['monitored']['packets']:>10}"
        )
    text.append(
        f"relay-bound TCP/25 passed: {data['relayed']['packets']} packets; "
        f"exempted: {data['exempted']['packets']} packets"
    )
    ctx.emit(data, text)
    return EXIT_OK


def cmd_teardown(ctx: Context) -> int:
    """Delete our table. Needs no policy (only the table's name), refuses a table without our
    ownership marker, and is audited; an audit failure never stops the off switch (exit 3)."""
    if not ctx.args.yes:
        print(
            "op25b-ctl: teardown deletes the enforcement table; outbound TCP/25 will pass "
            "unfiltered. Re-run with --yes to confirm.",
            file=sys.stderr,
        )
        return EXIT_INVALID
    table = ctx.args.table
    if table is None:
        try:
            table = ctx.policy().gateway.table
        except Op25bError as exc:
            table = Gateway().table
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(
                f"op25b-ctl: policy not usable ({first}); using the default table name "
                f"{table!r} (give --table NAME for another)",
                file=sys.stderr,
            )
    removed = applier.teardown(ctx.kernel, FAMILY, table)
    unrecorded = None
    if removed:
        try:
            ctx.source.record(
                audit.Entry(
                    at=ctx.now,
                    user=audit.invoking_user(),
                    command=ctx.command,
                    action="teardown",
                    detail=f"table {FAMILY} {table} deleted: enforcement OFF",
                )
            )
        except StateError as exc:
            unrecorded = str(exc)
    ctx.emit(
        {"table": f"{FAMILY} {table}", "removed": removed, "audit_error": unrecorded},
        [
            f"table {FAMILY} {table} "
            + ("deleted: enforcement is OFF" if removed else "was not present")
        ],
    )
    if unrecorded:
        print(f"op25b-ctl: table deleted, but NOT audited: {unrecorded}", file=sys.stderr)
        return EXIT_NOT_RECORDED
    return EXIT_OK


def _table_name(text: str) -> str:
    if not re.fullmatch(TABLE_RE, text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: not an op25b table name ('op25b', then lowercase letters, digits "
            "or '_', at most 31)"
        )
    return text


def _metrics_address(text: str) -> tuple[str, int] | None:
    from op25b_ctl.daemon.exporter import parse_address

    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_daemon(ctx: Context) -> int:
    from op25b_ctl.cli import thin
    from op25b_ctl.daemon import control, journal
    from op25b_ctl.daemon import loop as daemon

    args = ctx.args
    journal.configure(sys.stderr, verbose=args.verbose)  # the journal with fields, or stderr
    fleet = None
    if args.store or args.gateway:
        from op25b_ctl.source.fleet import open_source

        if not args.store:
            raise StoreUsageError("--gateway goes with --store (a gateway of the fleet)")
        fleet = open_source(
            args.store,
            args.gateway,
            args.state_dir,
            cacert=args.cacert,
            cert=args.cert,
            key=args.key,
        )
        fleet.start()  # unknown gateway: exit 2; neither store nor local snapshot: exit 1
    # one-shot commands for this state directory run in forks of this process (cli/thin.py)
    server = None
    if args.command_socket:
        with contextlib.suppress(StateError):
            ctx.state.make()
        server = control.ControlServer(
            Path(args.state_dir) / thin.SOCKET_NAME, main, policy_dir=args.policy
        )
        server.start()
    try:
        return daemon.run(
            args.policy,
            args.state_dir,
            interval=args.interval,
            verify_interval=None if args.verify_interval == 0 else args.verify_interval,
            metrics_address=args.metrics_address,
            fleet=fleet,
            control=server,
        )
    finally:
        if server is not None:
            server.close()


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--policy",
        type=Path,
        default=Path(os.environ.get("OP25B_POLICY", DEFAULT_POLICY_DIR)),
        metavar="DIR",
        help="policy directory (default: $OP25B_POLICY or %(default)s)",
    )
    common.add_argument(
        "-o", "--output", choices=("text", "json"), default="text", help="output format"
    )
    common.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("OP25B_STATE_DIR", DEFAULT_STATE_DIR)),
        metavar="DIR",
        help="overrides, audit log and lock (default: $OP25B_STATE_DIR or %(default)s); not "
        "used by the --store commands (publish, pool/exempt/audit/fleet status --store), "
        "only by `daemon --store` (its local snapshot, lock and command socket)",
    )
    common.add_argument(
        "--now",
        metavar="TIME",
        help="act as if it were TIME (ISO 8601 with UTC offset): for tests and dry runs",
    )
    cli_fleet.add_store_options(common)
    common.add_argument(
        "--lock-timeout",
        type=seconds_or_zero,
        default=30.0,
        metavar="SECONDS",
        help="wait this long for another op25b-ctl command to finish (default: %(default)s)",
    )
    parser = argparse.ArgumentParser(
        prog="op25b-ctl",
        description="Outbound Port 25 Blocking controller: policy files -> nftables.",
        epilog="Exit status: 0 ok, 1 nftables/runtime failure (nothing changed), "
        "2 invalid policy, usage or a foreign table under our name (nothing applied), "
        "3 changed but not recorded (audit/state write failed after the commit), "
        "4 fleet status: not every gateway is ok, 5 discover found a hole (a served prefix "
        "in no pool), 75 state lock busy (retry).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[Context], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=func)
        return p

    add("validate", cmd_validate, "check the policy files; touch nothing")
    p = add("plan", cmd_plan, "show what apply would change in the live table")
    p.add_argument("--script", action="store_true", help="also print the nft script")
    p = add("apply", cmd_apply, "make the live table match the policy, atomically")
    p.add_argument("--dry-run", action="store_true", help="check with nftables, commit nothing")
    p.add_argument("--script", action="store_true", help="also print the nft script")
    add("status", cmd_status, "each pool's mode, prefixes and block counters")
    p = add("teardown", cmd_teardown, "delete our table: the emergency off switch")
    p.add_argument("--yes", action="store_true", help="confirm; required")
    p.add_argument(
        "--table",
        type=_table_name,
        metavar="NAME",
        help="table to delete (default: the policy's gateway.table, or op25b if the policy "
        "cannot be read); it must carry op25b-ctl's ownership marker",
    )
    cli_ops.register(sub, common)  # rollout, pool, audit, explain
    cli_fleet.register(sub, common)  # publish, fleet status
    cli_discover.register(sub, common)  # discover
    cli_offenders.register(sub, common)  # offenders
    p = add(
        "daemon",
        cmd_daemon,
        "keep the table equal to the policy: apply stages when due, reload on change or "
        "SIGHUP, repair drift, export Prometheus metrics (systemd Type=notify)",
    )
    p.add_argument(
        "--interval",
        type=positive_seconds,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help="seconds between passes: the bound on noticing a policy change or repairing a "
        "deleted, flushed or edited table (default: %(default)s)",
    )
    p.add_argument(
        "--verify-interval",
        type=seconds_or_zero,
        default=DEFAULT_VERIFY_INTERVAL,
        metavar="SECONDS",
        help="seconds between full reads of every set element, which catch hand edits of "
        "elements; 0 = only at start, on SIGHUP and after drift or a failure (default: %(default)s)",
    )
    p.add_argument(
        "--no-command-socket",
        dest="command_socket",
        action="store_false",
        help="do not serve one-shot commands for this state directory on STATE_DIR/"
        ".ctl.sock (they then start from scratch, as without a daemon)",
    )
    p.add_argument(
        "--metrics-address",
        type=_metrics_address,
        default=DEFAULT_METRICS_ADDRESS,
        metavar="ADDR:PORT",
        help="serve Prometheus metrics on http://ADDR:PORT/metrics (an IP address, or "
        "localhost: no name lookup at start); [IPV6]:PORT, :PORT for all addresses, or off "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--gateway",
        default=os.environ.get("OP25B_GATEWAY") or None,
        metavar="NAME",
        help="with --store: this gateway's name in the published gateways.yaml; it enforces "
        "exactly its own pools (default: $OP25B_GATEWAY)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: Sequence[str] | None = None, kernel: Kernel | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    ctx = Context(args, kernel, ["op25b-ctl", *argv])
    try:
        code: int = args.func(ctx)
        return code
    except PolicyError as exc:
        if ctx.json:
            ctx.emit(
                {
                    "ok": False,
                    "errors": [
                        {"file": p.file, "line": p.line, "where": p.where, "message": p.message}
                        for p in exc.problems
                    ],
                },
                [],
            )
        for problem in exc.problems:
            print(f"op25b-ctl: {problem}", file=sys.stderr)
        print(
            f"op25b-ctl: policy invalid ({len(exc.problems)} problem(s)); nothing applied",
            file=sys.stderr,
        )
        return EXIT_INVALID
    except (StoreUsageError, ConcurrentPublish) as exc:
        print(f"op25b-ctl: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except StoreError as exc:
        print(f"op25b-ctl: store: {exc}", file=sys.stderr)
        print("op25b-ctl: nothing changed in the store by this command", file=sys.stderr)
        return EXIT_FAILED
    except (NotOurTableError, OverrideError) as exc:
        print(f"op25b-ctl: {exc}", file=sys.stderr)
        if isinstance(exc, OverrideError):
            print("op25b-ctl: nothing changed", file=sys.stderr)
        return EXIT_INVALID
    except LockBusy as exc:
        print(f"op25b-ctl: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except NotRecordedError as exc:
        print(f"op25b-ctl: {exc}", file=sys.stderr)
        return EXIT_NOT_RECORDED
    except StateError as exc:
        print(f"op25b-ctl: state: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (KernelError, Op25bError) as exc:
        print(f"op25b-ctl: {exc}", file=sys.stderr)
        print("op25b-ctl: live ruleset left unchanged", file=sys.stderr)
        return EXIT_FAILED
    except PermissionError as exc:
        print(f"op25b-ctl: {exc} (nftables needs root or CAP_NET_ADMIN)", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # `op25b-ctl status | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
