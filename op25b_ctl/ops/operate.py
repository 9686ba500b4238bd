"""Changing the gateway on an operator's or cron's behalf: overrides, ticks, bookkeeping.

The policy is loaded once by the caller (at 100,000 prefixes loading dominates a command's
time) and passed in; overrides and the audit trail go through the `Source`, the rollout
bookkeeping through the gateway's own `StateDir`. The sequences behind `pool enforce|monitor|rollback|clear`, `rollout tick` and `apply`:
compute the desired state at `now` (through `desired.from_policy`, like every caller), apply
it with the cheap fingerprint read (a one-pool change is one chain rewrite at any table size),
then record what happened (state files, audit log). Callers hold the state lock around these.

Audit: every changing sequence checks that the audit trail can be written, and that the state
directory's filesystem has room for the record, before it touches anything
(`Source.check_recordable`, `StateDir.check_space`), so an unwritable log or a full disk
refuses the change (StateError, exit 1, nothing changed). If recording fails after the
commit (the disk filled in between), NotRecordedError says what was changed (exit 3).

Ordering for crashes: an override is saved *before* the gateway is changed, so a crash in
between leaves the intent on disk and the next tick converges to it; if nftables refuses the
change, the previous overrides file is put back and nothing is left half done.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

import netaddr

from op25b_ctl.errors import NotRecordedError, OverrideError, StateError
from op25b_ctl.kernel.base import Kernel
from op25b_ctl.ops import applier
from op25b_ctl.plan.desired import Desired, from_policy
from op25b_ctl.plan.ruleset import (
    EXEMPT_CHAIN,
    FINGERPRINT_PREFIX,
    elements_fingerprint,
    mode_of_rules,
    pool_chain,
    tracking_of,
)
from op25b_ctl.plan.table import Table
from op25b_ctl.plan.transaction import AddRule, FlushChain, Transaction
from op25b_ctl.policy.model import Mode, Policy
from op25b_ctl.policy.overrides import Action, Override, check, check_reason
from op25b_ctl.source import audit, rulerefs
from op25b_ctl.source.base import Source
from op25b_ctl.source.state import LiveRecord, StateDir


@dataclass(frozen=True)
class Outcome:
    """What one command did (or, with dry_run, would do)."""

    desired: Desired
    tx: Transaction
    changes: dict[str, tuple[Mode | None, Mode]]  # pool -> (live before, after)
    applied: bool
    new_stages: list[str] = field(default_factory=list)
    expired: list[Override] = field(default_factory=list)
    # what the live `exempt` chain held before, read when the transaction rewrites it
    exempt_before: tuple[str, ...] = ()
    commits: int = 0  # ruleset generations our commits took (`Kernel.apply`)

    def exemptions_added(self) -> list[str]:
        if not rewrites(self.tx, EXEMPT_CHAIN):
            return []
        before = netaddr.IPSet(self.exempt_before)
        return [
            e.prefix for e in self.desired.exemptions if netaddr.IPNetwork(e.prefix) not in before
        ]

    def exemptions_removed(self) -> list[str]:
        """What the live chain let through that no exemption in force does now. nft merges
        adjacent prefixes of an anonymous set, so two adjacent removed exemptions may be
        told as the one prefix they make up."""
        if not rewrites(self.tx, EXEMPT_CHAIN):
            return []
        gone = netaddr.IPSet(self.exempt_before) - netaddr.IPSet(
            e.prefix for e in self.desired.exemptions
        )
        return [str(c) for c in gone.iter_cidrs()]

    def summary(self) -> str:
        """The one-line log of what changed: `pool before->after, ...; N nft op(s)`."""
        groups: dict[tuple[Mode | None, Mode], list[str]] = {}
        for pool, change in self.changes.items():
            groups.setdefault(change, []).append(pool)
        parts = []
        for (before, after), pools in groups.items():
            names = ", ".join(pools[:5]) + (f" (+{len(pools) - 5} more)" if len(pools) > 5 else "")
            parts.append(f"{names} {before or 'absent'}->{after}")
        for verb, keys in (
            ("added", self.exemptions_added()),
            ("removed", self.exemptions_removed()),
        ):
            if len(keys) > 3:
                parts.append(f"{len(keys)} exemptions {verb}")
            else:
                parts += [f"exemption {k} {verb}" for k in keys]
        parts += [f"stage {s} done" for s in self.new_stages]
        parts += [f"override on {o.pool} expired" for o in self.expired]
        if not parts and self.tx:
            parts.append("table repaired")
        if not parts:
            return "no changes"
        return f"{'; '.join(parts)} ({len(self.tx.ops)} nft op(s))"


def live_modes(policy: Policy, live: Table | None) -> dict[str, Mode | None]:
    """Each dynamic pool's mode as the live chain says (None: table or chain absent/foreign)."""
    out: dict[str, Mode | None] = {}
    for pool in policy.pools:
        if not pool.dynamic:
            continue
        chain = live.chains.get(pool_chain(pool.name)) if live else None
        out[pool.name] = (
            mode_of_rules(
                pool.name,
                tuple(r.id for r in chain.rules),
                policy.gateway.action,
                tracking_of(policy, pool.name),
            )
            if chain is not None
            else None
        )
    return out


def due_stages(policy: Policy, now: datetime) -> list[str]:
    return [
        s.name
        for s in policy.stages
        if s.scheduled is not None and s.scheduled <= now and policy.applies(s)
    ]


def converge(
    kernel: Kernel,
    policy: Policy,
    now: datetime,
    overrides: Iterable[Override],
    *,
    dry_run: bool = False,
    state: StateDir | None = None,
) -> Outcome:
    """Make the gateway match the desired state at `now`; report pools whose mode changed.

    With `state`, rules edited in place (our comment, other statements) are rewritten too,
    judged against what was read back after our own commits (`source.rulerefs`). Also with
    `state`, what the command leaves live is remembered with the ruleset generation right
    after it (`StateDir.live_record`): while nothing has committed since, the next command
    diffs against that, reads nothing, and builds no sets that are unchanged, as the daemon's
    "known" pass does (docs/performance.md)."""
    ruleset, start, record = _read_record(kernel, state)
    # sets under the key of the last record are the ones it fingerprinted: no need to build
    # them to diff (a hollow table), whoever committed since
    want = from_policy(
        policy,
        now,
        overrides,
        known_sets=(record.sets_key, record.fingerprint) if record is not None else None,
    )
    known = False
    live: Table | None
    if want.table.elements_known or record is None:
        # the sets changed (a policy edit): while nobody has committed since, the elements
        # our last commit wrote are the ones it remembered, not 110,000 to read back
        current = record is not None and record.current(ruleset, start)
        live = _recorded_sets(state, record, current, want.table)
        known = live is not None
        if live is None:
            live = applier.read_live(kernel, want.table, trust_fingerprint=True)
    elif (held := known_table(record, record.current(ruleset, start), want.table)) is not None:
        live, known = held, True  # nobody has committed since: the kernel holds this
    else:
        # one skeleton read; its fingerprint counter vouches for the elements, as with
        # `read_live(trust_fingerprint=True)`
        live = kernel.read(want.table.family, want.table.name, elements=False)
        if (
            live is None
            or record.fingerprint not in live.counters
            or not same_declarations(live, want.table)
        ):
            # absent, other elements, or a set declared otherwise (an upgrade): every element
            want = from_policy(policy, now, overrides)
            live = applier.read_live(kernel, want.table, trust_fingerprint=True)
    before = live_modes(policy, live)
    # the exemptions in force before, for the log line: the live chain's (small) sets
    had = live.chains.get(EXEMPT_CHAIN) if live is not None else None
    exempt_before = (
        tuple(kernel.rule_elements(want.table.family, want.table.name, EXEMPT_CHAIN))
        if had is not None and had.rule_ids != want.table.chains[EXEMPT_CHAIN].rule_ids
        else ()
    )
    tx, commits = applier.apply_counting(kernel, live, want.table, dry_run=dry_run)
    if state is not None and not dry_run:
        reference = rulerefs.path_in(state.path)
        if tx:
            applier.remember_statements(kernel, tx, want.table, reference)
        elif live is not None and not known:
            tx, commits = applier.check_statements(kernel, want.table, reference)
        _remember_live(kernel, state, ruleset, start, commits, want, record)
    changes: dict[str, tuple[Mode | None, Mode]] = {
        name: (before[name], d.mode)
        for name, d in want.decisions.items()
        if name in before and before[name] != d.mode
    }
    return Outcome(
        want,
        tx,
        changes,
        applied=bool(tx) and not dry_run,
        exempt_before=exempt_before,
        commits=commits,
    )


def rewrites(tx: Transaction, chain: str) -> bool:
    """Whether `tx` flushes `chain` or adds rules to it."""
    return any(
        (isinstance(op, FlushChain) and op.name == chain)
        or (isinstance(op, AddRule) and op.chain == chain)
        for op in tx.ops
    )


def same_declarations(a: Table, b: Table) -> bool:
    """Same table, same sets, each declared the same (key type, map, flags)."""
    return (
        a.spec == b.spec
        and a.sets.keys() == b.sets.keys()
        and all(s.same_shape(b.sets[n]) for n, s in a.sets.items())
    )


def _read_record(
    kernel: Kernel, state: StateDir | None
) -> tuple[str | None, int | None, LiveRecord | None]:
    """The ruleset id and generation now, and the last live record (current or not)."""
    if state is None:
        return None, None, None
    ruleset = kernel.ruleset_id()
    start = kernel.generation() if ruleset is not None else None
    return ruleset, start, state.live_record()


def known_live(kernel: Kernel, state: StateDir) -> tuple[LiveRecord | None, bool]:
    """The last live record, and whether nothing has committed since (for views: `status`
    and `explain` then read no table shape, and build no sets under the record's key)."""
    ruleset, start, record = _read_record(kernel, state)
    return record, record is not None and record.current(ruleset, start)


def known_table(record: LiveRecord | None, current: bool, want: Table) -> Table | None:
    """The live table without a read: the record's, if nothing has committed since and it is
    `want`'s table with the same set declarations (else a set must be replaced, with its
    elements: plan/diff.py)."""
    if record is None or not current or not same_declarations(record.table, want):
        return None
    return record.table


def _remember_live(
    kernel: Kernel,
    state: StateDir,
    ruleset: str | None,
    start: int | None,
    commits: int,
    want: Desired,
    old: LiveRecord | None,
) -> None:
    """Keep `want` as what is live; as current only if no commit but ours slipped in."""
    end = kernel.generation() if ruleset is not None else None
    current = (
        ruleset is not None and start is not None and end is not None and end - start == commits
    )
    fingerprints = [c for c in want.table.counters if c.startswith(FINGERPRINT_PREFIX)]
    if not want.sets_key or len(fingerprints) != 1:
        state.forget_live_record()
        return
    new = LiveRecord(
        want.table.hollow(),
        want.sets_key,
        fingerprints[0],
        ruleset if current else None,
        end if current else None,
    )
    if new != old:  # a command that changed nothing leaves the file alone
        state.save_live_record(new)
    if want.table.elements_known and (old is None or old.sets_key != want.sets_key):
        # the sets we fill (the fingerprinted ones); a dynamic set's elements are the kernel's
        sets = {name: dict(s.elements) for name, s in want.table.sets.items() if not s.dynamic}
        state.save_live_sets(want.sets_key, fingerprints[0], sets)


def _recorded_sets(
    state: StateDir | None, record: LiveRecord | None, current: bool, want: Table
) -> Table | None:
    """The live table with its elements, without a read: the record's shape and the
    elements remembered under its sets' key, if nothing has committed since and they are
    the very elements the kernel's fingerprint counter names; else None (read the table).
    Dynamic sets (the offender sets, filled by the packet path) are never compared: they
    are taken as declared, as `applier.read_live` takes them."""
    held = known_table(record, current, want)
    if state is None or record is None or held is None:
        return None
    sets = state.live_sets(record.sets_key, record.fingerprint)
    filled = {name for name, s in held.sets.items() if not s.dynamic}
    if sets is None or sets.keys() != filled:
        return None
    full = {
        name: replace(s, elements=sets[name]) if name in filled else want.sets[name]
        for name, s in held.sets.items()
    }
    if elements_fingerprint(full[name] for name in filled) != record.fingerprint:
        return None
    return replace(held, sets=full, elements_known=True)


def _check_recordable(source: Source, state: StateDir) -> None:
    """Before anything is touched: the audit trail can be written and the state directory's
    filesystem has room for the record (a full disk refuses the change, exit 1)."""
    state.check_space()  # first: a refused change leaves not even an empty audit file
    source.check_recordable()


def _record(
    source: Source,
    state: StateDir,
    out: Outcome,
    now: datetime,
    *,
    action: str,
    command: Sequence[str],
    reason: str = "",
    pool: str | None = None,
    detail: str = "",
    force: bool = False,
) -> Outcome:
    """Bookkeeping after a successful change: stages applied, one audit line. A failure
    here, after the commit, is NotRecordedError: the caller must not say "nothing changed"."""
    try:
        new = state.mark_applied(due_stages(out.desired.policy, now), now)
        out = replace(out, new_stages=new)
        if out.tx or out.expired or new or force:
            source.record(
                audit.Entry(
                    at=now,
                    user=audit.invoking_user(),
                    command=command,
                    action=action,
                    reason=reason,
                    pool=pool,
                    changes=dict(out.changes),
                    ops=len(out.tx.ops),
                    detail=detail or out.summary(),
                ),
            )
    except StateError as exc:
        if out.applied or out.expired or force:
            raise NotRecordedError(
                f"{action}: the gateway WAS changed ({out.summary()}), but recording it "
                f"failed: {exc}"
            ) from None
        raise
    return out


def tick(
    kernel: Kernel,
    policy: Policy,
    source: Source,
    state: StateDir,
    now: datetime,
    command: Sequence[str],
    *,
    dry_run: bool = False,
) -> Outcome:
    """Apply whatever is due at `now`; prune expired overrides. Idempotent."""
    overrides = source.overrides()
    if not dry_run:
        _check_recordable(source, state)
    active = {p: o for p, o in overrides.items() if o.active(now)}
    expired = [o for o in overrides.values() if not o.active(now)]
    out = converge(kernel, policy, now, active.values(), dry_run=dry_run, state=state)
    out = replace(out, new_stages=[], expired=expired)
    if dry_run:
        return out
    try:
        for o in expired:
            source.clear_override(o.pool)
    except StateError as exc:
        if out.applied:  # the gateway already follows the schedule again: say so, exit 3
            raise NotRecordedError(
                f"rollout tick: the gateway WAS changed ({out.summary()}), but clearing the "
                f"expired override(s) failed: {exc}"
            ) from None
        raise
    return _record(source, state, out, now, action="rollout tick", command=command)


def tick_is_idle(
    state: StateDir, digest: str, now: datetime, generation: int, ruleset: str | None
) -> bool:
    """True if a full tick now would change nothing, judged without loading the policy.

    Same policy and overrides as the last full tick, nothing due since (now is between that
    tick and the next change it computed), and no commit to any nftables table since (the
    kernel's ruleset generation, in the same boot and namespace: `Kernel.ruleset_id`): then the desired table and the live one are both as that
    tick left them, equal. Anything else, including a clock that went backwards, means the
    full tick runs.
    """
    rec = state.tick_cache()
    try:
        at = datetime.fromisoformat(rec["at"])
        nxt = datetime.fromisoformat(rec["next_change"]) if rec.get("next_change") else None
        return bool(
            ruleset is not None
            and rec["ruleset"] == ruleset
            and rec["inputs"] == digest
            and rec["generation"] == generation
            and at <= now
            and (nxt is None or now < nxt)
        )
    except (KeyError, TypeError, ValueError):
        return False


def remember_tick(
    state: StateDir,
    digest: str,
    now: datetime,
    out: Outcome,
    before: int,
    after: int,
    ruleset: str | None,
) -> None:
    """Record the tick for `tick_is_idle`, unless another commit slipped in around ours."""
    if ruleset is None or after - before > out.commits:
        state.forget_tick_cache()
        return
    nxt = out.desired.next_change
    state.save_tick_cache(
        {
            "inputs": digest,
            "at": now.isoformat(),
            "next_change": nxt.isoformat() if nxt else None,
            "generation": after,
            "ruleset": ruleset,
        }
    )


def apply_all(
    kernel: Kernel,
    policy: Policy,
    source: Source,
    state: StateDir,
    now: datetime,
    command: Sequence[str],
    *,
    dry_run: bool = False,
) -> Outcome:
    """`op25b-ctl apply`: like a tick, but leaves expired overrides in the file for tick."""
    if not dry_run:
        _check_recordable(source, state)
    out = converge(kernel, policy, now, source.overrides().values(), dry_run=dry_run, state=state)
    if dry_run:
        return out
    return _record(source, state, out, now, action="apply", command=command)


def set_override(
    kernel: Kernel,
    policy: Policy,
    source: Source,
    state: StateDir,
    now: datetime,
    command: Sequence[str],
    *,
    pool: str,
    action: Action | None,
    reason: str,
    until: datetime | None = None,
    dry_run: bool = False,
) -> Outcome:
    """Set (action) or clear (action None) one pool's override and apply it at once."""
    old = source.overrides()
    new = dict(old)
    if action is None:
        if pool not in {p.name for p in policy.pools} and pool not in old:
            raise OverrideError(
                f"unknown pool {pool!r} (known: {', '.join(p.name for p in policy.pools)})"
            )
        check_reason(reason, required=False)
        new.pop(pool, None)
    else:
        check(policy, pool, reason, until, now)
        new[pool] = Override(pool, action, reason, audit.invoking_user(), now, until)
    if dry_run:
        return converge(kernel, policy, now, new.values(), dry_run=True)
    _check_recordable(source, state)
    if new != old:
        _put(source, pool, new.get(pool))
    try:
        out = converge(kernel, policy, now, new.values(), state=state)
    except BaseException:
        if new != old:
            _put(source, pool, old.get(pool))  # nftables refused: the intent did not happen
        raise
    verb = f"pool {action}" if action else "pool clear"
    detail = out.summary()
    if until is not None:
        detail += f"; until {until.isoformat()}"
    if action is None and pool not in old:
        detail = f"no override on {pool}; " + detail
    return _record(
        source,
        state,
        out,
        now,
        action=verb,
        command=command,
        reason=reason,
        pool=pool,
        detail=detail,
        force=True,
    )


def _put(source: Source, pool: str, override: Override | None) -> None:
    if override is None:
        source.clear_override(pool)
    else:
        source.set_override(override)
