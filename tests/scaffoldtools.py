"""Run inside a test's namespace: commit a table (or an edit) either way, or dump the kernel's.

    python -m tests.scaffoldtools ours|nft|refill-ours|refill-nft|cut-short|dump
    python -m tests.scaffoldtools fail-rules|fail-late|fail-refill

`ours` commits the transaction through `NftKernel` (the netlink scaffold, then libnftables
for the rest); `nft` pipes the same transaction's script to `nft -f -`, the way it was
committed before. `refill-ours` and `refill-nft` start from the NMTnet table (by `nft -f`)
and commit an edit of its pools and relays, the one way or the other. `cut-short` dies
between two commits of the NMTnet table's scaffold. `dump` prints the kernel's own dumps of
the table as JSON, handles left out, so two namespaces can be compared byte for byte. `fail-rules` commits a new table
whose rules libnftables refuses; `fail-late` one whose scaffold the kernel refuses in a
commit after the first.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from dataclasses import replace

from bench.inventory import desired
from op25b_ctl.errors import KernelError
from op25b_ctl.kernel import nlbatch, nlcodec
from op25b_ctl.kernel.nft import NftKernel
from op25b_ctl.plan.diff import diff
from op25b_ctl.plan.render import render
from op25b_ctl.plan.table import NamedSet, Rule, Table
from op25b_ctl.plan.transaction import AddChain, AddCounter, AddRule, AddSet, AddTable, Transaction
from op25b_ctl.policy.loader import load_policy
from tests.policytools import EXAMPLE

TABLE = "op25b"

# Shapes the NMTnet policy does not have: a range at the zero address and one to the top of
# each family, adjacent ranges in a set and in a map (same and different targets), single
# addresses, a counter that starts above zero.
EDGES = (
    AddCounter("carried", packets=5, bytes=700),
    AddSet(
        NamedSet(
            "edge_v4",
            "ipv4_addr",
            elements={
                "0.0.0.0/8": None,
                "10.0.0.0/8": None,
                "11.0.0.0/8": None,
                "192.0.2.1/32": None,
                "255.0.0.0/8": None,
            },
        )
    ),
    AddSet(
        NamedSet(
            "edge_v6",
            "ipv6_addr",
            elements={
                "::/16": None,
                "2001:db8::/32": None,
                "2001:db9::/32": None,
                "2001:dba::1/128": None,
                "ffff::/16": None,
            },
        )
    ),
    AddSet(NamedSet("empty_v4", "ipv4_addr")),
)


def edge_map(chains: list[str]) -> AddSet:
    a, b = chains[0], chains[1]
    return AddSet(
        NamedSet(
            "edge_map_v4",
            "ipv4_addr",
            True,
            elements={
                "203.0.113.0/26": a,
                "203.0.113.64/26": a,
                "203.0.113.128/26": b,
                "255.255.255.0/24": b,
            },
        )
    )


def edited(table: Table) -> Table:
    """`table` after an edit of the pools and relays: one prefix fewer, two more (one at the
    zero address), another relay."""
    pools = table.sets["pools_v4"]
    elements = dict(pools.elements)
    first, target = next(iter(elements.items()))
    del elements[first]
    elements["0.0.0.0/8"] = target
    elements["203.0.113.128/25"] = target
    relays = table.sets["relays_v4"]
    sets = {
        **table.sets,
        "pools_v4": replace(pools, elements=elements),
        "relays_v4": replace(relays, elements={**relays.elements, "192.0.2.200/32": None}),
    }
    return replace(table, sets=sets, counters=table.counters | {"carried"})


def refill() -> Transaction:
    """What the planner commits for that edit: flushes, refills, a counter added."""
    before = desired(load_policy(EXAMPLE))
    return diff(before, edited(before))


def transaction() -> Transaction:
    """The NMTnet table from nothing, with the edge shapes among its inert ops."""
    tx = diff(None, desired(load_policy(EXAMPLE)))
    ops = list(tx.ops)
    pools = [op.name for op in ops if isinstance(op, AddChain) and op.name.startswith("pool_")]
    first_set = next(i for i, op in enumerate(ops) if isinstance(op, AddSet))
    ops[first_set:first_set] = [*EDGES, edge_map(pools)]
    return replace(tx, ops=tuple(ops), breaks=())


# GET message -> its attributes that hold handles (NFTA_*_HANDLE; NFTA_RULE_POSITION, the
# handle of the rule before): they depend on how many objects the table has seen
_HANDLES = {1: {4}, 4: {2}, 10: {16}, 19: {6}, 7: {3, 6}}


def _without_handle(msg: bytes, handles: set[int]) -> str:
    """The message's bytes as the kernel wrote them, but its handle attributes."""
    out, offset = bytearray(), 0
    while offset + 4 <= len(msg):
        length, kind = struct.unpack_from("=HH", msg, offset)
        if length < 4:
            break
        if kind & 0x3FFF not in handles:
            out += msg[offset : offset + ((length + 3) & ~3)]
        offset += (length + 3) & ~3
    return out.hex()


def dump() -> dict[str, list[str]]:
    body = struct.pack("=BBH", nlcodec.FAMILIES["inet"], 0, 0)
    body += nlcodec.nla(1, TABLE.encode() + b"\0")  # NFTA_*_TABLE / NFTA_TABLE_NAME
    out: dict[str, list[str]] = {}
    for kind, name in ((1, "tables"), (4, "chains"), (10, "sets"), (19, "objects"), (7, "rules")):
        msgs = nlcodec.dump(kind, body, name)
        out[name] = [_without_handle(m, _HANDLES[kind]) for m in msgs]
    for raw in list(nlcodec.dump(10, body, "sets")):
        name = dict(nlcodec.attrs(raw))[2].rstrip(b"\0").decode()
        sel = body + nlcodec.nla(2, name.encode() + b"\0")
        out[f"elements of {name}"] = [m.hex() for m in nlcodec.dump(13, sel, name)]
    return out


def main(argv: list[str]) -> int:
    what = argv[0]
    if what == "ours":
        NftKernel().apply(transaction())
    elif what == "nft":
        subprocess.run(["nft", "-f", "-"], input=render(transaction()), text=True, check=True)
    elif what == "refill-ours":
        subprocess.run(
            ["nft", "-f", "-"],
            input=render(diff(None, desired(load_policy(EXAMPLE)))),
            text=True,
            check=True,
        )
        tx = refill()
        assert nlbatch.refill_ops(tx.ops) is not None, tx
        NftKernel().apply(tx)
    elif what == "refill-nft":
        subprocess.run(
            ["nft", "-f", "-"],
            input=render(diff(None, desired(load_policy(EXAMPLE)))),
            text=True,
            check=True,
        )
        subprocess.run(["nft", "-f", "-"], input=render(refill()), text=True, check=True)
    elif what == "fail-refill":
        # an edit whose last element jumps to no chain: refused whole, nothing flushed
        start = desired(load_policy(EXAMPLE))
        subprocess.run(["nft", "-f", "-"], input=render(diff(None, start)), text=True, check=True)
        after = edited(start)
        pools = after.sets["pools_v4"]
        bad = replace(pools, elements={**pools.elements, "203.0.113.0/25": "nosuch"})
        tx = diff(start, replace(after, sets={**after.sets, "pools_v4": bad}))
        assert nlbatch.refill_ops(tx.ops) is not None, tx
        before = nlcodec.element_dump(TABLE, "pools_v4", "inet")
        try:
            NftKernel().apply(tx)
        except KernelError as e:
            print(
                json.dumps(
                    {
                        "error": str(e),
                        "kept": nlcodec.element_dump(TABLE, "pools_v4", "inet") == before,
                    }
                )
            )
            return 3
    elif what == "cut-short":
        # the NMTnet table's scaffold in commits of a few hundred bytes, the process gone
        # (as by kill -9) after the second: no cleanup, no rules
        real, sent = nlbatch.commit, []

        def commit(messages: list[nlbatch.Message], what: str) -> None:
            real(messages, what)
            sent.append(len(messages))
            if len(sent) == 2:
                os._exit(9)

        nlbatch._BATCH_BYTES = 300
        nlbatch.commit = commit  # type: ignore[assignment]
        NftKernel().apply(diff(None, desired(load_policy(EXAMPLE))))
        return 1  # not reached
    elif what == "dump":
        json.dump(dump(), sys.stdout)
    elif what == "fail-rules":
        tx = Transaction(
            "inet",
            TABLE,
            (AddTable("test"), AddChain("a"), AddRule("a", Rule.of("ip saddr @nosuch drop"))),
        )
        try:
            NftKernel().apply(tx)
        except KernelError as e:
            print(e)
            return 3
    elif what == "fail-late":
        # A map large enough for several commits whose last element jumps to no chain: the
        # kernel refuses a commit after the first, which created the table.
        elements: dict[str, str | None] = {
            f"10.{i >> 8}.{i & 255}.0/24": "a" for i in range(30_000)
        }
        elements["203.0.113.0/24"] = "nosuch"
        tx = Transaction(
            "inet",
            TABLE,
            (
                AddTable("test"),
                AddChain("a"),
                AddSet(NamedSet("m", "ipv4_addr", True, elements=elements)),
            ),
        )
        try:
            NftKernel().apply(tx)
        except KernelError as e:
            print(e)
            return 3
    else:
        raise SystemExit(f"unknown: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
