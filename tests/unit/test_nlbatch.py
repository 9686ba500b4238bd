"""The scaffold writer (kernel/nlbatch.py) without a kernel: what it takes, what it sends."""

from __future__ import annotations

import struct

import pytest

from op25b_ctl.errors import KernelError
from op25b_ctl.kernel import nlbatch
from op25b_ctl.kernel.nlbatch import PENDING
from op25b_ctl.kernel.nlcodec import attrs
from op25b_ctl.plan.table import Hook, NamedSet, Rule
from op25b_ctl.plan.transaction import (
    AddChain,
    AddCounter,
    AddElements,
    AddRule,
    AddSet,
    AddTable,
    DeleteCounter,
    DeleteSet,
    FlushSet,
    Op,
)

DYNAMIC = frozenset({"dynamic", "timeout"})

# What nft 1.0.6 sent for this script (`nft --debug=mnl -f`), message type and payload:
#   add table inet op25b { comment "managed by op25b-ctl; edits are reverted"; }
#   add counter inet op25b relayed
#   add chain inet op25b smtp
#   add set inet op25b relays_v4 { type ipv4_addr; flags interval; elements = { 203.0.113.25/32 }; }
#   add map inet op25b pools_v4 { type ipv4_addr : verdict; flags interval; elements = {
#       192.0.2.0/26 : jump smtp, 192.0.2.64/26 : jump smtp, 198.51.100.0/25 : jump smtp }; }
#   add set inet op25b offenders_x_v4 { type ipv4_addr; flags dynamic, timeout;
#       timeout 604800s; size 65536; counter; }
NFT_SENT = [
    (
        2560,
        "010000000a0001006f7032356200000008000200000000002f00060000296d616e6167656420"
        "6279206f703235622d63746c3b206564697473206172652072657665727465640000",
    ),
    (
        2578,
        "010000000a0001006f703235620000000c00020072656c617965640008000300000000011c00"
        "04800c00010000000000000000000c0002000000000000000000",
    ),
    (
        2563,
        "010000000a0001006f7032356200000009000300736d747000000000",
    ),
    (
        2569,
        "010000000a0001006f703235620000000e00020072656c6179735f7634000000080003000000"
        "00040800040000000007080005000000000408000a00000000010a000d000004020000000000",
    ),
    (
        2572,
        "010000000a0001006f703235620000000e00020072656c6179735f7634000000080004000000"
        "0001440003801800018008000300000000010c0001800800010000000000100002800c000180"
        "08000100cb0071191800038008000300000000010c00018008000100cb00711a",
    ),
    (
        2569,
        "010000000a0001006f703235620000000d000200706f6f6c735f763400000000080003000000"
        "000c0800040000000007080005000000000408000600ffffff00080007000000000008000a00"
        "0000000216000d000004020000000104000000000604000000000000",
    ),
    (
        2572,
        "010000000a0001006f703235620000000d000200706f6f6c735f763400000000080004000000"
        "0002e80003801800018008000300000000010c00018008000100000000002c0002800c000180"
        "08000100c00002001c0002801800028008000100fffffffd09000200736d7470000000001800"
        "038008000300000000010c00018008000100c00002402c0004800c00018008000100c0000240"
        "1c0002801800028008000100fffffffd09000200736d74700000000018000580080003000000"
        "00010c00018008000100c00002802c0006800c00018008000100c63364001c00028018000280"
        "08000100fffffffd09000200736d7470000000001800078008000300000000010c0001800800"
        "0100c6336480",
    ),
    (
        2569,
        "010000000a0001006f70323562000000130002006f6666656e646572735f785f763400000800"
        "0300000000300800040000000007080005000000000408000a00000000030c00098008000100"
        "000100000c000b0000000000240c84000a000d000004020000000000140011800c000100636f"
        "756e7465720004000280",
    ),
]

SCRIPT_OPS: list[Op] = [
    AddTable("managed by op25b-ctl; edits are reverted"),
    AddCounter("relayed"),
    AddChain("smtp"),
    AddSet(NamedSet("relays_v4", "ipv4_addr", elements={"203.0.113.25/32": None})),
    AddSet(
        NamedSet(
            "pools_v4",
            "ipv4_addr",
            True,
            elements={"192.0.2.0/26": "smtp", "192.0.2.64/26": "smtp", "198.51.100.0/25": "smtp"},
        )
    ),
    AddSet(
        NamedSet(
            "offenders_x_v4", "ipv4_addr", flags=DYNAMIC, size=65536, timeout=604800, counter=True
        )
    ),
]


def renumbered(payload: bytes) -> bytes:
    """libnftnl numbers the elements of a list 1, 2, 3, ...; the kernel ignores the number
    and we send 1 for all of them: compare with every element numbered 1."""
    out, offset = bytearray(payload[:4]), 4
    while offset + 4 <= len(payload):
        length, kind = struct.unpack_from("=HH", payload, offset)
        attr = bytearray(payload[offset : offset + ((length + 3) & ~3)])
        if kind == 3 | 0x8000:  # NFTA_SET_ELEM_LIST_ELEMENTS
            inner = 4
            while inner + 4 <= length:
                size, _ = struct.unpack_from("=HH", attr, inner)
                struct.pack_into("=HH", attr, inner, size, 1 | 0x8000)
                inner += (size + 3) & ~3
        out += attr
        offset += (length + 3) & ~3
    return bytes(out)


def test_the_messages_are_the_ones_nft_sends_for_the_same_script() -> None:
    scaffold = nlbatch.scaffold_ops(SCRIPT_OPS)
    assert scaffold is not None and scaffold.rest == ()
    ours = list(nlbatch.encode("inet", "op25b", scaffold))
    # ours adds the pending fingerprint after the table and deletes it last (`encode`)
    newobj, delobj = (10 << 8) | 18, (10 << 8) | 20
    assert ours[1][0] == newobj and PENDING.encode() in ours[1][2]
    assert ours[-1][0] == delobj and PENDING.encode() in ours[-1][2]
    ours = [ours[0], *ours[2:-1]]
    assert [kind for kind, _, _ in ours] == [kind for kind, _ in NFT_SENT]
    for (_, _, payload), (_, sent) in zip(ours, NFT_SENT, strict=True):
        padded = payload + bytes(-len(payload) % 4)
        assert renumbered(padded) == renumbered(bytes.fromhex(sent))


def test_base_chains_and_rules_are_left_for_libnftables() -> None:
    gate = AddChain("gate", Hook("forward", 0))
    rule = AddRule("gate", Rule.of("tcp dport 25 jump smtp"))
    scaffold = nlbatch.scaffold_ops([*SCRIPT_OPS, gate, rule])
    assert scaffold is not None
    assert scaffold.inert == tuple(SCRIPT_OPS)
    assert scaffold.rest == (gate, rule)


@pytest.mark.parametrize(
    "ops",
    [
        [AddCounter("x")],  # the table exists already: an ordinary libnftables change
        [AddTable(""), DeleteSet(NamedSet("s", "ipv4_addr"))],
        [
            AddTable(""),
            AddSet(
                NamedSet("s", "ipv4_addr", elements={"192.0.2.0/24": None, "192.0.2.128/25": None})
            ),
        ],
        [AddTable(""), AddSet(NamedSet("s", "ipv4_addr", elements={"192.0.2.1/24": None}))],
        [AddTable(""), AddSet(NamedSet("s", "ipv4_addr", elements={"2001:db8::/32": None}))],
        [AddTable(""), AddSet(NamedSet("s", "type-13/2"))],
        [AddTable(""), AddSet(NamedSet("s", "ipv4_addr", flags=frozenset({"constant"})))],
        [
            AddTable(""),
            AddSet(NamedSet("s", "ipv4_addr", flags=DYNAMIC, elements={"192.0.2.1/32": None})),
        ],
    ],
    ids=[
        "no-new-table",
        "delete",
        "overlap",
        "host-bits",
        "wrong-family",
        "key",
        "flag",
        "dynamic-with-elements",
    ],
)
def test_what_the_writer_cannot_say_exactly_goes_to_libnftables(ops: list[Op]) -> None:
    assert nlbatch.scaffold_ops(ops) is None


def element_keys(s: NamedSet) -> list[tuple[str, bool]]:
    """(key as hex, is an interval end) of each element `encode` sends for one set."""
    scaffold = nlbatch.scaffold_ops([AddTable(""), AddSet(s)])
    assert scaffold is not None
    out = []
    for kind, _, payload in nlbatch.encode("inet", "t", scaffold):
        if kind != (10 << 8) | 12:  # NFT_MSG_NEWSETELEM
            continue
        elements = dict(attrs(payload[4:]))[3]
        for _, elem in attrs(elements):
            a = dict(attrs(elem))
            key = dict(attrs(a[1]))[1].hex()
            out.append((key, 3 in a))
    return out


def test_interval_elements_as_nft_lays_them_out() -> None:
    s = NamedSet(
        "s",
        "ipv4_addr",
        elements={"10.0.0.0/8": None, "0.0.0.0/8": None, "11.0.0.0/8": None, "255.0.0.0/8": None},
    )
    assert element_keys(s) == [
        ("00000000", False),
        ("01000000", True),
        ("0a000000", False),
        ("0b000000", True),  # an end even where the next range starts
        ("0b000000", False),
        ("0c000000", True),
        ("ff000000", False),  # open to the top: no end element
    ]
    v6 = NamedSet("v6", "ipv6_addr", elements={"2001:db8::/32": None})
    assert element_keys(v6) == [
        ("00" * 16, True),  # the leading end at the zero address
        ("20010db8" + "00" * 12, False),
        ("20010db9" + "00" * 12, True),
    ]


def test_a_large_set_is_split_into_messages_below_the_attribute_limit() -> None:
    elements = {f"10.{i >> 8}.{i & 255}.0/24": "pool_a" for i in range(20_000)}
    s = NamedSet("big", "ipv4_addr", True, elements=elements)
    scaffold = nlbatch.scaffold_ops([AddTable(""), AddChain("pool_a"), AddSet(s)])
    assert scaffold is not None
    newsetelem = (10 << 8) | 12
    messages = [m for m in nlbatch.encode("inet", "t", scaffold) if m[0] == newsetelem]
    assert len(messages) > 10
    assert all(len(payload) < 65_536 for _, _, payload in messages)
    sent = sum(len(list(attrs(dict(attrs(p[4:]))[3]))) for _, _, p in messages)
    assert sent == 1 + 2 * 20_000  # the leading end, then a start and an end per prefix


def big_scaffold(count: int) -> nlbatch.Scaffold:
    elements: dict[str, str | None] = {f"10.{i >> 8}.{i & 255}.0/24": "a" for i in range(count)}
    ops: list[Op] = [
        AddTable(""),
        AddChain("a"),
        AddSet(NamedSet("big", "ipv4_addr", True, elements=elements)),
    ]
    scaffold = nlbatch.scaffold_ops(ops)
    assert scaffold is not None
    return scaffold


@pytest.mark.parametrize("refused_at", [None, 0, 2])
def test_the_scaffold_is_committed_in_batches_and_a_late_refusal_deletes_the_table(
    monkeypatch: pytest.MonkeyPatch, refused_at: int | None
) -> None:
    sent: list[list[nlbatch.Message]] = []
    deleted: list[tuple[str, str]] = []

    def commit(messages: list[nlbatch.Message], what: str) -> None:
        sent.append(list(messages))
        if len(sent) - 1 == refused_at:
            raise KernelError("nftables refused the transaction: elements of set big: boom")

    monkeypatch.setattr(nlbatch, "commit", commit)
    monkeypatch.setattr(nlbatch, "delete_table", lambda f, t: deleted.append((f, t)))
    scaffold = big_scaffold(60_000)
    if refused_at is None:
        commits = nlbatch.commit_scaffold("inet", "t", scaffold)
        assert commits == len(sent) > 3  # what the live record expects the generation to move by
        assert [m for batch in sent for m in batch] == list(nlbatch.encode("inet", "t", scaffold))
    else:
        with pytest.raises(KernelError, match="boom"):
            nlbatch.commit_scaffold("inet", "t", scaffold)
        assert len(sent) == refused_at + 1  # nothing is sent after a refusal
    assert sent[0][0][0] == (10 << 8) | 0  # the first commit creates the table
    assert all(sum(len(p) for _, _, p in batch) < (1 << 20) + (1 << 16) for batch in sent)
    assert deleted == ([("inet", "t")] if refused_at else [])


# What nft 1.0.6 sent for this script on the table of NFT_SENT (its `add element` also
# carries a set id, 2, that names no set of the batch; we leave it out):
#   add counter inet op25b newfp
#   flush map inet op25b pools_v4
#   add element inet op25b pools_v4 { 192.0.2.0/26 : jump smtp, 198.51.100.0/25 : jump smtp }
#   delete counter inet op25b relayed
NFT_REFILL = [
    (
        2578,
        "010000000a0001006f703235620000000a0002006e6577667000000008000300000000011c00"
        "04800c00010000000000000000000c0002000000000000000000",
    ),
    (
        2574,
        "010000000d000200706f6f6c735f7634000000000a0001006f70323562000000",
    ),
    (
        2572,
        "010000000a0001006f703235620000000d000200706f6f6c735f763400000000080004000000"
        "0002a40003801800018008000300000000010c00018008000100000000002c0002800c000180"
        "08000100c00002001c0002801800028008000100fffffffd09000200736d7470000000001800"
        "038008000300000000010c00018008000100c00002402c0004800c00018008000100c6336400"
        "1c0002801800028008000100fffffffd09000200736d74700000000018000580080003000000"
        "00010c00018008000100c6336480",
    ),
    (
        2580,
        "010000000a0001006f703235620000000c00020072656c6179656400080003000000000104000480",
    ),
]

POOLS = NamedSet("pools_v4", "ipv4_addr", True, elements={"192.0.2.0/26": "smtp"})
REFILL_ADD = AddElements("pools_v4", {"192.0.2.0/26": "smtp", "198.51.100.0/25": "smtp"})


def without_set_id(payload: bytes) -> bytes:
    """The payload without its NFTA_SET_ELEM_LIST_SET_ID attribute (type 4)."""
    out, offset = bytearray(payload[:4]), 4
    while offset + 4 <= len(payload):
        length, kind = struct.unpack_from("=HH", payload, offset)
        if kind != 4:
            out += payload[offset : offset + ((length + 3) & ~3)]
        offset += (length + 3) & ~3
    return bytes(out)


def test_a_refill_is_the_messages_nft_sends_for_it() -> None:
    ops: list[Op] = [AddCounter("newfp"), FlushSet(POOLS), REFILL_ADD, DeleteCounter("relayed")]
    refill = nlbatch.refill_ops(ops)
    assert refill is not None
    ours = nlbatch.encode_refill("inet", "op25b", refill)
    assert [kind for kind, _, _ in ours] == [kind for kind, _ in NFT_REFILL]
    for (kind, _, payload), (_, sent) in zip(ours, NFT_REFILL, strict=True):
        theirs = bytes.fromhex(sent)
        if kind == (10 << 8) | 12:
            theirs = without_set_id(theirs)
        assert renumbered(payload + bytes(-len(payload) % 4)) == renumbered(theirs)


@pytest.mark.parametrize(
    "ops",
    [
        [AddCounter("x")],  # nothing refilled
        [REFILL_ADD],  # elements without the flush: libnftables merges them with the set's
        [FlushSet(POOLS), REFILL_ADD, REFILL_ADD],
        [FlushSet(POOLS), REFILL_ADD, AddChain("pool_x")],
        [FlushSet(NamedSet("o", "ipv4_addr", flags=DYNAMIC)), AddCounter("x")],
        [FlushSet(POOLS), AddElements("pools_v4", {"192.0.2.0/24": "a", "192.0.2.0/25": "b"})],
    ],
    ids=["no-flush", "no-flush-add", "twice", "chain", "dynamic", "overlap"],
)
def test_only_whole_refills_are_taken(ops: list[Op]) -> None:
    assert nlbatch.refill_ops(ops) is None


def test_the_fingerprint_comes_after_every_element() -> None:
    """A scaffold cut short between its commits must not carry the fingerprint that makes
    the next pass trust its sets without reading them (ops/applier.py, read_live)."""
    fingerprint = AddCounter("elements_0123456789abcdef")
    ops = [AddTable(""), fingerprint, AddCounter("relayed"), *SCRIPT_OPS[2:]]
    scaffold = nlbatch.scaffold_ops(ops)
    assert scaffold is not None
    names = [
        (kind & 0xFF, dict(attrs(payload[4:])).get(2, b"").rstrip(b"\0").decode())
        for kind, _, payload in nlbatch.encode("inet", "op25b", scaffold)
    ]
    last_element = max(i for i, (kind, _) in enumerate(names) if kind == 12)
    assert names.index((18, fingerprint.name)) > last_element
    assert names.index((18, PENDING)) < names.index((9, "relays_v4"))
    assert names[-1] == (20, PENDING)
