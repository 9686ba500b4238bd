"""The one seam to the kernel's ruleset: the `Kernel` protocol and the values it returns.

Everything above this package (operations, the daemon, the CLI) talks to the kernel only
through a `Kernel`, the way an HTTP client talks to the network only through its transport:

    NftKernel     (nft.py)     writes with python-nftables, reads over netlink
    MemoryKernel  (memory.py)  the same answers from memory, for tests and dry reasoning

Every operation names our own table; there is no call that could list, flush or delete
anything else. Reads never go through libnftables: with nft 1.0.6 any listing first loads
every set element into its cache (see docs/benchmarks.md for what that costs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from op25b_ctl.errors import KernelError
from op25b_ctl.plan.offenders import Element
from op25b_ctl.plan.table import Table
from op25b_ctl.plan.transaction import Transaction

__all__ = ["UNREADABLE", "Counter", "Kernel", "RuleDigests", "commit_batches"]

# {(chain, rule comment or `handle:<n>`): one digest per rule, in order}
RuleDigests = Mapping[tuple[str, str], tuple[str, ...]]
# The digest of a rule whose expressions could not be read: it never equals a real one, so a
# reader that fails shows as drift (repaired, logged) instead of hiding every edit.
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class Counter:
    """A named counter's value and reference count.

    `refs > 0` means some rule counts into it, which tells a pool's live mode (its blocked_
    or monitored_ counter in use) at no extra cost.
    """

    packets: int
    bytes: int
    refs: int = 0


class Kernel(Protocol):
    """What the controller needs from the kernel's nftables, and nothing more."""

    def read(self, family: str, name: str, *, elements: bool = True) -> Table | None:
        """Our table as the kernel has it, or None if it does not exist.

        `elements=False` skips set elements (then `Table.elements_known` is False): that is
        what keeps a read cheap when the sets hold 100,000 prefixes.
        """
        ...

    def generation(self) -> int | None:
        """The ruleset generation, bumped by every commit to any table; None if this kernel
        cannot tell (then callers must read the table to know whether it changed)."""
        ...

    def ruleset_id(self) -> str | None:
        """Which ruleset `generation` counts in (this boot, this network namespace): a
        generation kept on disk may be compared only under the same id. None if unknown."""
        ...

    def counters(self, family: str, name: str) -> dict[str, Counter]:
        """Named counters of our table; raise TableNotFound if the table does not exist."""
        ...

    def rule_digests(
        self, family: str, name: str, chains: Iterable[str] | None = None
    ) -> RuleDigests:
        """A digest of what each rule does, keyed by its comment: a rule edited by hand that
        keeps our comment changes its digest. Only `chains` if given; {} if no such table."""
        ...

    def rule_elements(self, family: str, name: str, chain: str) -> list[str]:
        """The elements of the anonymous sets the rules of `chain` match (the exemptions in
        force: plan/ruleset.py), in rule order; [] if there is no such table or chain."""
        ...

    def offender_elements(self, family: str, name: str, set_name: str) -> list[Element]:
        """The elements of one of our dynamic (offender) sets, written by the packet path:
        (key, attempts, timeout ms or 0, ms until expiry). TableNotFound if no such set."""
        ...

    def check(self, tx: Transaction) -> None:
        """Raise KernelError if nftables would refuse `tx` (all its batches as one); change
        nothing."""
        ...

    def apply(self, tx: Transaction) -> int:
        """Commit `tx`'s batches in order, each one atomic (`commit_batches`); raise
        KernelError if one is refused (the batches before it stay committed). Returns how
        many commits (ruleset generations) that took: one per batch, more where an adapter
        sends a batch in parts no packet can tell apart (nft.py: a new table's scaffold)."""
        ...


def commit_batches(tx: Transaction, commit: Callable[[Transaction], int]) -> int:
    """Commit each of `tx`'s batches with `commit` (which returns its commits), in order;
    the commits in all.

    A refused first batch changed nothing. A refused later one leaves the earlier ones in:
    a complete, enforcing table (the planner's guarantee, plan/diff.py) that the next pass
    or `apply` finishes; the error says so."""
    batches = tx.batches
    commits = 0
    for k, batch in enumerate(batches):
        try:
            commits += commit(batch)
        except KernelError as exc:
            if k == 0:
                raise
            raise KernelError(
                f"{exc} (commit {k + 1} of {len(batches)}; the {k} before it are in: the "
                f"table {tx.spec} is complete and enforcing, the next pass or apply finishes "
                "the change)"
            ) from exc
    return commits
