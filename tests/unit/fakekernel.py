"""A MemoryBackend with what the daemon also needs from a kernel: a ruleset generation that
every commit bumps, hand edits from "someone else", and named counters with reference counts."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace

from op25b_ctl.kernel.backend import MemoryBackend
from op25b_ctl.kernel.netlink import TableNotFound
from op25b_ctl.plan.table import Table
from op25b_ctl.plan.transaction import AddCounter, Transaction


@dataclass(frozen=True)
class Counter:
    packets: int
    bytes: int
    refs: int


class FakeKernel(MemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.gen = 1
        self.values: dict[str, tuple[int, int]] = {}  # counter name -> (packets, bytes)

    def generation(self) -> int:
        return self.gen

    def apply(self, tx: Transaction) -> None:
        super().apply(tx)
        self.gen += 1
        for op in tx.ops:
            if isinstance(op, AddCounter):  # a new counter starts where it is told to
                self.values[op.name] = (op.packets, op.bytes)

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

    # -- netlink.read_rule_digests stand-in: the rule's text plays the expressions' part

    def rule_digests(
        self, table: str, family: str, chains: Iterable[str] | None = None
    ) -> dict[tuple[str, str], tuple[str, ...]]:
        t = self.tables.get((family, table))
        if t is None:
            return {}
        out: dict[tuple[str, str], list[str]] = {}
        for c in t.chains.values():
            if chains is not None and c.name not in chains:
                continue
            for r in c.rules:
                digest = hashlib.sha256((r.text or "").encode()).hexdigest()[:16]
                out.setdefault((c.name, r.comment), []).append(digest)
        return {k: tuple(v) for k, v in out.items()}

    # -- netlink.read_counter_objects stand-in

    def read_counters(self, table: str) -> dict[str, Counter]:
        t = self.tables.get(("inet", table))
        if t is None:
            raise TableNotFound(f"table inet {table} does not exist")
        texts = [r.text or "" for c in t.chains.values() for r in c.rules]
        return {
            n: Counter(
                *self.values.get(n, (0, 0)),
                refs=sum(f"counter name {n} " in f"{text} " for text in texts),
            )
            for n in t.counters
        }
