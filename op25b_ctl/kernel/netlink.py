"""Reads of one nftables table over netlink, bypassing libnftables.

With nft 1.0.6, every libnftables command that needs its cache -- listing counters, even a
single one -- first loads every set element of the table. A netlink dump of objects, chains,
rules or sets never carries set elements. So every read the controller makes is answered
here: counter values, "did anything change?" (the ruleset generation), the table's shape
without elements (for the diff), rule digests (hand edits) and, when asked, the elements.
The small dumps use pyroute2; the large ones (counters, elements) go through the
hand-written codec in `nlcodec.py`. Only `nft.NftKernel` calls this module.

The process must already run in the network namespace whose ruleset it reads
(`ip netns exec NS ...`): every call opens a fresh socket in the current namespace and closes
it before returning.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, nla
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, nfgen_msg
from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_GETCHAIN,
    NFT_MSG_GETGEN,
    NFT_MSG_GETRULE,
    NFT_MSG_GETSET,
    NFT_MSG_GETTABLE,
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE,
    NFT_MSG_NEWSET,
    NFT_MSG_NEWTABLE,
    NFTSocket,
    nft_gen_msg,
)

from op25b_ctl.errors import KernelError, TableNotFound
from op25b_ctl.kernel import nlcodec
from op25b_ctl.kernel.base import Counter, RuleDigests

__all__ = [
    "ChainInfo",
    "RuleInfo",
    "SetInfo",
    "TableSkeleton",
    "read_counters",
    "read_elements",
    "read_rule_digests",
    "read_skeleton",
    "ruleset_generation",
]

FAMILIES = nlcodec.FAMILIES
NFT_SET_ANONYMOUS = 0x1
NFT_SET_MAP = 0x8
NFT_SET_OBJECT = 0x40
# NF_INET_* hook numbers, named as nft names them (ip, ip6 and inet tables).
HOOKS = {0: "prerouting", 1: "input", 2: "forward", 3: "output", 4: "postrouting", 5: "ingress"}
POLICIES = {0: "drop", 1: "accept"}  # NF_DROP, NF_ACCEPT
# Dumps of one generation are retried this often if a commit lands in the middle of them.
_SKELETON_ATTEMPTS = 3


@dataclass(frozen=True)
class ChainInfo:
    name: str
    hook: str | None  # 'forward', ...; None for a regular (non-base) chain
    priority: int | None
    policy: str | None  # 'accept' / 'drop'


@dataclass(frozen=True)
class RuleInfo:
    chain: str
    handle: int
    comment: str | None


@dataclass(frozen=True)
class SetInfo:
    name: str
    flags: int  # NFT_SET_* bits as the kernel reports them
    is_map: bool  # declared with `map`: data map (NFT_SET_MAP) or object map (NFT_SET_OBJECT)


@dataclass(frozen=True)
class TableSkeleton:
    chains: tuple[ChainInfo, ...]
    rules: tuple[RuleInfo, ...]
    sets: tuple[SetInfo, ...]  # named sets and maps only; anonymous `{ 25, 465 }` sets left out
    counters: frozenset[str]


# Message classes. pyroute2's own classes decode every rule expression and misread udata
# TLVs, so each class below maps only the attributes we read (in kernel order); the others
# decode as cheap 'UNKNOWN' slots. Counters and elements are parsed by hand (nlcodec).


class _table_msg(nfgen_msg):  # type: ignore[misc]
    nla_map = (("NFTA_TABLE_UNSPEC", "none"), ("NFTA_TABLE_NAME", "asciiz"))


class _chain_msg(nfgen_msg):  # type: ignore[misc]
    nla_map = (
        ("NFTA_CHAIN_UNSPEC", "none"),
        ("NFTA_CHAIN_TABLE", "asciiz"),
        ("NFTA_CHAIN_HANDLE", "be64"),
        ("NFTA_CHAIN_NAME", "asciiz"),
        ("NFTA_CHAIN_HOOK", "hook"),
        ("NFTA_CHAIN_POLICY", "be32"),
    )

    class hook(nla):  # type: ignore[misc]
        nla_map = (
            ("NFTA_HOOK_UNSPEC", "none"),
            ("NFTA_HOOK_HOOKNUM", "be32"),
            ("NFTA_HOOK_PRIORITY", "sbe32"),
        )


class _rule_msg(nfgen_msg):  # type: ignore[misc]
    nla_map = (
        ("NFTA_RULE_UNSPEC", "none"),
        ("NFTA_RULE_TABLE", "asciiz"),
        ("NFTA_RULE_CHAIN", "asciiz"),
        ("NFTA_RULE_HANDLE", "be64"),
        ("NFTA_RULE_EXPRESSIONS", "none"),
        ("NFTA_RULE_COMPAT", "none"),
        ("NFTA_RULE_POSITION", "be64"),
        ("NFTA_RULE_USERDATA", "cdata"),
    )


class _set_msg(nfgen_msg):  # type: ignore[misc]
    nla_map = (
        ("NFTA_SET_UNSPEC", "none"),
        ("NFTA_SET_TABLE", "asciiz"),
        ("NFTA_SET_NAME", "asciiz"),
        ("NFTA_SET_FLAGS", "be32"),
    )


# Replies to GET* requests arrive as NEW* messages; decode them with the classes above.
_POLICY = {
    (NFNL_SUBSYS_NFTABLES << 8) | msg_type: msg_class
    for msg_type, msg_class in (
        (NFT_MSG_NEWTABLE, _table_msg),
        (NFT_MSG_NEWCHAIN, _chain_msg),
        (NFT_MSG_NEWRULE, _rule_msg),
        (NFT_MSG_NEWSET, _set_msg),
    )
}


def read_counters(table: str, family: str = "inet") -> dict[str, Counter]:
    """Named counters of one table, with their reference counts, from one object dump.

    {} if the table has none; raise TableNotFound if the table does not exist.
    """
    counters = nlcodec.counter_dump(table, family)
    if not counters:
        with _socket(family) as sock:
            if not _table_exists(sock, table):
                raise TableNotFound(f"table {family} {table} does not exist")
    return counters


def read_elements(table: str, set_name: str, family: str = "inet") -> dict[str, str | None]:
    """One interval set's (or verdict map's) elements as {canonical CIDR: jump target or None};
    raise TableNotFound if the table or the set does not exist. See `nlcodec.element_dump`."""
    return nlcodec.element_dump(table, set_name, family)


def ruleset_generation() -> int:
    """The kernel's nftables ruleset generation id (NFT_MSG_GETGEN): changes on every commit to
    any table; lets a caller skip work when nothing changed."""
    with _socket("inet") as sock:
        return _generation(sock)


def read_skeleton(table: str, family: str = "inet") -> TableSkeleton | None:
    """Everything about the table except set elements, in a few netlink dumps; None if the table
    does not exist. All dumps come from one ruleset generation (retried if a commit interleaves)."""
    with _socket(family) as sock:
        for _ in range(_SKELETON_ATTEMPTS):
            before = _generation(sock)
            skeleton = _skeleton(sock, table, family)
            if _generation(sock) == before:
                return skeleton
    raise KernelError(f"ruleset kept changing while reading table {family} {table}")


def read_rule_digests(
    table: str, family: str = "inet", chains: Iterable[str] | None = None
) -> RuleDigests:
    """{(chain, comment): digests of what those rules do}, one digest per rule in order.

    The digest covers the rule's expressions as the kernel holds them, minus the values of
    inline counters (they change with traffic). A rule edited by hand but keeping our comment
    (a dumped ruleset edited and reloaded) keeps its comment and changes its digest. Rules
    without a comment are keyed by `handle:<n>`; unreadable expressions give UNREADABLE.
    {} if the table does not exist. With `chains`, only those chains are dumped (the kernel
    filters): one chain's rules instead of every pool's (docs/benchmarks.md).
    """
    return nlcodec.rule_dump(table, family, chains)


# -- internals ---------------------------------------------------------------------------------


@contextmanager
def _socket(family: str) -> Iterator[Any]:
    """An NFTSocket for `family` in the current namespace; netlink errors become KernelError."""
    if family not in FAMILIES:
        raise ValueError(f"unsupported nftables family {family!r} (expected one of {FAMILIES})")
    try:
        sock = NFTSocket(nfgen_family=FAMILIES[family])
    except OSError as e:
        raise KernelError(f"cannot open an nftables netlink socket: {e}") from e
    try:
        sock.register_policy(_POLICY)
        yield sock
    except NetlinkError as e:
        raise KernelError(f"nftables netlink request failed: {e}") from e
    finally:
        sock.close()


def _dump(sock: Any, msg_class: type[Any], msg_type: int, **attrs: object) -> list[Any]:
    msg = msg_class()
    msg["attrs"] = list(attrs.items())
    return list(sock.request_get(msg, msg_type, NLM_F_REQUEST | NLM_F_DUMP))


def _generation(sock: Any) -> int:
    (reply,) = sock.request_get(nft_gen_msg(), NFT_MSG_GETGEN, NLM_F_REQUEST)
    return int(reply.get_attr("NFTA_GEN_ID"))


def _table_exists(sock: Any, table: str) -> bool:
    msg = _table_msg()
    msg["attrs"] = [("NFTA_TABLE_NAME", table)]
    try:
        sock.request_get(msg, NFT_MSG_GETTABLE, NLM_F_REQUEST)
    except NetlinkError as e:
        if e.code == errno.ENOENT:
            return False
        raise
    return True


def _skeleton(sock: Any, table: str, family: str) -> TableSkeleton | None:
    if not _table_exists(sock, table):
        return None
    # Chain dumps ignore a table filter (older kernels); rule, set and object dumps honour it.
    # Every reply is filtered by table name here as well.
    chains = tuple(
        _chain_info(c)
        for c in _dump(sock, _chain_msg, NFT_MSG_GETCHAIN, NFTA_CHAIN_TABLE=table)
        if c.get_attr("NFTA_CHAIN_TABLE") == table
    )
    rules = tuple(
        RuleInfo(
            chain=str(r.get_attr("NFTA_RULE_CHAIN")),
            handle=int(r.get_attr("NFTA_RULE_HANDLE")),
            comment=nlcodec.rule_comment(r.get_attr("NFTA_RULE_USERDATA")),
        )
        for r in _dump(sock, _rule_msg, NFT_MSG_GETRULE, NFTA_RULE_TABLE=table)
        if r.get_attr("NFTA_RULE_TABLE") == table
    )
    try:
        set_msgs = _dump(sock, _set_msg, NFT_MSG_GETSET, NFTA_SET_TABLE=table)
    except NetlinkError as e:  # the set dump checks the table: it vanished after our lookup
        if e.code == errno.ENOENT:
            return None
        raise
    sets = []
    for s in set_msgs:
        flags = int(s.get_attr("NFTA_SET_FLAGS") or 0)
        if s.get_attr("NFTA_SET_TABLE") == table and not flags & NFT_SET_ANONYMOUS:
            name = str(s.get_attr("NFTA_SET_NAME"))
            sets.append(SetInfo(name=name, flags=flags, is_map=_is_map(flags)))
    return TableSkeleton(
        chains=chains,
        rules=rules,
        sets=tuple(sets),
        counters=frozenset(nlcodec.counter_dump(table, family)),
    )


def _chain_info(msg: Any) -> ChainInfo:
    name = str(msg.get_attr("NFTA_CHAIN_NAME"))
    hook = msg.get_attr("NFTA_CHAIN_HOOK")
    if hook is None:
        return ChainInfo(name=name, hook=None, priority=None, policy=None)
    hooknum = int(hook.get_attr("NFTA_HOOK_HOOKNUM"))
    policy = msg.get_attr("NFTA_CHAIN_POLICY")
    return ChainInfo(
        name=name,
        hook=HOOKS.get(hooknum, str(hooknum)),
        priority=int(hook.get_attr("NFTA_HOOK_PRIORITY")),
        policy=None if policy is None else POLICIES.get(int(policy), str(policy)),
    )


def _is_map(flags: int) -> bool:
    return bool(flags & (NFT_SET_MAP | NFT_SET_OBJECT))
