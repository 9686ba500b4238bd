"""The validated policy: what the operator wrote, normalised, and nothing the kernel knows.

Per-file pydantic models check shape and types strictly (unknown keys, wrong types, bad
prefixes); `check_policy` then checks what needs the whole picture (overlaps, relays inside
pools, duplicate names) and reports every problem with the path of the offending item, so the
loader can point at the user's file and line.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

import netaddr
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

Mode = Literal["off", "monitor", "enforce"]
MODES: tuple[Mode, ...] = ("off", "monitor", "enforce")
Action = Literal["drop", "reject"]

# Names end up inside nftables identifiers (chains, counters), which nft 1.0.6 does not
# accept quoted: keep them to a safe alphabet, and short enough for a readable `nft list`.
NAME_RE = r"^[a-z][a-z0-9-]{0,39}$"
TABLE_RE = r"^op25b[a-z0-9_]{0,26}$"
INTERFACE_RE = r"^[A-Za-z0-9_.@:+-]{1,15}$"
Name = Annotated[str, StringConstraints(pattern=NAME_RE)]
TableName = Annotated[str, StringConstraints(pattern=TABLE_RE)]
InterfaceName = Annotated[str, StringConstraints(pattern=INTERFACE_RE)]
# What each pattern means, for error messages people can act on.
PATTERN_HELP = {
    NAME_RE: "use lowercase letters, digits and '-', starting with a letter, at most 40",
    TABLE_RE: "must start with 'op25b', then lowercase letters, digits or '_' (max 31)",
    INTERFACE_RE: "not a Linux interface name (1-15 characters, no spaces or '/')",
}

# A pool broader than this is almost certainly a typo (0.0.0.0/0 would block everyone).
MIN_POOL_PREFIXLEN = {4: 8, 6: 16}


def _prefix(value: str) -> str:
    """Normalise one prefix; refuse host bits so a typo cannot silently widen a pool."""
    try:
        net = netaddr.IPNetwork(value)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 prefix") from None
    if net.ip != net.network:
        raise ValueError(f"{value!r} has host bits set (did you mean {net.cidr}?)")
    return str(net.cidr)


Prefix = Annotated[str, StringConstraints(strict=True), AfterValidator(_prefix)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Gateway(_Strict):
    """Where and how the controller enforces on this gateway."""

    table: TableName = "op25b"
    priority: int = Field(default=0, ge=-400, le=400)
    action: Action = "drop"
    subscriber_interfaces: list[InterfaceName] = []


class Pool(_Strict):
    """A subscriber address pool; dynamic pools are what OP25B is for."""

    name: Name
    description: str = ""
    dynamic: bool = True
    mode: Mode = "off"
    tags: list[Name] = []
    prefixes: list[Prefix] = Field(min_length=1)


class Relay(_Strict):
    """One of the ISP's own mail relays: TCP/25 to it always passes."""

    name: Name
    description: str = ""
    addresses: list[Prefix] = Field(min_length=1)


class GatewayFile(_Strict):
    gateway: Gateway = Gateway()


class PoolsFile(_Strict):
    pools: list[Pool] = Field(min_length=1)


class RelaysFile(_Strict):
    relays: list[Relay] = Field(min_length=1)


@dataclass(frozen=True)
class Policy:
    """The whole validated policy, as the planner sees it."""

    gateway: Gateway
    pools: tuple[Pool, ...]
    relays: tuple[Relay, ...]

    def pool(self, name: str) -> Pool:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)

    def relay_prefixes(self) -> list[str]:
        return [a for relay in self.relays for a in relay.addresses]


@dataclass(frozen=True)
class Finding:
    """A whole-policy problem: which file, which item (as a path), and what."""

    file: str
    path: tuple[str | int, ...]
    message: str


def split_families(prefixes: Iterable[str]) -> tuple[list[str], list[str]]:
    v4: list[str] = []
    v6: list[str] = []
    for p in prefixes:
        (v6 if ":" in p else v4).append(p)
    return v4, v6


def _overlaps(
    items: Iterable[tuple[netaddr.IPNetwork, tuple[str | int, ...]]],
) -> Iterator[tuple[tuple[str | int, ...], tuple[str | int, ...], str, str]]:
    """Pairs of overlapping prefixes, found by one sort instead of comparing every pair."""
    ordered = sorted(items, key=lambda it: (it[0].version, it[0].first, -it[0].last))
    widest: tuple[netaddr.IPNetwork, tuple[str | int, ...]] | None = None
    for net, path in ordered:
        if widest and widest[0].version == net.version and net.first <= widest[0].last:
            yield path, widest[1], str(net.cidr), str(widest[0].cidr)
            if net.last > widest[0].last:
                widest = (net, path)
        else:
            widest = (net, path)


def _fmt(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def check_policy(policy: Policy) -> list[Finding]:
    """Checks that need more than one item at a time; every finding, not just the first."""
    found: list[Finding] = []

    def dupes(file: str, key: str, names: list[str]) -> None:
        seen: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in seen:
                found.append(
                    Finding(
                        file,
                        (key, i, "name"),
                        f"duplicate name {name!r} (also {key}[{seen[name]}])",
                    )
                )
            seen.setdefault(name, i)

    dupes("pools.yaml", "pools", [p.name for p in policy.pools])
    dupes("relays.yaml", "relays", [r.name for r in policy.relays])
    pool_names = {p.name for p in policy.pools}
    for i, pool in enumerate(policy.pools):
        for tag in pool.tags:
            if tag in pool_names:
                found.append(
                    Finding(
                        "pools.yaml", ("pools", i, "tags"), f"tag {tag!r} is also a pool's name"
                    )
                )
        if not pool.dynamic and pool.mode != "off":
            found.append(
                Finding(
                    "pools.yaml",
                    ("pools", i, "mode"),
                    f"static pool {pool.name!r} cannot be {pool.mode!r}: OP25B applies to dynamic pools",
                )
            )
        for j, prefix in enumerate(pool.prefixes):
            net = netaddr.IPNetwork(prefix)
            if net.prefixlen < MIN_POOL_PREFIXLEN[net.version]:
                found.append(
                    Finding(
                        "pools.yaml",
                        ("pools", i, "prefixes", j),
                        f"{prefix} is broader than /{MIN_POOL_PREFIXLEN[net.version]}; "
                        "refusing a pool that wide",
                    )
                )

    pool_items = [
        (netaddr.IPNetwork(prefix), ("pools", i, "prefixes", j))
        for i, pool in enumerate(policy.pools)
        for j, prefix in enumerate(pool.prefixes)
    ]
    for path, other, net, other_net in _overlaps(pool_items):
        found.append(Finding("pools.yaml", path, f"{net} overlaps {other_net} at {_fmt(other)}"))

    relay_items = [
        (netaddr.IPNetwork(addr), ("relays", i, "addresses", j))
        for i, relay in enumerate(policy.relays)
        for j, addr in enumerate(relay.addresses)
    ]
    pool_set = {
        version: netaddr.IPSet(n for n, _ in pool_items if n.version == version)
        for version in (4, 6)
    }
    for net, path in relay_items:
        if pool_set[net.version].intersection(netaddr.IPSet([net])):
            owner = next(
                policy.pools[int(p[1])].name
                for n, p in pool_items
                if n.version == net.version and n.first <= net.last and net.first <= n.last
            )
            found.append(
                Finding(
                    "relays.yaml",
                    path,
                    f"relay {net.cidr} lies inside subscriber pool {owner!r}; "
                    "a relay must not be a subscriber address",
                )
            )
    for path, other, net, other_net in _overlaps(relay_items):
        found.append(Finding("relays.yaml", path, f"{net} overlaps {other_net} at {_fmt(other)}"))
    return found


def format_path(path: tuple[str | int, ...]) -> str:
    """`pools[2].prefixes[0]`: how errors name a field, the way the YAML reads."""
    return _fmt(path)
