"""Reads of one nftables table over netlink, bypassing libnftables.

With nft 1.0.6, every libnftables command that needs its cache -- listing counters, even a
single one -- first loads every set element of the table. A netlink dump of objects, chains,
rules or sets never carries set elements. So every read the controller makes is answered
here: counter values, "did anything change?" (the ruleset generation), the table's shape
without elements (for the diff), rule digests (hand edits) and, when asked, the elements.
Every request goes through the hand-written codec in `nlcodec.py` (a plain netlink socket and
`struct`): pyroute2's import and its generic decoding of each chain and rule message were
most of a one-shot command's time at 1,000 pools (docs/performance.md). Only
`nft.NftKernel` calls this module.

The process must already run in the network namespace whose ruleset it reads
(`ip netns exec NS ...`): every call opens a fresh socket in the current namespace and closes
it before returning.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from op25b_ctl.errors import KernelError, TableNotFound
from op25b_ctl.kernel import nlcodec
from op25b_ctl.kernel.base import Counter, RuleDigests
from op25b_ctl.netns import netns_cookie
from op25b_ctl.plan.offenders import Element

__all__ = [
    "ChainInfo",
    "RuleInfo",
    "SetInfo",
    "TableSkeleton",
    "read_counters",
    "read_dynamic",
    "read_elements",
    "read_rule_digests",
    "read_rule_elements",
    "read_skeleton",
    "ruleset_generation",
    "ruleset_identity",
]

FAMILIES = nlcodec.FAMILIES
NFT_SET_ANONYMOUS = 0x1
NFT_SET_INTERVAL = 0x4
NFT_SET_MAP = 0x8
NFT_SET_OBJECT = 0x40
NFT_DATA_VERDICT = 0xFFFFFF00
KEY_TYPES = {7: "ipv4_addr", 8: "ipv6_addr"}  # nft's TYPE_IPADDR, TYPE_IP6ADDR
# The declared flags that change what a set is (map/object/anonymous are told apart otherwise;
# concat shows in the key type): named as nft names them.
SET_FLAGS = {0x2: "constant", 0x4: "interval", 0x10: "timeout", 0x20: "dynamic"}
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
    expressions: bytes = b""  # NFTA_RULE_EXPRESSIONS as dumped, for `skeleton_digests`


@dataclass(frozen=True)
class SetInfo:
    name: str
    flags: int  # NFT_SET_* bits as the kernel reports them
    is_map: bool  # declared with `map`: data map (NFT_SET_MAP) or object map (NFT_SET_OBJECT)
    key_type: int = 0  # nft's datatype number (7 ipv4_addr, 8 ipv6_addr; concatenations packed)
    key_len: int = 0  # bytes
    data_type: int | None = None  # maps: NFT_DATA_VERDICT or a datatype number
    size: int = 0  # NFTA_SET_DESC_SIZE; 0: none declared
    timeout_ms: int = 0  # NFTA_SET_TIMEOUT
    expressions: tuple[str, ...] = ()  # per-element expressions' names (NFTA_SET_EXPR[ESSIONS])

    @property
    def declaration(self) -> tuple[str, bool, frozenset[str], int, int, bool]:
        """(key type, verdict map, flags, size, timeout in s, per-element counter) as
        `plan.table.NamedSet` spells them (another expression list: counter False)."""
        key = KEY_TYPES.get(self.key_type) or f"type-{self.key_type}/{self.key_len}"
        verdict = self.data_type == NFT_DATA_VERDICT
        if self.is_map and not verdict:
            key += f" : type-{self.data_type}"
        flags = frozenset(n for bit, n in SET_FLAGS.items() if self.flags & bit)
        timeout = self.timeout_ms // 1000 if self.timeout_ms % 1000 == 0 else -self.timeout_ms
        return key, self.is_map, flags, self.size, timeout, self.expressions == ("counter",)


@dataclass(frozen=True)
class TableSkeleton:
    chains: tuple[ChainInfo, ...]
    rules: tuple[RuleInfo, ...]
    sets: tuple[SetInfo, ...]  # named sets and maps only; anonymous `{ 25, 465 }` sets left out
    counters: frozenset[str]
    generation: int = -1  # the ruleset generation every dump of it came from


def read_counters(table: str, family: str = "inet") -> dict[str, Counter]:
    """Named counters of one table, with their reference counts, from one object dump.

    {} if the table has none; raise TableNotFound if the table does not exist.
    """
    counters = nlcodec.counter_dump(table, family)
    if not counters and not _table_exists(table, family):
        raise TableNotFound(f"table {family} {table} does not exist")
    return counters


def read_elements(table: str, set_name: str, family: str = "inet") -> dict[str, str | None]:
    """One interval set's (or verdict map's) elements as {canonical CIDR: jump target or None};
    raise TableNotFound if the table or the set does not exist. See `nlcodec.element_dump`."""
    return nlcodec.element_dump(table, set_name, family)


def read_rule_elements(table: str, chain: str, family: str = "inet") -> list[str]:
    """The elements of the (anonymous) sets that the rules of `chain` look up, as canonical
    CIDRs in rule order; [] if there is no such chain. One rule dump of the chain and one
    element dump per set: the exemptions, not the 110,000 prefixes."""
    for _ in range(_SKELETON_ATTEMPTS):
        before = _generation()
        out: list[str] = []
        try:
            for match in nlcodec.chain_matches(table, family, chain):
                if isinstance(match, tuple):  # one address or prefix, compared directly
                    value, mask = match
                    bits = sum(bin(b).count("1") for b in mask)
                    net = ipaddress.ip_network((value, bits), strict=False)
                    out.append(str(net))
                    continue
                interval = bool(_set_flags(table, match, family) & NFT_SET_INTERVAL)
                out += nlcodec.element_dump(table, match, family, interval=interval)
        except TableNotFound:
            continue  # the rule (and its set) went between the two dumps
        if _generation() == before:
            return out
    raise KernelError(f"ruleset kept changing while reading chain {family} {table} {chain}")


def _set_flags(table: str, name: str, family: str) -> int:
    body = _body(family, (_SET_TABLE, table), (_SET_NAME, name))
    (reply,) = nlcodec.request(NFT_MSG_GETSET, body, f"set {name} of table {table}")
    return _be32(dict(nlcodec.attrs(reply)).get(_SET_FLAGS))


def read_dynamic(table: str, set_name: str, family: str = "inet") -> list[Element]:
    """A dynamic set's elements as the packet path wrote them (`nlcodec.dynamic_dump`);
    raise TableNotFound if the table or the set does not exist."""
    return nlcodec.dynamic_dump(table, set_name, family)


def ruleset_generation() -> int:
    """The kernel's nftables ruleset generation id (NFT_MSG_GETGEN): changes on every commit to
    any table; lets a caller skip work when nothing changed."""
    return _generation()


def ruleset_identity() -> str | None:
    """Which ruleset a generation counts in: this boot and this network namespace.

    Generations restart in every new namespace and after a reboot, so a generation saved on
    disk means something only next to this. The namespace is named by its cookie
    (`netns.netns_cookie`). None where the kernel cannot say.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    cookie = netns_cookie()
    return f"{boot}:{cookie}" if boot and cookie is not None else None


def read_skeleton(table: str, family: str = "inet") -> TableSkeleton | None:
    """Everything about the table except set elements, in a few netlink dumps; None if the table
    does not exist. All dumps come from one ruleset generation (retried if a commit interleaves)."""
    for _ in range(_SKELETON_ATTEMPTS):
        before = _generation()
        skeleton = _skeleton(table, family)
        if _generation() == before:
            return None if skeleton is None else replace(skeleton, generation=before)
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


def skeleton_digests(skeleton: TableSkeleton, chains: Iterable[str] | None = None) -> RuleDigests:
    """`read_rule_digests` from a skeleton's own rule dump (the same messages: valid while
    the ruleset generation is still the skeleton's), without dumping the rules again."""
    wanted = None if chains is None else set(chains)
    out: dict[tuple[str, str], list[str]] = {}
    for r in skeleton.rules:
        if wanted is None or r.chain in wanted:
            key = (r.chain, nlcodec.rule_key(r.comment, r.handle))
            out.setdefault(key, []).append(nlcodec.expressions_digest(r.expressions))
    return {k: tuple(v) for k, v in out.items()}


# -- internals ---------------------------------------------------------------------------------

# Attribute numbers from include/uapi/linux/netfilter/nf_tables.h.
_TABLE_NAME = 1
_CHAIN_TABLE, _CHAIN_NAME, _CHAIN_HOOK, _CHAIN_POLICY = 1, 3, 4, 5
_HOOK_HOOKNUM, _HOOK_PRIORITY = 1, 2
_RULE_TABLE, _RULE_CHAIN, _RULE_HANDLE, _RULE_USERDATA = 1, 2, 3, 7
_SET_TABLE, _SET_NAME, _SET_FLAGS, _SET_KEY_TYPE, _SET_KEY_LEN, _SET_DATA_TYPE = 1, 2, 3, 4, 5, 6
_SET_DESC, _SET_TIMEOUT, _SET_EXPR, _SET_EXPRESSIONS = 9, 11, 17, 18
_SET_DESC_SIZE = 1
_EXPR_NAME = 1
_GEN_ID = 1
NFT_MSG_GETTABLE, NFT_MSG_GETCHAIN, NFT_MSG_GETRULE, NFT_MSG_GETSET = 1, 4, 7, 10
NFT_MSG_GETGEN = 16


def _text(raw: bytes | None) -> str:
    return (raw or b"").rstrip(b"\0").decode("utf-8", "replace")


def _be32(raw: bytes | None) -> int:
    return int(struct.unpack("!I", raw)[0]) if raw else 0


def _be64(raw: bytes | None) -> int:
    return int(struct.unpack("!Q", raw)[0]) if raw else 0


def _body(family: str, *attrs: tuple[int, str]) -> bytes:
    """nfgenmsg (family, version, res_id) and NUL-terminated string attributes."""
    out = struct.pack("=BBH", nlcodec.family_number(family), 0, 0)
    for kind, value in attrs:
        out += nlcodec.nla(kind, value.encode() + b"\0")
    return out


def _generation() -> int:
    (reply,) = nlcodec.request(NFT_MSG_GETGEN, _body("inet"), "the ruleset generation")
    return _be32(dict(nlcodec.attrs(reply)).get(_GEN_ID))


def _table_exists(table: str, family: str) -> bool:
    try:
        nlcodec.request(NFT_MSG_GETTABLE, _body(family, (_TABLE_NAME, table)), f"table {table}")
    except TableNotFound:
        return False
    return True


def _messages(
    msg_type: int, body: bytes, what: str, kinds: frozenset[int] | None = None
) -> list[dict[int, bytes]]:
    """Each reply's attributes (only `kinds`, if given: rules carry their expressions)."""
    if kinds is not None:
        return [nlcodec.pick(msg, kinds) for msg in nlcodec.dump(msg_type, body, what)]
    return [dict(nlcodec.attrs(msg)) for msg in nlcodec.dump(msg_type, body, what)]


_RULE_EXPRESSIONS = 4
_RULE_KINDS = frozenset({_RULE_TABLE, _RULE_CHAIN, _RULE_HANDLE, _RULE_USERDATA, _RULE_EXPRESSIONS})
_SET_KINDS = frozenset(
    {_SET_TABLE, _SET_NAME, _SET_FLAGS, _SET_KEY_TYPE, _SET_KEY_LEN, _SET_DATA_TYPE}
    | {_SET_DESC, _SET_TIMEOUT, _SET_EXPR, _SET_EXPRESSIONS}
)


def _rules(table: str, family: str) -> list[dict[int, bytes]]:
    body = _body(family, (_RULE_TABLE, table))
    msgs = _messages(NFT_MSG_GETRULE, body, f"rules of table {table}", _RULE_KINDS)
    return [r for r in msgs if _text(r.get(_RULE_TABLE)) == table]


def _skeleton(table: str, family: str) -> TableSkeleton | None:
    if not _table_exists(table, family):
        return None
    try:
        # Chain dumps ignore a table filter (older kernels); rule, set and object dumps honour
        # it. Every reply is filtered by table name here as well.
        chain_msgs = _messages(
            NFT_MSG_GETCHAIN, _body(family, (_CHAIN_TABLE, table)), f"chains of table {table}"
        )
        rule_msgs = _rules(table, family)
        set_msgs = _messages(
            NFT_MSG_GETSET, _body(family, (_SET_TABLE, table)), f"sets of table {table}", _SET_KINDS
        )
    except TableNotFound:  # the table vanished after our lookup
        return None
    chains = tuple(_chain_info(c) for c in chain_msgs if _text(c.get(_CHAIN_TABLE)) == table)
    rules = tuple(
        RuleInfo(
            chain=_text(r.get(_RULE_CHAIN)),
            handle=_be64(r.get(_RULE_HANDLE)),
            comment=nlcodec.rule_comment(r.get(_RULE_USERDATA)),
            expressions=bytes(r.get(_RULE_EXPRESSIONS, b"")),
        )
        for r in rule_msgs
    )
    sets = []
    for s in set_msgs:
        flags = _be32(s.get(_SET_FLAGS))
        if _text(s.get(_SET_TABLE)) == table and not flags & NFT_SET_ANONYMOUS:
            data = s.get(_SET_DATA_TYPE)
            sets.append(
                SetInfo(
                    name=_text(s.get(_SET_NAME)),
                    flags=flags,
                    is_map=_is_map(flags),
                    key_type=_be32(s.get(_SET_KEY_TYPE)),
                    key_len=_be32(s.get(_SET_KEY_LEN)),
                    data_type=None if data is None else _be32(data),
                    size=_be32(dict(nlcodec.attrs(s.get(_SET_DESC, b""))).get(_SET_DESC_SIZE)),
                    timeout_ms=_be64(s.get(_SET_TIMEOUT)),
                    expressions=_set_expressions(s),
                )
            )
    return TableSkeleton(
        chains=chains,
        rules=rules,
        sets=tuple(sets),
        counters=frozenset(nlcodec.counter_dump(table, family)),
    )


def _chain_info(msg: dict[int, bytes]) -> ChainInfo:
    name = _text(msg.get(_CHAIN_NAME))
    if _CHAIN_HOOK not in msg:
        return ChainInfo(name=name, hook=None, priority=None, policy=None)
    hook = dict(nlcodec.attrs(msg[_CHAIN_HOOK]))
    hooknum = _be32(hook.get(_HOOK_HOOKNUM))
    policy = msg.get(_CHAIN_POLICY)
    return ChainInfo(
        name=name,
        hook=HOOKS.get(hooknum, str(hooknum)),
        priority=int(struct.unpack("!i", hook.get(_HOOK_PRIORITY, bytes(4)))[0]),
        policy=None if policy is None else POLICIES.get(_be32(policy), str(_be32(policy))),
    )


def _set_expressions(msg: dict[int, bytes]) -> tuple[str, ...]:
    """The names of a set's per-element expressions: one travels as NFTA_SET_EXPR, several
    as NFTA_SET_EXPRESSIONS (a list of them)."""
    if _SET_EXPR in msg:
        return (_text(dict(nlcodec.attrs(msg[_SET_EXPR])).get(_EXPR_NAME)),)
    return tuple(
        _text(dict(nlcodec.attrs(e)).get(_EXPR_NAME))
        for _, e in nlcodec.attrs(msg.get(_SET_EXPRESSIONS, b""))
    )


def _is_map(flags: int) -> bool:
    return bool(flags & (NFT_SET_MAP | NFT_SET_OBJECT))
