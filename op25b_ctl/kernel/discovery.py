"""What this gateway serves, read from the kernel's routing tables and addresses (rtnetlink).

A hand-written codec over a plain NETLINK_ROUTE socket, like `nlcodec.py` for nf_tables:
pyroute2 0.9 sends route dumps unfiltered and filters them in userspace after decoding
every message generically (docs/discovery.md has the figures at 100,000 routes). Here each
route dump asks the kernel to filter (NETLINK_GET_STRICT_CHK, Linux 4.20+: table, protocol
and type in the rtmsg header, RTA_TABLE for tables above 255), so only the routes asked for
cross the socket, and each message is read for three attributes only. The same checks are
repeated on every message received, so a kernel that ignored the filter gives the same
answer, only slower.

`RouteEvents` is the daemon's watch: a socket bound to the route, address and link groups;
it only says *that* something relevant changed (the daemon debounces and reads again), and
that the socket overflowed (ENOBUFS: events were lost, read everything again).

Everything runs in the calling process's network namespace. Nothing here writes.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from op25b_ctl.errors import KernelError, TableNotFound
from op25b_ctl.kernel.nlcodec import exchange
from op25b_ctl.plan.coverage import Served
from op25b_ctl.policy.discovery import (
    ROUTE_TYPES,
    Discovery,
    RouteSource,
    proto_name,
    table_name,
)
from op25b_ctl.policy.model import Net

__all__ = ["RouteEvents", "read_served"]

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_MULTIPATH, RTA_TABLE = 1, 4, 9, 15
RT_TABLE_UNSPEC = 0
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x10, 0x40
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x100, 0x400
GROUPS = (
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
)
FAMILIES: dict[int, tuple[int, int]] = {
    int(socket.AF_INET): (4, 32),
    int(socket.AF_INET6): (6, 128),
}
TYPE_NAMES = {n: name for name, n in ROUTE_TYPES.items()}
_HDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_IFADDRMSG = struct.Struct("=BBBBI")
_NLA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_RECV = 1 << 20


def _attrs(
    buf: bytes | memoryview, offset: int, end: int
) -> Iterator[tuple[int, bytes | memoryview]]:
    while offset + 4 <= end:
        length, kind = _NLA.unpack_from(buf, offset)
        if length < 4:
            return
        yield kind & 0x3FFF, buf[offset + 4 : offset + length]
        offset += (length + 3) & ~3


def _dump(msg_type: int, body: bytes, what: str) -> Iterator[tuple[int, bytes, int, int]]:
    """One strict-checked rtnetlink dump (`nlcodec.exchange`); no such table is an empty
    answer."""
    with contextlib.suppress(TableNotFound):
        yield from exchange(
            NETLINK_ROUTE, msg_type, NLM_F_REQUEST | NLM_F_DUMP, body, what, strict=True
        )


class _Names:
    """Interface index -> name, asked once per index (SIOCGIFNAME, no link dump)."""

    def __init__(self) -> None:
        self._names: dict[int, str | None] = {}

    def __call__(self, index: int) -> str | None:
        if index not in self._names:
            try:
                self._names[index] = socket.if_indextoname(index)
            except OSError:  # gone meanwhile
                self._names[index] = None
        return self._names[index]


def _matcher(patterns: list[str]) -> Callable[[str | None], bool]:
    cache: dict[str | None, bool] = {}

    def match(name: str | None) -> bool:
        if name not in cache:
            cache[name] = name is not None and any(fnmatch.fnmatchcase(name, p) for p in patterns)
        return cache[name]

    return match


def _net(version: int, bits: int, raw: bytes | memoryview, plen: int) -> Net:
    value = int.from_bytes(raw)
    host = (1 << (bits - plen)) - 1
    first = value & ~host
    return Net(version, first, first | host, plen)


def read_addresses(patterns: list[str], names: _Names | None = None) -> list[Served]:
    """Peer addresses (point-to-point sessions) and connected subnets of the interfaces
    whose names match `patterns`; an interface's own address alone (a /32 or /128 without a
    peer) is the gateway's, not a subscriber's, and is left out."""
    names = names or _Names()
    match = _matcher(patterns)
    out: list[Served] = []
    for family, (version, bits) in FAMILIES.items():
        body = _IFADDRMSG.pack(family, 0, 0, 0, 0)
        for _, buf, start, end in _dump(RTM_GETADDR, body, "interface addresses"):
            _, plen, _, _, index = _IFADDRMSG.unpack_from(buf, start)
            name = names(index)
            if not match(name):
                continue
            address = local = None
            for kind, value in _attrs(buf, start + _IFADDRMSG.size, end):
                if kind == IFA_ADDRESS:
                    address = bytes(value)
                elif kind == IFA_LOCAL:
                    local = bytes(value)
            if address is None:
                continue
            if local is not None and local != address:
                out.append(Served(_net(version, bits, address, plen), f"{name} peer"))
            elif plen < bits:
                out.append(Served(_net(version, bits, address, plen), f"{name} subnet"))
    return out


def _route_requests(source: RouteSource) -> Iterator[tuple[int, int, int, int]]:
    """(family, table, protocol, type) of each filtered dump a route source needs."""
    for family in FAMILIES:
        for table in source.tables:
            for proto in source.protocols or [0]:
                for kind in source.types:
                    yield family, table, proto, ROUTE_TYPES[kind]


def read_routes(source: RouteSource, names: _Names | None = None) -> list[Served]:
    """The routes one source selects, as served prefixes (one kernel-filtered dump per
    family, table, protocol and type). The attribute walk is inlined: at 100,000 routes
    every call per message shows (docs/discovery.md)."""
    names = names or _Names()
    match = _matcher(source.interfaces) if source.interfaces else None
    out: list[Served] = []
    unpack_rtmsg, unpack_nla, unpack_u32 = _RTMSG.unpack_from, _NLA.unpack_from, _U32.unpack_from
    rtmsg_size = _RTMSG.size
    for family, table, proto, rtype in _route_requests(source):
        version, bits = FAMILIES[family]
        nbytes = bits // 8
        body = _RTMSG.pack(family, 0, 0, 0, RT_TABLE_UNSPEC, proto, 0, rtype, 0)
        body += _NLA.pack(8, RTA_TABLE) + struct.pack("=I", table)
        what = f"routes of table {table_name(table)}"
        kind_name = "route" if rtype == ROUTE_TYPES["unicast"] else TYPE_NAMES[rtype]
        origins: dict[tuple[int, int], str | None] = {}  # (protocol, first oif) -> origin
        for kind, buf, start, end in _dump(RTM_GETROUTE, body, what):
            if kind != RTM_NEWROUTE:
                continue
            fam, dst_len, _, _, got_table, rtm_proto, _, rtm_type, _ = unpack_rtmsg(buf, start)
            if fam != family or rtm_type != rtype or (proto and rtm_proto != proto):
                continue
            dst = None
            oif = -1
            multipath = None
            at = start + rtmsg_size
            while at + 4 <= end:
                length, a = unpack_nla(buf, at)
                if length < 4:
                    break
                a &= 0x3FFF
                if a == RTA_DST:
                    dst = buf[at + 4 : at + 4 + nbytes]
                elif a == RTA_TABLE:
                    (got_table,) = unpack_u32(buf, at + 4)
                elif a == RTA_OIF:
                    (oif,) = unpack_u32(buf, at + 4)
                elif a == RTA_MULTIPATH:
                    multipath = buf[at + 4 : at + length]
                at += (length + 3) & ~3
            if got_table != table:
                continue
            key = (rtm_proto, oif)
            origin = origins.get(key, "")
            if origin == "" or multipath is not None:
                origin = _route_origin(kind_name, table, rtm_proto, oif, multipath, names, match)
                if multipath is None:
                    origins[key] = origin
            if origin is None:
                continue  # not out of the interfaces asked for
            value = int.from_bytes(dst) if dst is not None else 0
            host = (1 << (bits - dst_len)) - 1
            first = value & ~host
            out.append(Served(Net(version, first, first | host, dst_len), origin))
    return out


def _route_origin(
    kind_name: str,
    table: int,
    proto: int,
    oif: int,
    multipath: bytes | None,
    names: _Names,
    match: Callable[[str | None], bool] | None,
) -> str | None:
    """How a route is shown ("route main proto 100 dev eth1"), or None if an interface
    restriction leaves it out (a multipath route counts if any next hop matches)."""
    oifs = [oif] if oif >= 0 else []
    at = 0
    while multipath is not None and at + 8 <= len(multipath):  # rtnexthop: len flags hops ifindex
        nh_len, _, _, index = struct.unpack_from("=HBBi", multipath, at)
        oifs.append(index)
        at += max((nh_len + 3) & ~3, 8)
    dev_names = [names(i) for i in oifs]
    if match is not None and not any(match(n) for n in dev_names):
        return None
    dev = f" dev {dev_names[0]}" if dev_names and dev_names[0] else ""
    return f"{kind_name} {table_name(table)} proto {proto_name(proto)}{dev}"


def read_served(section: Discovery) -> list[Served]:
    """Everything the section names, as served prefixes (duplicates kept: the comparison
    counts each prefix once)."""
    names = _Names()
    served = read_addresses(section.interfaces, names) if section.interfaces else []
    for source in section.routes:
        served += read_routes(source, names)
    return served


@dataclass
class Drained:
    messages: int  # relevant change notifications read
    overflowed: bool  # ENOBUFS: some were lost; read everything again


class RouteEvents:
    """A non-blocking socket on the route, address and link multicast groups.

    `drain()` reads whatever is queued and counts the notifications that could change the
    answer: a route of a table, protocol and type some source reads, any address, any link
    (a session interface going away takes its routes with it without one event per route).
    """

    def __init__(self, section: Discovery, rcvbuf: int = 8 << 20) -> None:
        self._wanted: set[tuple[int, int, int]] = set()  # (table, protocol or 0, type)
        for source in section.routes:
            for _, table, proto, rtype in _route_requests(source):
                self._wanted.add((table, proto, rtype))
        self._sock = socket.socket(
            socket.AF_NETLINK,
            socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
            NETLINK_ROUTE,
        )
        try:
            for opt in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
                try:
                    self._sock.setsockopt(socket.SOL_SOCKET, opt, rcvbuf)
                    break
                except OSError:  # SO_RCVBUFFORCE needs CAP_NET_ADMIN
                    continue
            self._sock.bind((0, GROUPS))
        except OSError as e:
            self._sock.close()
            raise KernelError(f"cannot watch route, address and link events: {e}") from e

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def drain(self) -> Drained:
        relevant = 0
        while True:
            try:
                data = self._sock.recv(_RECV)
            except BlockingIOError:
                return Drained(relevant, False)
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # the queue overflowed: the socket goes on
                    self._discard()
                    return Drained(relevant, True)
                raise KernelError(f"reading route events failed: {e}") from e
            relevant += self._count(memoryview(data))

    def _discard(self) -> None:
        """Empty the queue after an overflow: everything is read again anyway."""
        while True:
            try:
                self._sock.recv(_RECV)
            except (BlockingIOError, OSError):
                return

    def _count(self, buf: memoryview) -> int:
        n = offset = 0
        while offset + 16 <= len(buf):
            length, kind, _, _, _ = _HDR.unpack_from(buf, offset)
            if length < 16:
                break
            if kind in (RTM_NEWROUTE, RTM_DELROUTE):
                if offset + 16 + _RTMSG.size <= len(buf):
                    _, _, _, _, table, proto, _, rtype, _ = _RTMSG.unpack_from(buf, offset + 16)
                    for a, value in _attrs(buf, offset + 16 + _RTMSG.size, offset + length):
                        if a == RTA_TABLE:
                            (table,) = struct.unpack_from("=I", value)
                    if (table, proto, rtype) in self._wanted or (table, 0, rtype) in self._wanted:
                        n += 1
            elif kind in (RTM_NEWADDR, RTM_DELADDR, RTM_NEWLINK, RTM_DELLINK):
                n += 1
            offset += (length + 3) & ~3
        return n
