"""`op25b-ctl offenders`: who still tries TCP/25, from the kernel's offender sets.

Read over netlink, one dump per set; through the daemon's socket when it runs (then "first
seen" comes from the daemon's record). The list goes to stdout only: never to the journal,
the audit trail or a file (docs/offenders.md, "Privacy").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from op25b_ctl.cli import leases as lease_columns
from op25b_ctl.cli.context import EXIT_FAILED, EXIT_INVALID, EXIT_OK, Context
from op25b_ctl.errors import Op25bError, TableNotFound
from op25b_ctl.ops.offenders import FIRST_SEEN, read_pools
from op25b_ctl.plan.modes import decide
from op25b_ctl.plan.offenders import Exemptions, Offender, ranked
from op25b_ctl.plan.ruleset import FAMILY, tracking_of
from op25b_ctl.policy.loader import check_bounds
from op25b_ctl.policy.model import DEFAULT_TIMEZONE, Policy

DEFAULT_TOP = 50


def _when(t: datetime | None, policy: Policy, exact: bool) -> str:
    if t is None:
        return "-"
    text = t.astimezone(policy.zone).strftime("%Y-%m-%d %H:%M:%S")
    return text if exact else f"<={text}"


def cmd_offenders(ctx: Context) -> int:
    if ctx.args.store:
        return _fleet(ctx)
    policy = ctx.policy()
    decisions = decide(policy, ctx.now, list(ctx.source.overrides().values()))
    modes = {name: d.mode for name, d in decisions.items()}
    wanted = None
    if ctx.args.pool:
        unknown = sorted(set(ctx.args.pool) - {p.name for p in policy.pools})
        if unknown:
            print(f"op25b-ctl: no such pool in pools.yaml: {', '.join(unknown)}", file=sys.stderr)
            return EXIT_INVALID
        wanted = set(ctx.args.pool)
    if ctx.args.mode:
        wanted = {n for n in (wanted or modes) if modes.get(n) in set(ctx.args.mode)}
    # the kernel's times count from the real clock, whatever --now says
    now = datetime.now(UTC)
    pools = read_pools(ctx.kernel, policy, modes, pools=wanted, now=now, first_seen=FIRST_SEEN)
    present = _table_present(ctx, policy)
    exemptions = Exemptions(e.prefix for e in policy.exemptions if e.active(ctx.now))
    top = ctx.args.top or None
    rows = ranked(pools, now, top=top, exemptions=exemptions, first_seen=FIRST_SEEN)
    leases = lease_columns.load(ctx.args.leases)  # a broken file: reported, list still shown
    data: dict[str, Any] = {
        "time": now.isoformat(),
        "table": f"{FAMILY} {policy.gateway.table}",
        "present": present,
        "pools": [
            {
                "pool": ps.pool,
                "mode": ps.mode,
                "distinct": ps.distinct,
                "v4": len(ps.v4),
                "v6": len(ps.v6),
                "size": ps.tracking.size,
                "retention_seconds": ps.tracking.timeout,
                "subscriber_prefix_v6": ps.tracking.prefix_v6,
                "fill_v4": round(ps.fill(4), 6),
                "fill_v6": round(ps.fill(6), 6),
            }
            for ps in pools
        ],
        "offenders": [{**r.to_json(), **leases.json(r)} for r in rows],
    }
    text = _text(policy, pools, rows, top, leases)
    if not pools and (ctx.args.pool or ctx.args.mode):
        text = [_nothing_matches(policy, modes, ctx.args.pool, ctx.args.mode)]
    if not present:
        text.insert(
            0,
            f"table {FAMILY} {policy.gateway.table} is absent: nothing is recorded "
            "(`op25b-ctl apply` or the daemon makes it)",
        )
    ctx.emit(data, text)
    return EXIT_FAILED if leases.failed else EXIT_OK


def _table_present(ctx: Context, policy: Policy) -> bool:
    """Whether our table exists: a missing set reads as empty, which must not pass for
    "nobody sent on 25" (one counter dump, the cheapest read that tells)."""
    try:
        ctx.kernel.counters(FAMILY, policy.gateway.table)
    except TableNotFound:
        return False
    return True


def _nothing_matches(
    policy: Policy, modes: Mapping[str, str], pool: list[str] | None, mode: list[str] | None
) -> str:
    """Why --pool/--mode left no pool: the tracked pools and their modes now, to pick from."""
    asked = " ".join([*(f"--pool {p}" for p in pool or ()), *(f"--mode {m}" for m in mode or ())])
    tracked = [p.name for p in policy.pools if tracking_of(policy, p.name) is not None]
    have = ", ".join(f"{n} ({modes.get(n, 'off')})" for n in tracked) or "none"
    return f"no tracked pool matches {asked} (static pools are never tracked); tracked now: {have}"


def _text(
    policy: Policy,
    pools: list[Any],
    rows: list[Offender],
    top: int | None,
    leases: lease_columns.LeaseColumns,
) -> list[str]:
    lines = [
        f"{ps.pool} ({ps.mode}): {ps.distinct} source(s) in the last "
        f"{_duration(ps.tracking.timeout)}; sets {len(ps.v4)}/{ps.tracking.size} v4, "
        f"{len(ps.v6)}/{ps.tracking.size} v6"
        + (
            " FULL: new sources are not recorded (still blocked)"
            if max(ps.fill(4), ps.fill(6)) >= 1
            else ""
        )
        for ps in pools
    ]
    if not pools:
        lines.append("no pool tracks offenders (gateway.yaml offenders.track, dynamic pools)")
    if rows:
        header: tuple[str, ...] = (
            "SOURCE", "POOL", "MODE", "ATTEMPTS", "FIRST SEEN", "LAST SEEN", "EXEMPTED",
        )  # fmt: skip
        with_lease = leases.leases is not None
        header += ("LEASE",) if with_lease else ()
        table = [header] + [
            (
                r.source,
                r.pool,
                r.mode,
                str(r.attempts),
                _when(r.first_seen, policy, r.first_seen_exact),
                _when(r.last_seen, policy, True),
                "yes" if r.exempted else "partly" if r.partly_exempted else "no",
                *((leases.text(r),) if with_lease else ()),
            )
            for r in rows
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines.append("")
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in table
        ]
        total = sum(ps.distinct for ps in pools)
        if top is not None and total > len(rows):
            lines.append(f"(top {len(rows)} of {total}; --top 0 for all)")
    return lines


def _fleet(ctx: Context) -> int:
    """The fleet-wide picture from each gateway's one status key: per-pool distinct counts
    and its bounded top list (the daemon refreshes both every 30 s). No key per address."""
    from op25b_ctl.cli.fleet import store_of  # the store client only for --store

    store = store_of(ctx)
    statuses = store.statuses()
    zone = _published_zone(store.published)
    pools: dict[str, dict[str, int]] = {}
    rows: list[dict[str, Any]] = []
    for gateway, status in sorted(statuses.items()):
        section = status.get("offenders")
        if not isinstance(section, dict):
            continue
        for pool, n in (section.get("pools") or {}).items():
            if ctx.args.pool and pool not in ctx.args.pool:
                continue
            pools.setdefault(str(pool), {})[gateway] = int(n)
        for r in section.get("top") or []:
            if ctx.args.pool and r.get("pool") not in ctx.args.pool:
                continue
            if ctx.args.mode and r.get("mode") not in ctx.args.mode:
                continue
            rows.append({**r, "gateway": gateway, "at": section.get("at")})
    rows.sort(key=lambda r: (-int(r.get("attempts", 0)), str(r.get("source"))))
    if ctx.args.top:
        rows = rows[: ctx.args.top]
    leases = lease_columns.load(ctx.args.leases)  # one DHCP server for the fleet, say
    for r in rows:
        reported = _Reported.of(r)
        r.update(leases.json(reported) if reported is not None else leases.json(None))
    data = {
        "gateways": sorted(statuses),
        "pools": {
            p: {"distinct": sum(g.values()), "by_gateway": g} for p, g in sorted(pools.items())
        },
        "offenders": rows,
    }
    text = [
        f"{p}: {sum(g.values())} source(s) on {len(g)} gateway(s) ("
        + ", ".join(f"{gw} {n}" for gw, n in sorted(g.items()))
        + ")"
        for p, g in sorted(pools.items())
    ] or ["no gateway reports offenders (daemons with --store report them every 30 s)"]
    if rows:
        header: tuple[str, ...] = ("SOURCE", "GATEWAY", "POOL", "MODE", "ATTEMPTS", "LAST SEEN")
        with_lease = leases.leases is not None
        header += ("LEASE",) if with_lease else ()
        table = [header] + [
            (
                str(r.get("source")),
                r["gateway"],
                str(r.get("pool")),
                str(r.get("mode")),
                str(r.get("attempts")),
                _shown(r.get("last_seen"), zone),
                *((_lease_text(leases, r),) if with_lease else ()),
            )
            for r in rows
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        text.append("")
        text += [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in table
        ]
        text.append("(each gateway reports its own top 10; `offenders` on a gateway lists all)")
    ctx.emit(data, text)
    return EXIT_FAILED if leases.failed else EXIT_OK


def _published_zone(published: Callable[[], Any]) -> ZoneInfo:
    """The published policy's zone (rollout.yaml `timezone`), as the local `offenders` shows
    times in its policy's: read from that one small file, not the 110,000-prefix rest. The
    default zone when nothing is published or the file says none (as the policy would)."""
    try:
        record = published()
        text = record.files.get("rollout.yaml") if record is not None else None
        if text and check_bounds(text) is None:
            data = yaml.safe_load(text)
            if isinstance(data, dict) and isinstance(data.get("timezone"), str):
                return ZoneInfo(data["timezone"])
    except (Op25bError, yaml.YAMLError, ValueError, ZoneInfoNotFoundError):
        pass  # the list stays readable; the time is then in the default zone
    return ZoneInfo(DEFAULT_TIMEZONE)


def _shown(value: Any, zone: ZoneInfo) -> str:
    """A reported ISO time as the local list shows one; anything else as it came."""
    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if t.tzinfo is None:
        return str(value)
    return t.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def _lease_text(leases: lease_columns.LeaseColumns, row: dict[str, Any]) -> str:
    reported = _Reported.of(row)
    return leases.text(reported) if reported is not None else "-"


@dataclass(frozen=True)
class _Reported:
    """A fleet status row (JSON) as the lease lookup wants it."""

    source: str
    last_seen: datetime

    @staticmethod
    def of(row: dict[str, Any]) -> _Reported | None:
        try:
            seen = datetime.fromisoformat(str(row.get("last_seen")))
        except ValueError:
            return None
        return _Reported(str(row.get("source")), seen) if seen.tzinfo is not None else None


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _top(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= 10_000_000:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..10000000")
    return value


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `offenders` to op25b-ctl's subparsers."""
    add: Callable[..., argparse.ArgumentParser] = sub.add_parser
    help = "who still tries TCP/25 from monitored and enforced pools, most attempts first"
    p = add(
        "offenders",
        parents=[common],
        help=help,
        description=help + ". Read from the kernel's offender sets (gateway.yaml offenders: "
        "size, retention); metadata only: source address or IPv6 subscriber prefix, pool, "
        "mode, attempts (SYNs), first and last seen, whether it is exempted (yes, partly: "
        "an exemption inside the source, no). First seen is "
        "known while the daemon runs (<= marks a bound: the source was there when the "
        "daemon first looked).",
    )
    p.set_defaults(func=cmd_offenders)
    p.add_argument("--pool", action="append", metavar="NAME", help="only this pool (repeatable)")
    p.add_argument(
        "--mode",
        action="append",
        choices=("monitor", "enforce", "off"),
        help="only pools in this mode now (repeatable)",
    )
    p.add_argument(
        "--top",
        type=_top,
        default=DEFAULT_TOP,
        metavar="N",
        help="show the N sources with most attempts; 0 = all (default: %(default)s)",
    )
    lease_columns.add_argument(p)
