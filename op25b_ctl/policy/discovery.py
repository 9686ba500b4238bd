"""What a gateway's discovery reads from its kernel: the `discovery:` section, validated.

Discovery compares what the gateway *serves* (session peer addresses, connected subnets,
subscriber routes, pool aggregates) with the pools the policy lists; a served address in no
pool is a hole (see plan/coverage.py). Nothing is guessed: every source is named here, and
the one source that cannot tell a subscriber from anything else is refused on its own.
`proto boot` (3) is accel-ppp's IPoE default *and* what `ip route add` uses without a
`proto`, and `proto kernel` (2) is every connected network of every interface (uplinks,
management): a route source that may match either in the main table with no interface
restriction would call every hand-added or connected route a subscriber, so it is refused.

Protocol and table names are the built-in ones below (Debian 12's /etc/iproute2/rt_protos
and the three reserved table names), never a local file: a policy published to a fleet means
the same on every gateway. Any other protocol or table is written as its number.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import netaddr
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

# iproute2's reserved protocol numbers (/etc/iproute2/rt_protos, Debian 12).
RT_PROTOS: dict[str, int] = {
    "unspec": 0,
    "redirect": 1,
    "kernel": 2,
    "boot": 3,
    "static": 4,
    "gated": 8,
    "ra": 9,
    "mrt": 10,
    "zebra": 11,
    "bird": 12,
    "dnrouted": 13,
    "xorp": 14,
    "ntk": 15,
    "dhcp": 16,
    "keepalived": 18,
    "babel": 42,
    "openr": 99,
    "bgp": 186,
    "isis": 187,
    "ospf": 188,
    "rip": 189,
    "eigrp": 192,
}
PROTO_NAMES = {n: name for name, n in RT_PROTOS.items()}
RT_TABLES: dict[str, int] = {"default": 253, "main": 254, "local": 255}
TABLE_NAMES = {n: name for name, n in RT_TABLES.items()}
# rtm_type values (include/uapi/linux/rtnetlink.h) of the route types discovery reads.
ROUTE_TYPES: dict[str, int] = {"unicast": 1, "blackhole": 6, "unreachable": 7, "prohibit": 8}
RouteType = Literal["unicast", "blackhole", "unreachable", "prohibit"]
# Protocols that never mean "subscriber" by themselves (see the module docstring).
AMBIGUOUS_PROTOS = {RT_PROTOS["boot"]: "boot", RT_PROTOS["kernel"]: "kernel"}
# An interface name pattern: fnmatch syntax (* ? [..]) over Linux interface name characters.
IFPATTERN_RE = re.compile(r"^[A-Za-z0-9_.@:+\-*?\[\]!]{1,32}$")
DEFAULT_INTERVAL = 60.0  # seconds between periodic re-checks (events trigger one sooner)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _pattern(value: str) -> str:
    if not IFPATTERN_RE.match(value):
        raise ValueError(
            f"{value!r} is not an interface name pattern (name characters and * ? [...], "
            "at most 32)"
        )
    if value.strip("*?") == "":
        raise ValueError(
            f"{value!r} matches every interface (lo, uplinks, management): name the access "
            "interfaces, e.g. 'ppp*'"
        )
    return value


IfPattern = Annotated[str, AfterValidator(_pattern)]


def _number(value: Any, names: dict[str, int], what: str, low: int, high: int) -> int:
    """A name from `names` or a number low..high, as its number (bool is not a number)."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a name or a number, got {value!r}")
    if isinstance(value, int):
        if not low <= value <= high:
            raise ValueError(f"{what} {value} is outside {low}..{high}")
        return value
    if isinstance(value, str):
        if value in names:
            return names[value]
        if value.strip().isdigit():  # `"100"` is not `100`: no silent conversion, say why
            raise ValueError(
                f"{what} {value!r} is quoted, so a name: write the number without quotes"
            )
        raise ValueError(
            f"unknown {what} name {value!r} (known: {', '.join(sorted(names))}; "
            "write any other as its number)"
        )
    raise ValueError(f"{what}: expected a name or a number, got {type(value).__name__}")


Protocol = Annotated[
    int, BeforeValidator(lambda v: _number(v, RT_PROTOS, "route protocol", 0, 255))
]
TableId = Annotated[
    int, BeforeValidator(lambda v: _number(v, RT_TABLES, "routing table", 1, 0xFFFFFFFF))
]


def proto_name(number: int) -> str:
    return PROTO_NAMES.get(number, str(number))


def table_name(number: int) -> str:
    return TABLE_NAMES.get(number, str(number))


class RouteSource(_Strict):
    """Routes of the given tables, protocols and types (all must match), optionally only
    those out of interfaces matching `interfaces`. A per-session /32 (/128, or a delegated
    prefix) or a pool aggregate (blackhole, unreachable, prohibit) is a served prefix."""

    tables: list[TableId] = Field(default=[RT_TABLES["main"]], min_length=1)
    protocols: list[Protocol] = []  # empty: any protocol (then restrict by interface/table)
    types: list[RouteType] = Field(default=["unicast"], min_length=1)
    interfaces: list[IfPattern] = []

    def ambiguity(self) -> str | None:
        """Why this source cannot tell subscribers from other routes, or None."""
        if self.interfaces or RT_TABLES["main"] not in self.tables:
            return None  # the main table with another beside it is still the main table
        if "unicast" not in self.types:
            return None  # aggregates (blackhole & co.) are put there on purpose
        if not self.protocols:
            return "any protocol (no `protocols:`, so boot and kernel too)"
        hit = [AMBIGUOUS_PROTOS[p] for p in self.protocols if p in AMBIGUOUS_PROTOS]
        return f"proto {' and '.join(hit)}" if hit else None


class PrefixLengths(_Strict):
    """Served prefixes broader than these are skipped: no pool may be broader (model.py's
    MIN_POOL_PREFIXLEN), so such a route (a default route, an uplink /8) can never be covered."""

    ipv4: int = Field(default=8, ge=0, le=32)
    ipv6: int = Field(default=16, ge=0, le=128)


def _prefix(value: str) -> str:
    """A canonical prefix without host bits (an ignore entry must say what it means)."""
    try:
        net = netaddr.IPNetwork(value)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 prefix") from None
    if net.ip != net.network:
        raise ValueError(f"{value!r} has host bits set (did you mean {net.cidr}?)")
    return str(net.cidr)


class Discovery(_Strict):
    """The `discovery:` section of gateway.yaml (or of one gateway in gateways.yaml)."""

    # peer addresses and connected subnets on interfaces matching these
    interfaces: list[IfPattern] = []
    routes: list[RouteSource] = []
    min_prefixlen: PrefixLengths = PrefixLengths()
    # served prefixes never reported (the gateway's own addresses, a lab range)
    ignore: list[Annotated[str, StringConstraints(strict=True), AfterValidator(_prefix)]] = []
    # seconds between the daemon's periodic re-checks (route/address/link events start one
    # sooner, debounced)
    interval: float = Field(default=DEFAULT_INTERVAL, ge=1, le=86400)

    def problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Whole-section checks: (path inside the section, message)."""
        found: list[tuple[tuple[str | int, ...], str]] = []
        if not self.interfaces and not self.routes:
            found.append(((), "discovery reads nothing: give `interfaces:` and/or `routes:`"))
        for i, route in enumerate(self.routes):
            why = route.ambiguity()
            if why:
                found.append(
                    (
                        ("routes", i),
                        f"{why} in the main table alone does not mean subscriber (`ip route "
                        "add` defaults to proto boot, connected networks are proto kernel): "
                        "add `interfaces:` (the access interfaces) or the session routes' own "
                        "`tables:`, or name the protocol your access server sets",
                    )
                )
            if route.interfaces and "unicast" not in route.types:
                found.append(
                    (
                        ("routes", i, "interfaces"),
                        "blackhole, unreachable and prohibit routes go out of no interface: "
                        "drop `interfaces:` or add `unicast` to `types:`",
                    )
                )
        return found
