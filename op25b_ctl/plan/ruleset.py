"""Desired table for a policy and the pools' modes: the rule design lives here.

    chain gate   (base, hook forward)   [iifname {...}] tcp dport 25 jump smtp
    chain smtp   relay-bound -> accept; jump exempt;
                 ip saddr vmap @pools_v4 / ip6 saddr vmap @pools_v6
    chain exempt ip saddr { <exemptions> } counter name exempted accept (and the v6 twin)
    chain pool_<name>   off: empty | monitor: count SYNs | enforce: counter + drop/reject

Per-packet cost is one interval-map lookup (an rbtree: O(log n)) whatever the number of
prefixes. A pool's mode lives only in its own chain, so changing it rewrites one small chain
and never the 100,000-element map; its counters are named objects, so they survive that.
The kernel still visits every map element when it validates such a commit (its loop check),
which nft 1.0.6 gives no way around without moving the mode out of the rules
(docs/performance.md, "One-pool change and the kernel's loop walk").

The exemptions are the rules' own anonymous sets, not named sets: a rule's id is the hash of
its text, so a change of the exemptions in force rewrites the one small `exempt` chain, and
nft adds no element to any named set (before any element command nft 1.0.6 loads every
element of the table's sets into its cache: 0.8 s next to 100,000 prefixes; the chain
rewrite takes milliseconds, docs/performance.md "After adding an exemption").
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from op25b_ctl.plan.table import Chain, Hook, NamedSet, Rule, Table
from op25b_ctl.policy.model import Mode, Policy, Pool, split_families

FAMILY = "inet"
BASE_CHAIN = "gate"
DISPATCH_CHAIN = "smtp"
EXEMPT_CHAIN = "exempt"
RELAYED_COUNTER = "relayed"
EXEMPTED_COUNTER = "exempted"
SMTP_PORT = 25
FINGERPRINT_PREFIX = "elements_"
# The named sets, one per address family; every other module uses these names.
RELAYS_V4, RELAYS_V6 = "relays_v4", "relays_v6"
POOLS_V4, POOLS_V6 = "pools_v4", "pools_v6"  # verdict maps: prefix -> jump pool_<name>


def pool_chain(pool: str) -> str:
    return f"pool_{pool}"


def blocked_counter(pool: str) -> str:
    return f"blocked_{pool}"


def monitored_counter(pool: str) -> str:
    return f"monitored_{pool}"


def elements_fingerprint(sets: Iterable[NamedSet]) -> str:
    """A name-safe digest of every set element we write.

    It is kept in the kernel as the name of an (unused) counter, `elements_<digest>`, written
    in the same transaction as the elements. Reading counter names costs one small netlink
    dump, so a reconcile can trust the kernel's 100,000 elements without listing them.
    """
    h = hashlib.sha256()
    for s in sorted(sets, key=lambda s: s.name):
        h.update(f"{s.name}\0".encode())
        elements = s.elements
        # one update per set, not one per element
        h.update("".join([f"{key}={elements[key]}\n" for key in sorted(elements)]).encode())
    return FINGERPRINT_PREFIX + h.hexdigest()[:16]


OFFENDERS_PREFIX = "offenders_"
_OFFENDER_SUFFIXES = ("_v4", "_v6")


def offender_set(pool: str, version: int) -> str:
    """The dynamic set of pool `pool`'s TCP/25 sources of IP version 4 or 6."""
    return f"{OFFENDERS_PREFIX}{pool}_v{version}"


def offender_pool(set_name: str) -> str | None:
    """`offender_set` back: the pool whose set this is, None if it is no offender set."""
    if set_name.startswith(OFFENDERS_PREFIX) and set_name.endswith(_OFFENDER_SUFFIXES):
        return set_name[len(OFFENDERS_PREFIX) : -3] or None
    return None


@dataclass(frozen=True)
class Tracking:
    """How a pool's offenders are recorded: the sets' size and timeout, the IPv6 key width."""

    size: int
    timeout: int  # seconds after the last attempt
    prefix_v6: int


def tracking_of(policy: Policy, pool: str) -> Tracking | None:
    """A dynamic pool's offender tracking; None if the gateway does not track (or no such
    dynamic pool)."""
    try:
        return _tracking(policy, policy.pool(pool))
    except KeyError:
        return None


def _tracking(policy: Policy, pool: Pool) -> Tracking | None:
    cfg = policy.gateway.offenders
    if not cfg.track or not pool.dynamic:
        return None
    v6 = (
        cfg.subscriber_prefix_v6 if pool.subscriber_prefix_v6 is None else pool.subscriber_prefix_v6
    )
    return Tracking(cfg.size, cfg.retention, v6)


@functools.cache
def v6_mask(bits: int) -> str:
    """The netmask of an IPv6 prefix length as nft accepts it in a set key (`ffff:ffff::`)."""
    return str(ipaddress.IPv6Address(((1 << bits) - 1) << (128 - bits)))


def offender_sets(pool: str, tracking: Tracking) -> tuple[NamedSet, NamedSet]:
    """A pool's two offender sets, declared in full: `flags dynamic` is written out, because
    nft 1.0.6 fails to reload a set whose dynamic flag it inferred (EEXIST)."""
    return tuple(  # type: ignore[return-value]
        NamedSet(
            offender_set(pool, version),
            key,
            flags=frozenset({"dynamic", "timeout"}),
            size=tracking.size,
            timeout=tracking.timeout,
            counter=True,
        )
        for version, key in ((4, "ipv4_addr"), (6, "ipv6_addr"))
    )


def tracking_rules(pool: str, tracking: Tracking) -> tuple[Rule, ...]:
    """Record each SYN's source (v4 address, v6 subscriber prefix); the set counts it.

    No verdict here, ever: when a set is full the kernel ends the rule at its `update`
    (NFT_BREAK), so a verdict in the same rule would silently stop for new sources."""
    syn = "tcp flags & (syn | ack) == syn"
    v6 = "ip6 saddr" if tracking.prefix_v6 == 128 else f"ip6 saddr & {v6_mask(tracking.prefix_v6)}"
    return (
        Rule.of(f"{syn} update @{offender_set(pool, 4)} {{ ip saddr }}"),
        Rule.of(f"{syn} update @{offender_set(pool, 6)} {{ {v6} }}"),
    )


def pool_rules(
    pool: str, mode: Mode, action: str, tracking: Tracking | None = None
) -> tuple[Rule, ...]:
    """The whole of a pool's chain for one mode; the only thing a mode change rewrites.

    With `tracking`, monitor and enforce first record the source (`tracking_rules`); the
    count and the verdict stay rules of their own."""
    track = tracking_rules(pool, tracking) if tracking is not None and mode != "off" else ()
    if mode == "monitor":
        # Count connection attempts (the SYN), not every packet of the session: that is what
        # enforcement would have blocked, comparable with the blocked counter in drop mode.
        return (
            *track,
            Rule.of(f"tcp flags & (syn | ack) == syn counter name {monitored_counter(pool)}"),
        )
    if mode == "enforce":
        verdict = "reject with tcp reset" if action == "reject" else "drop"
        return (*track, Rule.of(f"counter name {blocked_counter(pool)} {verdict}"))
    return ()


def mode_of_rules(
    pool: str, rule_ids: tuple[str, ...], action: str, tracking: Tracking | None = None
) -> Mode | None:
    """Read a pool's mode back from its live chain; None if the chain matches no mode."""
    for mode in ("off", "monitor", "enforce"):
        if tuple(r.id for r in pool_rules(pool, mode, action, tracking)) == rule_ids:
            return mode
    return None


# Every set of the table, declared without elements: the shape both `_sets_for` fills and
# `_hollow_sets` keeps empty.
_DECLARED = (
    NamedSet(RELAYS_V4, "ipv4_addr"),
    NamedSet(RELAYS_V6, "ipv6_addr"),
    NamedSet(POOLS_V4, "ipv4_addr", verdict_map=True),
    NamedSet(POOLS_V6, "ipv6_addr", verdict_map=True),
)


@dataclass(frozen=True)
class _Sets:
    """The part of the table that depends only on the policy's pools and relays."""

    sets: dict[str, NamedSet]
    fingerprint: str


# One entry: the daemon recomputes the desired state whenever a stage falls due or an override
# changes, for the same policy object; rebuilding 110,000 elements and their digest each time
# costs a noticeable part of a second (docs/benchmarks.md), reusing them nothing (and keeps
# the sets the *same objects*, so diff() skips them outright).
_sets_cache: list[tuple[Policy, _Sets]] = []


def _sets_for(policy: Policy) -> _Sets:
    for cached_policy, cached in _sets_cache:
        if cached_policy is policy:
            return cached
    filled, fingerprint = _filled_sets(policy)
    # the offender sets' elements are the kernel's: not in the fingerprint, never compared
    built = _Sets({s.name: s for s in (*filled, *_offender_sets(policy))}, fingerprint)
    _sets_cache[:] = [(policy, built)]
    return built


# The sets we fill, by the files they are built from: a policy read from the same pools.yaml
# and relays.yaml (a daemon's reload after a stage's date moved) gets the very same objects,
# which the diff skips without comparing 110,000 elements.
_filled_cache: list[tuple[Policy, tuple[list[NamedSet], str]]] = []


def _filled_sets(policy: Policy) -> tuple[list[NamedSet], str]:
    for cached_policy, cached in _filled_cache:
        same = cached_policy is policy or (
            policy.sets_digest != "" and cached_policy.sets_digest == policy.sets_digest
        )
        if same:
            return cached
    map_v4: dict[str, str | None] = {}
    map_v6: dict[str, str | None] = {}
    for pool in policy.pools:
        if pool.dynamic:
            v4, v6 = split_families(pool.prefixes)
            map_v4.update(dict.fromkeys(v4, pool_chain(pool.name)))
            map_v6.update(dict.fromkeys(v6, pool_chain(pool.name)))
    relays_v4, relays_v6 = split_families(policy.relay_prefixes())
    elements: dict[str, dict[str, str | None]] = {
        RELAYS_V4: dict.fromkeys(relays_v4),
        RELAYS_V6: dict.fromkeys(relays_v6),
        POOLS_V4: map_v4,
        POOLS_V6: map_v6,
    }
    sets = [replace(s, elements=elements[s.name]) for s in _DECLARED]
    filled = (sets, elements_fingerprint(sets))
    _filled_cache[:] = [(policy, filled)]
    return filled


@functools.cache
def _code() -> bytes:
    """This module's source: what the sets hold and how they are fingerprinted is decided here."""
    return Path(__file__).read_bytes()


def sets_key(policy: Policy) -> str:
    """The identity of the sets `desired_table` builds, without building them ("" if unknown).

    The sets are a function of the files they are built from (`Policy.sets_digest`: pools and
    relays; else `Policy.digest`, all the files) and this code (the exemptions are rules), so
    equal keys mean equal sets and an equal elements fingerprint: a command that knows the
    fingerprint it made live under a key needs neither the 110,000 elements nor their
    digest again (`hollow`), whatever else was edited. No digest, no key: such a policy is
    always built in full.
    """
    inputs = policy.sets_digest or policy.digest
    if not inputs:
        return ""
    h = hashlib.sha256(_code())
    h.update(inputs.encode())
    return h.hexdigest()


def desired_table(
    policy: Policy,
    modes: Mapping[str, Mode],
    exemptions: Iterable[str] = (),
    *,
    hollow: str | None = None,
) -> Table:
    """Everything our table should hold; `modes` gives each dynamic pool's mode (default off).

    With `hollow`, an elements fingerprint known to belong to these sets (same `sets_key`),
    the sets are declared without elements and the table says so (`elements_known` False):
    it can be diffed only against a table read or remembered the same way. `hollow=""`
    gives the shape alone, without any fingerprint, for views that never diff (`diff`
    refuses it).
    """
    gw = policy.gateway
    chains: dict[str, Chain] = {}
    counters = {RELAYED_COUNTER, EXEMPTED_COUNTER}
    for pool in policy.pools:
        if pool.dynamic:
            chain = pool_chain(pool.name)
            tracking = _tracking(policy, pool)
            rules = pool_rules(pool.name, modes.get(pool.name, "off"), gw.action, tracking)
            chains[chain] = Chain(chain, rules)
            counters |= {blocked_counter(pool.name), monitored_counter(pool.name)}

    chains[DISPATCH_CHAIN] = Chain(DISPATCH_CHAIN, _DISPATCH_RULES)
    chains[EXEMPT_CHAIN] = Chain(EXEMPT_CHAIN, exempt_rules(tuple(exemptions)))
    match = f"tcp dport {SMTP_PORT} jump {DISPATCH_CHAIN}"
    if gw.subscriber_interfaces:
        names = ", ".join(f'"{name}"' for name in gw.subscriber_interfaces)
        match = f"iifname {{ {names} }} {match}"
    chains[BASE_CHAIN] = Chain(
        BASE_CHAIN, (Rule.of(match),), Hook("forward", gw.priority, "accept")
    )
    fixed = _hollow_sets(policy, hollow) if hollow is not None else _sets_for(policy)
    if fixed.fingerprint:
        counters.add(fixed.fingerprint)
    return Table(
        FAMILY,
        gw.table,
        chains=chains,
        sets=fixed.sets,
        counters=frozenset(counters),
        elements_known=hollow is None,
    )


def _hollow_sets(policy: Policy, fingerprint: str) -> _Sets:
    """The sets' declarations alone (the same names and types `_sets_for` declares)."""
    assert fingerprint == "" or fingerprint.startswith(FINGERPRINT_PREFIX)
    return _Sets({s.name: s for s in (*_DECLARED, *_offender_sets(policy))}, fingerprint)


def _offender_sets(policy: Policy) -> list[NamedSet]:
    """Every dynamic pool's offender sets, whatever its mode: a mode change (a rollback too)
    then rewrites one chain and keeps the pool's list; the timeout still forgets it."""
    if _offenders_cache and _offenders_cache[0][0] is policy:
        return _offenders_cache[0][1]
    out: list[NamedSet] = []
    for pool in policy.pools:
        tracking = _tracking(policy, pool)
        if tracking is not None:
            out += offender_sets(pool.name, tracking)
    _offenders_cache[:] = [(policy, out)]
    return out


_offenders_cache: list[tuple[Policy, list[NamedSet]]] = []


_DISPATCH_RULES = tuple(
    Rule.of(text)
    for text in (
        f"ip daddr @{RELAYS_V4} counter name {RELAYED_COUNTER} accept",
        f"ip6 daddr @{RELAYS_V6} counter name {RELAYED_COUNTER} accept",
        f"jump {EXEMPT_CHAIN}",
        f"ip saddr vmap @{POOLS_V4}",
        f"ip6 saddr vmap @{POOLS_V6}",
    )
)


@functools.lru_cache(maxsize=2)
def exempt_rules(exemptions: tuple[str, ...]) -> tuple[Rule, ...]:
    """The whole `exempt` chain: one rule per family whose anonymous set holds the exemptions
    in force (none for a family without any); the only thing an exemption change rewrites.

    Validated exemptions never overlap, so the sets need no merging; the order is the
    policy's, so the same exemptions give the same text, hence the same rule ids."""
    v4, v6 = split_families(exemptions)
    return tuple(
        Rule.of(f"{match} {{ {', '.join(prefixes)} }} counter name {EXEMPTED_COUNTER} accept")
        for match, prefixes in (("ip saddr", v4), ("ip6 saddr", v6))
        if prefixes
    )


def exempt_prefixes(table: Table) -> list[str]:
    """The exemptions a desired table's `exempt` rules hold, from their text."""
    chain = table.chains.get(EXEMPT_CHAIN)
    out: list[str] = []
    for rule in chain.rules if chain is not None else ():
        text = rule.text or ""
        start, end = text.find("{ "), text.find(" }")
        if 0 <= start < end:
            out += text[start + 2 : end].split(", ")
    return out
