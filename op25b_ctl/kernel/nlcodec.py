"""The hand-written half of the netlink reads: request bytes out, attribute bytes in.

No pyroute2 here: a plain AF_NETLINK socket and `struct`. The two dumps that can be large --
every named counter (a metrics scrape) and every element of a 100,000-prefix set -- are
parsed by walking the attribute TLVs directly, which costs microseconds a message where
generic attribute decoding costs a tenth of a millisecond (docs/benchmarks.md has the
figures). The rule-comment and rule-expression parsers live here too: they read the same
TLV formats. Used by the kernel package only: `netlink.py` and `discovery.py` read with it,
`nlbatch.py` writes with its constants and attribute packing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import socket
import struct
from collections.abc import Iterable, Iterator

import netaddr

from op25b_ctl.errors import KernelError, TableNotFound
from op25b_ctl.kernel.base import UNREADABLE, Counter, RuleDigests

# Constants from include/uapi/linux/netfilter/nf_tables.h, netfilter.h and libnftnl.
FAMILIES = {"inet": 1, "ip": 2, "ip6": 10}  # NFPROTO_INET, NFPROTO_IPV4, NFPROTO_IPV6
NFT_OBJECT_COUNTER = 1
NFTNL_UDATA_RULE_COMMENT = 0  # libnftnl's TLV type inside NFTA_RULE_USERDATA
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETOBJ = 19
NFT_MSG_GETRULE = 7
NFT_MSG_GETSETELEM = 13
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300

NETLINK_NETFILTER = 12
_SOL_NETLINK, _NETLINK_GET_STRICT_CHK = 270, 12
NLMSG_ERROR, _NLMSG_DONE = 2, 3
NLM_F_ACK = 0x4
NFTA_OBJ_TABLE, NFTA_OBJ_NAME, NFTA_OBJ_TYPE, NFTA_OBJ_DATA, _NFTA_OBJ_USE = 1, 2, 3, 4, 5
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_FLAGS = 1, 2, 3
NFTA_DATA_VALUE, NFTA_DATA_VERDICT = 1, 2
NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN = 1, 2
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
_NFTA_RULE_TABLE, _NFTA_RULE_CHAIN, _NFTA_RULE_HANDLE = 1, 2, 3
_NFTA_RULE_EXPRESSIONS, _NFTA_RULE_USERDATA = 4, 7
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER


def family_number(family: str) -> int:
    if family not in FAMILIES:
        raise ValueError(f"unsupported nftables family {family!r} (expected one of {FAMILIES})")
    return FAMILIES[family]


def nla(kind: int, payload: bytes) -> bytes:
    """One netlink attribute: length, type, payload, padding to 4 bytes."""
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def attrs(buf: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each netlink attribute in buf (4-byte aligned TLVs)."""
    offset = 0
    while offset + 4 <= len(buf):
        length, kind = struct.unpack_from("=HH", buf, offset)
        if length < 4:
            return
        yield kind & _NLA_TYPE_MASK, bytes(buf[offset + 4 : offset + length])
        offset += (length + 3) & ~3


def pick(buf: bytes, kinds: frozenset[int]) -> dict[int, bytes]:
    """The attributes of `kinds` in buf, the others skipped without a copy: what a skeleton
    read does with thousands of rule and set messages it needs four attributes of."""
    out: dict[int, bytes] = {}
    offset, end = 0, len(buf)
    unpack = struct.unpack_from
    while offset + 4 <= end:
        length, kind = unpack("=HH", buf, offset)
        if length < 4:
            break
        kind &= _NLA_TYPE_MASK
        if kind in kinds:
            out[kind] = buf[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


def dump(msg_type: int, body: bytes, what: str) -> Iterator[bytes]:
    """Send one nf_tables dump request; yield each reply's attributes (after nfgenmsg).

    ENOENT (no such table or set) raises TableNotFound; other failures KernelError.
    """
    return _exchange(msg_type, NLM_F_REQUEST | NLM_F_DUMP, body, what)


def request(msg_type: int, body: bytes, what: str) -> list[bytes]:
    """Send one nf_tables request (not a dump) and wait for its acknowledgement; the replies'
    attributes (after nfgenmsg). Errors as `dump`."""
    return list(_exchange(msg_type, NLM_F_REQUEST | NLM_F_ACK, body, what))


def _exchange(msg_type: int, flags: int, body: bytes, what: str) -> Iterator[bytes]:
    """One nf_tables request; each reply's attributes (after its 4-byte nfgenmsg)."""
    header = (NFNL_SUBSYS_NFTABLES << 8) | msg_type
    for _, buf, start, end in exchange(NETLINK_NETFILTER, header, flags, body, what):
        yield buf[start + 4 : end]


def open_socket(protocol: int, what: str) -> socket.socket:
    """A netlink socket of `protocol`; KernelError (saying for what) if none can be had."""
    try:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    except OSError as e:
        raise KernelError(f"cannot open a netlink socket for {what}: {e}") from e


def exchange(
    protocol: int, msg_type: int, flags: int, body: bytes, what: str, *, strict: bool = False
) -> Iterator[tuple[int, bytes, int, int]]:
    """One request on a fresh netlink socket of `protocol`; per reply until NLMSG_DONE or
    the acknowledgement: (message type, receive buffer, start of the payload, end of the
    message), so a caller reads what it needs in place. ENOENT raises TableNotFound, other
    errors KernelError. `strict`: ask for kernel-filtered dumps (NETLINK_GET_STRICT_CHK,
    Linux 4.20+; older kernels answer unfiltered, so callers check each reply anyway)."""
    with open_socket(protocol, what) as sock:
        try:
            if strict:
                with contextlib.suppress(OSError):
                    sock.setsockopt(_SOL_NETLINK, _NETLINK_GET_STRICT_CHK, 1)
            sock.bind((0, 0))
            sock.sendall(struct.pack("=IHHII", 16 + len(body), msg_type, flags, 1, 0) + body)
            while True:
                buf = sock.recv(1 << 20)
                offset = 0
                while offset + 16 <= len(buf):
                    length, kind = struct.unpack_from("=IH", buf, offset)
                    if length < 16:
                        raise KernelError(f"malformed netlink reply reading {what}")
                    if kind == _NLMSG_DONE:
                        return
                    if kind == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", buf, offset + 16)
                        if code == 0:  # the acknowledgement: every reply came before it
                            return
                        if code == -errno.ENOENT:
                            raise TableNotFound(f"{what} does not exist")
                        raise KernelError(f"reading {what} failed: {os.strerror(-code)}")
                    yield kind, buf, offset + 16, offset + length
                    offset += (length + 3) & ~3
        except OSError as e:
            raise KernelError(f"reading {what} failed: {e}") from e


# -- counters ----------------------------------------------------------------------------------


def counter_dump(table: str, family: str) -> dict[str, Counter]:
    """NFT_MSG_GETOBJ dump of one table's named counters; {} if none or no such table (the
    kernel answers both with an empty dump or ENOENT: the caller tells them apart)."""
    body = struct.pack("=BBH", family_number(family), 0, 0)  # nfgenmsg: family, version, res_id
    body += nla(NFTA_OBJ_TABLE, table.encode() + b"\0")
    body += nla(NFTA_OBJ_TYPE, struct.pack("!I", NFT_OBJECT_COUNTER))
    counters: dict[str, Counter] = {}
    try:
        for msg in dump(NFT_MSG_GETOBJ, body, f"counters of table {table}"):
            _add_counter(counters, msg, table)
    except TableNotFound:
        pass
    return counters


def _add_counter(counters: dict[str, Counter], msg: bytes, table: str) -> None:
    a = dict(attrs(msg))
    if a.get(NFTA_OBJ_TABLE, b"").rstrip(b"\0").decode() != table:
        return
    if struct.unpack("!I", a.get(NFTA_OBJ_TYPE, b"\0\0\0\0"))[0] != NFT_OBJECT_COUNTER:
        return
    data = dict(attrs(a.get(NFTA_OBJ_DATA, b"")))
    packets = data.get(NFTA_COUNTER_PACKETS, b"\0" * 8)
    nbytes = data.get(NFTA_COUNTER_BYTES, b"\0" * 8)
    use = a.get(_NFTA_OBJ_USE, b"\0\0\0\0")
    counters[a[NFTA_OBJ_NAME].rstrip(b"\0").decode()] = Counter(
        packets=struct.unpack("!Q", packets)[0],
        bytes=struct.unpack("!Q", nbytes)[0],
        refs=struct.unpack("!I", use)[0],
    )


# -- set elements ------------------------------------------------------------------------------


def element_dump(
    table: str, set_name: str, family: str, *, interval: bool = True
) -> dict[str, str | None]:
    """One interval set's (or verdict map's) elements as {canonical CIDR: jump target or None}.

    The kernel keeps an interval set as start elements and end elements (flag INTERVAL_END,
    key = last address + 1); they are paired back into ranges, and each range into its
    prefixes. Without `interval` (an anonymous set of host addresses, which nft makes a plain
    set) each element is one address: a /32 or /128. Raises TableNotFound if the table or the
    set does not exist.
    """
    body = struct.pack("=BBH", family_number(family), 0, 0)
    body += nla(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
    body += nla(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")
    points: list[tuple[int, int, str | None]] = []  # (key, 0 = end / 1 = start, target)
    width = 0
    for msg in dump(NFT_MSG_GETSETELEM, body, f"set {set_name}"):
        for _, elem in attrs(dict(attrs(msg)).get(NFTA_SET_ELEM_LIST_ELEMENTS, b"")):
            e = dict(attrs(elem))
            raw = dict(attrs(e.get(NFTA_SET_ELEM_KEY, b""))).get(NFTA_DATA_VALUE, b"")
            width = len(raw)
            flags = (
                struct.unpack("!I", e[NFTA_SET_ELEM_FLAGS])[0] if NFTA_SET_ELEM_FLAGS in e else 0
            )
            points.append((int.from_bytes(raw, "big"), 0 if flags & 1 else 1, _verdict(e)))
    out: dict[str, str | None] = {}
    if not interval:
        return {_prefixes(key, key, width)[0]: target for key, _, target in sorted(points)}
    top = (1 << (8 * width)) - 1
    points.sort(key=lambda p: (p[0], p[1]))  # at one key an interval's end precedes the next start
    start: tuple[int, str | None] | None = None
    for key, is_start, target in points:
        if is_start:
            start = (key, target)
        elif start is not None:  # an end without a start is the kernel's leading sentinel
            for prefix in _prefixes(start[0], key - 1, width):
                out[prefix] = start[1]
            start = None
    if start is not None:  # open to the top of the address space
        for prefix in _prefixes(start[0], top, width):
            out[prefix] = start[1]
    return out


def _verdict(elem: dict[int, bytes]) -> str | None:
    """A map element's jump/goto target; other verdicts as `verdict:<code>`; None for sets."""
    if NFTA_SET_ELEM_DATA not in elem:
        return None
    verdict = dict(attrs(dict(attrs(elem[NFTA_SET_ELEM_DATA])).get(NFTA_DATA_VERDICT, b"")))
    chain = verdict.get(NFTA_VERDICT_CHAIN, b"").rstrip(b"\0").decode()
    if chain:
        return chain
    return f"verdict:{struct.unpack('!i', verdict.get(NFTA_VERDICT_CODE, bytes(4)))[0]}"


def _prefixes(lo: int, hi: int, width: int) -> list[str]:
    """The CIDR blocks covering [lo, hi], as netaddr prints them (one for an exact prefix)."""
    bits = 8 * width
    size = hi - lo + 1
    if size & (size - 1) == 0 and lo % size == 0:  # the common case: exactly one prefix
        af = socket.AF_INET if width == 4 else socket.AF_INET6
        return [f"{socket.inet_ntop(af, lo.to_bytes(width, 'big'))}/{bits - size.bit_length() + 1}"]
    version = 4 if width == 4 else 6
    first, last = netaddr.IPAddress(lo, version), netaddr.IPAddress(hi, version)
    return [str(c) for c in netaddr.iprange_to_cidrs(first, last)]


_NFTA_SET_ELEM_TIMEOUT, _NFTA_SET_ELEM_EXPIRATION = 4, 5
_NFTA_SET_ELEM_EXPR, _NFTA_SET_ELEM_EXPRESSIONS = 7, 10
_COUNTER = b"counter\0"


def dynamic_dump(table: str, set_name: str, family: str) -> list[tuple[bytes, int, int, int]]:
    """A dynamic set's elements as (key bytes, packets of its counter, timeout ms or 0 for
    the set's, ms until it expires); the kernel leaves out expired ones. Raises TableNotFound
    if there is no such table or set.

    A full set is 65,536 elements and `offenders --top 20` has half a second for all of it
    (docs/benchmarks.md): the elements the kernel writes for our sets have one fixed layout,
    matched by one regular expression a message; a message it does not cover byte for byte
    is walked attribute by attribute instead.
    """
    body = struct.pack("=BBH", family_number(family), 0, 0)
    body += nla(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
    body += nla(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")
    out: list[tuple[bytes, int, int, int]] = []
    for msg in dump(NFT_MSG_GETSETELEM, body, f"set {set_name}"):
        for kind, elems in attrs(msg):
            if kind == NFTA_SET_ELEM_LIST_ELEMENTS:
                out += _fast_elements(elems) or _walk_elements(elems)
    return out


def _element_pattern(width: int, timeout: bool) -> tuple[re.Pattern[bytes], int]:
    """The bytes of one element of ours (key, counter, [timeout], expiration) as the kernel
    writes it, with the key, packets, timeout and expiration as groups; and its length."""
    counter = (
        struct.pack("=HH", 44, _NFTA_SET_ELEM_EXPR)
        + struct.pack("=HH", 12, NFTA_EXPR_NAME)
        + _COUNTER
        + struct.pack("=HH", 28, NFTA_EXPR_DATA)
        + struct.pack("=HH", 12, NFTA_COUNTER_BYTES)
    )
    parts = [
        re.escape(struct.pack("=HH", 4 + width, NFTA_DATA_VALUE)),
        b"(.{%d})" % width,
        re.escape(counter),
        b".{8}",
        re.escape(struct.pack("=HH", 12, NFTA_COUNTER_PACKETS)),
        b"(.{8})",
    ]
    length = 4 + 4 + 4 + width + 44 + 12  # element, key, value, counter, expiration
    if timeout:
        parts += [re.escape(struct.pack("=HH", 12, _NFTA_SET_ELEM_TIMEOUT)), b"(.{8})"]
        length += 12
    else:
        parts.append(b"()")
    parts += [re.escape(struct.pack("=HH", 12, _NFTA_SET_ELEM_EXPIRATION)), b"(.{8})"]
    head = struct.pack("=HH", length, 1) + struct.pack("=HH", 8 + width, NFTA_SET_ELEM_KEY)
    return re.compile(re.escape(head) + b"".join(parts), re.S), length


_PATTERNS = [_element_pattern(w, t) for w in (4, 16) for t in (False, True)]


def _fast_elements(elems: bytes) -> list[tuple[bytes, int, int, int]] | None:
    """All elements of one message by `_element_pattern`, or None unless it covers them all."""
    for pattern, length in _PATTERNS:
        if len(elems) % length:
            continue
        found = pattern.findall(elems)
        if len(found) * length == len(elems):
            big = int.from_bytes
            return [
                (key, big(packets), big(timeout) if timeout else 0, big(expires))
                for key, packets, timeout, expires in found
            ]
    return None


def _walk_elements(elems: bytes) -> list[tuple[bytes, int, int, int]]:
    """The general case: each attribute of each element."""
    out: list[tuple[bytes, int, int, int]] = []
    for _, elem in attrs(elems):
        e = dict(attrs(elem))
        key = dict(attrs(e.get(NFTA_SET_ELEM_KEY, b""))).get(NFTA_DATA_VALUE, b"")
        timeout = e.get(_NFTA_SET_ELEM_TIMEOUT)
        expires = e.get(_NFTA_SET_ELEM_EXPIRATION)
        packets = 0
        for kind in (_NFTA_SET_ELEM_EXPR, _NFTA_SET_ELEM_EXPRESSIONS):
            if kind in e:
                packets = _counter_packets(e[kind], kind)
        out.append(
            (
                key,
                packets,
                struct.unpack("!Q", timeout)[0] if timeout else 0,
                struct.unpack("!Q", expires)[0] if expires else 0,
            )
        )
    return out


def _counter_packets(raw: bytes, kind: int) -> int:
    """The packets of a `counter` among an element's expressions (one, or a list)."""
    exprs = [e for _, e in attrs(raw)] if kind == _NFTA_SET_ELEM_EXPRESSIONS else [raw]
    for expr in exprs:
        parts = dict(attrs(expr))
        if parts.get(NFTA_EXPR_NAME) == _COUNTER:
            data = dict(attrs(parts.get(NFTA_EXPR_DATA, b"")))
            return int(struct.unpack("!Q", data.get(NFTA_COUNTER_PACKETS, bytes(8)))[0])
    return 0


# -- rules -------------------------------------------------------------------------------------


def rule_dump(table: str, family: str, chains: Iterable[str] | None = None) -> RuleDigests:
    """NFT_MSG_GETRULE dump(s) of one table (or of only `chains`, which the kernel filters),
    each rule reduced to its comment (or `handle:<n>`) and the digest of its expressions.

    Parsed here rather than with pyroute2: pyroute2 compiles a message class's attribute map
    once per class hierarchy, so a second class for the same message (expressions kept) read
    them as empty once the first (expressions skipped) had been used, and every digest was
    sha256(b"") -- after the first full read, no edit in place ever showed.
    """
    number = family_number(family)
    out: dict[tuple[str, str], list[str]] = {}
    for chain in [None] if chains is None else list(chains):
        body = struct.pack("=BBH", number, 0, 0)
        body += nla(_NFTA_RULE_TABLE, table.encode() + b"\0")
        if chain is not None:
            body += nla(_NFTA_RULE_CHAIN, chain.encode() + b"\0")
        try:
            for msg in dump(NFT_MSG_GETRULE, body, f"rules of table {family} {table}"):
                a = pick(msg, _RULE_DIGEST_KINDS)
                if a.get(_NFTA_RULE_TABLE, b"").rstrip(b"\0").decode() != table:
                    continue
                name = a.get(_NFTA_RULE_CHAIN, b"").rstrip(b"\0").decode()
                if chain is not None and name != chain:
                    continue
                key = rule_key(
                    rule_comment(a.get(_NFTA_RULE_USERDATA)),
                    struct.unpack("!Q", a.get(_NFTA_RULE_HANDLE, bytes(8)))[0],
                )
                digest = expressions_digest(a.get(_NFTA_RULE_EXPRESSIONS, b""))
                out.setdefault((name, key), []).append(digest)
        except TableNotFound:
            continue  # no such table or chain
    return {k: tuple(v) for k, v in out.items()}


_RULE_DIGEST_KINDS = frozenset(
    {_NFTA_RULE_TABLE, _NFTA_RULE_CHAIN, _NFTA_RULE_HANDLE, _NFTA_RULE_USERDATA}
    | {_NFTA_RULE_EXPRESSIONS}
)


def rule_key(comment: str | None, handle: int) -> str:
    """How `RuleDigests` names a rule: its comment, else `handle:<n>`."""
    return comment if comment is not None else f"handle:{handle}"


def expressions_digest(raw: bytes) -> str:
    """sha256 of an NFTA_RULE_EXPRESSIONS attribute, inline counters' values left out;
    UNREADABLE if it holds no (named) expression: every rule of ours has some.

    Walked by offsets (no dict per expression): a full rule dump is 3,000 rules at 1,000
    pools, each with ten or so expressions."""
    h = hashlib.sha256()
    seen = 0
    unpack = struct.unpack_from
    offset, end = 0, len(raw)
    while offset + 4 <= end:  # NFTA_LIST_ELEM, one per expression
        length = unpack("=H", raw, offset)[0]
        if length < 4:
            break
        stop = min(offset + length, end)
        name, data = b"", b""
        pos = offset + 4
        while pos + 4 <= stop:
            alen, kind = unpack("=HH", raw, pos)
            if alen < 4:
                break
            kind &= _NLA_TYPE_MASK
            if kind == NFTA_EXPR_NAME:
                name = raw[pos + 4 : pos + alen]
            elif kind == NFTA_EXPR_DATA:
                data = raw[pos + 4 : pos + alen]
            pos += (alen + 3) & ~3
        if not name:
            return UNREADABLE
        seen += 1
        h.update(name + b"\0")
        if name.rstrip(b"\0") != b"counter":
            h.update(data)
        offset += (length + 3) & ~3
    return h.hexdigest()[:16] if seen else UNREADABLE


def chain_matches(table: str, family: str, chain: str) -> list[str | tuple[bytes, bytes]]:
    """What the rules of one chain match an address against, in rule order: the name of a
    looked-up set (anonymous `__set<n>` ones included), or (value, mask) for the single
    address or prefix nft compares directly (it makes a one-element `{ x }` a comparison;
    the mask is all ones for an address). [] if there is no such table or chain."""
    body = struct.pack("=BBH", family_number(family), 0, 0)
    body += nla(_NFTA_RULE_TABLE, table.encode() + b"\0")
    body += nla(_NFTA_RULE_CHAIN, chain.encode() + b"\0")
    out: list[str | tuple[bytes, bytes]] = []
    try:
        for msg in dump(NFT_MSG_GETRULE, body, f"rules of chain {family} {table} {chain}"):
            a = pick(msg, _RULE_DIGEST_KINDS)
            if a.get(_NFTA_RULE_CHAIN, b"").rstrip(b"\0").decode() != chain:
                continue
            width, mask = 0, b""  # the address loaded last (4 or 16 bytes), its mask
            for _, elem in attrs(a.get(_NFTA_RULE_EXPRESSIONS, b"")):
                expr = dict(attrs(elem))
                name = expr.get(NFTA_EXPR_NAME, b"").rstrip(b"\0")
                data = dict(attrs(expr.get(NFTA_EXPR_DATA, b"")))
                if name == b"lookup" and data.get(_NFTA_LOOKUP_SET):
                    out.append(data[_NFTA_LOOKUP_SET].rstrip(b"\0").decode())
                elif name == b"payload":
                    # the network header's source address, or the prefix's leading bytes of it
                    base = struct.unpack("!I", data.get(_NFTA_PAYLOAD_BASE, bytes(4)))[0]
                    at = struct.unpack("!I", data.get(_NFTA_PAYLOAD_OFFSET, bytes(4)))[0]
                    width = {12: 4, 8: 16}.get(at, 0) if base == _NFT_PAYLOAD_NETWORK else 0
                    mask = b""
                elif name == b"bitwise":
                    mask = _data_value(data.get(_NFTA_BITWISE_MASK))
                elif name == b"cmp" and width:
                    value = _data_value(data.get(_NFTA_CMP_DATA))
                    ones = mask if len(mask) == len(value) else b"\xff" * len(value)
                    out.append((value.ljust(width, b"\0"), ones.ljust(width, b"\0")))
                    width, mask = 0, b""
                else:
                    width, mask = 0, b""
    except TableNotFound:
        return []
    return out


def _data_value(raw: bytes | None) -> bytes:
    return dict(attrs(raw or b"")).get(NFTA_DATA_VALUE, b"")


_NFTA_LOOKUP_SET = 1
_NFTA_BITWISE_MASK = 4
_NFTA_CMP_DATA = 3
_NFTA_PAYLOAD_BASE, _NFTA_PAYLOAD_OFFSET = 2, 3
_NFT_PAYLOAD_NETWORK = 1


def rule_comment(udata: bytes | None) -> str | None:
    """The NFTNL_UDATA_RULE_COMMENT TLV (u8 type, u8 length, NUL-terminated value)."""
    if not udata:
        return None
    offset = 0
    while offset + 2 <= len(udata):
        kind, length = udata[offset], udata[offset + 1]
        value = udata[offset + 2 : offset + 2 + length]
        if len(value) < length:
            return None  # truncated: not libnftnl's format
        if kind == NFTNL_UDATA_RULE_COMMENT:
            return value.split(b"\0", 1)[0].decode("utf-8", "replace")
        offset += 2 + length
    return None
