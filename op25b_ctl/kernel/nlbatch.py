"""Our own netlink writer, for the commits libnftables is slow at: a new table, a refill.

Creating the table from nothing (at boot, after the whole ruleset was flushed) means 110,000
set elements at 1,000 pools; libnftables spends ~0.6 s parsing and evaluating their text
before the kernel sees one byte (docs/performance.md). The elements need none of that: they
are canonical prefixes already. So the inert part of a new table -- the table, its counters,
its non-base chains (empty), its sets and maps with their elements -- goes over netlink in
commits of our own (`commit_scaffold`), and the base chain and every rule follow in one small
libnftables batch (`nft.py`). No packet meets the scaffold: without a base chain nothing in
the table is reached, so what packets see still changes in one transaction. A batch that only
refills sets and swaps counters (an edit of the pools or relays: `refill_ops`) goes as one
batch of ours, the same single transaction libnftables would send.

The messages are the ones nft 1.0.6 sends for the same script (`nft --debug=mnl`), attribute
for attribute, so the kernel holds the same objects either way; an end-to-end test compares
the kernel's dumps after both. Anything this writer does not know (another op, flag or key
type, overlapping elements) makes `scaffold_ops` / `refill_ops` say no, and libnftables
commits the whole transaction as before.
"""

from __future__ import annotations

import errno
import os
import queue
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from op25b_ctl.errors import KernelError
from op25b_ctl.kernel.nlcodec import (
    NETLINK_NETFILTER,
    NFNL_SUBSYS_NFTABLES,
    NFT_OBJECT_COUNTER,
    NFTA_COUNTER_BYTES,
    NFTA_COUNTER_PACKETS,
    NFTA_DATA_VALUE,
    NFTA_DATA_VERDICT,
    NFTA_EXPR_DATA,
    NFTA_EXPR_NAME,
    NFTA_OBJ_DATA,
    NFTA_OBJ_NAME,
    NFTA_OBJ_TABLE,
    NFTA_OBJ_TYPE,
    NFTA_SET_ELEM_DATA,
    NFTA_SET_ELEM_FLAGS,
    NFTA_SET_ELEM_KEY,
    NFTA_SET_ELEM_LIST_ELEMENTS,
    NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE,
    NFTA_VERDICT_CHAIN,
    NFTA_VERDICT_CODE,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    family_number,
    nla,
    open_socket,
)
from op25b_ctl.plan.ruleset import FINGERPRINT_PREFIX
from op25b_ctl.plan.table import NamedSet
from op25b_ctl.plan.transaction import (
    AddChain,
    AddCounter,
    AddElements,
    AddRule,
    AddSet,
    AddTable,
    DeleteCounter,
    FlushSet,
    Op,
)

__all__ = [
    "PENDING",
    "Message",
    "Refill",
    "Scaffold",
    "commit",
    "commit_scaffold",
    "delete_table",
    "encode",
    "encode_refill",
    "refill_ops",
    "scaffold_ops",
]

_SO_SNDBUFFORCE = 32  # Linux; not in Python's socket module
_NLM_F_EXCL, _NLM_F_CREATE = 0x200, 0x400
_BATCH_BEGIN, _BATCH_END = 16, 17  # NFNL_MSG_BATCH_BEGIN/END
_NEWTABLE, _DELTABLE, _NEWCHAIN, _NEWSET, _NEWSETELEM, _NEWOBJ = 0, 2, 3, 9, 12, 18
_DELSETELEM, _DELOBJ = 14, 20
_NESTED = 0x8000

_TABLE_NAME, _TABLE_FLAGS, _TABLE_USERDATA = 1, 2, 6
_CHAIN_TABLE, _CHAIN_NAME = 1, 3
_SET_TABLE, _SET_NAME, _SET_FLAGS, _SET_KEY_TYPE, _SET_KEY_LEN = 1, 2, 3, 4, 5
_SET_DATA_TYPE, _SET_DATA_LEN, _SET_DESC, _SET_ID, _SET_TIMEOUT = 6, 7, 9, 10, 11
_SET_USERDATA, _SET_EXPR, _SET_DESC_SIZE = 13, 17, 1
_LIST_SET_ID = 4  # NFTA_SET_ELEM_LIST_SET_ID
# NFTA_LIST_ELEM, nested: each element inside NFTA_SET_ELEM_LIST_ELEMENTS (libnftnl numbers
# them 1, 2, 3, ...; the kernel reads the type of none of them)
_LIST_ELEM = 1 | 0x8000
_ELEM_USERDATA = 6
_NFT_JUMP = -3
_NFT_DATA_VERDICT = 0xFFFFFF00
_ELEM_INTERVAL_END = 1

# set flags (nf_tables.h) by the name nft gives them
_SET_FLAG = {"interval": 0x4, "timeout": 0x10, "dynamic": 0x20}
_SET_MAP = 0x8
# datatype ids and key lengths of nft's ipv4_addr / ipv6_addr (TYPE_IPADDR, TYPE_IP6ADDR)
_KEY_TYPES = {"ipv4_addr": (7, 4), "ipv6_addr": (8, 16)}
# libnftnl's userdata TLVs: u8 type, u8 length, value (u32 in host order)
_UD_KEYBYTEORDER, _UD_DATABYTEORDER, _UD_DATA_INTERVAL = 0, 1, 6
_UD_ELEM_FLAGS, _UD_ELEM_INTERVAL_OPEN = 1, 1
_BIG_ENDIAN = 2  # nft's BYTEORDER_BIG_ENDIAN
# An attribute's length is 16 bits: one message's element list stays well below 64 KiB.
_LIST_BYTES = 60_000
_SCAFFOLD_OPS = AddTable | AddCounter | AddChain | AddSet
_REFILL_OPS = FlushSet | AddElements | AddCounter | DeleteCounter
# One commit of the scaffold carries about this much; the next is encoded while it is sent.
_BATCH_BYTES = 1 << 20

Message = tuple[int, int, bytes]  # netlink message type, flags, payload
# The fingerprint counter a scaffold carries until its last element is in (`encode`).
PENDING = FINGERPRINT_PREFIX + "pending"


Ranges = list[tuple[int, int, str | None]]  # sorted [low, high) and jump target (maps)


@dataclass(frozen=True)
class Scaffold:
    """A new table's transaction, split: `inert` for our writer, `rest` for libnftables;
    `ranges` holds each interval set's elements as `encode` sends them."""

    inert: tuple[Op, ...]
    rest: tuple[Op, ...]
    ranges: dict[str, Ranges]


def scaffold_ops(ops: Sequence[Op]) -> Scaffold | None:
    """Split a batch that creates our table into its inert part and the rest, or None if
    this writer cannot take it (then libnftables commits all of it)."""
    if not ops or not isinstance(ops[0], AddTable):
        return None
    if not all(isinstance(op, _SCAFFOLD_OPS | AddRule) for op in ops):
        return None  # decided before any set's elements are parsed
    inert: list[Op] = []
    rest: list[Op] = []
    ranges: dict[str, Ranges] = {}
    for op in ops:
        if isinstance(op, AddRule) or (isinstance(op, AddChain) and op.hook is not None):
            rest.append(op)
            continue
        if isinstance(op, AddSet):
            found = _writable(op.set)
            if found is None:
                return None
            ranges[op.set.name] = found
        inert.append(op)
    return Scaffold(tuple(inert), tuple(rest), ranges)


@dataclass(frozen=True)
class Refill:
    """A batch that only refills interval sets (a flush, then every element again) and
    swaps counters: what an edit of pools.yaml or relays.yaml commits. One batch, so one
    transaction, as libnftables would send it; `ranges` as in `Scaffold`."""

    ops: tuple[Op, ...]
    ranges: dict[str, Ranges]
    sets: dict[str, NamedSet]  # each refilled set's declaration (the flushed live set)


def refill_ops(ops: Sequence[Op]) -> Refill | None:
    """`ops` as a Refill, or None if it does anything else (then libnftables commits it).

    Elements are taken only as the whole new content of a set flushed earlier in the batch:
    then they are laid out as in a new set, which is what nft sends after its flush too."""
    if not any(isinstance(op, FlushSet) for op in ops) or not all(
        isinstance(op, _REFILL_OPS) for op in ops
    ):
        return None  # decided before any set's elements are parsed
    flushed: dict[str, NamedSet] = {}
    ranges: dict[str, Ranges] = {}
    for op in ops:
        if isinstance(op, FlushSet):
            declared = replace(op.set, elements={})
            if op.set.dynamic or _writable(declared) is None or op.set.name in flushed:
                return None
            flushed[op.set.name] = declared
        elif isinstance(op, AddElements):
            if op.set not in flushed or op.set in ranges:
                return None
            found = _writable(replace(flushed[op.set], elements=op.elements))
            if found is None:
                return None
            ranges[op.set] = found
    return Refill(tuple(ops), ranges, flushed)


def _writable(s: NamedSet) -> Ranges | None:
    """A set's elements as ranges if this writer encodes its declaration exactly as nft
    does and no two elements overlap (nft refuses those with its own message: leave them to
    it); else None."""
    if s.key_type not in _KEY_TYPES or not s.flags <= _SET_FLAG.keys():
        return None
    if s.dynamic:
        return [] if not s.elements and not s.verdict_map else None
    if "interval" not in s.flags or s.timeout or s.size or s.counter:
        return None
    return _intervals(s)


# -- encoding -----------------------------------------------------------------------------


def _string(value: str) -> bytes:
    return value.encode() + b"\0"


def _u32(value: int) -> bytes:
    return struct.pack("!I", value)


def _nest(kind: int, *parts: bytes) -> bytes:
    return nla(kind | _NESTED, b"".join(parts))


def _udata(kind: int, value: int) -> bytes:
    return struct.pack("=BBI", kind, 4, value)


def _message(kind: int, flags: int, family: int, body: bytes) -> Message:
    return (NFNL_SUBSYS_NFTABLES << 8) | kind, flags, struct.pack("=BBH", family, 0, 0) + body


def _intervals(s: NamedSet) -> Ranges | None:
    """The elements as sorted [low, high) ranges with their jump targets; None if two
    overlap or one is not a prefix of the set's family. (`policy.model.parse_net` reads a
    prefix the same way, but builds a Net per prefix: +25 ms at 110,000 on this path.)"""
    af, width = (socket.AF_INET, 4) if s.key_type == "ipv4_addr" else (socket.AF_INET6, 16)
    bits = 8 * width
    ranges: Ranges = []
    big, pton = int.from_bytes, socket.inet_pton
    try:
        for prefix, target in s.elements.items():
            address, _, length = prefix.partition("/")
            low = big(pton(af, address))
            size = 1 << (bits - int(length or bits))
            if low % size:
                return None
            ranges.append((low, low + size, target))
    except (OSError, ValueError):
        return None
    ranges.sort()
    for (_, high, _), (low, _, _) in zip(ranges, ranges[1:], strict=False):
        if low < high:
            return None
    return ranges


def _elements(s: NamedSet, ranges: Ranges) -> Iterator[bytes]:
    """Each element as nft 1.0.6 sends it for an interval set: a leading end element at the
    zero address unless a range starts there; each range's start (with its verdict in a
    map); its end (the first address after it, even where the next range starts), except
    where the range runs to the top of the address space: its start is then marked open."""
    width = 4 if s.key_type == "ipv4_addr" else 16
    top = 1 << (8 * width)
    key_head = struct.pack(
        "=HHHH", 8 + width, NFTA_SET_ELEM_KEY | _NESTED, 4 + width, NFTA_DATA_VALUE
    )
    flags_end = nla(NFTA_SET_ELEM_FLAGS, _u32(_ELEM_INTERVAL_END))
    end_head = struct.pack("=HH", 4 + len(flags_end) + len(key_head) + width, _LIST_ELEM)
    end_head += flags_end + key_head
    open_mark = nla(_ELEM_USERDATA, _udata(_UD_ELEM_FLAGS, _UD_ELEM_INTERVAL_OPEN))
    data: dict[str | None, bytes] = {None: b""}
    if ranges and ranges[0][0] != 0:
        yield end_head + bytes(width)
    for low, high, target in ranges:
        verdict = data.get(target)
        if verdict is None:
            assert target is not None
            verdict = data[target] = _nest(
                NFTA_SET_ELEM_DATA,
                _nest(
                    NFTA_DATA_VERDICT,
                    nla(NFTA_VERDICT_CODE, struct.pack("!i", _NFT_JUMP)),
                    nla(NFTA_VERDICT_CHAIN, _string(target)),
                ),
            )
        tail = verdict + (open_mark if high == top else b"")
        body = key_head + low.to_bytes(width, "big") + tail
        yield struct.pack("=HH", 4 + len(body), _LIST_ELEM) + body
        if high != top:
            yield end_head + high.to_bytes(width, "big")


def _table(family: int, name: str, comment: str) -> Message:
    body = nla(_TABLE_NAME, _string(name)) + nla(_TABLE_FLAGS, _u32(0))
    if comment:
        raw = _string(comment)
        body += nla(_TABLE_USERDATA, struct.pack("=BB", 0, len(raw)) + raw)
    return _message(_NEWTABLE, _NLM_F_CREATE | _NLM_F_EXCL, family, body)


def _set(family: int, table: str, s: NamedSet, set_id: int) -> Message:
    key_type, key_len = _KEY_TYPES[s.key_type]
    flags = sum(_SET_FLAG[f] for f in s.flags) | (_SET_MAP if s.verdict_map else 0)
    body = nla(_SET_TABLE, _string(table)) + nla(_SET_NAME, _string(s.name))
    body += nla(_SET_FLAGS, _u32(flags)) + nla(_SET_KEY_TYPE, _u32(key_type))
    body += nla(_SET_KEY_LEN, _u32(key_len))
    udata = _udata(_UD_KEYBYTEORDER, _BIG_ENDIAN)
    if s.verdict_map:
        body += nla(_SET_DATA_TYPE, _u32(_NFT_DATA_VERDICT)) + nla(_SET_DATA_LEN, _u32(0))
        udata += _udata(_UD_DATABYTEORDER, 0) + _udata(_UD_DATA_INTERVAL, 0)
    body += nla(_SET_ID, _u32(set_id))
    if s.size:
        body += _nest(_SET_DESC, nla(_SET_DESC_SIZE, _u32(s.size)))
    if s.timeout:
        body += nla(_SET_TIMEOUT, struct.pack("!Q", s.timeout * 1000))
    body += nla(_SET_USERDATA, udata)
    if s.counter:
        body += _nest(_SET_EXPR, nla(NFTA_EXPR_NAME, _string("counter")), _nest(NFTA_EXPR_DATA))
    return _message(_NEWSET, _NLM_F_CREATE, family, body)


def _element_messages(
    family: int, table: str, s: NamedSet, set_id: int | None, ranges: Ranges
) -> Iterator[Message]:
    head = nla(NFTA_SET_ELEM_LIST_TABLE, _string(table)) + nla(
        NFTA_SET_ELEM_LIST_SET, _string(s.name)
    )
    if set_id is not None:  # a set created in this batch (nft sends it for others too: moot)
        head += nla(_LIST_SET_ID, _u32(set_id))
    chunk: list[bytes] = []
    size = 0
    for elem in _elements(s, ranges):
        if size + len(elem) > _LIST_BYTES:
            yield _message(
                _NEWSETELEM,
                _NLM_F_CREATE,
                family,
                head + _nest(NFTA_SET_ELEM_LIST_ELEMENTS, *chunk),
            )
            chunk, size = [], 0
        chunk.append(elem)
        size += len(elem)
    if chunk:
        yield _message(
            _NEWSETELEM, _NLM_F_CREATE, family, head + _nest(NFTA_SET_ELEM_LIST_ELEMENTS, *chunk)
        )


def encode(family: str, table: str, scaffold: Scaffold) -> Iterator[Message]:
    """The scaffold's messages (type, flags, payload), in the order nft sends them (each set
    followed by its elements), except the elements-fingerprint counter: it says "these sets
    hold exactly the desired elements" (ops/applier.py trusts it and skips reading them), so
    it comes last, after every element. Until then the table carries `PENDING`, a
    fingerprint that matches no digest: a scaffold cut short (killed between its commits) is
    still ours, and its sets are read in full and repaired by the next pass."""
    fam = family_number(family)
    set_id = 0
    fingerprints: list[AddCounter] = []
    for op in scaffold.inert:
        if isinstance(op, AddTable):
            yield _table(fam, table, op.comment)
            yield _counter(fam, table, AddCounter(PENDING))
        elif isinstance(op, AddCounter) and op.name.startswith(FINGERPRINT_PREFIX):
            fingerprints.append(op)
        elif isinstance(op, AddCounter):
            yield _counter(fam, table, op)
        elif isinstance(op, AddChain):
            body = nla(_CHAIN_TABLE, _string(table)) + nla(_CHAIN_NAME, _string(op.name))
            yield _message(_NEWCHAIN, _NLM_F_CREATE, fam, body)
        elif isinstance(op, AddSet):
            set_id += 1
            yield _set(fam, table, op.set, set_id)
            if op.set.elements:
                yield from _element_messages(
                    fam, table, op.set, set_id, scaffold.ranges[op.set.name]
                )
        else:  # pragma: no cover - scaffold_ops lets no other op through
            raise TypeError(f"not a scaffold op: {op!r}")
    for op in fingerprints:
        yield _counter(fam, table, op)
    yield _delete_counter(fam, table, PENDING)


def _delete_counter(family: int, table: str, name: str) -> Message:
    body = nla(NFTA_OBJ_TABLE, _string(table)) + nla(NFTA_OBJ_NAME, _string(name))
    body += nla(NFTA_OBJ_TYPE, _u32(NFT_OBJECT_COUNTER)) + _nest(NFTA_OBJ_DATA)
    return _message(_DELOBJ, 0, family, body)


def encode_refill(family: str, table: str, refill: Refill) -> list[Message]:
    """A Refill's messages, in its order: counters added, sets flushed (an element delete
    without elements), their elements, counters deleted."""
    fam = family_number(family)
    out: list[Message] = []
    for op in refill.ops:
        if isinstance(op, AddCounter):
            out.append(_counter(fam, table, op))
        elif isinstance(op, DeleteCounter):
            out.append(_delete_counter(fam, table, op.name))
        elif isinstance(op, FlushSet):
            body = nla(NFTA_SET_ELEM_LIST_SET, _string(op.set.name)) + nla(
                NFTA_SET_ELEM_LIST_TABLE, _string(table)
            )
            out.append(_message(_DELSETELEM, 0, fam, body))
        elif isinstance(op, AddElements):
            declared = replace(refill.sets[op.set], elements=op.elements)
            out += _element_messages(fam, table, declared, None, refill.ranges[op.set])
        else:  # pragma: no cover - refill_ops lets no other op through
            raise TypeError(f"not a refill op: {op!r}")
    return out


def _counter(family: int, table: str, op: AddCounter) -> Message:
    data = nla(NFTA_COUNTER_BYTES, struct.pack("!Q", op.bytes))
    data += nla(NFTA_COUNTER_PACKETS, struct.pack("!Q", op.packets))
    body = nla(NFTA_OBJ_TABLE, _string(table)) + nla(NFTA_OBJ_NAME, _string(op.name))
    body += nla(NFTA_OBJ_TYPE, _u32(NFT_OBJECT_COUNTER)) + _nest(NFTA_OBJ_DATA, data)
    return _message(_NEWOBJ, _NLM_F_CREATE, family, body)


def commit_scaffold(family: str, table: str, scaffold: Scaffold) -> int:
    """Create the scaffold in the kernel: batches of about a megabyte, each sent by a second
    thread while this one encodes the next (the kernel works inside sendmsg, without the
    GIL: ~0.2 s of rbtree inserts at 110,000 prefixes, beside ~0.1 s of encoding). Several
    commits are safe here because nothing in the table is reachable yet; if one after the
    first is refused, the table the first created is deleted again, so a refusal leaves no
    table, as before. Returns the number of commits; raises KernelError with the kernel's
    reason."""
    what = f"table {family} {table}"
    batches: queue.Queue[list[Message] | None] = queue.Queue(maxsize=2)
    failure: list[BaseException] = []
    refused: list[bool] = []  # the kernel said no (anything else: not ours to clean up)
    committed: list[int] = []

    def send() -> None:
        while (batch := batches.get()) is not None:
            if failure:
                continue  # drain: the encoder stops at its next batch
            try:
                commit(batch, what)
                committed.append(len(batch))
            except KernelError as e:
                failure.append(e)
                refused.append(True)
            except BaseException as e:  # noqa: BLE001 - raised in the caller's thread below
                failure.append(e)

    sender = threading.Thread(target=send, name="op25b-scaffold", daemon=True)
    sender.start()
    try:
        chunk: list[Message] = []
        size = 0
        for message in encode(family, table, scaffold):
            chunk.append(message)
            size += len(message[2])
            if size >= _BATCH_BYTES:
                batches.put(chunk)
                chunk, size = [], 0
                if failure:
                    break
        if chunk and not failure:
            batches.put(chunk)
    finally:
        batches.put(None)
        sender.join()
    if failure:
        if committed and refused:
            delete_table(family, table)
        raise failure[0]
    return len(committed)


# -- the socket ---------------------------------------------------------------------------


def _batch(messages: Sequence[Message]) -> bytearray:
    """BATCH_BEGIN, the messages (sequence numbers 1..n, the last one acknowledged), END;
    written into one buffer in place (at 110,000 elements it is ~9 MB: no second copy)."""
    res_id = struct.pack("=BBH", 0, 0, socket.htons(NFNL_SUBSYS_NFTABLES))
    buf = bytearray(struct.pack("=IHHII", 20, _BATCH_BEGIN, NLM_F_REQUEST, 0, 0) + res_id)
    last = len(messages)
    for seq, (kind, flags, payload) in enumerate(messages, 1):
        flags |= NLM_F_REQUEST | (NLM_F_ACK if seq == last else 0)
        buf += struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 0)
        buf += payload
        buf += bytes(-len(payload) % 4)
    buf += struct.pack("=IHHII", 20, _BATCH_END, NLM_F_REQUEST, last + 1, 0) + res_id
    return buf


def _describe(kind: int, payload: bytes) -> str:
    names = {_NEWTABLE: "table", _DELTABLE: "table", _NEWCHAIN: "chain", _NEWSET: "set"}
    names |= {_NEWSETELEM: "elements of set", _NEWOBJ: "counter", _DELOBJ: "counter"}
    names |= {_DELSETELEM: "elements of set"}
    what = names.get(kind & 0xFF, "object")
    name_attr = 1 if kind & 0xFF in (_NEWTABLE, _DELTABLE) else 2
    if kind & 0xFF == _NEWCHAIN:
        name_attr = _CHAIN_NAME
    offset = 4
    while offset + 4 <= len(payload):
        length, attr = struct.unpack_from("=HH", payload, offset)
        if length < 4:
            break
        if attr & 0x3FFF == name_attr:
            name = payload[offset + 4 : offset + length].rstrip(b"\0").decode()
            return f"{what} {name}"
        offset += (length + 3) & ~3
    return what


def commit(messages: Sequence[Message], what: str) -> None:
    """Send `messages` as one nf_tables batch; the kernel commits all of it or none of it.
    Raise KernelError with the first refused message's error if it refuses."""
    if not messages:
        return
    batch = _batch(messages)
    with open_socket(NETLINK_NETFILTER, what) as sock:
        try:
            sock.bind((0, 0))
            want = len(batch) + (1 << 16)
            try:  # above net.core.wmem_max only with CAP_NET_ADMIN, which a commit needs anyway
                sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, want)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, want)
            sock.sendall(batch)
            # The kernel processes a batch inside sendmsg: every answer is queued by now.
            refusals, acknowledged = _answers(sock, len(messages))
        except OSError as e:
            raise KernelError(f"{what} failed: {e}") from e
    if refusals:
        seq, code = refusals[0]
        where = _describe(*messages[seq - 1][::2]) if 0 < seq <= len(messages) else "the batch"
        more = f" (and {len(refusals) - 1} more)" if len(refusals) > 1 else ""
        raise KernelError(f"nftables refused the transaction: {where}: {os.strerror(-code)}{more}")
    if not acknowledged:
        raise KernelError(f"{what}: the kernel did not acknowledge the batch")


def _answers(sock: socket.socket, last: int) -> tuple[list[tuple[int, int]], bool]:
    """(sequence number, error code) of each refusal, and whether message `last` was
    acknowledged, from what the kernel queued."""
    refusals: list[tuple[int, int]] = []
    acknowledged = False
    while True:
        try:
            buf = sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return refusals, acknowledged
        offset = 0
        while offset + 16 <= len(buf):
            length, kind = struct.unpack_from("=IH", buf, offset)
            if length < 16:
                break
            if kind == NLMSG_ERROR and offset + 36 <= len(buf):
                code, _, _, _, seq = struct.unpack_from("=iIHHI", buf, offset + 16)
                if code:
                    refusals.append((seq, code))
                elif seq == last:
                    acknowledged = True
            offset += (length + 3) & ~3


def delete_table(family: str, table: str) -> None:
    """Remove a scaffold whose rules libnftables refused, so the failed apply leaves no
    table, as before it. A table already gone is not an error."""
    body = nla(_TABLE_NAME, _string(table))
    try:
        commit([_message(_DELTABLE, 0, family_number(family), body)], f"delete table {table}")
    except KernelError as e:
        if os.strerror(errno.ENOENT) not in str(e):
            raise
