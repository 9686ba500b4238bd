"""Live table + desired table -> the smallest transaction that makes the live one desired.

Unchanged chains, rules, elements and counters are left alone, which is what keeps counters
running across re-applies and keeps a one-pool change as small as one chain rewrite. The op
order satisfies nftables' references within one batch: objects before the rules and elements
that use them; elements and rules removed before the chains and objects they point at.

A set whose elements changed is flushed and filled again, not edited element by element: in
the same batch, `flush map` and one `add element` with all of its elements. nft 1.0.6 loads
every element of the table's interval sets into its cache before it adds or deletes even one
element and then works through them per element (100 removals out of 100,000 took 72 s);
a refill costs that cache load once plus one set's worth of elements (docs/benchmarks.md,
"Policy changes that touch elements"). The set itself stays: deleting it and declaring it
again in the batch was faster still, but measured not atomic for packets (a connection got
through now and then right at the commit), while a flush and refill of the set the rules
already use was.

The cause (docs/benchmarks.md): a rule that points at a set created *in the same batch* meets
an empty set until the set backend's commit step, which runs after the generation flip. So
while the live table enforces anything (has rules), no batch adds a rule that references a
set the same batch declares. A set that must be declared -- missing from the live table, or
whose declaration (key type, map or set, flags) differs, which a flush cannot change: a
schema change at upgrade time, never a policy edit -- is declared in a batch of its own first,
and the transaction becomes an ordered list of batches (`Transaction.batches`):

    missing set S     1. declare S, filled (and empty chains its elements jump to)
                      2. everything else, rules pointing at S included
    S re-declared     1. declare S under a staging name `S_next`, filled, alone
                      2. rules point at S_next; the old S is deleted and the new S declared,
                         filled (no rule uses it yet)
                      3. rules point at S again; S_next is deleted

So the names are the same after the change as before it (rule ids, the rule-digest reference,
counters and `status` see the usual table); `S_next` exists only between batches. Every
state between two batches is a complete table whose rules use committed, filled sets: if a
later batch fails, the table keeps enforcing and the next pass plans again from what is live
(a left-over `S_next` is reused, refilled or deleted like any set). A table with no rules
(none yet, or flushed by someone) enforces nothing, so it is still made in one batch.
"""

from __future__ import annotations

import re
from dataclasses import replace
from itertools import count

from op25b_ctl.plan.ruleset import FINGERPRINT_PREFIX, offender_pool, pool_chain
from op25b_ctl.plan.table import Chain, NamedSet, Rule, Table
from op25b_ctl.plan.transaction import (
    AddChain,
    AddCounter,
    AddElements,
    AddRule,
    AddSet,
    AddTable,
    DeleteChain,
    DeleteCounter,
    DeleteSet,
    FlushChain,
    FlushSet,
    Op,
    Transaction,
)

TABLE_COMMENT = "managed by op25b-ctl; edits are reverted"
STAGING_SUFFIX = "_next"


def diff(live: Table | None, desired: Table) -> Transaction:
    """Ops turning `live` (None: no table yet) into `desired`: one batch, or an ordered list
    of batches when a set must be declared while rules are live (module docstring)."""
    if (live.elements_known if live is not None else True) != desired.elements_known:
        # a hollow table (sets without elements) says nothing about elements: against a full
        # one every element would look added or removed
        raise ValueError(f"diff of a hollow and a full table {desired.spec}")
    if not desired.elements_known and not any(
        c.startswith(FINGERPRINT_PREFIX) for c in desired.counters
    ):
        raise ValueError(f"diff of a shape-only table {desired.spec}: its sets are unknown")
    batches: list[Transaction] = []
    cur = live
    for step in steps_to(live, desired):
        batches.append(one_batch(cur, step))
        cur = step
    return Transaction.of_batches(desired.family, desired.name, batches)


def steps_to(live: Table | None, desired: Table) -> list[Table]:
    """The tables to pass through on the way to `desired`, `desired` last; each step is one
    batch, and no step's rules use a set that step declares while the live table has rules."""
    if live is None or not any(c.rules for c in live.chains.values()):
        return [desired]
    # Dynamic sets (offenders) are exempt: the kernel fills them, a rule that meets one empty
    # loses nothing, and the rules using them carry no verdict. They are declared, re-declared
    # (size, timeout) and deleted in the one batch with their rules.
    reshaped = sorted(
        n
        for n, s in desired.sets.items()
        if n in live.sets and not live.sets[n].same_shape(s) and not s.dynamic
    )
    staged = {n: staging_name(n, live, desired) for n in reshaped}
    stage = _renamed(desired, staged)  # the desired table with rules on the staged sets
    declare = {
        n: s
        for n, s in stage.sets.items()
        if not s.dynamic
        and (n not in live.sets or n in staged.values() or not live.sets[n].same_shape(s))
    }
    if not declare:
        return [desired]
    if not desired.elements_known:
        # a hollow desired table has no elements to declare a set with: never declare it empty
        raise ValueError(f"sets of {desired.spec} must be declared: the full table is needed")
    targets = {t for s in declare.values() for t in s.elements.values() if t is not None}
    missing_chains = {t: Chain(t) for t in sorted(targets) if t not in live.chains}
    declared = replace(
        live,
        sets={**live.sets, **declare},
        chains={**live.chains, **missing_chains},
    )
    if not staged:
        return [declared, desired]
    swapped = replace(stage, sets={**stage.sets, **{n: desired.sets[n] for n in staged}})
    return [declared, swapped, desired]


def staging_name(name: str, live: Table, desired: Table) -> str:
    """`<name>_next` (or `_next2`, ...): free in the desired table, and in the live one unless
    it holds a set of the right declaration already (left over from an interrupted change)."""
    want = desired.sets[name]
    for i in count(1):
        candidate = name + STAGING_SUFFIX + (str(i) if i > 1 else "")
        if candidate in desired.sets:
            continue
        left = live.sets.get(candidate)
        if left is None or left.same_shape(want):
            return candidate
    raise AssertionError("unreachable")


def _renamed(desired: Table, names: dict[str, str]) -> Table:
    """`desired` with sets renamed (old -> new) and every rule pointing at the new names."""
    if not names:
        return desired
    pattern = re.compile("@(" + "|".join(re.escape(n) for n in names) + r")(?![A-Za-z0-9_])")

    def rule(r: Rule) -> Rule:
        assert r.text is not None, "desired rules have text"
        text = pattern.sub(lambda m: "@" + names[m.group(1)], r.text)
        return r if text == r.text else Rule.of(text)

    sets: dict[str, NamedSet] = {
        names.get(n, n): replace(s, name=names[n]) if n in names else s
        for n, s in desired.sets.items()
    }
    chains = {
        n: replace(c, rules=tuple(rule(r) for r in c.rules)) for n, c in desired.chains.items()
    }
    return replace(desired, sets=sets, chains=chains)


def one_batch(live: Table | None, desired: Table) -> Transaction:
    """Ops turning `live` into `desired` in a single batch (a set whose declaration differs is
    deleted and declared again in it: `steps_to` makes sure no rule then points at it)."""
    empty = Table(desired.family, desired.name)
    cur = live or empty
    ops: list[Op] = []
    if live is None:
        ops.append(AddTable(TABLE_COMMENT))

    ops += [AddCounter(n) for n in sorted(desired.counters - cur.counters)]

    # A set whose type changed cannot be altered in place: drop and recreate it.
    recreate_sets = {
        name
        for name, s in desired.sets.items()
        if name in cur.sets and not cur.sets[name].same_shape(s)
    }
    # A set whose elements changed is flushed and refilled in the batch (module docstring).
    refill_sets = {
        name
        for name, s in desired.sets.items()
        if name in cur.sets
        and name not in recreate_sets
        and not s.dynamic  # the kernel's data: never flushed, never refilled
        and not (cur.sets[name].elements is s.elements or cur.sets[name].elements == s.elements)
    }
    new_sets = [s for n, s in desired.sets.items() if n not in cur.sets or n in recreate_sets]

    # Base chains whose hook changed must be deleted and added again (no in-place change).
    rehook = {
        n for n, c in desired.chains.items() if n in cur.chains and cur.chains[n].hook != c.hook
    }
    new_chains = [c for n, c in desired.chains.items() if n not in cur.chains]
    gone_chains = [n for n in cur.chains if n not in desired.chains]
    rewrite = [
        c
        for n, c in desired.chains.items()
        if n in cur.chains and n not in rehook and cur.chains[n].rule_ids != c.rule_ids
    ]

    # Elements: removals first (they may point at chains we delete), additions last (they may
    # point at chains we add). A changed set is flushed first and refilled last.
    removals: list[Op] = [FlushSet(cur.sets[n]) for n in sorted(refill_sets)]
    additions: list[Op] = [
        AddElements(n, desired.sets[n].elements)
        for n in sorted(refill_sets)
        if desired.sets[n].elements
    ]
    # A set going away is emptied first (its elements may point at chains we delete): one
    # flush, never a per-element delete (nft 1.0.6 works through those one by one).
    removals += [
        FlushSet(cur.sets[n])
        for n in sorted(cur.sets)
        if n not in desired.sets and cur.sets[n].elements
    ]

    # Rules referencing a set we recreate or delete, or in chains we rewrite or delete, go
    # first. Only its pool's chain uses an offender set; any other set: every chain.
    flush = {c.name for c in rewrite} | set(gone_chains) | rehook
    for name in recreate_sets | {n for n in cur.sets if n not in desired.sets}:
        pool = offender_pool(name) if cur.sets[name].dynamic else None
        if pool is not None:
            flush.add(pool_chain(pool))
        else:
            flush |= {n for n in cur.chains if cur.chains[n].rules}
    flush_ops: list[Op] = [
        FlushChain(n) for n in sorted(flush) if cur.chains.get(n) and cur.chains[n].rules
    ]

    ops += removals
    ops += flush_ops
    ops += [DeleteChain(n) for n in sorted(rehook)]
    ops += [DeleteSet(cur.sets[n]) for n in sorted(recreate_sets)]
    # nft 1.0.6 resolves a map element's jump target only if the chain was added before
    # the map in the batch (measured): regular chains first, then sets, then base chains.
    ops += [AddChain(c.name, c.hook) for c in new_chains if c.hook is None]
    ops += [AddSet(s) for s in new_sets]
    ops += [AddChain(n, desired.chains[n].hook) for n in sorted(rehook)]
    ops += [AddChain(c.name, c.hook) for c in new_chains if c.hook is not None]
    ops += additions
    ops += [DeleteChain(n) for n in sorted(gone_chains)]
    ops += [DeleteSet(cur.sets[n]) for n in sorted(cur.sets) if n not in desired.sets]
    # Rules last among additions: chains they jump to and sets they match exist by now.
    refill = {c.name for c in new_chains} | {c.name for c in rewrite} | rehook
    refill |= {n for n in flush if n in desired.chains}
    for name in _rule_order(desired, refill):
        ops += [AddRule(name, r) for r in desired.chains[name].rules]
    ops += [DeleteCounter(n) for n in sorted(cur.counters - desired.counters)]
    return Transaction(desired.family, desired.name, tuple(ops))


def _rule_order(desired: Table, names: set[str]) -> list[str]:
    """Non-base chains first, so a base chain never jumps into a chain still being filled."""
    return sorted(names, key=lambda n: (desired.chains[n].hook is not None, n))
