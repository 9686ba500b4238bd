"""The shape of our nftables table, used for both the desired and the live state.

Keeping one type for both lets `diff` compare them directly. Rules are identified by a hash
of their text carried in the rule's comment (`op25b:<id>`), so the live side never has to
parse nft's expressions back into our syntax.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

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
    # A dynamic set (flags dynamic, timeout) is filled by the packet path: `size` elements at
    # most, each forgotten `timeout` seconds after its last update, each with its own counter.
    # Its elements are the kernel's data, never ours: never read into a Table, never diffed.
    size: int = 0
    timeout: int = 0
    counter: bool = False

    @property
    def dynamic(self) -> bool:
        return "dynamic" in self.flags

    def same_shape(self, other: NamedSet) -> bool:
        return self.declaration == other.declaration

    @property
    def declaration(self) -> tuple[str, bool, frozenset[str], int, int, bool]:
        return (
            self.key_type,
            self.verdict_map,
            self.flags,
            self.size,
            self.timeout,
            self.counter,
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

    def hollow(self) -> Table:
        """The same table without set elements (what a skeleton read returns)."""
        if not self.elements_known:
            return self
        sets = {n: replace(s, elements={}) for n, s in self.sets.items()}
        return Table(self.family, self.name, self.chains, sets, self.counters, False)


def hollow_to_json(table: Table) -> dict[str, Any]:
    """A hollow table as plain data (rule ids, chain hooks, set declarations, counters)."""
    t = table.hollow()
    return {
        "family": t.family,
        "name": t.name,
        "chains": {
            c.name: {
                "rules": list(c.rule_ids),
                "hook": [c.hook.hook, c.hook.priority, c.hook.policy, c.hook.type]
                if c.hook
                else None,
            }
            for c in t.chains.values()
        },
        "sets": {
            s.name: [s.key_type, s.verdict_map, sorted(s.flags), s.size, s.timeout, s.counter]
            for s in t.sets.values()
        },
        "counters": sorted(t.counters),
    }


def hollow_from_json(data: Any) -> Table:
    """`hollow_to_json` back; ValueError/TypeError/KeyError if it is not one."""
    chains: dict[str, Chain] = {}
    for name, c in data["chains"].items():
        hook = c["hook"]
        chains[str(name)] = Chain(
            str(name),
            tuple(Rule(str(r)) for r in c["rules"]),
            Hook(str(hook[0]), int(hook[1]), str(hook[2]), str(hook[3])) if hook else None,
        )
    sets: dict[str, NamedSet] = {}
    for name, declared in data["sets"].items():
        # three fields before dynamic sets existed: such a record has none
        key_type, verdict_map, flags, size, timeout, counter = [*declared, 0, 0, False][:6]
        if (
            not isinstance(key_type, str)
            or not isinstance(verdict_map, bool)
            or not isinstance(counter, bool)
            or type(size) is not int
            or type(timeout) is not int
            or len(declared) not in (3, 6)
        ):
            raise ValueError(f"set {name}: bad declaration")
        sets[str(name)] = NamedSet(
            str(name),
            key_type,
            verdict_map,
            flags=frozenset(str(f) for f in flags),
            size=size,
            timeout=timeout,
            counter=counter,
        )
    return Table(
        str(data["family"]),
        str(data["name"]),
        chains,
        sets,
        frozenset(str(c) for c in data["counters"]),
        elements_known=False,
    )
