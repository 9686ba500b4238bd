"""The benchmark's `nft -f` baseline must load the same table op25b-ctl builds, or the
full-apply ratio compares different work. Each side is loaded in its own namespace."""

from __future__ import annotations

import json
import os
import pickle
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import inventory as inv
from op25b_ctl.backend import parse_table
from op25b_ctl.lab import _env
from op25b_ctl.ruleset import FINGERPRINT_PREFIX
from op25b_ctl.table import Table

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces"),
    pytest.mark.skipif(shutil.which("nft", path="/usr/sbin:/sbin") is None, reason="needs nft"),
]


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    made: list[str] = []
    for i in range(2):
        name = f"op25bt-{secrets.token_hex(3)}-{i}"
        subprocess.run(["ip", "netns", "add", name], check=True, env=_env())
        made.append(name)
    yield made
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False, env=_env())


def _listed(ns: str) -> Table:
    cp = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", inv.TABLE],
        capture_output=True, text=True, check=True, env=_env(),
    )  # fmt: skip
    return parse_table(json.loads(cp.stdout), "inet", inv.TABLE)


def test_handwritten_ruleset_loads_the_same_table_as_ours(
    namespaces: list[str], tmp_path: Path
) -> None:
    policy = inv.synthetic_policy(inv.Size(2_000, 1_000))
    desired = inv.desired(policy)
    pkl = tmp_path / "desired.pickle"
    pkl.write_bytes(pickle.dumps(desired))
    hand = tmp_path / "hand.nft"
    hand.write_text(inv.handwritten_ruleset(policy))
    ours_ns, hand_ns = namespaces
    worker = [sys.executable, "-m", "bench.worker", "apply", "--desired", str(pkl)]
    subprocess.run(["ip", "netns", "exec", ours_ns, *worker], check=True, env=_env())
    subprocess.run(["ip", "netns", "exec", hand_ns, "nft", "-f", str(hand)], check=True, env=_env())

    ours, theirs = _listed(ours_ns), _listed(hand_ns)
    assert ours.sets == theirs.sets  # every prefix, mapped to the same pool chain
    assert {n: (c.hook, len(c.rules)) for n, c in ours.chains.items()} == {
        n: (c.hook, len(c.rules)) for n, c in theirs.chains.items()
    }
    fingerprint = {c for c in ours.counters if c.startswith(FINGERPRINT_PREFIX)}
    assert len(fingerprint) == 1
    assert ours.counters - fingerprint == theirs.counters
