"""Typed operations of one nftables transaction, in the order the kernel must see them.

A transaction is applied as a single netlink batch -- all of it or none of it -- except where
the planner split it (`breaks`): then it is an ordered list of batches (`batches`), each one
atomic, committed one after the other. The planner splits only to replace a set's declaration
without a rule ever meeting a set created in its own batch (plan/diff.py); every state between
two batches is a complete, enforcing table. Keeping it as data (not text) lets the in-memory
backend apply it in tests and lets `plan` describe it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise

from op25b_ctl.plan.table import Hook, NamedSet, Rule


@dataclass(frozen=True)
class AddTable:
    comment: str


@dataclass(frozen=True)
class DeleteTable:
    pass


@dataclass(frozen=True)
class AddCounter:
    name: str
    # start values: carry a counter over when someone deleted it with its table
    packets: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class DeleteCounter:
    name: str


@dataclass(frozen=True)
class AddSet:
    set: NamedSet  # created with its elements, declared inline


@dataclass(frozen=True)
class DeleteSet:
    set: NamedSet


@dataclass(frozen=True)
class FlushSet:
    """Remove every element of a set (`set` is the live one: what is removed); the same
    batch fills it again with AddElements."""

    set: NamedSet


@dataclass(frozen=True)
class AddChain:
    name: str
    hook: Hook | None = None


@dataclass(frozen=True)
class DeleteChain:
    name: str


@dataclass(frozen=True)
class FlushChain:
    name: str


@dataclass(frozen=True)
class AddRule:
    chain: str
    rule: Rule


@dataclass(frozen=True)
class AddElements:
    set: str
    elements: Mapping[str, str | None]


@dataclass(frozen=True)
class DeleteElements:
    set: str
    keys: tuple[str, ...]


Op = (
    AddTable
    | DeleteTable
    | AddCounter
    | DeleteCounter
    | AddSet
    | DeleteSet
    | FlushSet
    | AddChain
    | DeleteChain
    | FlushChain
    | AddRule
    | AddElements
    | DeleteElements
)


@dataclass(frozen=True)
class Transaction:
    family: str
    table: str
    ops: tuple[Op, ...] = field(default_factory=tuple)
    # indexes into `ops` where a new batch (a separate commit) starts; () = one batch
    breaks: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.ops)

    @property
    def spec(self) -> str:
        return f"{self.family} {self.table}"

    @classmethod
    def of_batches(cls, family: str, table: str, batches: Iterable[Transaction]) -> Transaction:
        """One transaction committed as `batches` in order (empty ones dropped)."""
        ops: list[Op] = []
        breaks: list[int] = []
        for batch in batches:
            if batch.ops:
                if ops:
                    breaks.append(len(ops))
                ops += batch.ops
        return cls(family, table, tuple(ops), tuple(breaks))

    @property
    def batches(self) -> tuple[Transaction, ...]:
        """The atomic batches, in commit order; just `(self,)` when there is one."""
        if not self.breaks:
            return (self,)
        edges = (0, *self.breaks, len(self.ops))
        return tuple(
            Transaction(self.family, self.table, self.ops[a:b]) for a, b in pairwise(edges)
        )

    def element_delta(self, name: str) -> tuple[dict[str, str | None], tuple[str, ...]]:
        """(elements added or changed, keys removed) in set `name`, whether the transaction
        edits its elements, flushes and refills it, or deletes and re-creates it."""
        added: dict[str, str | None] = {}
        removed: list[str] = []
        old: NamedSet | None = None  # the live set before a flush or a delete
        refill: dict[str, str | None] = {}
        for op in self.ops:
            if isinstance(op, DeleteSet | FlushSet) and op.set.name == name:
                old = op.set
            elif isinstance(op, AddSet) and op.set.name == name:
                refill.update(op.set.elements)
            elif isinstance(op, AddElements) and op.set == name:
                (refill if old is not None else added).update(op.elements)
            elif isinstance(op, DeleteElements) and op.set == name:
                removed += op.keys
        if old is not None:
            have = old.elements
            added.update({k: v for k, v in refill.items() if k not in have or have[k] != v})
            removed += [k for k in have if k not in refill]
        else:
            added.update(refill)
        return added, tuple(removed)
