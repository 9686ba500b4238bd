"""Read the live table, diff it against the desired one, commit the difference (one batch, or
the planner's ordered batches when a set's declaration must change: plan/diff.py).

The only place that sequences kernel calls; it never decides *what* the table should be.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

import netaddr

from op25b_ctl.errors import NotOurTableError
from op25b_ctl.kernel.base import Kernel
from op25b_ctl.plan.diff import diff
from op25b_ctl.plan.ruleset import EXEMPT_CHAIN, FINGERPRINT_PREFIX, exempt_prefixes
from op25b_ctl.plan.table import Rule, Table
from op25b_ctl.plan.transaction import AddRule, DeleteTable, FlushChain, Op, Transaction
from op25b_ctl.source import rulerefs


def is_ours(live: Table) -> bool:
    """Our ownership marker: a rule carrying our `op25b:<id>` comment, or the
    elements-fingerprint counter (which survives `nft flush table`). An empty table holds
    nothing to lose. Chain names prove nothing: anyone may call a chain `smtp`."""
    if not (live.chains or live.sets or live.counters):
        return True
    if any(c.startswith(FINGERPRINT_PREFIX) for c in live.counters):
        return True
    return any(not r.id.startswith("foreign:") for c in live.chains.values() for r in c.rules)


def ensure_ours(live: Table | None) -> None:
    """Refuse to take over a table someone else made under our name."""
    if live is None or is_ours(live):
        return
    raise NotOurTableError(
        f"table {live.spec} exists but was not created by op25b-ctl; "
        "set gateway.table to another name or remove that table yourself"
    )


def read_live(kernel: Kernel, desired: Table, *, trust_fingerprint: bool = False) -> Table | None:
    """The live table, as cheaply as is safe.

    With `trust_fingerprint`, a skeleton read (no elements) is enough when the kernel holds
    the elements-fingerprint counter of the desired sets and every set is declared as desired:
    the elements were written by us in the transaction that wrote that name. Otherwise, or
    when it differs, every element is read and compared (seconds at 100,000 prefixes).
    """
    if trust_fingerprint:
        live = kernel.read(desired.family, desired.name, elements=False)
        if live is None or live.elements_known:
            return live
        fingerprints = {c for c in desired.counters if c.startswith(FINGERPRINT_PREFIX)}
        if (
            fingerprints <= live.counters
            and live.sets.keys() == desired.sets.keys()
            and all(s.same_shape(desired.sets[n]) for n, s in live.sets.items())
        ):
            return replace(live, sets=desired.sets, elements_known=True)
    return _exemptions_checked(kernel, kernel.read(desired.family, desired.name), desired)


def _exemptions_checked(kernel: Kernel, live: Table | None, desired: Table) -> Table | None:
    """A full read covers the `exempt` chain's anonymous sets too: their rule digests name
    the set, not its elements, and the elements fingerprint covers named sets only. If the
    live chain has the desired rule ids but its sets hold other addresses, its rules are
    marked foreign, so the diff rewrites the chain (a drift repair)."""
    have = live.chains.get(EXEMPT_CHAIN) if live is not None else None
    want = desired.chains.get(EXEMPT_CHAIN)
    if live is None or have is None or want is None or have.rule_ids != want.rule_ids:
        return live  # absent, or other rules: the diff rewrites it anyway
    held = netaddr.IPSet(kernel.rule_elements(live.family, live.name, EXEMPT_CHAIN))
    if held == netaddr.IPSet(exempt_prefixes(desired)):
        return live
    edited = tuple(Rule(f"foreign:elements-{r.id}") for r in have.rules)
    return replace(live, chains={**live.chains, EXEMPT_CHAIN: replace(have, rules=edited)})


def plan(kernel: Kernel, desired: Table, *, trust_fingerprint: bool = False) -> Transaction:
    """What `apply` would do now; reads the live table, changes nothing."""
    live = read_live(kernel, desired, trust_fingerprint=trust_fingerprint)
    ensure_ours(live)
    return diff(live, desired)


def apply(
    kernel: Kernel, desired: Table, *, dry_run: bool = False, trust_fingerprint: bool = False
) -> Transaction:
    """Make the live table equal to `desired`; an empty transaction means it already was."""
    live = read_live(kernel, desired, trust_fingerprint=trust_fingerprint)
    return apply_to(kernel, live, desired, dry_run=dry_run)


def apply_to(
    kernel: Kernel, live: Table | None, desired: Table, *, dry_run: bool = False
) -> Transaction:
    """`apply` for a caller that has just read the live table itself (from `read_live`).

    One commit per batch (one, unless a set's declaration changes), no separate dry run
    first: libnftables evaluates the whole script before it sends anything, and the kernel
    validates the whole batch before it commits, aborting all of it on any error (a dry run
    reaches the kernel too, so it would only repeat the same checks and double the cost).
    `dry_run` runs only that check, of all the batches as one.
    """
    return apply_counting(kernel, live, desired, dry_run=dry_run)[0]


def apply_counting(
    kernel: Kernel, live: Table | None, desired: Table, *, dry_run: bool = False
) -> tuple[Transaction, int]:
    """`apply_to`, and the commits it took (`Kernel.apply`): what a caller that trusts the
    ruleset generation afterwards must expect it to have moved by."""
    ensure_ours(live)
    tx = diff(live, desired)
    commits = 0
    if tx:
        if dry_run:
            kernel.check(tx)
        else:
            commits = kernel.apply(tx)
    return tx, commits


def teardown(kernel: Kernel, family: str, name: str) -> bool:
    """Delete our table (the emergency off switch); False if there was none.

    Refuses (NotOurTableError) a table without our ownership marker, whatever its name."""
    live = kernel.read(family, name, elements=False)
    if live is None:
        return False
    ensure_ours(live)
    kernel.apply(Transaction(family, name, (DeleteTable(),)))
    return True


# -- statements: a rule edited in place keeps our comment, so the diff cannot see it ----------


def rewrite_chains(desired: Table, chains: Iterable[str]) -> Transaction:
    """Flush the given chains and fill them again from the desired table, in one batch."""
    ops: list[Op] = []
    for name in sorted(chains):
        ops.append(FlushChain(name))
        ops += [AddRule(name, rule) for rule in desired.chains[name].rules]
    return Transaction(desired.family, desired.name, tuple(ops))


def learn_statements(
    kernel: Kernel, tx: Transaction, desired: Table, reference: Mapping[str, str]
) -> dict[str, str]:
    """The reference after reading back the rules `tx` wrote (only those chains' dumps unless
    most were written: one chain's dump instead of every pool's)."""
    written = {op.chain for op in tx.ops if isinstance(op, AddRule)}
    if not written:
        return dict(reference)
    everything = len(written) * 2 > len(desired.chains)
    live = kernel.rule_digests(desired.family, desired.name, None if everything else written)
    keep = {r.id for c in desired.chains.values() for r in c.rules}
    return rulerefs.learn(reference, {k: v for k, v in live.items() if k[0] in written}, keep)


def remember_statements(kernel: Kernel, tx: Transaction, desired: Table, path: Path | None) -> None:
    """After a one-shot command's commit: keep what it wrote as the reference (in `path`)."""
    if path is None or not tx:
        return
    reference = rulerefs.load(path)
    learned = learn_statements(kernel, tx, desired, reference)
    if learned != reference:
        rulerefs.save(path, learned)


def check_statements(kernel: Kernel, desired: Table, path: Path | None) -> tuple[Transaction, int]:
    """For a one-shot command whose diff was empty: rewrite (then learn) the chains whose rules
    were edited in place, are unreadable, or have no reference yet; and the commits that
    took."""
    reference = rulerefs.load(path)
    live = kernel.rule_digests(desired.family, desired.name, None)
    verdict = rulerefs.judge(live, reference, desired.chains)
    tx = rewrite_chains(desired, verdict.tampered | verdict.unverified)
    commits = 0
    if tx:
        commits = kernel.apply(tx)
        rulerefs.save(path, learn_statements(kernel, tx, desired, reference))
    return tx, commits
