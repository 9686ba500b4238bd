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
"""

from __future__ import annotations

from op25b_ctl.plan.table import Table
from op25b_ctl.plan.transaction import (
    AddChain,
    AddCounter,
    AddElements,
    AddRule,
    AddSet,
    AddTable,
    DeleteChain,
    DeleteCounter,
    DeleteElements,
    DeleteSet,
    FlushChain,
    FlushSet,
    Op,
    Transaction,
)

TABLE_COMMENT = "managed by op25b-ctl; edits are reverted"


def diff(live: Table | None, desired: Table) -> Transaction:
    """Ops turning `live` (None: no table yet) into `desired`."""
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
    for name in cur.sets:
        if name not in desired.sets and cur.sets[name].elements:
            removals.append(DeleteElements(name, tuple(cur.sets[name].elements)))

    # Rules referencing a set we recreate, or in chains we rewrite or delete, go first.
    flush = {c.name for c in rewrite} | set(gone_chains) | rehook
    if recreate_sets or any(n not in desired.sets for n in cur.sets):
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
