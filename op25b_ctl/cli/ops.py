"""`op25b-ctl pool|rollout|audit|explain`: the commands engineers and cron drive.

A thin shell like `cli`: argument parsing and output here, the sequences in `operate`, the
answers in `modes`/`desired`. Registered into `cli.build_parser` by `register`.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import netaddr

from op25b_ctl.cli.context import EXIT_OK, Context, seconds_or_zero
from op25b_ctl.errors import Op25bError, OverrideError
from op25b_ctl.ops import operate
from op25b_ctl.ops.offenders import distinct_offenders
from op25b_ctl.plan import readiness
from op25b_ctl.plan.desired import Desired, from_policy
from op25b_ctl.plan.modes import local, upcoming
from op25b_ctl.plan.ruleset import (
    BASE_CHAIN,
    DISPATCH_CHAIN,
    EXEMPT_CHAIN,
    FAMILY,
    FINGERPRINT_PREFIX,
    pool_chain,
)
from op25b_ctl.plan.table import Table
from op25b_ctl.policy.model import (
    DEFAULT_TIMEZONE,
    Net,
    Policy,
    PrefixIndex,
    address_net,
    parse_net,
)
from op25b_ctl.policy.overrides import ACTION_MODE, Action, parse_when, visible


def _when(policy: Policy, at: datetime | None) -> str:
    return local(policy, at)


def _outcome_json(policy: Policy, out: operate.Outcome) -> dict[str, Any]:
    return {
        "applied": out.applied,
        "ops": len(out.tx.ops),
        "changes": {p: {"before": b, "after": a} for p, (b, a) in out.changes.items()},
        "stages_done": out.new_stages,
        "overrides_expired": [o.pool for o in out.expired],
        "next_change": _when(policy, out.desired.next_change) if out.desired.next_change else None,
        "summary": out.summary(),
    }


# ---------------------------------------------------------------------------- pool


def cmd_pool(ctx: Context) -> int:
    args = ctx.args
    if args.store:
        from op25b_ctl.cli.fleet import cmd_pool_store

        return cmd_pool_store(ctx)
    if args.gateway or args.group or args.wait:
        raise OverrideError("--gateway, --group and --wait go with --store (the fleet)")
    action: Action | None = None if args.pool_action == "clear" else args.pool_action
    policy = ctx.policy()  # invalid policy: exit 2 before the lock is taken
    # `--until ""` is an error (parse_when refuses it), not an override that never expires
    until_text = getattr(args, "until", None)
    until = parse_when(until_text, ctx.now) if until_text is not None else None
    with ctx.lock(f"pool {args.pool_action} {args.name}"):
        out = operate.set_override(
            ctx.kernel,
            policy,
            ctx.source,
            ctx.state,
            ctx.now,
            ctx.command,
            pool=args.name,
            action=action,
            reason=args.reason or "",
            until=until,
            dry_run=args.dry_run,
        )
    decision = out.desired.decisions.get(args.name)
    data = {
        "pool": args.name,
        "action": args.pool_action,
        "mode": decision.mode if decision else None,
        "reason": decision.reason if decision else None,
        "until": until.isoformat() if until else None,
        **_outcome_json(policy, out),
    }
    verb = "would change" if args.dry_run else "changed"
    text = [
        f"pool {args.name}: {decision.mode if decision else '?'} ({decision.reason if decision else ''})",
        f"gateway {verb}: {out.summary()}",
    ]
    ctx.emit(data, text)
    return EXIT_OK


# ---------------------------------------------------------------------------- rollout


def cmd_tick(ctx: Context) -> int:
    kernel = ctx.kernel
    digest = ctx.source.digest()  # before the policy is read
    if not ctx.args.dry_run:
        with ctx.lock("rollout tick (idle check)"):
            gen = kernel.generation()
            ruleset = kernel.ruleset_id()
            idle = gen is not None and operate.tick_is_idle(
                ctx.state, digest, ctx.now, gen, ruleset
            )
        if idle:
            data = {"now": ctx.now.isoformat(), "applied": False, "ops": 0, "idle": True}
            ctx.emit(data, ["op25b-ctl rollout tick: idle"] if ctx.args.verbose else [])
            return EXIT_OK
    policy = ctx.policy()  # invalid policy: exit 2 before taking the lock
    with ctx.lock("rollout tick"):
        before = kernel.generation()
        out = operate.tick(
            kernel, policy, ctx.source, ctx.state, ctx.now, ctx.command, dry_run=ctx.args.dry_run
        )
        after = kernel.generation()
        if before is not None and after is not None and not ctx.args.dry_run:
            operate.remember_tick(
                ctx.state, digest, ctx.now, out, before, after, kernel.ruleset_id()
            )
    data = {"now": _when(policy, ctx.now), **_outcome_json(policy, out)}
    changed = bool(out.tx or out.expired or out.new_stages)
    line = f"op25b-ctl rollout tick {_when(policy, ctx.now)}: " + (
        "(dry run) " if ctx.args.dry_run else ""
    )
    # silent when nothing changed, so cron mails only when something did
    text = [line + out.summary()] if changed or ctx.args.verbose else []
    ctx.emit(data, text)
    return EXIT_OK


def _live_modes_or_none(ctx: Context, policy: Policy) -> dict[str, Any] | None:
    """The gateway's pool modes, or None where it cannot be read (no root, no nftables)."""
    try:
        live = ctx.kernel.read(FAMILY, policy.gateway.table, elements=False)
    except (Op25bError, OSError, ImportError):
        return None
    return operate.live_modes(policy, live) if live is not None else None


def _here(policy: Policy, stage: Any, state: str) -> str:
    """A group stage seen without a gateway identity never fires here: not "due"."""
    if policy.applies(stage) or state not in ("due", "due by then", "done"):
        return state
    return "groups only"


def _stage_state(
    at: datetime | None, name: str, when: datetime, done: dict[str, str], now: datetime
) -> str:
    if at is None:
        return "tbd"
    if at > when:  # also when a stage already applied was moved later ("date adjusted")
        delta = at - when
        if delta < timedelta(hours=1):  # "in 0d 0h" says nothing about a stage minutes away
            return f"in {math.ceil(delta.total_seconds() / 60)}m"
        return f"in {delta.days}d {delta.seconds // 3600}h"
    if name in done:
        return "done"
    return "due" if at <= now else "due by then"


def offender_counts(ctx: Context, policy: Policy) -> tuple[dict[str, int] | None, timedelta | None]:
    """Distinct offenders per tracked pool now, read from the kernel's offender sets, and
    the retention window they cover. None (every stage's count unknown, the calendar still
    shown) where nothing was tracked or can be read: tracking off in gateway.yaml, no table
    yet (a missing set would read as zero offenders), no root or no nftables."""
    window = timedelta(seconds=policy.gateway.offenders.retention)
    if not policy.gateway.offenders.track:
        return None, None
    try:
        if ctx.kernel.read(FAMILY, policy.gateway.table, elements=False) is None:
            return None, window
        return dict(distinct_offenders(ctx.kernel, policy)), window
    except (Op25bError, OSError, ImportError):
        return None, window


def cmd_rollout_status(ctx: Context) -> int:
    policy = ctx.policy()
    when = parse_when(ctx.args.at, ctx.now) if ctx.args.at else ctx.now
    overrides = ctx.source.overrides()
    done = ctx.state.applied_stages()
    want = from_policy(policy, when, overrides.values())
    if not ctx.args.at:
        # a stage applied by someone who keeps no record (the daemon, a plain apply elsewhere)
        # is done too when the gateway holds, for all its pools, the modes wanted now
        live = _live_modes_or_none(ctx, policy)
        if live is not None:
            for s in policy.stages:
                at = s.scheduled
                if (
                    at is not None
                    and at <= when
                    and s.name not in done
                    and all(live.get(p) == want.decisions[p].mode for p in policy.stage_pools(s))
                ):
                    done[s.name] = "seen on the gateway"
    stages: list[dict[str, Any]] = [
        {
            "name": s.name,
            "at": _when(policy, s.scheduled),
            "mode": s.mode,
            "pools": policy.stage_pools(s),
            "description": s.description,
            "state": _here(policy, s, _stage_state(s.scheduled, s.name, when, done, ctx.now)),
            "applied_at": done.get(s.name),
        }
        for s in policy.stages
    ]
    data: dict[str, Any] = {
        "timezone": policy.timezone,
        "at": _when(policy, when),
        "stages": stages,
        "modes": {
            n: {"mode": d.mode, "source": d.source, "reason": d.reason}
            for n, d in want.decisions.items()
        },
        "overrides": [{**o.to_json(), "active": o.active(when)} for o in overrides.values()],
        "exemptions": [
            {
                "prefix": e.prefix,
                "ticket": e.ticket,
                "expires": _when(policy, e.expires) if e.expires else None,
                "active": e.active(when),
                "reason": e.reason,
            }
            for e in policy.exemptions
        ],
        "upcoming": [
            {"at": _when(policy, c.at), "kind": c.kind, "what": c.what}
            for c in upcoming(policy, when, overrides.values())
        ],
    }
    counts, window = offender_counts(ctx, policy)
    ready = readiness.readiness(policy, when, counts, overrides.values())
    data["offender_tracking"] = counts is not None
    data["offender_window_seconds"] = int(window.total_seconds()) if window else None
    data["readiness"] = [
        readiness.to_json(r, _when(policy, r.due) if r.due else None) for r in ready
    ]
    text = [f"rollout calendar ({policy.timezone}) at {data['at']}"]
    if not stages:
        text.append("  no stages (rollout.yaml absent or empty): pools stay at their baseline")
    else:
        w = max(20, *(len(st["name"]) for st in stages))  # names may have 40 characters
        text.append(f"  {'STAGE':<{w}} {'AT':<23} {'MODE':<8} {'STATE':<12} POOLS")
        for st in stages:
            text.append(
                f"  {st['name']:<{w}} {st['at']:<23} {st['mode']:<8} {st['state']:<12} "
                + ", ".join(st["pools"])
            )
    text.append("modes:")
    for name, d in want.decisions.items():
        text.append(f"  {name:<24} {d.mode:<8} {d.reason}")
    text.append("overrides:" + ("" if overrides else " none"))
    for o in overrides.values():
        state = "active" if o.active(when) else "EXPIRED (next tick removes it)"
        if o.pool not in want.decisions or want.decisions[o.pool].source == "static":
            state = "IGNORED: no such dynamic pool in the policy (pool clear removes it)"
        until = _when(policy, o.until) if o.until else "no expiry"
        text.append(f"  {o.pool:<24} {o.action:<8} {state}, until {until}, by {o.user}: {o.reason}")
    text.append("exemptions:" + ("" if policy.exemptions else " none"))
    for e in data["exemptions"]:
        text.append(
            f"  {e['prefix']:<24} {e['ticket']:<16} "
            + ("active" if e["active"] else "expired")
            + (
                (" until " if e["active"] else " at ") + e["expires"]
                if e["expires"]
                else ", no expiry"
            )
        )
    text.append("readiness:" + ("" if ready else " no pending stage to enforce"))
    for r in ready:
        due = r.due.astimezone(policy.zone).date().isoformat() if r.due else "tbd"
        text.append("  " + readiness.describe(r, due, window))
    nxt = data["upcoming"][0] if data["upcoming"] else None
    tbd = [s.name for s in policy.stages if s.scheduled is None]
    text.append(
        f"next change: {nxt['at']} {nxt['what']}"
        if nxt
        else "next change: none scheduled"
        + (f" ({len(tbd)} stage(s) with date tbd: {', '.join(tbd)})" if tbd else "")
    )
    ctx.emit(data, text)
    return EXIT_OK


# ---------------------------------------------------------------------------- audit


def cmd_audit(ctx: Context) -> int:
    if ctx.args.store:
        from op25b_ctl.cli.fleet import store_of

        entries = store_of(ctx).audit()
        where = f"{ctx.args.store}"
    else:
        entries = ctx.source.audit_log()
        where = ctx.source.audit_location
        for line, why in ctx.source.audit_skipped():  # reported; the rest is still shown
            print(f"op25b-ctl: {where}:{line}: skipped: {why}", file=sys.stderr)
    if ctx.args.pool:
        entries = [
            e
            for e in entries
            if e.get("pool") == ctx.args.pool or ctx.args.pool in e.get("changes", {})
        ]
    entries = entries[-ctx.args.lines :] if ctx.args.lines > 0 else entries
    try:
        zone = ctx.policy().zone
    except Op25bError:  # the log must stay readable when the policy is broken
        zone = ZoneInfo(DEFAULT_TIMEZONE)

    def shown(at: Any) -> str:
        try:
            return datetime.fromisoformat(str(at)).astimezone(zone).isoformat(timespec="seconds")
        except ValueError:
            return str(at)

    text = []
    for e in entries:
        changes = ", ".join(
            f"{p} {c.get('before') or 'absent'}->{c.get('after')}"
            for p, c in (e.get("changes") or {}).items()
        )
        try:
            command = shlex.join(str(a) for a in e.get("command") or [])
        except TypeError:
            command = str(e.get("command"))
        shown_line = (
            f"{shown(e.get('at'))}  {e.get('user')}  {e.get('action')}"
            + (f" {e['pool']}" if e.get("pool") else "")
            + (f"  [{changes}]" if changes else "")
            + (f"  reason: {e['reason']}" if e.get("reason") else "")
            + (f"  from {e['host']}" if e.get("host") else "")
            + (f"  policy r{e['policy_revision']}" if e.get("policy_revision") else "")
            + f"  ({command})"
        )
        text.append(visible(shown_line))  # an edited log must not drive the operator's terminal
    if not entries:
        text.append(f"no audit entries in {where}")
    data: dict[str, Any] = {"entries": entries}
    skipped = [] if ctx.args.store else ctx.source.audit_skipped()
    if skipped:
        data["skipped"] = [{"line": line, "why": why} for line, why in skipped]
    ctx.emit(data, text)
    return EXIT_OK


# ---------------------------------------------------------------------------- explain


def _live_check(
    ctx: Context, want: Desired, pool: str | None, known: Table | None
) -> tuple[bool | None, list[str]]:
    """Does the live table implement `want` where it matters? (cheap: no element listing)

    The elements-fingerprint counter proves the kernel's sets hold exactly the desired
    prefixes (pools, relays); chain rule ids prove the modes, the exemptions (the `exempt`
    chain's rules hold them) and the dispatch.
    `known` is the table as our last command left it, nothing committed since: no read.
    """
    live = known if known is not None else ctx.kernel.read(FAMILY, want.table.name, elements=False)
    if live is None:
        return None, [f"table {FAMILY} {want.table.name} is absent: nothing is blocked"]
    problems: list[str] = []
    fp = {c for c in want.table.counters if c.startswith(FINGERPRINT_PREFIX)}
    if not fp <= live.counters:
        problems.append("live set elements differ from the model (run `op25b-ctl apply`)")
    chains = [BASE_CHAIN, DISPATCH_CHAIN, EXEMPT_CHAIN] + ([pool_chain(pool)] if pool else [])
    for name in chains:
        wanted = want.table.chains.get(name)
        got = live.chains.get(name)
        if wanted is None:
            continue
        if got is None or tuple(r.id for r in got.rules) != wanted.rule_ids:
            problems.append(f"live chain {name} differs from the model (run `op25b-ctl apply`)")
    return not problems, problems


def _holds(prefixes: Iterable[str], addr: Net) -> bool:
    """Whether one of a handful of (validated) prefixes holds `addr` (relays, exemptions; the
    pools' 100,000 prefixes are asked through `Policy.pool_of` instead)."""
    return any(PrefixIndex([(parse_net(p), (), p)]).holding(addr) for p in prefixes)


def cmd_explain(ctx: Context) -> int:
    policy = ctx.policy()
    when = parse_when(ctx.args.at, ctx.now) if ctx.args.at else ctx.now
    try:
        addr = netaddr.IPAddress(ctx.args.address)
        dest = netaddr.IPAddress(ctx.args.to) if ctx.args.to else None
    except (netaddr.AddrFormatError, ValueError) as exc:
        raise OverrideError(f"not an IP address: {exc}") from None
    if dest is not None and dest.version != addr.version:
        raise OverrideError("--to must be of the same address family as ADDRESS")
    overrides = ctx.source.overrides().values()
    record, current = (None, False) if ctx.args.at else operate.known_live(ctx.kernel, ctx.state)
    want = from_policy(
        policy,
        when,
        overrides,
        # --at: decisions only; now: the sets' fingerprint too, free if we made them live
        shape_only=bool(ctx.args.at),
        known_sets=(record.sets_key, record.fingerprint) if record is not None else None,
    )
    known = operate.known_table(record, current, want.table)
    source = address_net(addr.version, int(addr))
    pool = policy.pool_of(source)
    exemption = next((e for e in policy.exemptions if _holds([e.prefix], source)), None)
    relay = (
        next(
            (r for r in policy.relays if _holds(r.addresses, address_net(dest.version, int(dest)))),
            None,
        )
        if dest is not None
        else None
    )
    decision = want.decisions[pool.name] if pool else None
    why: list[str] = []
    verdict: str
    if pool is None:
        verdict = "passes"
        why.append("not in any subscriber pool: OP25B does not apply")
    else:
        assert decision is not None
        why.append(
            f"pool {pool.name} ({'dynamic' if pool.dynamic else 'static'}): mode {decision.mode}: {decision.reason}"
        )
        if relay is not None:
            verdict = "passes"
            why.append(f"destination {dest} is NMTnet relay {relay.name!r}: always allowed")
        elif exemption is not None and exemption.active(when):
            verdict = "passes"
            why.append(
                f"exempted by {exemption.prefix} (ticket {exemption.ticket}"
                + (f", until {_when(policy, exemption.expires)}" if exemption.expires else "")
                + ")"
            )
        elif decision.mode == "enforce":
            verdict = "blocked"
            why.append(
                f"TCP/25 to {'non-relay destinations' if dest is None else dest} is "
                + ("rejected (TCP reset)" if policy.gateway.action == "reject" else "dropped")
            )
        elif decision.mode == "monitor":
            verdict = "passes"
            why.append("monitor: TCP/25 passes and is counted")
        else:
            verdict = "passes"
            why.append("off: TCP/25 passes")
        if exemption is not None and not exemption.active(when):
            why.append(f"exemption {exemption.prefix} ({exemption.ticket}) has expired")
    live_ok, live_notes = (None, ["live table not checked (--at given)"])
    if not ctx.args.at:
        live_ok, live_notes = _live_check(
            ctx, want, pool.name if pool and pool.dynamic else None, known
        )
        if live_ok is None and verdict == "blocked":
            verdict = "passes (table absent)"
    data = {
        "address": str(addr),
        "to": str(dest) if dest else None,
        "at": _when(policy, when),
        "pool": pool.name if pool else None,
        "mode": decision.mode if decision else None,
        "source": decision.source if decision else None,
        "exemption": exemption.ticket if exemption else None,
        "relay": relay.name if relay else None,
        "tcp25": verdict,
        "why": why,
        "live_agrees": live_ok,
        "live": live_notes,
    }
    target = dest if dest is not None else "other networks' mail servers"
    text = [f"TCP/25 from {addr} to {target}: {verdict.upper()}", *[f"  {w}" for w in why]]
    text.append(
        "  live table: "
        + ("agrees with the model" if live_ok else "; ".join(live_notes) or "not checked")
    )
    ctx.emit(data, text)
    return EXIT_OK


# ---------------------------------------------------------------------------- wiring


def _fleet_scope(p: argparse.ArgumentParser) -> None:
    """With --store: which gateways the one key reaches, and whether to wait for them."""
    p.add_argument("--gateway", metavar="NAME", help="with --store: only this gateway")
    p.add_argument("--group", metavar="NAME", help="with --store: only this group's gateways")
    p.add_argument(
        "--wait",
        type=seconds_or_zero,
        default=0.0,
        metavar="SECONDS",
        help="with --store: wait until every gateway the change reaches reports it applied "
        "(exit 1 if some did not within SECONDS). Only gateways that carry the pool in "
        "gateways.yaml count (narrowed by --gateway/--group); the others enforce nothing "
        "of it and are not waited for",
    )


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the pool/rollout/audit/explain commands to op25b-ctl's subparsers."""

    def leaf(
        parent: Any, name: str, func: Callable[[Context], int], help: str
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(
            name, parents=[common], help=help, description=help
        )
        p.set_defaults(func=func)
        return p

    pool = sub.add_parser(
        "pool",
        help="per-pool override: enforce, monitor, rollback, clear",
        description="Override one pool's mode at once, ahead of the rollout schedule, until "
        "it expires or is cleared. Only that pool's chain is rewritten; other pools and "
        "their counters are untouched. --until takes an ISO 8601 time with UTC offset "
        "(2011-01-31T18:00+09:00) or a duration (90m, 4h, 2d). With --store the override "
        "is one key in the fleet store for every gateway carrying the pool (--gateway/"
        "--group narrow it); that needs no --state-dir, nothing local is read or written.",
    )
    pool_sub = pool.add_subparsers(dest="pool_action", required=True, metavar="ACTION")
    for action, help in (
        ("enforce", "block TCP/25 from the pool now"),
        ("monitor", "let TCP/25 pass but count it"),
        ("rollback", "lift OP25B from the pool now (off: nothing blocked or counted)"),
    ):
        assert action in ACTION_MODE
        p = leaf(pool_sub, action, cmd_pool, help)
        p.add_argument("name", metavar="NAME", help="pool name (pools.yaml)")
        p.add_argument("--reason", required=True, help="why (recorded in the audit log)")
        p.add_argument("--until", metavar="TIME", help="expiry: ISO time with offset or 4h/2d")
        p.add_argument("--dry-run", action="store_true", help="check with nftables, change nothing")
        _fleet_scope(p)
    p = leaf(pool_sub, "clear", cmd_pool, "remove the pool's override: the schedule rules again")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--reason", default="", help="why (recorded in the audit log)")
    p.add_argument("--dry-run", action="store_true", help="check with nftables, change nothing")
    _fleet_scope(p)

    rollout = sub.add_parser(
        "rollout",
        help="the staged rollout: tick (for cron) and status (the calendar)",
        description="Staged rollout from rollout.yaml.",
    )
    r_sub = rollout.add_subparsers(dest="rollout_action", required=True, metavar="ACTION")
    p = leaf(
        r_sub,
        "tick",
        cmd_tick,
        "apply whatever is due now; idempotent, locked, silent unless something changed "
        "(for cron / the systemd timer)",
    )
    p.add_argument("--dry-run", action="store_true", help="check with nftables, change nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="print a line even if no change")
    p = leaf(r_sub, "status", cmd_rollout_status, "the calendar: stages, pools, done or due")
    p.add_argument("--at", metavar="TIME", help="preview the calendar and modes at TIME")

    p = leaf(sub, "audit", cmd_audit, "show the audit log (who changed what, when, why)")
    p.add_argument("-n", "--lines", type=int, default=20, help="last N entries (0: all)")
    p.add_argument("--pool", metavar="NAME", help="only entries about this pool")

    p = leaf(
        sub,
        "explain",
        cmd_explain,
        "which pool holds ADDRESS, its mode and why, and whether its TCP/25 is blocked",
    )
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("--to", metavar="ADDRESS", help="destination (default: any non-relay)")
    p.add_argument("--at", metavar="TIME", help="answer for TIME (model only, no live check)")
