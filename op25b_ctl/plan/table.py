"""The shape of our nftables table, used for both the desired and the live state.

Keeping one type for both lets `diff` compare them directly. Rules are identified by a hash
of their text carried in the rule's comment (`op25b:<id>`), so the live side never has to
parse nft's expressions back into our syntax.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

KeyType = Literal["ipv4_addr", "ipv6_addr"]
RULE_TAG = "op25b:"


@dataclass(frozen=True)
class Rule:
    """One rule: its statement text (desired side) and the id that survives into the kernel."""

    id: str
    text: str | None = None

    @classmethod
    def of(cls, text: str) -> Rule:
        return cls(id=hashlib.sha256(text.encode()).hexdigest()[:16], text=text)

    @classmethod
    def live(cls, comment: str | None, handle: int) -> Rule:
        """A rule read back from the kernel: our id from its comment, else `foreign:<handle>`."""
        if comment is not None and comment.startswith(RULE_TAG):
            return cls(comment[len(RULE_TAG) :])
        return cls(f"foreign:{handle}")

    @property
    def comment(self) -> str:
        return RULE_TAG + self.id


@dataclass(frozen=True)
class Hook:
    """What makes a chain a base chain."""

    hook: str
    priority: int
    policy: str = "accept"
    type: str = "filter"


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[Rule, ...] = ()
    hook: Hook | None = None

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.rules)


INTERVAL: frozenset[str] = frozenset({"interval"})


@dataclass(frozen=True)
class NamedSet:
    """An interval set of prefixes, or (with `verdict_map`) prefixes mapped to a jump target.

    Its declaration is `key_type`, `verdict_map` and `flags` (as nft spells them). Ours are
    always `ipv4_addr`/`ipv6_addr` with `flags interval`; a live set read back may carry
    anything (another key such as `type-13/2`, a map to data other than a verdict as
    `ipv4_addr : type-19`, other flags), which is what `same_shape` compares: a declaration
    cannot be changed in place, only replaced (plan/diff.py)."""

    name: str
    key_type: KeyType | str
    verdict_map: bool = False
    # prefix -> jump target chain (maps) or None (plain sets); prefixes are canonical CIDR text
    elements: Mapping[str, str | None] = field(default_factory=dict)
    flags: frozenset[str] = INTERVAL

    def same_shape(self, other: NamedSet) -> bool:
        return (self.key_type, self.verdict_map, self.flags) == (
            other.key_type,
            other.verdict_map,
            other.flags,
        )


@dataclass(frozen=True)
class Table:
    family: str
    name: str
    chains: Mapping[str, Chain] = field(default_factory=dict)
    sets: Mapping[str, NamedSet] = field(default_factory=dict)
    counters: frozenset[str] = frozenset()
    # False when read without elements (netlink skeleton): sets then carry none
    elements_known: bool = True

    @property
    def spec(self) -> str:
        return f"{self.family} {self.name}"
