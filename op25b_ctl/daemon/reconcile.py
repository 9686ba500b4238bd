"""One reconcile pass: make the live table equal to the desired state for *now*, cheaply.

The daemon calls `Reconciler.run_once()` every few seconds, so a pass that finds nothing to do
must cost next to nothing even with 100,000 prefixes loaded (docs/benchmarks.md). Four ways
to look at the kernel, cheapest first:

    fast      the source's revision is unchanged, no stage is due, and the kernel's ruleset
              generation is the one we saw right after our own last commit (or last check):
              nothing can have changed, so nothing is read.
    known     the desired state changed (a stage is due, an override was set) but the
              generation is still ours: the kernel holds what we last made live, so the
              change is diffed against that and committed without reading anything.
    skeleton  something committed to *some* table, or the desired state changed: read our
              table's shape over netlink and trust the elements by their fingerprint counter
              (`applier.read_live(trust_fingerprint=True)`).
    full      every `verify_interval`, on SIGHUP, at start-up, after a failed pass, and on the
              pass after the skeleton showed drift: read every element, which also catches
              hand edits of set elements that leave the table's shape intact.

Drift is a live table that differs from the one we last made live: someone else changed our
table (deleted, flushed, edited), whether or not the desired state changed in the same pass.
Rules are known by the id in their comment; a rule edited by hand that keeps our comment
(`nft replace rule ... comment "op25b:<id>"`) is caught by a digest of its expressions,
compared on every pass that reads the kernel against the digest read right after our own
commit of that rule (`source.rulerefs`, saved in the state directory). A rule with no such
reference (a table made before the daemon started, no saved reference) is rewritten once
and then learned; an unreadable digest is drift, never a match. An invalid policy never
replaces the last good desired state; the table keeps being enforced (and repaired).

Inputs that cannot be read never stop the loop either: a truncated or non-UTF-8
overrides.json, a symlink loop or a planted symlink in the state directory are logged and
shown (`View.state_error`), and the last good desired state stays enforced; at start-up,
with no good state yet, the policy and schedule are enforced without overrides (blocking as
planned beats no table after a reboot). A clock that steps backwards makes the pass
recompute the desired state at the new time: the schedule is a function of the clock, in
the daemon exactly as in `rollout tick` (docs/rollout.md).

Counter continuity is the reconciler's: it samples our table's counters on every pass that
reads the kernel, so before any commit that could recreate them, and a counter someone else
deleted comes back where it was last seen instead of at 0 (`carry_counters`). A counter
found below its last sample was reset or recreated empty by someone else: what it had
counted becomes its offset (`View.offsets`), which the metrics add to the kernel's value.
With `sample_every_pass` (the daemon, when it serves metrics) every pass samples them. The
collector reads the kernel's counters itself at scrape time (daemon/livecounters.py) and
takes only the offsets and the desired state from the `View`: it feeds nothing back.

I/O lives behind two injected seams, the Kernel and the Source, plus the clocks.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from op25b_ctl.daemon import DEFAULT_VERIFY_INTERVAL
from op25b_ctl.daemon.view import Read, ReconcileResult, View
from op25b_ctl.errors import LockBusy, Op25bError, PolicyError, StateError, TableNotFound
from op25b_ctl.kernel.base import Counter, Kernel
from op25b_ctl.ops import applier
from op25b_ctl.plan.desired import Desired, from_policy
from op25b_ctl.plan.diff import diff
from op25b_ctl.plan.table import Table
from op25b_ctl.plan.transaction import (
    AddCounter,
    DeleteCounter,
    DeleteTable,
    Transaction,
)
from op25b_ctl.source import rulerefs
from op25b_ctl.source.base import Source

log = logging.getLogger("op25b_ctl.reconcile")


def utc_now() -> datetime:
    return datetime.now(UTC)


def carry_counters(tx: Transaction, seen: Mapping[str, Counter]) -> Transaction:
    """`tx` with every recreated counter starting from its last seen packets and bytes."""
    ops = tuple(
        replace(op, packets=seen[op.name].packets, bytes=seen[op.name].bytes)
        if isinstance(op, AddCounter) and op.name in seen
        else op
        for op in tx.ops
    )
    return replace(tx, ops=ops)


rewrite_chains = applier.rewrite_chains  # kept importable from here


class Reconciler:
    """Keeps one table equal to the desired state computed from `source` at each pass.

    Not thread-safe for `run_once`; other threads read only `view`, replaced whole at the
    end of every pass.
    """

    def __init__(
        self,
        kernel: Kernel,
        source: Source,
        *,
        clock: Callable[[], datetime] = utc_now,
        verify_interval: float | None = DEFAULT_VERIFY_INTERVAL,
        timer: Callable[[], float] = time.monotonic,
        sample_every_pass: bool = False,
        rule_reference: Path | None = None,
    ) -> None:
        self.kernel = kernel
        self.source = source
        self.clock = clock
        self.verify_interval = verify_interval
        self.timer = timer
        self.sample_every_pass = sample_every_pass
        # rule id -> digest of its expressions read right after we wrote it; saved in
        # `rule_reference` (the state directory) so a restart need not rewrite to verify
        self.rule_reference = rule_reference
        self._reference: dict[str, str] | None = None
        # last good desired state, and what made it
        self.desired: Desired | None = None
        self.digest: str | None = None
        self.policy_error: PolicyError | None = None
        self.state_error: str | None = None  # the source's state could not be read
        self.lock_error: str | None = None  # the source's lock could not be taken (not busy)
        self.clock_steps_back = 0  # times the wall clock went backwards between passes
        self._last_now: datetime | None = None
        self._revision: Hashable | None = None
        self._rejected_revision: Hashable | None = None
        # what we know about the kernel
        self._synced: Table | None = None  # the desired table the live one last equalled
        self._trusted_generation: int | None = None
        self._last_full: float | None = None
        self._reload = False
        self._verify = False
        # counter continuity: every counter of ours last seen live, and the last sample
        self._seen: dict[str, Counter] = {}
        self._offsets: dict[str, Counter] = {}  # counted before someone reset the counter
        self._sample: tuple[bool | None, Mapping[str, Counter]] = (None, {})
        self._generation: int | None = None
        self.view = View()
        # called between the phases of a pass (load, read, commit): the daemon feeds systemd's
        # watchdog here, so a long pass at ISP scale is never mistaken for a hung one, while a
        # phase that really hangs still starves it
        self.progress: Callable[[], object] = lambda: None
        self.last_error: str | None = None

    @property
    def in_sync(self) -> bool:
        """The live table equalled the desired one at the end of the last pass."""
        return self.desired is not None and self._synced is self.desired.table

    @property
    def revision(self) -> Hashable:
        """The source revision the current desired state was computed from."""
        return self._revision

    def request_reload(self) -> None:
        """Re-read the source and verify every element on the next pass (SIGHUP)."""
        self._reload = True

    def request_verify(self) -> None:
        """Read every element on the next pass, even if nothing seems to have changed."""
        self._verify = True

    def next_wakeup(self) -> datetime | None:
        """When the desired state changes by itself next (a stage, an override expiring)."""
        return self.desired.next_change if self.desired is not None else None

    # ----------------------------------------------------------------------------- the pass

    def run_once(self, now: datetime | None = None) -> ReconcileResult:
        """One pass, under the source's lock so it never interleaves with `pool`/`tick`.

        Without the lock a pass that computed the desired state just before an engineer's
        `pool rollback` could re-apply the old mode after it. A busy lock skips this pass
        (the next one comes within the interval) instead of blocking the watchdog.
        """
        try:
            lock = self.source.try_lock("daemon reconcile")
            with lock:
                self.lock_error = None
                return self._run_once(now)
        except LockBusy as exc:
            log.info("pass skipped: %s", exc)
            return self._finish(self.timer(), read="none")
        except StateError as exc:
            # A lock that cannot even be opened (a symlink planted as .lock, a state
            # directory anyone may write): enforcement must not stop for it. Pass unlocked.
            if self.lock_error != str(exc):
                log.error("state lock unusable: %s; reconciling without it", exc)
            self.lock_error = str(exc)
            return self._run_once(now)

    def _run_once(self, now: datetime | None = None) -> ReconcileResult:
        start = self.timer()
        now = now if now is not None else self.clock()
        reload, self._reload = self._reload, False
        verify, self._verify = self._verify, False
        if reload:
            log.info("reload requested: re-reading policy and state, verifying every element")

        stepped_back = self._last_now is not None and now < self._last_now
        if stepped_back and self._last_now is not None:
            self.clock_steps_back += 1
            log.warning(
                "clock stepped back by %.0f s (%s -> %s): following the schedule at the new time",
                (self._last_now - now).total_seconds(),
                self._last_now.isoformat(timespec="seconds"),
                now.isoformat(timespec="seconds"),
            )
        self._last_now = now
        desired_changed, rejected = self._refresh_desired(now, reload or stepped_back)
        self.progress()
        want = self.desired
        if want is None:
            err = "no valid policy yet: nothing applied (the kernel's table is left as it is)"
            return self._finish(
                start, error=err, policy_rejected=rejected, stepped_back=stepped_back
            )

        full = (
            reload
            or verify
            or self._last_full is None
            or (
                self.verify_interval is not None
                and self.timer() - self._last_full >= self.verify_interval
            )
        )
        gen = self._read_generation()
        if (
            not full
            and not desired_changed
            and self._synced is want.table
            and gen is not None
            and gen == self._trusted_generation
        ):
            return self._finish(
                start, read="fast", policy_rejected=rejected, stepped_back=stepped_back
            )

        read: Read = "full" if full else "skeleton"
        try:
            drift = False
            if (
                not full
                and self._synced is not None
                and gen is not None
                and gen == self._trusted_generation
            ):
                # Nobody committed anything since our last commit or check, so the kernel
                # holds exactly what we last made live: a due stage or an override is a diff
                # against that, with no read at all (one chain rewrite at any table size).
                read = "known"
                tx = diff(self._synced, want.table)
            else:
                live = applier.read_live(self.kernel, want.table, trust_fingerprint=not full)
                self.progress()
                applier.ensure_ours(live)
                self._sample_counters(want.table)  # before any commit that may recreate them
                tx = diff(live, want.table)
                # Drift is judged against what we last made live, not against the desired
                # state: a deleted table is drift even in the pass that applies a new policy.
                if self._synced is not None:
                    drift = (
                        bool(tx) if self._synced is want.table else bool(diff(live, self._synced))
                    )
                if not tx:
                    verdict = self._judge(want.table)
                    if not verdict.ok:
                        # same rule ids (comments), other or unknown statements: rewrite them
                        tx = rewrite_chains(want.table, verdict.tampered | verdict.unverified)
                        drift = drift or bool(verdict.tampered)
            tx = carry_counters(tx, self._seen)
            if full:
                self._last_full = self.timer()
            elif drift:
                # Repair the shape now (rules back within the pass even at 100k prefixes);
                # whoever changed it may have changed elements too: the next pass reads them.
                self._verify = True
            if tx:
                before = self._read_generation()
                self.progress()
                commits = self.kernel.apply(tx)
                self.progress()
                after = self._read_generation()
                # Trust the new generation only if no other commit slipped in around ours
                # (`Kernel.apply` says how many were ours).
                gen = after if before is not None and after == before + commits else None
                self._learn(tx, want.table)
                self._committed(tx, want.table)
        except (Op25bError, OSError) as exc:
            self._synced = None
            self._trusted_generation = None
            self._verify = True  # never retry on trust what just failed
            return self._finish(
                start,
                read=read,
                error=str(exc),
                desired_changed=desired_changed,
                policy_rejected=rejected,
                stepped_back=stepped_back,
            )
        self._synced = want.table
        self._trusted_generation = gen
        return self._finish(
            start,
            read=read,
            tx=tx,
            drift=drift,
            desired_changed=desired_changed,
            policy_rejected=rejected,
            stepped_back=stepped_back,
        )

    # ----------------------------------------------------------------------------- internals

    def _refresh_desired(self, now: datetime, reload: bool) -> tuple[bool, bool]:
        """Recompute the desired state if the source or the time call for it.

        Returns (desired table changed, a new invalid policy was refused).
        """
        revision = self.source.revision()
        due = (
            self.desired is not None
            and self.desired.next_change is not None
            and now >= self.desired.next_change
        )
        changed_inputs = revision != self._revision
        if not (self.desired is None or reload or changed_inputs or due):
            return False, False
        if not reload and revision == self._rejected_revision:
            return False, False  # still the same invalid inputs: already reported
        try:
            snapshot = self.source.load()
        except PolicyError as exc:
            self.policy_error = exc
            self._rejected_revision = revision
            for problem in exc.problems:
                log.error("policy: %s", problem)
            kept = "the last good policy stays enforced" if self.desired else "nothing applied"
            log.error(
                "policy change refused: %d problem(s) in %s; %s",
                len(exc.problems),
                self.source,
                kept,
            )
            return False, True
        except (Op25bError, OSError) as exc:
            return self._state_unreadable(exc, revision, now)
        new = from_policy(snapshot.policy, now, snapshot.overrides.values())
        old = self.desired
        self.desired = new
        self._revision = snapshot.revision
        self._rejected_revision = None
        if self.policy_error is not None:
            log.info("policy valid again")
        self.policy_error = None
        if self.state_error is not None:
            log.info("state readable again")
        self.state_error = None
        self.digest = snapshot.digest[:16]
        if old is not None and old.table == new.table:
            # same table: keep the old object so `_synced is want.table` stays cheap and true
            self.desired = replace(new, table=old.table)
            return False, False
        return True, False

    def _state_unreadable(
        self, exc: Exception, revision: Hashable, now: datetime
    ) -> tuple[bool, bool]:
        """The source's state (overrides) cannot be read: keep what we have.

        With a last good desired state, it stays enforced. Without one (start-up), the policy
        and the schedule are enforced without overrides."""
        self.state_error = str(exc)
        self._rejected_revision = revision
        if self.desired is not None:
            log.error("state unreadable: %s; the last good desired state stays enforced", exc)
            return False, True
        log.error("state unreadable: %s; enforcing the policy and schedule without overrides", exc)
        try:
            policy = self.source.policy()
        except PolicyError as perr:
            self.policy_error = perr
            for problem in perr.problems:
                log.error("policy: %s", problem)
            return False, True
        except (Op25bError, OSError) as err:
            log.error("policy unreadable too: %s", err)
            return False, True
        self.desired = from_policy(policy, now, ())
        self._revision = revision
        with contextlib.suppress(Op25bError, OSError):
            self.digest = self.source.digest()[:16]
        return True, True

    def _sample_counters(self, table: Table) -> None:
        """Read our table's counters: what the view shows and what a repair restores."""
        try:
            values = self.kernel.counters(table.family, table.name)
        except TableNotFound:
            self._sample = (False, {})
            return
        except (Op25bError, OSError) as exc:
            log.debug("counters not sampled: %s", exc)
            self._sample = (None, {})
            return
        for name, value in values.items():
            last = self._seen.get(name)
            if last is not None and (value.packets < last.packets or value.bytes < last.bytes):
                before = self._offsets.get(name, Counter(0, 0))
                self._offsets[name] = Counter(
                    before.packets + last.packets, before.bytes + last.bytes
                )
                log.warning(
                    "counter %s went back from %d to %d packets (reset or recreated by someone "
                    "else): the metrics continue from %d",
                    name,
                    last.packets,
                    value.packets,
                    before.packets + last.packets + value.packets,
                )
        self._sample = (True, values)
        self._seen.update(values)  # merged: a counter deleted alone keeps its last value

    def _committed(self, tx: Transaction, table: Table) -> None:
        """After our own commit: counters we deleted ended their count; the others live on."""
        if any(isinstance(op, DeleteTable) for op in tx.ops):
            self._seen.clear()
            self._offsets.clear()
        for op in tx.ops:
            if isinstance(op, DeleteCounter):
                self._seen.pop(op.name, None)
                self._offsets.pop(op.name, None)
        for name in [n for n in self._seen if n not in table.counters]:
            del self._seen[name]
        for name in [n for n in self._offsets if n not in table.counters]:
            del self._offsets[name]

    def _ref(self) -> dict[str, str]:
        if self._reference is None:
            self._reference = rulerefs.load(self.rule_reference)
        return self._reference

    def _judge(self, table: Table) -> rulerefs.Verdict:
        """Our rules' statements against the reference (loudly when they cannot be read)."""
        live = self.kernel.rule_digests(table.family, table.name, None)
        verdict = rulerefs.judge(live, self._ref(), table.chains)
        if verdict.unverified:
            # a one-shot command (`pool rollback`, `apply`) may have written and recorded them
            self._reference = {**rulerefs.load(self.rule_reference), **self._ref()}
            verdict = rulerefs.judge(live, self._reference, table.chains)
        if verdict.unreadable:
            log.error(
                "%d rule(s) of table %s could not be read back: treated as edited",
                verdict.unreadable,
                table.spec,
            )
        if verdict.tampered:
            log.warning(
                "rules edited in place (our comment, other statements) in %s: rewriting",
                ", ".join(sorted(verdict.tampered)),
            )
        if verdict.unverified:
            log.info(
                "%d chain(s) hold rules with no reference yet: rewriting them once to verify",
                len(verdict.unverified),
            )
        return verdict

    def _learn(self, tx: Transaction, table: Table) -> None:
        """Read back the rules we just wrote and keep their digests as the reference."""
        new = applier.learn_statements(self.kernel, tx, table, self._ref())
        if new != self._reference:
            self._reference = new
            rulerefs.save(self.rule_reference, new)

    def _read_generation(self) -> int | None:
        try:
            gen = self.kernel.generation()
        except (Op25bError, OSError):
            return None
        self._generation = gen
        return gen

    def _finish(
        self,
        start: float,
        *,
        read: Read = "none",
        tx: Transaction | None = None,
        drift: bool = False,
        error: str | None = None,
        desired_changed: bool = False,
        policy_rejected: bool = False,
        stepped_back: bool = False,
    ) -> ReconcileResult:
        want = self.desired
        if want is not None and (self.sample_every_pass or tx):
            self._sample_counters(want.table)  # fresh for the view, after our own commit
        present, counters = self._sample
        self.view = View(
            desired=want,
            digest=self.digest,
            policy_error=self.policy_error,
            state_error=self.state_error or self.lock_error,
            in_sync=self.in_sync,
            generation=self._generation,
            table_present=present,
            counters=counters,
            offsets=dict(self._offsets),
        )
        result = ReconcileResult(
            changed=bool(tx),
            ops=len(tx.ops) if tx else 0,
            duration=self.timer() - start,
            drift_repaired=drift and bool(tx),
            error=error,
            read=read,
            desired_changed=desired_changed,
            policy_rejected=policy_rejected,
            clock_stepped_back=stepped_back,
            tx=tx if tx else None,
        )
        self.last_error = error
        return result
