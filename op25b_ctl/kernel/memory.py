"""A kernel in memory: the same answers as `NftKernel`, refusing what the kernel would refuse.

The unit tests (and anyone reasoning about a change without root) use it in place of the
running kernel. Besides the `Kernel` operations it plays "someone else" at the nft prompt
(`edit`, `flush_chains`), traffic (`values`), and a refused commit (`fail_next`, `fail_after`),
and it keeps a log of reads and commits for tests to assert on. A rule's text stands in for its
expressions when digests are asked for.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable
from dataclasses import replace

from op25b_ctl.errors import KernelError, TableNotFound
from op25b_ctl.kernel.base import Counter, RuleDigests, commit_batches
from op25b_ctl.plan.offenders import Element
from op25b_ctl.plan.table import Chain, Table
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
    DeleteTable,
    FlushChain,
    FlushSet,
    Transaction,
)

__all__ = ["MemoryKernel"]


class MemoryKernel:
    """Tables, counter values and a ruleset generation, all in memory."""

    def __init__(self, tables: Iterable[Table] = (), *, generations: bool = True) -> None:
        self.tables = {(t.family, t.name): t for t in tables}
        self.gen = 1  # bumped by every commit, ours or someone else's
        self.generations = generations  # False: a kernel that cannot tell (generation() None)
        self.values: dict[str, tuple[int, int]] = {}  # counter name -> (packets, bytes)
        self.seen: dict[str, list[Element]] = {}  # offender set -> what "traffic" recorded
        self.applied: list[Transaction] = []  # every committed batch, in order
        self.reads: list[bool] = []  # every read(), by its `elements` argument
        self.fail_next: str | None = None  # the next commit is refused with this message
        self.fail_after = 0  # ... after this many more commits (batches) have gone in
        # a fresh id per instance, as a new namespace (or a reboot) gives a new ruleset
        self.identity: str | None = f"memory:{uuid.uuid4()}"

    # -- the Kernel protocol

    def read(self, family: str, name: str, *, elements: bool = True) -> Table | None:
        self.reads.append(elements)
        table = self.tables.get((family, name))
        # like the netlink skeleton read: without elements, the sets come back empty
        return table.hollow() if table is not None and not elements else table

    def generation(self) -> int | None:
        return self.gen if self.generations else None

    def ruleset_id(self) -> str | None:
        return self.identity if self.generations else None

    def counters(self, family: str, name: str) -> dict[str, Counter]:
        t = self.tables.get((family, name))
        if t is None:
            raise TableNotFound(f"table {family} {name} does not exist")
        texts = [r.text or "" for c in t.chains.values() for r in c.rules]
        return {
            n: Counter(
                *self.values.get(n, (0, 0)),
                refs=sum(f"counter name {n} " in f"{text} " for text in texts),
            )
            for n in t.counters
        }

    def rule_digests(
        self, family: str, name: str, chains: Iterable[str] | None = None
    ) -> RuleDigests:
        t = self.tables.get((family, name))
        if t is None:
            return {}
        wanted = None if chains is None else set(chains)
        out: dict[tuple[str, str], list[str]] = {}
        for c in t.chains.values():
            if wanted is not None and c.name not in wanted:
                continue
            for r in c.rules:
                digest = hashlib.sha256((r.text or "").encode()).hexdigest()[:16]
                out.setdefault((c.name, r.comment), []).append(digest)
        return {k: tuple(v) for k, v in out.items()}

    def rule_elements(self, family: str, name: str, chain: str) -> list[str]:
        t = self.tables.get((family, name))
        c = t.chains.get(chain) if t is not None else None
        out: list[str] = []
        for r in c.rules if c is not None else ():
            text = r.text or ""
            if "{" in text and "}" in text:  # `... { a, b } ...`: one anonymous set a rule
                inner = text[text.index("{") + 1 : text.index("}")]
                out += [item.strip() for item in inner.split(",") if item.strip()]
        return out

    def offender_elements(self, family: str, name: str, set_name: str) -> list[Element]:
        t = self.tables.get((family, name))
        if t is None or set_name not in t.sets:
            raise TableNotFound(f"set {set_name} of table {family} {name} does not exist")
        return list(self.seen.get(set_name, ()))

    def check(self, tx: Transaction) -> None:
        self._run(tx)

    def apply(self, tx: Transaction) -> int:
        return commit_batches(tx, self._commit)

    def _commit(self, tx: Transaction) -> int:
        """One batch: all of it or nothing, one generation."""
        result = self._run(tx)
        if self.fail_next:
            if self.fail_after > 0:
                self.fail_after -= 1
            else:
                msg, self.fail_next = self.fail_next, None
                raise KernelError(msg)
        key = (tx.family, tx.table)
        old = self.tables.get(key)
        if result is None:
            self.tables.pop(key, None)
        else:
            self.tables[key] = result
        for gone in (old.counters if old else frozenset()) - (
            result.counters if result else frozenset()
        ):
            self.values.pop(gone, None)
        for op in tx.ops:
            if isinstance(op, AddCounter):  # a new counter starts where it is told to
                self.values[op.name] = (op.packets, op.bytes)
        self.applied.append(tx)
        self.gen += 1
        return 1

    # -- someone else at the nft prompt

    def edit(self, family: str, name: str, table: Table | None) -> None:
        """Replace (or with None delete) a table behind the controller's back: one commit."""
        if table is None:
            gone = self.tables.pop((family, name), None)
            for counter in gone.counters if gone else ():
                self.values.pop(counter, None)
        else:
            self.tables[(family, name)] = table
        self.gen += 1

    def flush_chains(self, family: str, name: str) -> None:
        t = self.tables[(family, name)]
        self.edit(
            family, name, replace(t, chains={n: replace(c, rules=()) for n, c in t.chains.items()})
        )

    def _run(self, tx: Transaction) -> Table | None:
        t: Table | None = self.tables.get((tx.family, tx.table))

        def need() -> Table:
            if t is None:
                raise KernelError(f"table {tx.spec} does not exist")
            return t

        for op in tx.ops:
            match op:
                case AddTable():
                    t = t or Table(tx.family, tx.table)
                case DeleteTable():
                    need()
                    t = None
                case AddCounter(name=n):
                    t = replace(need(), counters=need().counters | {n})
                case DeleteCounter(name=n):
                    if any(n in (r.text or "") for c in need().chains.values() for r in c.rules):
                        raise KernelError(f"counter {n} is in use")
                    t = replace(need(), counters=need().counters - {n})
                case AddSet(set=s):
                    cur = need()
                    if s.name in cur.sets:
                        raise KernelError(f"set {s.name} exists")
                    for target in s.elements.values():
                        if target is not None and target not in cur.chains:
                            raise KernelError(f"chain {target} does not exist")
                    t = replace(cur, sets={**cur.sets, s.name: s})
                case DeleteSet(set=s):
                    cur = need()
                    used = re.compile(rf"@{re.escape(s.name)}\b")
                    if any(used.search(r.text or "") for c in cur.chains.values() for r in c.rules):
                        raise KernelError(f"set {s.name} is in use")  # the kernel's EBUSY
                    t = replace(cur, sets={k: v for k, v in cur.sets.items() if k != s.name})
                case FlushSet(set=s):
                    cur = need()
                    t = replace(
                        cur, sets={**cur.sets, s.name: replace(cur.sets[s.name], elements={})}
                    )
                case AddChain(name=n, hook=hook):
                    if n not in need().chains:
                        t = replace(need(), chains={**need().chains, n: Chain(n, hook=hook)})
                case DeleteChain(name=n):
                    cur = need()
                    if cur.chains[n].rules:
                        raise KernelError(f"chain {n} is not empty")
                    if any(n in s.elements.values() for s in cur.sets.values()):
                        raise KernelError(f"chain {n} is in use")
                    t = replace(cur, chains={k: v for k, v in cur.chains.items() if k != n})
                case FlushChain(name=n):
                    cur = need()
                    t = replace(cur, chains={**cur.chains, n: replace(cur.chains[n], rules=())})
                case AddRule(chain=c, rule=rule):
                    cur = need()
                    chain = cur.chains[c]
                    t = replace(
                        cur, chains={**cur.chains, c: replace(chain, rules=(*chain.rules, rule))}
                    )
                case AddElements(set=n, elements=elements):
                    cur = need()
                    s = cur.sets[n]
                    for target in elements.values():
                        if target is not None and target not in cur.chains:
                            raise KernelError(f"chain {target} does not exist")
                    overlap = set(elements) & set(s.elements)
                    if overlap:
                        raise KernelError(f"element exists: {sorted(overlap)[0]}")
                    t = replace(
                        cur, sets={**cur.sets, n: replace(s, elements={**s.elements, **elements})}
                    )
                case DeleteElements(set=n, keys=keys):
                    cur = need()
                    s = cur.sets[n]
                    missing = [k for k in keys if k not in s.elements]
                    if missing:
                        raise KernelError(f"element does not exist: {missing[0]}")
                    left = {k: v for k, v in s.elements.items() if k not in set(keys)}
                    t = replace(cur, sets={**cur.sets, n: replace(s, elements=left)})
        return t
