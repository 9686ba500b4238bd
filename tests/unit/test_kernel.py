"""MemoryKernel, the unit tests' kernel: the same answers as NftKernel, from memory."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from op25b_ctl.errors import KernelError, TableNotFound
from op25b_ctl.kernel.base import Counter, Kernel
from op25b_ctl.kernel.memory import MemoryKernel
from op25b_ctl.kernel.nft import NftKernel
from op25b_ctl.ops import applier
from op25b_ctl.plan.desired import from_policy
from op25b_ctl.plan.table import Table
from op25b_ctl.plan.transaction import AddCounter, DeleteTable, Transaction
from op25b_ctl.policy.loader import load_policy
from tests.daemonpolicy import EAST1, daemon_policy

NOW = datetime(2011, 1, 31, tzinfo=UTC)


def test_both_kernels_are_kernels() -> None:
    kernels: list[Kernel] = [MemoryKernel(), NftKernel()]  # mypy checks the protocol here
    assert len(kernels) == 2


@pytest.fixture
def table(tmp_path: Path) -> Table:
    return from_policy(load_policy(daemon_policy(tmp_path / "p")), NOW).table


def test_counters_refs_generation_and_a_refused_commit(table: Table) -> None:
    kernel = MemoryKernel()
    with pytest.raises(TableNotFound):
        kernel.counters("inet", "op25b")
    assert kernel.rule_digests("inet", "op25b") == {}
    gen = kernel.generation()
    applier.apply(kernel, table)
    assert kernel.generation() == (gen or 0) + 1
    counters = kernel.counters("inet", "op25b")
    assert counters[f"blocked_{EAST1}"] == Counter(0, 0, refs=1)  # enforced: a rule uses it
    assert counters[f"monitored_{EAST1}"].refs == 0
    assert kernel.rule_digests("inet", "op25b", [f"pool_{EAST1}"]).keys() == {
        (f"pool_{EAST1}", r.comment) for r in table.chains[f"pool_{EAST1}"].rules
    }

    kernel.values[f"blocked_{EAST1}"] = (5, 300)
    before = kernel.tables[("inet", "op25b")]
    kernel.fail_next = "Error: simulated"
    with pytest.raises(KernelError, match="simulated"):
        kernel.apply(Transaction("inet", "op25b", (DeleteTable(),)))
    assert kernel.tables[("inet", "op25b")] is before  # refused: nothing changed
    assert kernel.counters("inet", "op25b")[f"blocked_{EAST1}"].packets == 5

    kernel.apply(Transaction("inet", "op25b", (DeleteTable(),)))
    assert kernel.values == {}  # the counters went with the table
    with pytest.raises(KernelError, match="does not exist"):
        kernel.check(Transaction("inet", "op25b", (AddCounter("x", 1, 2),)))


def test_a_kernel_that_cannot_tell_its_generation() -> None:
    assert MemoryKernel(generations=False).generation() is None
