"""The one seam to the kernel's ruleset: read our table, check and apply a transaction.

`NftBackend` writes through the official python-nftables binding (libnftables) and reads over
netlink (`netlink.py`: libnftables would load every element into its cache first);
`MemoryBackend` is a faithful in-memory stand-in for tests without root. Both speak only
about our own table: there is no call here that could list, flush or delete anything else.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Iterable
from dataclasses import replace
from typing import Protocol

from op25b_ctl.errors import BackendError
from op25b_ctl.plan.render import render
from op25b_ctl.plan.table import RULE_TAG, Chain, Hook, NamedSet, Rule, Table
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
    Transaction,
)

MAX_ERROR = 4000  # nft echoes the offending line; an element line can be huge


class Backend(Protocol):
    def read(self, family: str, name: str, *, elements: bool = True) -> Table | None:
        """Our table as the kernel has it, or None if it does not exist.

        `elements=False` may skip set elements (then `Table.elements_known` is False): that
        is what keeps a read cheap when the sets hold 100,000 prefixes.
        """

    def check(self, tx: Transaction) -> None:
        """Raise BackendError if nftables would refuse `tx`; change nothing."""

    def apply(self, tx: Transaction) -> None:
        """Commit `tx` as one atomic batch; raise BackendError (nothing changed) if refused."""


def _read_skeleton(family: str, name: str) -> Table | None:
    """Our table without set elements, from a few netlink dumps (no libnftables cache)."""
    from op25b_ctl.kernel import netlink

    skeleton = netlink.read_skeleton(name, family)
    if skeleton is None:
        return None
    rules: dict[str, list[Rule]] = {}
    for r in skeleton.rules:
        comment = r.comment or ""
        rid = comment[len(RULE_TAG) :] if comment.startswith(RULE_TAG) else f"foreign:{r.handle}"
        rules.setdefault(r.chain, []).append(Rule(rid))
    chains = {
        c.name: Chain(
            c.name,
            tuple(rules.get(c.name, ())),
            Hook(c.hook, c.priority or 0, c.policy or "accept") if c.hook else None,
        )
        for c in skeleton.chains
    }
    sets = {
        s.name: NamedSet(s.name, "ipv6_addr" if s.name.endswith("_v6") else "ipv4_addr", s.is_map)
        for s in skeleton.sets
    }
    return Table(family, name, chains, sets, skeleton.counters, elements_known=False)


_BIG = 1 << 20  # scripts above this size leave megabytes of freed heap behind


def release_memory() -> None:
    """Give freed heap back to the OS after a large libnftables call.

    glibc keeps freed memory in its arenas; after a 100,000-element apply or listing a
    long-running daemon would otherwise stay at its peak (measured: 257 MB resident after an
    apply, 84 MB after malloc_trim; the same 84 MB after a full listing instead of 388 MB).
    """
    gc.collect()  # a listing's cyclic garbage first, so its memory is free to return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to trim
        return
    libc.malloc_trim(0)


class NftBackend:
    """libnftables through the official binding.

    A fresh context per command: libnftables keeps its cache inside the context, and a
    dry run leaves the checked batch in that cache, so reusing it makes the real commit
    fail with spurious "exists"/"overlaps" errors (measured with nft 1.0.6).
    """

    def _cmd(self, script: str, *, dry_run: bool = False) -> str:
        import nftables  # Debian's python3-nftables; imported here so unit tests need no root

        nft = nftables.Nftables()
        nft.set_handle_output(False)
        nft.set_dry_run(dry_run)
        try:
            rc, out, err = nft.cmd(script)
        finally:
            del nft  # nft_ctx_free: libnftables' cache of every element goes with it
            if len(script) > _BIG:
                release_memory()
        if rc != 0:
            msg = (err or out or "").strip()
            if len(msg) > MAX_ERROR:
                msg = msg[:MAX_ERROR] + " ..."
            raise BackendError(f"nftables refused the transaction: {msg or f'exit status {rc}'}")
        return str(out)

    def read(self, family: str, name: str, *, elements: bool = True) -> Table | None:
        """Read over netlink, never through libnftables' cache (seconds and hundreds of MB at
        100,000 elements); all dumps of one read come from one ruleset generation."""
        from op25b_ctl.kernel import netlink

        for _ in range(3):
            before = netlink.ruleset_generation()
            table = _read_skeleton(family, name)
            if table is None or not elements:
                return table
            try:
                sets = {
                    n: replace(s, elements=netlink.read_elements(name, n, family))
                    for n, s in table.sets.items()
                }
            except netlink.TableNotFound:
                continue  # deleted while we read: look again
            if netlink.ruleset_generation() == before:
                return replace(table, sets=sets, elements_known=True)
        raise BackendError(f"table {family} {name} kept changing while it was read")

    def check(self, tx: Transaction) -> None:
        if tx:
            self._cmd(render(tx), dry_run=True)

    def apply(self, tx: Transaction) -> None:
        if tx:
            self._cmd(render(tx))


class MemoryBackend:
    """Applies transactions to an in-memory table, refusing what the kernel would refuse."""

    def __init__(self, tables: Iterable[Table] = ()) -> None:
        self.tables = {(t.family, t.name): t for t in tables}
        self.applied: list[Transaction] = []
        self.fail_next: str | None = None
        self.reads: list[bool] = []

    def read(self, family: str, name: str, *, elements: bool = True) -> Table | None:
        self.reads.append(elements)
        return self.tables.get((family, name))

    def check(self, tx: Transaction) -> None:
        self._run(tx)

    def apply(self, tx: Transaction) -> None:
        result = self._run(tx)
        if self.fail_next:
            msg, self.fail_next = self.fail_next, None
            raise BackendError(msg)
        key = (tx.family, tx.table)
        if result is None:
            self.tables.pop(key, None)
        else:
            self.tables[key] = result
        self.applied.append(tx)

    def _run(self, tx: Transaction) -> Table | None:
        t: Table | None = self.tables.get((tx.family, tx.table))

        def need() -> Table:
            if t is None:
                raise BackendError(f"table {tx.spec} does not exist")
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
                        raise BackendError(f"counter {n} is in use")
                    t = replace(need(), counters=need().counters - {n})
                case AddSet(set=s):
                    cur = need()
                    if s.name in cur.sets:
                        raise BackendError(f"set {s.name} exists")
                    for target in s.elements.values():
                        if target is not None and target not in cur.chains:
                            raise BackendError(f"chain {target} does not exist")
                    t = replace(cur, sets={**cur.sets, s.name: s})
                case DeleteSet(set=s):
                    t = replace(need(), sets={k: v for k, v in need().sets.items() if k != s.name})
                case AddChain(name=n, hook=hook):
                    if n not in need().chains:
                        t = replace(need(), chains={**need().chains, n: Chain(n, hook=hook)})
                case DeleteChain(name=n):
                    cur = need()
                    if cur.chains[n].rules:
                        raise BackendError(f"chain {n} is not empty")
                    if any(n in s.elements.values() for s in cur.sets.values()):
                        raise BackendError(f"chain {n} is in use")
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
                            raise BackendError(f"chain {target} does not exist")
                    overlap = set(elements) & set(s.elements)
                    if overlap:
                        raise BackendError(f"element exists: {sorted(overlap)[0]}")
                    t = replace(
                        cur, sets={**cur.sets, n: replace(s, elements={**s.elements, **elements})}
                    )
                case DeleteElements(set=n, keys=keys):
                    cur = need()
                    s = cur.sets[n]
                    missing = [k for k in keys if k not in s.elements]
                    if missing:
                        raise BackendError(f"element does not exist: {missing[0]}")
                    left = {k: v for k, v in s.elements.items() if k not in set(keys)}
                    t = replace(cur, sets={**cur.sets, n: replace(s, elements=left)})
        return t
