"""Any policy change converges in one transaction that the (strict) in-memory backend accepts."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from op25b_ctl.kernel.memory import MemoryKernel
from op25b_ctl.ops import applier
from op25b_ctl.plan.modes import decide, modes
from op25b_ctl.plan.ruleset import desired_table
from op25b_ctl.plan.table import Table
from tests.randompolicy import ACTIONS, random_policy

NOW = datetime(2026, 1, 1, tzinfo=UTC)  # random policies have no rollout stages


def shape(t: Table | None) -> object:
    assert t is not None
    return (
        {n: (c.hook, c.rule_ids) for n, c in t.chains.items()},
        {n: dict(s.elements) for n, s in t.sets.items()},
        t.counters,
    )


@pytest.mark.parametrize("seed", range(40))
def test_random_policy_sequences_converge(seed: int) -> None:
    rng = random.Random(seed)
    backend = MemoryKernel()
    for _ in range(6):
        policy = random_policy(rng, action=rng.choice(ACTIONS))
        want = desired_table(policy, modes(decide(policy, NOW)))
        applier.apply(backend, want)
        assert shape(backend.read(want.family, want.name)) == shape(want)
        assert not applier.plan(backend, want)
