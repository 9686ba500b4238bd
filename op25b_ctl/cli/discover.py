"""`op25b-ctl discover`: the prefixes this gateway serves that no pool lists (the holes).

Reads what the policy's `discovery:` section names from the running kernel (never writes,
never touches the table), compares it with the pools and prints holes, the served addresses
inside static pools, and the pools nothing here serves. Exit 0 without a hole, 5 with one
(so cron or a check can alarm on it), 2 for a policy without a discovery section.
`--suggest` prints the YAML to paste into pools.yaml; the policy is never changed.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from op25b_ctl.cli.context import EXIT_HOLE, EXIT_OK, Context
from op25b_ctl.errors import PolicyError, Problem, StoreUsageError
from op25b_ctl.plan.coverage import Coverage, Served, compare, suggest
from op25b_ctl.policy.discovery import Discovery
from op25b_ctl.policy.model import Policy

MAX_LISTED = 50  # text output: holes and static hits listed before "... and N more"


def coverage_data(cov: Coverage) -> dict[str, Any]:
    """The report as JSON (also what the daemon's fleet status carries, shortened)."""
    return {
        "holes": len(cov.holes) > 0,
        "uncovered": [
            {
                "prefix": h.prefix,
                "addresses": h.addresses,
                "served_items": h.items,
                "seen_as": list(h.origins),
            }
            for h in cov.holes
        ],
        "uncovered_prefixes": {
            "ipv4": cov.uncovered_prefixes(4),
            "ipv6": cov.uncovered_prefixes(6),
        },
        "uncovered_addresses": {
            "ipv4": cov.uncovered_addresses(4),
            "ipv6": cov.uncovered_addresses(6),
        },
        "covered": [
            {"pool": p.name, "dynamic": p.dynamic, "served_items": p.served}
            for p in cov.pools
            if p.served
        ],
        "covered_by_static_pool": [
            {"prefix": prefix, "pool": pool, "seen_as": origin}
            for prefix, pool, origin in cov.static
        ],
        "unserved": cov.unserved,
        "served_items": cov.served,
        "skipped_items": cov.skipped,
    }


def _policy(ctx: Context) -> Policy:
    """The policy directory's, or with --store the published policy as --gateway enforces it
    (its pools only, its own discovery section if gateways.yaml gives one)."""
    if not ctx.args.store:
        if ctx.args.gateway:
            raise StoreUsageError("--gateway goes with --store (a gateway of the fleet)")
        return ctx.policy()
    from op25b_ctl.cli.fleet import published_policy, store_of

    if not ctx.args.gateway:
        raise StoreUsageError("with --store, say which gateway this is: --gateway NAME")
    store = store_of(ctx)
    try:
        _, fleet = published_policy(store)
    finally:
        store.close()
    try:
        return fleet.for_gateway(ctx.args.gateway)
    except KeyError as exc:
        raise StoreUsageError(str(exc.args[0])) from None


def _section(ctx: Context) -> tuple[Policy, Discovery]:
    policy = _policy(ctx)  # once: at 110,000 prefixes even the cached policy costs 0.1 s
    section = policy.gateway.discovery
    if section is None:
        raise PolicyError(
            [
                Problem(
                    "gateway.yaml",
                    "gateway.discovery",
                    "no discovery section: say what this gateway's sessions look like in the "
                    "kernel (docs/discovery.md; policies/nmtnet/gateway.yaml has an example)",
                )
            ]
        )
    return policy, section


def cmd_discover(ctx: Context, read: Callable[[Discovery], list[Served]] | None = None) -> int:
    policy, section = _section(ctx)
    if read is None:
        from op25b_ctl.kernel.discovery import read_served

        read = read_served
    cov = compare(read(section), policy, section)
    if ctx.args.suggest:
        note = f"served by {socket.gethostname()}, found by op25b-ctl discover {ctx.now:%Y-%m-%d}"
        sys.stdout.write(suggest(cov, note=note))
        return EXIT_HOLE if cov.holes else EXIT_OK
    data = coverage_data(cov)
    text = _text(cov)
    ctx.emit(data, text)
    if cov.unserved:
        print(
            f"op25b-ctl: warning: {len(cov.unserved)} pool(s) listed but not served here: "
            + ", ".join(cov.unserved[:10])
            + (" ..." if len(cov.unserved) > 10 else ""),
            file=sys.stderr,
        )
    return EXIT_HOLE if cov.holes else EXIT_OK


def _v6_size(addresses: int) -> str:
    """IPv6 in /64s (a subscriber LAN), not 36893488147419103232 addresses: `2x/64`, with
    any rest beside it (a /128 session address is `1`)."""
    full, rest = divmod(addresses, 1 << 64)
    if not full:
        return str(rest)
    return f"{full}x/64" + (f"+{rest}" if rest else "")


def _text(cov: Coverage) -> list[str]:
    v4, v6 = cov.uncovered_addresses(4), cov.uncovered_addresses(6)
    lines = [
        f"served: {cov.served} prefix(es) compared ({cov.skipped} skipped); "
        + (
            f"HOLE: {len(cov.holes)} uncovered prefix(es) ({v4} IPv4 addresses"
            + (f", IPv6 {_v6_size(v6)}" if v6 else "")
            + "): TCP/25 from them is never blocked"
            if cov.holes
            else "no holes: every served address is in a pool"
        )
    ]
    if cov.holes:
        lines.append(f"{'UNCOVERED':<44} {'ADDRS':>8}  SEEN AS")
        for h in cov.holes[:MAX_LISTED]:
            size = _v6_size(h.addresses) if ":" in h.prefix else str(h.addresses)
            lines.append(f"{h.prefix:<44} {size:>8}  {'; '.join(h.origins)}")
        if len(cov.holes) > MAX_LISTED:
            lines.append(f"... and {len(cov.holes) - MAX_LISTED} more (-o json lists all)")
        lines.append("op25b-ctl discover --suggest prints them as a pool for pools.yaml")
    covered = [p for p in cov.pools if p.served]
    if covered:
        lines.append(f"{'COVERED BY POOL':<44} {'SERVED':>8}")
        for p in covered:
            lines.append(f"{p.name + ('' if p.dynamic else ' (static)'):<44} {p.served:>8}")
    if cov.static:
        lines.append("served inside static pools (never blocked):")
        for prefix, pool, origin in cov.static[:MAX_LISTED]:
            lines.append(f"  {prefix:<42} {pool}  {origin}")
        if len(cov.static) > MAX_LISTED:
            lines.append(f"  ... and {len(cov.static) - MAX_LISTED} more")
    if cov.unserved:
        lines.append("unserved (listed, not seen here): " + ", ".join(cov.unserved))
    return lines


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `discover`."""
    help = (
        "compare what this gateway serves (sessions, routes, aggregates in its kernel) with "
        f"the pools: exit {EXIT_HOLE} if a served prefix is in no pool; never changes anything"
    )
    p = sub.add_parser(
        "discover",
        parents=[common],
        help=help,
        description=help,
        epilog=f"Exit status: 0 no hole, {EXIT_HOLE} a hole (a served prefix in no pool), 2 no "
        "discovery section, an invalid policy or bad usage, 1 the kernel could not be read. "
        "See docs/discovery.md.",
    )
    p.add_argument(
        "--suggest",
        action="store_true",
        help="print the holes as YAML to paste into pools.yaml (the policy is not changed)",
    )
    p.add_argument(
        "--gateway",
        default=os.environ.get("OP25B_GATEWAY") or None,
        metavar="NAME",
        help="with --store: this gateway's name in the published gateways.yaml; its pools "
        "and discovery section are compared (default: $OP25B_GATEWAY)",
    )
    p.set_defaults(func=cmd_discover)
