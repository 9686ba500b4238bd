"""`op25b-ctl publish`, `fleet status` and `pool ... --store`: operating the fleet through etcd.

A thin shell like `cli.ops`: the store adapter (`source.etcd`) does the I/O, the policy
model says which gateways carry which pools. Nothing here touches the local kernel: these
commands run from an engineer's workstation as well as from a gateway.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from op25b_ctl.cli.context import EXIT_NOT_ALL_OK, Context
from op25b_ctl.errors import ConcurrentPublish, Op25bError, OverrideError, StoreUsageError
from op25b_ctl.policy.loader import parse_policy, read_policy_files
from op25b_ctl.policy.model import Policy, parse_net
from op25b_ctl.policy.overrides import Action, Override, check, check_reason, parse_when
from op25b_ctl.source import audit

if TYPE_CHECKING:  # the store's module is imported by the fleet commands alone
    from op25b_ctl.source.etcd import EtcdStore, Published, Scope

EXIT_OK = 0


# The store's module is imported by the fleet commands alone (etcd3gw, requests): no other
# command pays for it.
def _host() -> str:
    from op25b_ctl.source.etcd import host_name

    return host_name()


def _scope(*args: str) -> Scope:
    from op25b_ctl.source.etcd import Scope

    return Scope(*args)  # type: ignore[arg-type]


STALE_AFTER = 60.0  # seconds without a status report before a gateway is shown as stale


def store_of(ctx: Context) -> EtcdStore:
    """The store named by --store/$OP25B_STORE with the TLS flags; a usage error without it."""
    args = ctx.args
    if not getattr(args, "store", None):
        raise StoreUsageError(
            "no store: give --store etcd://HOST:PORT[,HOST:PORT...]/PREFIX or set $OP25B_STORE"
        )
    from op25b_ctl.source.etcd import EtcdStore, parse_store_url

    return EtcdStore(parse_store_url(args.store, cacert=args.cacert, cert=args.cert, key=args.key))


def _audit_entry(ctx: Context, action: str, **fields: Any) -> dict[str, Any]:
    entry = audit.Entry(
        at=ctx.now,
        user=audit.invoking_user(),
        command=ctx.command,
        action=action,
        reason=fields.pop("reason", ""),
        pool=fields.pop("pool", None),
        detail=fields.pop("detail", ""),
    ).to_json()
    return {**entry, "host": _host(), **fields}


def published_policy(store: EtcdStore) -> tuple[Published, Policy]:
    published = store.published()
    if published is None:
        raise StoreUsageError(
            f"nothing published in {store.config.url} yet: run `op25b-ctl publish` first"
        )
    return published, parse_policy(published.files, origin=f"{store.config.url} (published)")


# ---------------------------------------------------------------------------- publish


def cmd_publish(ctx: Context) -> int:
    args = ctx.args
    files = read_policy_files(args.policy)
    policy = parse_policy(files, origin=str(args.policy))  # invalid: exit 2, nothing written
    store = store_of(ctx)
    base = store.published()
    if args.base_revision is not None:
        current = base.revision if base else 0
        if args.base_revision != current:
            raise ConcurrentPublish(
                f"--base-revision {args.base_revision}, but the store holds policy revision "
                f"{current}; nothing written. Review what changed since and publish again."
            )
    from op25b_ctl.source.etcd import files_digest

    digest = files_digest(files)
    if base is not None and base.digest == digest and not args.force:
        ctx.emit(
            {"published": False, "revision": base.revision, "digest": digest},
            [f"policy unchanged: already published as revision {base.revision}; nothing written"],
        )
        return EXIT_OK
    by = {"user": audit.invoking_user(), "host": _host(), "at": ctx.now.isoformat()}
    summary = (
        f"{len(policy.pools)} pools, {len(policy.relays)} relays, {len(policy.stages)} stages, "
        f"{len(policy.gateways)} gateways"
    )
    new = store.publish(
        files,
        _audit_entry(ctx, "publish", reason=args.reason or "", detail=summary),
        base=base,
        meta={"published_by": by, "reason": args.reason or "", "summary": summary},
        now=ctx.now,
    )
    ctx.emit(
        {
            "published": True,
            "revision": new.revision,
            "digest": new.digest,
            "store_revision": new.mod_revision,
            "based_on": base.revision if base else None,
            "summary": summary,
        },
        [
            f"published policy revision {new.revision} to {store.config.url} "
            f"({summary}; digest {new.digest[:12]}, store revision {new.mod_revision})"
        ],
    )
    return EXIT_OK


# ---------------------------------------------------------------------------- pool --store


def scope_of(ctx: Context, policy: Policy, pool: str | None) -> Scope:
    """--gateway/--group as a Scope, checked against the published gateways.yaml."""
    args = ctx.args
    gateway, group = getattr(args, "gateway", None), getattr(args, "group", None)
    if gateway and group:
        raise OverrideError("give --gateway or --group, not both")
    if gateway:
        try:
            gw = policy.fleet_gateway(gateway)
        except KeyError as exc:
            raise OverrideError(str(exc.args[0])) from None
        if pool is not None and pool not in policy.gateway_pools(gw):
            raise OverrideError(f"gateway {gateway!r} does not carry pool {pool!r}")
        return _scope("gateway", gateway)
    if group:
        if group not in policy.groups():
            known = ", ".join(policy.groups()) or "none"
            raise OverrideError(f"no gateway is in group {group!r} (known groups: {known})")
        return _scope("group", group)
    return _scope()


def reached(policy: Policy, pool: str, scope: Scope) -> list[str]:
    """The gateways an override on `pool` with `scope` reaches."""
    return [gw.name for gw in policy.gateways_carrying(pool) if scope.reaches(gw.name, gw.group)]


def cmd_pool_store(ctx: Context) -> int:
    """`pool rollback|enforce|monitor|clear NAME --store ...`: one key, every gateway."""
    args = ctx.args
    action: Action | None = None if args.pool_action == "clear" else args.pool_action
    if getattr(args, "dry_run", False):
        raise StoreUsageError("--dry-run is for one gateway's nftables; not with --store")
    store = store_of(ctx)
    published, policy = published_policy(store)
    scope = scope_of(ctx, policy, args.name)
    until_text = getattr(args, "until", None)  # "" is refused, never "no expiry"
    until = parse_when(until_text, ctx.now) if until_text is not None else None
    targets = reached(policy, args.name, scope)
    record: dict[str, Any] | None = None
    if action is not None:
        check(policy, args.name, args.reason or "", until, ctx.now)
        override = Override(args.name, action, args.reason, audit.invoking_user(), ctx.now, until)
        record = {
            **override.to_json(),
            "host": _host(),
            "scope": scope.key,
            "policy_revision": published.revision,
        }
    elif args.name not in {p.name for p in policy.pools}:
        known = ", ".join(p.name for p in policy.pools)
        raise OverrideError(f"unknown pool {args.name!r} (known: {known})")
    check_reason(args.reason or "", required=False)
    verb = f"pool {args.pool_action}"
    detail = f"{scope}: {', '.join(targets) or 'no gateway carries it'}"
    if until is not None:
        detail += f"; until {until.isoformat()}"
    revision = store.set_override(
        args.name,
        scope,
        record,
        _audit_entry(
            ctx,
            verb,
            reason=args.reason or "",
            pool=args.name,
            detail=detail,
            scope=scope.key,
            policy_revision=published.revision,
        ),
        ctx.now,
    )
    data: dict[str, Any] = {
        "pool": args.name,
        "action": args.pool_action,
        "scope": scope.key,
        "gateways": targets,
        "until": until.isoformat() if until else None,
        "store_revision": revision,
        "policy_revision": published.revision,
    }
    text = [
        f"pool {args.name}: {args.pool_action} for {scope} "
        f"({', '.join(targets) or 'no gateway carries this pool'}); store revision {revision}"
    ]
    if args.wait:
        applied, missing = wait_applied(store, targets, revision, args.wait)
        data["applied"] = applied
        data["not_applied"] = missing
        text.append(
            f"applied on {len(applied)}/{len(targets)} gateway(s) within {args.wait:g}s"
            + (f"; NOT yet on: {', '.join(missing)}" if missing else "")
        )
        ctx.emit(data, text)
        return EXIT_OK if not missing else 1
    ctx.emit(data, text)
    return EXIT_OK


def wait_applied(
    store: EtcdStore, gateways: list[str], revision: int, timeout: float
) -> tuple[list[str], list[str]]:
    """Poll the gateways' status keys until each reports a store revision >= `revision`."""
    end = time.monotonic() + timeout
    while True:
        statuses = store.statuses()
        done = [g for g in gateways if _applied_revision(statuses.get(g)) >= revision]
        if len(done) == len(gateways) or time.monotonic() >= end:
            return done, [g for g in gateways if g not in done]
        time.sleep(0.05)  # poll interval for the gateways' own reports


def _applied_revision(status: dict[str, Any] | None) -> int:
    try:
        return int((status or {}).get("store_revision", 0))
    except (TypeError, ValueError):
        return 0


# ---------------------------------------------------------------------------- exempt --store


def cmd_exempt(ctx: Context) -> int:
    """`exempt add PREFIX --ticket T` / `exempt remove TICKET` / `exempt list`, fleet-wide:
    one key each; every gateway carrying the prefix's pool lets it through."""
    args = ctx.args
    store = store_of(ctx)
    published, policy = published_policy(store)
    snap = store.snapshot()
    records = snap.exemptions(store.keys)
    if args.exempt_action == "list":
        ctx.emit(
            {"exemptions": records},
            [
                f"{r['ticket']:<20} {r.get('prefix', '?'):<24} until {r.get('expires') or '-'}  "
                f"{r.get('reason', '')} ({r.get('user', '?')}@{r.get('host', '?')})"
                for r in records
            ]
            or ["no fleet exemptions (exemptions.yaml's are part of the published policy)"],
        )
        return EXIT_OK
    if not (args.reason or "").strip():
        raise OverrideError("--reason must say why (it goes into the audit log)")
    record: dict[str, Any] | None = None
    if args.exempt_action == "add":
        from op25b_ctl.policy.model import Exemption, check_exemptions
        from op25b_ctl.source.fleet import with_fleet_exemptions

        until = parse_when(args.until, ctx.now) if args.until else None
        try:
            exemption = Exemption.model_validate(
                {"prefix": args.prefix, "ticket": args.ticket, "reason": args.reason}
                | ({"expires": until} if until else {})
            )
        except ValueError as exc:
            raise OverrideError(f"exemption refused: {exc}") from None
        if any(r["ticket"] == exemption.ticket for r in records):
            raise OverrideError(f"ticket {exemption.ticket} already has a fleet exemption")
        base = with_fleet_exemptions(policy, records)
        trial = dataclasses.replace(base, exemptions=(*base.exemptions, exemption))
        findings = check_exemptions(trial)
        if findings:
            raise OverrideError(f"exemption {exemption.prefix} refused: {findings[0].message}")
        pool = policy.pool_of(parse_net(exemption.prefix))
        record = {
            "prefix": exemption.prefix,
            "ticket": exemption.ticket,
            "expires": until.isoformat() if until else None,
            "reason": args.reason,
            "user": audit.invoking_user(),
            "host": _host(),
            "set_at": ctx.now.isoformat(),
            "pool": pool.name if pool else None,
            "policy_revision": published.revision,
        }
        ticket, verb = exemption.ticket, "exempt add"
        targets = [g.name for g in policy.gateways_carrying(pool.name)] if pool else []
        detail = f"{exemption.prefix} ({pool.name if pool else '?'}): {', '.join(targets)}"
    else:
        ticket, verb = args.ticket, "exempt remove"
        if not any(r["ticket"] == ticket for r in records):
            raise OverrideError(f"no fleet exemption for ticket {ticket}")
        detail = f"ticket {ticket}"
        targets = []
    revision = store.set_exemption(
        ticket,
        record,
        _audit_entry(
            ctx, verb, reason=args.reason, detail=detail, ticket=ticket,
            policy_revision=published.revision,
        ),
        ctx.now,
    )  # fmt: skip
    ctx.emit(
        {"ticket": ticket, "action": args.exempt_action, "gateways": targets,
         "store_revision": revision, "exemption": record},
        [f"{verb} {detail}; store revision {revision}"],
    )  # fmt: skip
    return EXIT_OK


# ---------------------------------------------------------------------------- fleet status


NO_REPORT = "never reported, or its daemon is down (no live status key)"


def fleet_rows(
    published: Published | None,
    policy: Policy | None,
    statuses: dict[str, dict[str, Any]],
    config_revision: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """One row per gateway (listed in gateways.yaml or reporting), with what stands out."""
    names = [gw.name for gw in policy.gateways] if policy is not None else []
    names += sorted(n for n in statuses if n not in names)
    groups = {gw.name: gw.group for gw in policy.gateways} if policy is not None else {}
    rows: list[dict[str, Any]] = []
    for name in names:
        st = statuses.get(name)
        row: dict[str, Any] = {
            "gateway": name,
            "group": groups.get(name) or (st or {}).get("group"),
            "listed": name in groups,
        }
        if st is None:
            # the key lives on the daemon's lease: none now is all the store can tell, so
            # "lease gone" would be a guess (the usual case is a gateway not started yet)
            rows.append({**row, "state": "MISSING", "problems": [NO_REPORT]})
            continue
        problems: list[str] = []
        applied = st.get("policy_revision")
        lag = (
            published.revision - int(applied)
            if published is not None and isinstance(applied, int)
            else None
        )
        behind = _applied_revision(st) < config_revision
        if lag:
            problems.append(f"policy {lag} revision(s) behind")
        elif behind:
            problems.append("override or policy change not applied yet")
        if st.get("last_error"):
            problems.append(str(st["last_error"]))
        if not st.get("connected", True):
            problems.append("store unreachable (enforcing its local snapshot)")
        starting = st.get("watching") is False  # absent: a gateway older than the field
        if starting:
            problems.append("watch on the store not open yet: changes wait until it is")
        seen = _age(st.get("reported_at"), now)
        if seen is not None and seen > STALE_AFTER:
            problems.append(f"no report for {seen:.0f}s")
        if name not in groups and policy is not None:
            problems.append("not in gateways.yaml")
        holes = _holes(st)
        if holes:
            problems.append(holes)
        state = (
            "ERROR"
            if st.get("last_error")
            else "HOLE"
            if holes
            else "LAGGING"
            if lag or behind
            else "STARTING"
            if starting
            else "STALE"
            if problems
            else "ok"
        )
        rows.append(
            {
                **row,
                "state": state,
                "policy_revision": applied,
                "lag": lag,
                "store_revision": st.get("store_revision"),
                "pools": st.get("pools", {}),
                "blocked_packets": st.get("blocked_packets"),
                "last_pass": st.get("last_pass"),
                "last_seen": st.get("reported_at"),
                "last_seen_seconds": seen,
                "last_error": st.get("last_error"),
                "connected": st.get("connected", True),
                "watching": st.get("watching"),
                "digest": st.get("ruleset_digest"),
                "discovery": st.get("discovery"),
                "problems": problems,
                # distinct TCP/25 sources per pool within the retention window (issue 16)
                "offenders": (st.get("offenders") or {}).get("pools"),
            }
        )
    return rows


def _holes(status: dict[str, Any]) -> str | None:
    """The discovery report's hole, as a problem, or None (op25b-ctl discover, there)."""
    found = status.get("discovery")
    if not isinstance(found, dict) or not found.get("uncovered_prefixes"):
        return None
    shown = [str(p) for p in found.get("uncovered") or []][:3]
    n = int(found["uncovered_prefixes"])
    return f"HOLE: {n} served prefix(es) in no pool" + (
        f" ({', '.join(shown)}{', ...' if n > len(shown) else ''})" if shown else ""
    )


def _age(at: Any, now: datetime) -> float | None:
    try:
        return max(0.0, (now - datetime.fromisoformat(str(at))).total_seconds())
    except (TypeError, ValueError):
        return None


def cmd_fleet_status(ctx: Context) -> int:
    store = store_of(ctx)
    snapshot = store.snapshot()
    published = snapshot.published(store.keys)
    policy: Policy | None = None
    if published is not None:
        try:
            policy = parse_policy(published.files, origin="published policy")
        except Op25bError:
            policy = None  # show the gateways anyway
    config_revision = store.config_revision()
    rows = fleet_rows(published, policy, store.statuses(), config_revision, datetime.now(UTC))
    ok = bool(rows) and all(r["state"] == "ok" for r in rows)
    data = {
        "store": store.config.url,
        "policy_revision": published.revision if published else None,
        "config_revision": config_revision,
        "ok": ok,
        "gateways": rows,
    }
    head = (
        f"store {store.config.url}: policy revision {published.revision} "
        f"(digest {published.digest[:12]}), config store revision {config_revision}"
        if published
        else f"store {store.config.url}: nothing published yet"
    )
    text = [
        head,
        f"{'GATEWAY':<20} {'GROUP':<10} {'STATE':<8} {'REV':>4} {'LAG':>4} "
        f"{'ENF/MON/OFF':<12} {'BLOCKED':>9} {'OFFEND':>6} {'SEEN':>6}  PROBLEMS",
    ]
    for r in rows:
        pools = r.get("pools") or {}
        mix = (
            f"{pools.get('enforce', 0)}/{pools.get('monitor', 0)}/{pools.get('off', 0)}"
            if "pools" in r
            else "-"
        )
        seen = r.get("last_seen_seconds")
        marker = "" if r["state"] == "ok" else "!"
        text.append(
            f"{marker + r['gateway']:<20} {r.get('group') or '-':<10} {r['state']:<8} "
            f"{_show(r.get('policy_revision')):>4} {_show(r.get('lag')):>4} {mix:<12} "
            f"{_show(r.get('blocked_packets')):>9} "
            f"{_show(sum(r['offenders'].values()) if r.get('offenders') else None):>6} "
            f"{(f'{seen:.0f}s' if seen is not None else '-'):>6}  "
            + "; ".join(r.get("problems", []))
        )
    if not rows:
        text.append("no gateways listed or reporting")
    text.append(
        "all gateways in sync"
        if ok
        else f"{sum(r['state'] != 'ok' for r in rows)} gateway(s) need attention"
    )
    ctx.emit(data, text)
    return EXIT_OK if ok else EXIT_NOT_ALL_OK  # scripts and monitoring: "not all ok"


def _show(value: Any) -> str:
    return "-" if value is None else str(value)


# ---------------------------------------------------------------------------- wiring


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """--store and the TLS files, named like etcdctl's flags and read from its variables."""
    import os

    parser.add_argument(
        "--store",
        default=os.environ.get("OP25B_STORE") or None,
        metavar="URL",
        help="fleet store etcd://HOST:PORT[,HOST:PORT...]/PREFIX (etcds:// for TLS; "
        "default: $OP25B_STORE). Without it op25b-ctl works from --policy DIR alone. The "
        "commands with --store need no --state-dir (only `daemon --store` uses one)",
    )
    parser.add_argument(
        "--cacert",
        default=os.environ.get("ETCDCTL_CACERT") or None,
        metavar="FILE",
        help="CA bundle to verify etcd's certificate (default: $ETCDCTL_CACERT)",
    )
    parser.add_argument(
        "--cert",
        default=os.environ.get("ETCDCTL_CERT") or None,
        metavar="FILE",
        help="client certificate for etcd (default: $ETCDCTL_CERT)",
    )
    parser.add_argument(
        "--key",
        default=os.environ.get("ETCDCTL_KEY") or None,
        metavar="FILE",
        help="client certificate's key (default: $ETCDCTL_KEY)",
    )


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `publish` and `fleet status`."""
    p = sub.add_parser(
        "publish",
        parents=[common],
        help="validate the policy directory and publish it to the fleet store",
        description="Validate --policy DIR exactly as `validate` does, then write it to the "
        "store as the next numbered policy revision, in one etcd transaction guarded by the "
        "revision it was based on (a concurrent publish is refused, never overwritten). "
        "Nothing is written when the policy is invalid.",
    )
    p.set_defaults(func=cmd_publish)
    p.add_argument(
        "--base-revision",
        type=int,
        metavar="N",
        help="refuse unless the store still holds policy revision N (what you reviewed against)",
    )
    p.add_argument("--reason", default="", help="why (recorded with the revision and audited)")
    p.add_argument("--force", action="store_true", help="publish even if unchanged")
    exempt = sub.add_parser(
        "exempt",
        help="fleet-wide subscriber exemptions in the store (with --store)",
        description="Let one subscriber prefix inside a blocked pool through on every gateway "
        "carrying that pool: one key in the store, checked like exemptions.yaml (inside one "
        "dynamic pool, not all of a pool's prefix, overlapping no other exemption).",
    )
    e_sub = exempt.add_subparsers(dest="exempt_action", required=True, metavar="ACTION")
    p = e_sub.add_parser("add", parents=[common], help="exempt PREFIX under a ticket")
    p.set_defaults(func=cmd_exempt)
    p.add_argument("prefix", metavar="PREFIX")
    p.add_argument("--ticket", required=True, help="the opt-out's ticket (one exemption each)")
    p.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    p.add_argument("--until", metavar="TIME", help="expiry: ISO time with offset or 4h/2d")
    p = e_sub.add_parser("remove", parents=[common], help="remove the exemption of TICKET")
    p.set_defaults(func=cmd_exempt)
    p.add_argument("ticket", metavar="TICKET")
    p.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    p = e_sub.add_parser("list", parents=[common], help="the fleet exemptions in the store")
    p.set_defaults(func=cmd_exempt)
    fleet = sub.add_parser(
        "fleet",
        help="the fleet as the store sees it",
        description="What every gateway reports back through the store.",
    )
    f_sub = fleet.add_subparsers(dest="fleet_action", required=True, metavar="ACTION")
    p = f_sub.add_parser(
        "status",
        parents=[common],
        help="gateway, group, revision applied, lag, pools by mode, blocked, last seen, errors",
        description="One line per gateway: listed in gateways.yaml or reporting. Gateways "
        "that lag, report errors, have stopped reporting or are missing are marked with '!'. "
        "Reads the store only (no --state-dir needed). Exit status: 0 every gateway ok, 4 "
        "the store answered but at least one gateway is not ok (LAGGING, ERROR, STARTING, "
        "STALE, MISSING) or none is listed or reporting, 1 the store is unreachable, 2 usage. "
        "The -o json fields are described in docs/fleet.md.",
    )
    p.set_defaults(func=cmd_fleet_status)
