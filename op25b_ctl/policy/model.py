"""The validated policy: what the operator wrote, normalised, and nothing the kernel knows.

Per-file pydantic models check shape and types strictly (unknown keys, wrong types, bad
prefixes); `check_policy` then checks what needs the whole picture (overlaps, relays inside
pools, duplicate names) and reports every problem with the path of the offending item, so the
loader can point at the user's file and line.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import re
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Annotated, Any, Literal, NamedTuple, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import netaddr
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
)

from op25b_ctl.policy.discovery import Discovery
from op25b_ctl.policy.poolindex import PoolIndex

Mode = Literal["off", "monitor", "enforce"]
MODES: tuple[Mode, ...] = ("off", "monitor", "enforce")
# off < monitor < enforce: a stage moving a pool down this order is a step backwards.
MODE_RANK: dict[str, int] = {m: i for i, m in enumerate(MODES)}
DEFAULT_TIMEZONE = "Asia/Tokyo"  # NMTnet's operations work in Japan time
Action = Literal["drop", "reject"]

# Names end up inside nftables identifiers (chains, counters), which nft 1.0.6 does not
# accept quoted: keep them to a safe alphabet, and short enough for a readable `nft list`.
NAME_RE = r"^[a-z][a-z0-9-]{0,39}$"
TABLE_RE = r"^op25b[a-z0-9_]{0,26}$"
INTERFACE_RE = r"^[A-Za-z0-9_.@:+-]{1,15}$"
Name = Annotated[str, StringConstraints(pattern=NAME_RE)]
TableName = Annotated[str, StringConstraints(pattern=TABLE_RE)]
InterfaceName = Annotated[str, StringConstraints(pattern=INTERFACE_RE)]
TICKET_RE = r"^[A-Za-z0-9][A-Za-z0-9._:/#-]{0,63}$"
# What each pattern means, for error messages people can act on.
PATTERN_HELP = {
    NAME_RE: "use lowercase letters, digits and '-', starting with a letter, at most 40",
    TABLE_RE: "must start with 'op25b', then lowercase letters, digits or '_' (max 31)",
    INTERFACE_RE: "not a Linux interface name (1-15 characters, no spaces or '/')",
    TICKET_RE: "a ticket is letters, digits and . _ : / # - (no spaces), starting with a "
    "letter or digit, at most 64",
}

# A pool broader than this is almost certainly a typo (0.0.0.0/0 would block everyone).
MIN_POOL_PREFIXLEN = {4: 8, 6: 16}


class Net(NamedTuple):
    """A prefix as integers: what the overlap, relay and exemption checks compare."""

    version: int
    first: int
    last: int
    prefixlen: int


_FAMILY = {4: (socket.AF_INET, 32), 6: (socket.AF_INET6, 128)}


def _canonical_net(value: str) -> Net | None:
    """`value` as a Net if it is already a canonical prefix (what policies hold), else None.

    netaddr costs about ten times what the C address parsers cost per prefix; at 110,000
    prefixes that was most of `validate` (docs/benchmarks.md, "Costs the design relies on"). A string accepted here is one netaddr reads as the same
    prefix and prints back unchanged (tests compare both on random input); anything else,
    including every error, goes through netaddr so messages and normalisation stay its own.
    """
    addr, sep, length = value.partition("/")
    if not sep or not length.isdigit() or not length.isascii() or length[:1] == "0" != length:
        return None
    version = 6 if ":" in addr else 4
    if version == 6 and "." in addr:  # IPv4-embedded forms: leave their spelling to netaddr
        return None
    family, bits = _FAMILY[version]
    plen = int(length)
    if plen > bits:
        return None
    try:
        packed = socket.inet_pton(family, addr)
    except OSError:
        return None
    if socket.inet_ntop(family, packed) != addr:
        return None
    first = int.from_bytes(packed)
    host = (1 << (bits - plen)) - 1
    if first & host:
        return None
    return Net(version, first, first | host, plen)


def address_net(version: int, value: int) -> Net:
    """One address as a Net of full length, for `PrefixIndex.holding`."""
    return Net(version, value, value, _FAMILY[version][1])


def parse_net(prefix: str) -> Net:
    """A validated (so already canonical) prefix string as integers."""
    addr, _, length = prefix.partition("/")
    version = 6 if ":" in addr else 4
    family, bits = _FAMILY[version]
    first = int.from_bytes(socket.inet_pton(family, addr))
    return Net(version, first, first | ((1 << (bits - int(length))) - 1), int(length))


def ipv4_mapped(net: netaddr.IPNetwork) -> bool:
    """Inside ::ffff:0:0/96, the IPv4-mapped addresses."""
    return bool(net.version == 6 and net.prefixlen >= 96 and net.ip.is_ipv4_mapped())


# Prefixes parsed by the field validators, for `check_policy` to reuse instead of parsing
# each again: set by `parsed_nets()` around one validation, None otherwise (nothing kept).
# A Net is a pure function of its text, so another thread's entries are as good as ours.
_parsed: dict[str, Net] | None = None


@contextlib.contextmanager
def parsed_nets() -> Iterator[None]:
    """Let `check_policy` reuse the integers the validators computed (~0.2 s at 110,000)."""
    global _parsed
    _parsed = {}
    try:
        yield
    finally:
        _parsed = None


def _net(prefix: str) -> Net:
    """`parse_net`, from what validation already parsed where it can."""
    seen = _parsed
    net = seen.get(prefix) if seen is not None else None
    return net if net is not None else parse_net(prefix)


def _prefix(value: str) -> str:
    """Normalise one prefix; refuse host bits so a typo cannot silently widen a pool."""
    net = _canonical_net(value)
    if net is not None:
        seen = _parsed
        if seen is not None:
            seen[value] = net
        return value
    try:
        net = netaddr.IPNetwork(value)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 prefix") from None
    if net.ip != net.network:
        raise ValueError(f"{value!r} has host bits set (did you mean {net.cidr}?)")
    if ipv4_mapped(net):
        # The kernel sees IPv4 packets as `ip saddr`, never as ::ffff:a.b.c.d: it never
        # matches. (The fast path above never accepts one: their canonical form has dots.)
        raise ValueError(
            f"{value!r} is an IPv4-mapped IPv6 prefix, which never matches a packet; "
            "write the IPv4 prefix itself"
        )
    return str(net.cidr)


Prefix = Annotated[str, StringConstraints(strict=True), AfterValidator(_prefix)]


# The range of times accepted anywhere (policy, state, command line): far from datetime's
# limits, so shifting one by an offset or a duration can never overflow.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)


# ISO 8601 / YAML timestamp shapes, to say *why* one that parses no further names no time
_TIME_SHAPE = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})"
    r"(?:(?:[Tt]|[ \t]+)(\d{1,2}):(\d{1,2})(?::(\d{1,2}))?(?:\.\d*)?"
    r"[ \t]*(?:[Zz]|([-+])(\d{1,2})(?::?(\d{2}))?)?)?"
)


def impossible_time(text: str) -> str | None:
    """Why `text`, shaped like a time, names none (`month must be in 1..12`, `day is out of
    range for month`, `UTC offset +24:00 ...`), or None if it is not shaped like one."""
    m = _TIME_SHAPE.fullmatch(text.strip())
    if m is None:
        return None
    y, mo, d, h, mi, sec, sign, oh, om = m.groups()
    try:
        datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(sec or 0))
        if sign is not None:
            timezone(timedelta(hours=int(oh), minutes=int(om or 0)))
    except ValueError as exc:
        if sign is not None and "offset" in str(exc):
            return f"UTC offset {sign}{oh}:{om or '00'} is out of range (-23:59..+23:59)"
        return str(exc)
    return None


def aware_datetime(value: Any) -> datetime:
    """An ISO 8601 time that carries its UTC offset; a naive time is refused, not guessed.

    YAML already turns `2011-01-31T00:00:00+09:00` into a datetime; strings (JSON state,
    command-line input) are parsed here. A bare date or a time without offset would depend on
    the zone of whoever reads it, which is how a stage fires nine hours early.
    """
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            why = impossible_time(value)
            if why is not None:  # month 13, 30 February, hour 25, offset +24:00
                raise ValueError(f"{value!r} is not a real time: {why}") from None
            raise ValueError(
                f"{value!r} is not an ISO 8601 time (e.g. 2011-01-31T00:00:00+09:00)"
            ) from None
        date_only = parsed.tzinfo is None and len(value.strip()) <= 10
        value = parsed.date() if date_only else parsed
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"{value.isoformat()} has no UTC offset; write it with one, e.g. "
                f"{value.isoformat()}+09:00 for Japan time"
            )
        if not EARLIEST <= value < LATEST:  # aware comparisons: no overflow at year 9999
            raise ValueError(
                f"{value.isoformat()} is outside {EARLIEST.year}..{LATEST.year - 1}; "
                "refused (a typo in the year?)"
            )
        return value
    if isinstance(value, date):
        raise ValueError(
            f"{value.isoformat()} is a date without a time and UTC offset; write e.g. "
            f"{value.isoformat()}T00:00:00+09:00"
        )
    raise ValueError(f"expected an ISO 8601 time with UTC offset (got {type(value).__name__})")


AwareDatetime = Annotated[datetime, BeforeValidator(aware_datetime)]


def _tbd_or_time(value: Any) -> datetime | Literal["tbd"]:
    if isinstance(value, str) and value.strip().lower() == "tbd":
        return "tbd"
    return aware_datetime(value)


StageTime = Annotated[datetime | Literal["tbd"], BeforeValidator(_tbd_or_time)]


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not a known time zone (e.g. Asia/Tokyo)") from None
    return value


TimeZone = Annotated[str, StringConstraints(strict=True), AfterValidator(_zone)]
Ticket = Annotated[str, StringConstraints(strict=True, pattern=TICKET_RE)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


_DURATION_RE = re.compile(r"^([1-9][0-9]{0,7})([smhd])$")
_DURATION_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(value: Any, units: str = "smhd") -> int | None:
    """`7d`, `36h`, `90m` -> seconds; None for anything else, a bare number included (seconds
    or days? the policy says which)."""
    if isinstance(value, str) and (m := _DURATION_RE.match(value)) and m.group(2) in units:
        return int(m.group(1)) * _DURATION_UNIT[m.group(2)]
    return None


# A source is kept at most this long after its last attempt: privacy, and the notice period.
MAX_RETENTION = 90 * 86400
MIN_RETENTION = 60


def _zero(value: Any) -> bool:
    """`0m`, `00d`: a duration of nothing, which deserves its own message (it is not badly
    written, only too short)."""
    return isinstance(value, str) and re.fullmatch(r"0+[smhd]", value.strip()) is not None


def _retention(value: Any) -> int:
    seconds = duration_seconds(value.strip() if isinstance(value, str) else value)
    if seconds is None and _zero(value):
        raise ValueError(f"{value!r} is outside 1m..90d")
    if seconds is None:
        raise ValueError(f"{value!r} is not a duration like 7d, 36h or 90m")
    if not MIN_RETENTION <= seconds <= MAX_RETENTION:
        raise ValueError(f"{value!r} is outside 1m..90d")
    return seconds


# serialised as `<seconds>s`, which validates back to the same value (the policy cache)
Retention = Annotated[
    int, BeforeValidator(_retention), PlainSerializer(lambda v: f"{v}s", return_type=str)
]


class Offenders(_Strict):
    """Who still tries TCP/25 in monitor and enforce pools: a kernel set per pool and family.

    `size` bounds each set (the kernel adds no source beyond it, and enforcement goes on);
    `retention` forgets a source that long after its last attempt; IPv6 sources are counted
    per subscriber prefix (`subscriber_prefix_v6`, a pool may set its own)."""

    track: bool = True
    size: int = Field(default=65536, ge=16, le=1048576)
    retention: Retention = 7 * 86400
    subscriber_prefix_v6: int = Field(default=64, ge=32, le=128)


class Gateway(_Strict):
    """Where and how the controller enforces on this gateway."""

    table: TableName = "op25b"
    priority: int = Field(default=0, ge=-400, le=400)
    action: Action = "drop"
    subscriber_interfaces: list[InterfaceName] = []
    # what the gateway serves, read from its kernel and compared with the pools (discover)
    discovery: Discovery | None = None
    offenders: Offenders = Offenders()


class Pool(_Strict):
    """A subscriber address pool; dynamic pools are what OP25B is for."""

    name: Name
    description: str = ""
    dynamic: bool = True
    mode: Mode = "off"
    tags: list[Name] = []
    prefixes: list[Prefix] = Field(min_length=1)
    # IPv6 offenders per prefix of this length (delegated /56, /48); None: the gateway's
    subscriber_prefix_v6: int | None = Field(default=None, ge=32, le=128)


class Relay(_Strict):
    """One of the ISP's own mail relays: TCP/25 to it always passes."""

    name: Name
    description: str = ""
    addresses: list[Prefix] = Field(min_length=1)


# Readiness defaults: warn a week ahead about anyone still sending (the safe side: an alert
# that someone would lose mail, until the operator writes what is acceptable).
DEFAULT_MAX_OFFENDERS = 0
MAX_OFFENDERS_LIMIT = 10_000_000
DEFAULT_WARN_BEFORE = "7d"
MAX_WARN_BEFORE_DAYS = 366


def _warn_seconds(text: str) -> int:
    seconds = duration_seconds(text, units="mhd")
    assert seconds is not None  # validated
    return seconds


def _warn_before(value: str) -> str:
    """`90m`, `36h`, `7d`: a duration with its unit, at most a year."""
    seconds = duration_seconds(value, units="mhd")
    if seconds is None and _zero(value):
        raise ValueError(f"{value!r}: warn at least 1m before the stage (or drop warn_before)")
    if seconds is None:
        raise ValueError(
            f"{value!r} is not a duration like 90m, 36h or 7d (a whole number and m, h or d)"
        )
    if seconds > MAX_WARN_BEFORE_DAYS * 86400:
        raise ValueError(f"{value!r} is longer than {MAX_WARN_BEFORE_DAYS}d")
    return value


WarnBefore = Annotated[str, StringConstraints(strict=True), AfterValidator(_warn_before)]


class Stage(_Strict):
    """One step of the rollout: at `at`, the selected dynamic pools move to `mode`.

    `at: tbd` is a stage whose date is not fixed yet ("being adjusted", as the notice says):
    it is listed in the calendar but never fires until someone writes a date.
    """

    name: Name
    at: StageTime
    mode: Mode
    description: str = ""
    pools: list[Name] = []
    tags: list[Name] = []
    # only the gateways of these groups (gateways.yaml); empty: every gateway
    groups: list[Name] = []
    # moving a pool down (enforce -> monitor/off, monitor -> off) must be said out loud
    allow_backwards: bool = False
    # Readiness (plan/readiness.py), for stages to enforce: an alert when the stage is due
    # within `warn_before` while its pools still have more than `max_offenders` distinct
    # sources on TCP/25. It informs; the stage still fires on its date.
    max_offenders: int = Field(default=DEFAULT_MAX_OFFENDERS, ge=0, le=MAX_OFFENDERS_LIMIT)
    warn_before: WarnBefore = DEFAULT_WARN_BEFORE

    @property
    def scheduled(self) -> datetime | None:
        return None if self.at == "tbd" else self.at

    @property
    def warn_before_seconds(self) -> int:
        return _warn_seconds(self.warn_before)


class Exemption(_Strict):
    """A subscriber prefix inside a blocked pool that is let through (opt-out on application)."""

    prefix: Prefix
    ticket: Ticket
    expires: AwareDatetime | None = None
    reason: str = ""

    def active(self, now: datetime) -> bool:
        return self.expires is None or now < self.expires


class FleetGateway(_Strict):
    """One gateway of the fleet (gateways.yaml): its group and the pools it terminates."""

    name: Name
    group: Name | None = None
    description: str = ""
    pools: list[Name] = []
    tags: list[Name] = []
    discovery: Discovery | None = None  # replaces gateway.yaml's for this gateway


class GatewaysFile(_Strict):
    gateways: list[FleetGateway] = []


class GatewayFile(_Strict):
    gateway: Gateway = Gateway()


class PoolsFile(_Strict):
    pools: list[Pool] = Field(min_length=1)


class RelaysFile(_Strict):
    relays: list[Relay] = Field(min_length=1)


class RolloutFile(_Strict):
    timezone: TimeZone = DEFAULT_TIMEZONE
    stages: list[Stage] = []


class ExemptionsFile(_Strict):
    exemptions: list[Exemption] = []


@dataclass(frozen=True)
class Policy:
    """The whole validated policy, as the planner sees it."""

    gateway: Gateway
    pools: tuple[Pool, ...]
    relays: tuple[Relay, ...]
    stages: tuple[Stage, ...] = ()
    exemptions: tuple[Exemption, ...] = ()
    timezone: str = DEFAULT_TIMEZONE
    gateways: tuple[FleetGateway, ...] = ()
    # sha256 of the files this was read from (`loader.policy_digest`), "" if not known: lets
    # a command recognise sets it has already made live without building them again
    digest: str = field(default="", compare=False)
    # the same of the files the table's sets are built from (cache.SETS_FILES), "" if not
    # known: an edit elsewhere (a stage's date) then leaves the sets as they were
    sets_digest: str = field(default="", compare=False)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @functools.cached_property
    def _pool_index(self) -> PrefixIndex:
        return PrefixIndex(
            [
                (parse_net(prefix), ("pools", i, "prefixes", j), prefix)
                for i, pool in enumerate(self.pools)
                for j, prefix in enumerate(pool.prefixes)
            ]
        )

    @functools.cached_property
    def _pool_spans(self) -> PoolIndex:
        """Packed spans; the validated-policy cache hands them over ready-made."""
        return self.build_pool_spans()

    def build_pool_spans(self) -> PoolIndex:
        """The spans from the prefixes themselves (parses every one)."""
        return PoolIndex.build((*item[0][:3], int(item[1][1])) for item in self._pool_index._spans)

    @property
    def pool_spans(self) -> PoolIndex:
        """Every pool prefix as packed integer spans -> pool index (discovery's comparison)."""
        return self._pool_spans

    def pool_of(self, net: Net) -> Pool | None:
        """The pool holding `net` (an address or a prefix), the one answer to "which pool is
        this?" for every caller; pools never overlap, so there is at most one."""
        found = self._pool_spans.pool_at(net.version, net.first, net.last)
        return self.pools[found] if found is not None else None

    @staticmethod
    def applies(stage: Stage) -> bool:
        """A stage for some groups only applies once the policy is narrowed to one gateway
        of them (`for_gateway` keeps it there, without its groups); elsewhere it never fires."""
        return not stage.groups

    def fleet_gateway(self, name: str) -> FleetGateway:
        for gw in self.gateways:
            if gw.name == name:
                return gw
        if not self.gateways:
            raise KeyError(f"gateway {name!r}: the policy has no gateways.yaml")
        known = ", ".join(g.name for g in self.gateways)
        raise KeyError(f"gateway {name!r} is not in gateways.yaml (known: {known})")

    def gateway_pools(self, gw: FleetGateway) -> list[str]:
        """The pools a gateway carries, by name or by tag, in pools.yaml order."""
        wanted = set(gw.pools)
        tags = set(gw.tags)
        return [p.name for p in self.pools if p.name in wanted or tags.intersection(p.tags)]

    def gateways_carrying(self, pool: str) -> list[FleetGateway]:
        return [gw for gw in self.gateways if pool in self.gateway_pools(gw)]

    def groups(self) -> list[str]:
        return sorted({gw.group for gw in self.gateways if gw.group})

    def for_gateway(self, name: str) -> Policy:
        """The policy as gateway `name` enforces it: only its pools, the exemptions inside
        them, and the stages for every gateway or for its group (KeyError: unknown name)."""
        gw = self.fleet_gateway(name)
        carried = set(self.gateway_pools(gw))
        pools = tuple(p for p in self.pools if p.name in carried)
        nets = [netaddr.IPNetwork(x) for p in pools for x in p.prefixes]
        exemptions = tuple(
            e for e in self.exemptions if any(netaddr.IPNetwork(e.prefix) in net for net in nets)
        )
        stages = tuple(
            s.model_copy(update={"groups": []}) if s.groups else s
            for s in self.stages
            if not s.groups or (gw.group is not None and gw.group in s.groups)
        )
        gateway = self.gateway
        if gw.discovery is not None:
            gateway = gateway.model_copy(update={"discovery": gw.discovery})
        return Policy(
            gateway=gateway,
            pools=pools,
            relays=self.relays,
            stages=stages,
            exemptions=exemptions,
            timezone=self.timezone,
            gateways=(gw,),
        )

    def stage_pools(self, stage: Stage) -> list[str]:
        """The dynamic pools a stage selects, by name or by tag, in pools.yaml order."""
        wanted = set(stage.pools)
        tags = set(stage.tags)
        return [
            p.name
            for p in self.pools
            if p.name in wanted or (p.dynamic and tags.intersection(p.tags))
        ]

    @functools.cached_property
    def _pools_by_name(self) -> dict[str, Pool]:
        # names are unique (check_policy); first wins, as the linear search did
        by_name: dict[str, Pool] = {}
        for pool in self.pools:
            by_name.setdefault(pool.name, pool)
        return by_name

    def pool(self, name: str) -> Pool:
        """By name in O(1): the planner asks once per pool (1,000 linear scans were 20 ms)."""
        return self._pools_by_name[name]

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


Path = tuple[str | int, ...]
# A prefix of the policy, where it is written, and its text (for messages).
Located = tuple[Net, Path, str]


def _overlaps(items: Iterable[Located]) -> Iterator[tuple[Path, Path, str, str]]:
    """Pairs of overlapping prefixes, found by one sort instead of comparing every pair."""
    ordered = sorted(items, key=lambda it: (it[0].version, it[0].first, -it[0].last))
    widest: Located | None = None
    for item in ordered:
        net = item[0]
        if widest and widest[0].version == net.version and net.first <= widest[0].last:
            yield item[1], widest[1], item[2], widest[2]
            if net.last > widest[0].last:
                widest = item
        else:
            widest = item


def _fmt(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class PoolPrefixes(Protocol):
    """The pools' prefixes as the cross-file checks ask about them."""

    def overlapping(self, net: Net) -> list[Located]:
        """Pool prefixes sharing any address with `net`, in address order; each item's path
        starts ("pools", index of the pool)."""
        ...


class SpanPrefixes:
    """`PoolPrefixes` from packed spans (the validated cache's), parsing no prefix text."""

    def __init__(self, spans: PoolIndex) -> None:
        self._spans = spans

    def overlapping(self, net: Net) -> list[Located]:
        bits = _FAMILY[net.version][1]
        return [
            (Net(net.version, first, last, bits - (last - first).bit_length()), ("pools", pool), "")
            for first, last, pool in self._spans.overlapping(net.version, net.first, net.last)
        ]


def check_policy(policy: Policy, checked_pools: PoolPrefixes | None = None) -> list[Finding]:
    """Checks that need more than one item at a time; every finding, not just the first.

    `checked_pools`: the pools' spans, when these pools already passed the pools-only checks
    in a whole valid policy (the validated cache's `pools.yaml`). Those checks read nothing
    but pools.yaml, so they are skipped; every other check runs, against the spans.
    """
    found: list[Finding] = []
    if checked_pools is None:
        _dupes(found, "pools.yaml", "pools", [p.name for p in policy.pools])
    _dupes(found, "relays.yaml", "relays", [r.name for r in policy.relays])
    index = _check_pools(policy, found) if checked_pools is None else checked_pools
    relay_items: list[Located] = [
        (parse_net(addr), ("relays", i, "addresses", j), addr)
        for i, relay in enumerate(policy.relays)
        for j, addr in enumerate(relay.addresses)
    ]
    for net, path, text in relay_items:
        hits = index.overlapping(net)
        if hits:
            owner = policy.pools[int(hits[0][1][1])].name
            found.append(
                Finding(
                    "relays.yaml",
                    path,
                    f"relay {text} lies inside subscriber pool {owner!r}; "
                    "a relay must not be a subscriber address",
                )
            )
    for path, other, text, other_text in _overlaps(relay_items):
        found.append(Finding("relays.yaml", path, f"{text} overlaps {other_text} at {_fmt(other)}"))
    found += _check_gateways(policy)
    found += _check_discovery(policy)
    found += _check_rollout(policy)
    found += _check_exemptions(policy, index)
    return found


def _dupes(found: list[Finding], file: str, key: str, names: list[str]) -> None:
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


def _check_pools(policy: Policy, found: list[Finding]) -> PrefixIndex:
    """The checks that read pools.yaml alone (tags, static pools, widths, overlaps; the
    duplicate names are `check_policy`'s first lines); the pools' index for the rest."""
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
    pool_items: list[Located] = [
        (_net(prefix), ("pools", i, "prefixes", j), prefix)
        for i, pool in enumerate(policy.pools)
        for j, prefix in enumerate(pool.prefixes)
    ]
    for net, path, text in pool_items:
        if net.prefixlen < MIN_POOL_PREFIXLEN[net.version]:
            found.append(
                Finding(
                    "pools.yaml",
                    path,
                    f"{text} is broader than /{MIN_POOL_PREFIXLEN[net.version]}; "
                    "refusing a pool that wide",
                )
            )
    for path, other, text, other_text in _overlaps(pool_items):
        found.append(Finding("pools.yaml", path, f"{text} overlaps {other_text} at {_fmt(other)}"))

    index = PrefixIndex(pool_items)
    policy.__dict__["_pool_index"] = index  # the same index `Policy.pool_of` would build
    return index


def _check_gateways(policy: Policy) -> list[Finding]:
    """Gateways have unique names and each carries at least one real pool."""
    found: list[Finding] = []
    f = "gateways.yaml"
    pools = {p.name for p in policy.pools}
    tags = {t for p in policy.pools for t in p.tags}
    seen: dict[str, int] = {}
    for i, gw in enumerate(policy.gateways):
        if gw.name in seen:
            found.append(
                Finding(
                    f,
                    ("gateways", i, "name"),
                    f"duplicate gateway name {gw.name!r} (also gateways[{seen[gw.name]}])",
                )
            )
        seen.setdefault(gw.name, i)
        for j, name in enumerate(gw.pools):
            if name not in pools:
                found.append(
                    Finding(
                        f,
                        ("gateways", i, "pools", j),
                        f"unknown pool {name!r} (known: {', '.join(sorted(pools))})",
                    )
                )
        for j, tag in enumerate(gw.tags):
            if tag not in tags:
                found.append(
                    Finding(
                        f,
                        ("gateways", i, "tags", j),
                        f"no pool has tag {tag!r} (known: {', '.join(sorted(tags)) or 'none'})",
                    )
                )
        if not gw.pools and not gw.tags:
            found.append(
                Finding(
                    f, ("gateways", i), "gateway carries no pools: give `pools:` and/or `tags:`"
                )
            )
    return found


def _check_discovery(policy: Policy) -> list[Finding]:
    """The discovery sections' own whole-section checks (policy/discovery.py)."""
    sections: list[tuple[str, Path, Discovery | None]] = [
        ("gateway.yaml", ("gateway", "discovery"), policy.gateway.discovery)
    ]
    sections += [
        ("gateways.yaml", ("gateways", i, "discovery"), gw.discovery)
        for i, gw in enumerate(policy.gateways)
    ]
    return [
        Finding(file, (*where, *path), message)
        for file, where, section in sections
        if section is not None
        for path, message in section.problems()
    ]


def _check_rollout(policy: Policy) -> list[Finding]:
    """Stages name real pools, run in time order, and never step a pool back silently."""
    found: list[Finding] = []
    f = "rollout.yaml"
    pools = {p.name: p for p in policy.pools}
    tags = {t for p in policy.pools if p.dynamic for t in p.tags}
    groups = policy.groups()
    seen: dict[str, int] = {}
    last: tuple[int, datetime] | None = None
    tbd_at: int | None = None
    for i, stage in enumerate(policy.stages):
        where = ("stages", i)
        if stage.name in seen:
            found.append(
                Finding(
                    f,
                    (*where, "name"),
                    f"duplicate stage name {stage.name!r} (also stages[{seen[stage.name]}])",
                )
            )
        seen.setdefault(stage.name, i)
        if not stage.pools and not stage.tags:
            found.append(Finding(f, where, "stage selects no pools: give `pools:` and/or `tags:`"))
        if stage.mode != "enforce" and (
            stage.max_offenders != DEFAULT_MAX_OFFENDERS or stage.warn_before != DEFAULT_WARN_BEFORE
        ):
            found.append(
                Finding(
                    f,
                    (*where, "max_offenders" if stage.max_offenders else "warn_before"),
                    f"readiness settings apply to stages to enforce; this one is to {stage.mode}",
                )
            )
        for j, name in enumerate(stage.pools):
            if name not in pools:
                found.append(
                    Finding(
                        f,
                        (*where, "pools", j),
                        f"unknown pool {name!r} (known: {', '.join(pools)})",
                    )
                )
            elif not pools[name].dynamic:
                found.append(
                    Finding(
                        f,
                        (*where, "pools", j),
                        f"{name!r} is a static pool: OP25B stages apply to dynamic pools",
                    )
                )
        for j, tag in enumerate(stage.tags):
            if tag not in tags:
                found.append(
                    Finding(
                        f,
                        (*where, "tags", j),
                        f"no dynamic pool has tag {tag!r} (known: {', '.join(sorted(tags))})",
                    )
                )
        for j, group in enumerate(stage.groups):
            if group not in groups:
                found.append(
                    Finding(
                        f,
                        (*where, "groups", j),
                        f"no gateway in gateways.yaml is in group {group!r}"
                        + (f" (known: {', '.join(groups)})" if groups else ""),
                    )
                )
        at = stage.scheduled
        if at is None:
            tbd_at = i if tbd_at is None else tbd_at
        elif tbd_at is not None:
            found.append(
                Finding(
                    f,
                    (*where, "at"),
                    f"dated stage after stages[{tbd_at}] whose date is tbd; list tbd stages last",
                )
            )
        elif last is not None and at < last[1]:
            found.append(
                Finding(
                    f,
                    (*where, "at"),
                    f"stage out of order: {at.isoformat()} is before stages[{last[0]}] ({last[1].isoformat()})",
                )
            )
        if at is not None:
            last = (i, at) if last is None or at >= last[1] else last
    found += _same_instant(policy)
    # Backwards moves, judged as each group sees the stages (a stage for `east` and a later
    # one for `west` do not follow each other on any gateway).
    reported: set[tuple[int, str]] = set()
    contexts: list[str | None] = [None, *groups]
    for context in contexts:
        current = {p.name: p.mode for p in policy.pools}  # baseline (pools.yaml)
        for i, stage in enumerate(policy.stages):
            if stage.groups and context not in stage.groups:
                continue
            for name in policy.stage_pools(stage):
                before = current.get(name, "off")
                if (
                    MODE_RANK[stage.mode] < MODE_RANK[before]
                    and not stage.allow_backwards
                    and (i, name) not in reported
                ):
                    reported.add((i, name))
                    found.append(
                        Finding(
                            f,
                            ("stages", i, "mode"),
                            f"moves pool {name!r} backwards ({before} -> {stage.mode})"
                            + (f" in group {context!r}" if context else "")
                            + "; add `allow_backwards: true` if that is intended",
                        )
                    )
                current[name] = stage.mode
    return found


def _same_instant(policy: Policy) -> list[Finding]:
    """Two stages at the same instant that move a pool to different modes on one gateway.

    "The latest stage at or before T" (plan/modes.py) has no latest among equals: the one
    listed last would win without anyone having said so. Stages for disjoint groups never
    meet on a gateway, so they may differ; the same mode twice is redundant, not ambiguous.
    """
    found: list[Finding] = []
    by_time: dict[datetime, list[int]] = {}
    for i, stage in enumerate(policy.stages):
        if stage.scheduled is not None:
            by_time.setdefault(stage.scheduled, []).append(i)
    for at, indices in by_time.items():
        for k, i in enumerate(indices):
            later = policy.stages[i]
            pools = set(policy.stage_pools(later))
            for j in indices[:k]:
                earlier = policy.stages[j]
                if earlier.mode == later.mode or (
                    earlier.groups and later.groups and not set(earlier.groups) & set(later.groups)
                ):
                    continue
                common = [n for n in policy.stage_pools(earlier) if n in pools]
                if common:
                    found.append(
                        Finding(
                            "rollout.yaml",
                            ("stages", i, "at"),
                            f"stage {later.name!r} ({later.mode}) and stage {earlier.name!r} "
                            f"(stages[{j}], {earlier.mode}) are both at "
                            f"{at.isoformat()} and "
                            f"select {', '.join(repr(n) for n in common)}: which mode wins is "
                            "ambiguous; move one stage or select disjoint pools",
                        )
                    )
                    break
    return found


class PrefixIndex:
    """Non-overlapping prefixes sorted by start, so a lookup is a bisect, not a scan of 100,000."""

    def __init__(self, items: Sequence[Located]) -> None:
        self._spans = sorted(items, key=lambda it: (it[0].version, it[0].first))
        self._starts = [(it[0].version, it[0].first) for it in self._spans]

    def holding(self, net: Net) -> Located | None:
        """The indexed prefix containing all of `net` (an address is a full-length Net), or
        None; one bisect, because indexed prefixes do not overlap."""
        k = bisect.bisect_right(self._starts, (net.version, net.first)) - 1
        if k < 0:
            return None
        item = self._spans[k]
        held = item[0]
        if held.version == net.version and held.first <= net.first and net.last <= held.last:
            return item
        return None

    def overlapping(self, net: Net) -> list[Located]:
        """Indexed prefixes sharing any address with `net`, in address order."""
        k = max(bisect.bisect_right(self._starts, (net.version, net.first)) - 1, 0)
        out = []
        for item in self._spans[k:]:
            version, first, last, _ = item[0]
            if version < net.version:
                continue
            if version > net.version or first > net.last:
                break
            if last >= net.first:
                out.append(item)
        return out


def check_exemptions(policy: Policy) -> list[Finding]:
    """The exemption checks alone (fleet exemptions are added to a published policy one by
    one); the pools' index is the policy's own, built once."""
    return _check_exemptions(policy, policy._pool_index)


def _check_exemptions(policy: Policy, index: PoolPrefixes) -> list[Finding]:
    """Each exemption is a part of one dynamic pool (not all of it) and overlaps no other."""
    found: list[Finding] = []
    f = "exemptions.yaml"
    items: list[Located] = []
    for i, ex in enumerate(policy.exemptions):
        net = parse_net(ex.prefix)
        items.append((net, ("exemptions", i, "prefix"), ex.prefix))
        owner = [
            (pnet, policy.pools[int(path[1])])
            for pnet, path, _ in index.overlapping(net)
            if pnet.first <= net.first and net.last <= pnet.last
        ]
        if not owner:
            found.append(
                Finding(
                    f, ("exemptions", i, "prefix"), f"{ex.prefix} is not inside any subscriber pool"
                )
            )
        elif not owner[0][1].dynamic:
            found.append(
                Finding(
                    f,
                    ("exemptions", i, "prefix"),
                    f"{ex.prefix} is in static pool {owner[0][1].name!r}, which is never blocked",
                )
            )
        elif owner[0][0].prefixlen == net.prefixlen:
            found.append(
                Finding(
                    f,
                    ("exemptions", i, "prefix"),
                    f"{ex.prefix} is the whole of a prefix of pool {owner[0][1].name!r}; "
                    "to let a pool through use `op25b-ctl pool rollback`",
                )
            )
    for path, other, text, other_text in _overlaps(items):
        found.append(Finding(f, path, f"{text} overlaps {other_text} at {_fmt(other)}"))
    return found


def format_path(path: tuple[str | int, ...]) -> str:
    """`pools[2].prefixes[0]`: how errors name a field, the way the YAML reads."""
    return _fmt(path)
