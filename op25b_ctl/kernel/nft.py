"""The real kernel: writes through python-nftables (libnftables), reads over netlink.

libnftables is the writer: a transaction is rendered to nft text and committed as one batch,
which the kernel validates whole and commits or refuses whole. Two kinds of batch go through
our own netlink writer (`nlbatch.py`) instead, which skips libnftables' parse of every
element: one that creates our table -- its inert scaffold (table, counters, sets with their
elements, chains without a hook) first, then its base chain and rules in one libnftables
batch, so what packets see still changes at once -- and one that only refills sets and
swaps counters (an edit of the pools or relays), sent as one batch like libnftables'. Every
read goes over netlink (`netlink.py`), because a libnftables listing loads every set element
into its cache first.
"""

from __future__ import annotations

import ctypes
import gc
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import replace

from op25b_ctl.errors import KernelError, TableNotFound
from op25b_ctl.kernel import netlink, nlbatch
from op25b_ctl.kernel.base import Counter, RuleDigests, commit_batches
from op25b_ctl.plan.offenders import Element
from op25b_ctl.plan.render import render
from op25b_ctl.plan.table import INTERVAL, Chain, Hook, NamedSet, Rule, Table
from op25b_ctl.plan.transaction import Transaction

__all__ = ["NftKernel", "release_memory"]

MAX_ERROR = 4000  # nft echoes the offending line; an element line can be huge
_BIG = 1 << 20  # scripts above this size leave megabytes of freed heap behind
_READ_ATTEMPTS = 3  # a full read is retried if a commit lands between its dumps


def release_memory(*, collect: bool = True) -> None:
    """Give freed heap back to the OS after a large libnftables call or a full read.

    glibc keeps freed memory in its arenas; a long-running daemon would otherwise stay at
    its peak after a 100,000-element apply or listing (docs/benchmarks.md, memory).
    `collect=False` skips the garbage collection (tens of ms on a 110,000-prefix heap)
    where nothing cyclic was made.
    """
    if collect:
        gc.collect()  # a listing's cyclic garbage first, so its memory is free to return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to trim
        return
    libc.malloc_trim(0)


def _skeleton_table(skeleton: netlink.TableSkeleton, family: str, name: str) -> Table:
    """Our table without set elements, from a few netlink dumps (no libnftables cache)."""
    rules: dict[str, list[Rule]] = {}
    for r in skeleton.rules:
        rules.setdefault(r.chain, []).append(Rule.live(r.comment, r.handle))
    chains = {
        c.name: Chain(
            c.name,
            tuple(rules.get(c.name, ())),
            Hook(c.hook, c.priority or 0, c.policy or "accept") if c.hook else None,
        )
        for c in skeleton.chains
    }
    sets = {}
    for s in skeleton.sets:
        key, is_map, flags, size, timeout, counter = s.declaration
        sets[s.name] = NamedSet(
            s.name, key, is_map, flags=flags, size=size, timeout=timeout, counter=counter
        )
    return Table(family, name, chains, sets, skeleton.counters, elements_known=False)


def _readable(s: NamedSet) -> bool:
    """Declared the way we declare sets, so `netlink.read_elements` can read its elements back
    as prefixes. Another declaration (an older version's, someone else's) is replaced whole,
    whatever it holds: its elements are left unread (shown as none)."""
    return s.key_type in ("ipv4_addr", "ipv6_addr") and s.flags == INTERVAL


# Scripts above this go to a child `nft -f -`: libnftables' parse of a whole 110,000-element
# table is the largest allocation of a cold apply, and a child gives it back when it exits
# instead of raising the daemon's own peak (docs/performance.md). Same library, same single
# batch, so the same atomicity; small scripts (a pool's chain) stay in process (no fork).
CHILD_ABOVE = _BIG
NFT_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"


def _nft_child(nft: str, script: str, *, dry_run: bool) -> tuple[int, str, str]:
    """`nft [--check] -f -` with the script on stdin: one transaction, as in process."""
    argv = [nft, *(["--check"] if dry_run else []), "-f", "-"]
    try:
        cp = subprocess.run(argv, input=script, capture_output=True, text=True, check=False)
    except OSError as exc:
        return 1, "", f"cannot run {nft}: {exc}"
    return cp.returncode, cp.stdout, cp.stderr


def _nft_in_process(script: str, *, dry_run: bool) -> tuple[int, str, str]:
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
    return int(rc), str(out or ""), str(err or "")


class NftKernel:
    """The running kernel of the current network namespace.

    A fresh libnftables context per command: libnftables keeps its cache inside the
    context, and a dry run leaves the checked batch in that cache, so reusing it makes the
    real commit fail with spurious "exists"/"overlaps" errors (nft 1.0.6).
    """

    def _cmd(self, script: str, *, dry_run: bool = False) -> str:
        nft = shutil.which("nft", path=NFT_PATH) if len(script) > CHILD_ABOVE else None
        if nft is not None:
            rc, out, err = _nft_child(nft, script, dry_run=dry_run)
        else:
            rc, out, err = _nft_in_process(script, dry_run=dry_run)
        if rc != 0:
            msg = (err or out or "").strip()
            if len(msg) > MAX_ERROR:
                msg = msg[:MAX_ERROR] + " ..."
            raise KernelError(f"nftables refused the transaction: {msg or f'exit status {rc}'}")
        return str(out)

    # The last skeleton read (family, table, skeleton): its rule dump also answers
    # `rule_digests` while the ruleset generation has not moved (one dump of 3,000 rules
    # instead of two, ~40 ms at 1,000 pools).
    _seen: tuple[str, str, netlink.TableSkeleton] | None = None

    def read(self, family: str, name: str, *, elements: bool = True) -> Table | None:
        """All dumps of one read come from one ruleset generation (retried otherwise)."""
        for _ in range(_READ_ATTEMPTS):
            before = netlink.ruleset_generation()
            skeleton = netlink.read_skeleton(name, family)
            self._seen = None if skeleton is None else (family, name, skeleton)
            table = None if skeleton is None else _skeleton_table(skeleton, family, name)
            if table is None or not elements:
                return table
            try:
                sets = {
                    n: replace(s, elements=netlink.read_elements(name, n, family))
                    if _readable(s)
                    else s
                    for n, s in table.sets.items()
                }
            except TableNotFound:
                continue  # deleted while we read: look again
            if netlink.ruleset_generation() == before:
                full = replace(table, sets=sets, elements_known=True)
                release_memory()  # the listing's garbage, before a daemon sleeps on it
                return full
        raise KernelError(f"table {family} {name} kept changing while it was read")

    def generation(self) -> int:
        return netlink.ruleset_generation()

    def ruleset_id(self) -> str | None:
        return netlink.ruleset_identity()

    def counters(self, family: str, name: str) -> dict[str, Counter]:
        return netlink.read_counters(name, family)

    def rule_digests(
        self, family: str, name: str, chains: Iterable[str] | None = None
    ) -> RuleDigests:
        seen = self._seen
        if (
            seen is not None
            and seen[:2] == (family, name)
            and seen[2].generation == netlink.ruleset_generation()
        ):
            return netlink.skeleton_digests(seen[2], chains)
        return netlink.read_rule_digests(name, family, chains)

    def rule_elements(self, family: str, name: str, chain: str) -> list[str]:
        return netlink.read_rule_elements(name, chain, family)

    def offender_elements(self, family: str, name: str, set_name: str) -> list[Element]:
        return netlink.read_dynamic(name, set_name, family)

    def check(self, tx: Transaction) -> None:
        if tx:
            self._cmd(render(tx), dry_run=True)

    def apply(self, tx: Transaction) -> int:
        self._seen = None  # out of date after any commit of ours
        return commit_batches(tx, self._commit) if tx else 0

    def _commit(self, batch: Transaction) -> int:
        refill = nlbatch.refill_ops(batch.ops)
        if refill is not None:  # one batch of ours: the same single transaction
            nlbatch.commit(nlbatch.encode_refill(batch.family, batch.table, refill), batch.spec)
            del refill
            release_memory(collect=False)
            return 1
        split = nlbatch.scaffold_ops(batch.ops)
        if split is None:
            self._cmd(render(batch))
            return 1
        rest = Transaction(batch.family, batch.table, split.rest)
        commits = nlbatch.commit_scaffold(batch.family, batch.table, split)
        del split
        release_memory(collect=False)  # the batch's megabytes, before a daemon sleeps on them
        if not rest:
            return commits
        try:
            self._cmd(render(rest))
        except KernelError:
            nlbatch.delete_table(batch.family, batch.table)  # as before: no table at all
            raise
        return commits + 1
