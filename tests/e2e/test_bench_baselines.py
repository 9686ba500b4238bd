"""The benchmark must time what it claims: the `nft -f` baseline and the dry-run-first variant
load the same table op25b-ctl builds (or the full-apply ratio compares different work), and
the warm series really drives the daemon's Reconciler (fast no-change passes, known-state
commits). Each side runs in its own namespace."""

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
from typing import Any

import pytest

from bench import inventory as inv
from op25b_ctl.plan.ruleset import FINGERPRINT_PREFIX
from op25b_ctl.plan.table import Table
from op25b_lab.lab import tool_env

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces"),
    pytest.mark.skipif(shutil.which("nft", path="/usr/sbin:/sbin") is None, reason="needs nft"),
]

SIZE = inv.Size(2_000, 1_000)


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    made: list[str] = []
    for i in range(3):
        name = f"op25bt-{secrets.token_hex(3)}-{i}"
        subprocess.run(["ip", "netns", "add", name], check=True, env=tool_env())
        made.append(name)
    yield made
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False, env=tool_env())


def _worker(ns: str, *args: str) -> dict[str, Any]:
    argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "bench.worker", *args]
    cp = subprocess.run(argv, capture_output=True, text=True, check=True, env=tool_env())
    result = json.loads(cp.stdout)
    assert isinstance(result, dict)
    return result


def _read(ns: str, tmp_path: Path) -> Table:
    out = tmp_path / f"{ns}.pickle"
    assert _worker(ns, "read", "--table", inv.TABLE, "--out", str(out))["found"]
    table = pickle.loads(out.read_bytes())
    assert isinstance(table, Table)
    return table


def test_baselines_load_the_same_table_as_ours(namespaces: list[str], tmp_path: Path) -> None:
    policy = inv.synthetic_policy(SIZE)
    pkl = tmp_path / "desired.pickle"
    pkl.write_bytes(pickle.dumps(inv.desired(policy)))
    hand = tmp_path / "hand.nft"
    hand.write_text(inv.handwritten_ruleset(policy))
    ours_ns, checked_ns, hand_ns = namespaces
    assert _worker(ours_ns, "apply", "--desired", str(pkl), "--variant", "ours")["ops"] > 0
    assert _worker(checked_ns, "apply", "--desired", str(pkl), "--variant", "checked")["ops"] > 0
    subprocess.run(
        ["ip", "netns", "exec", hand_ns, "nft", "-f", str(hand)], check=True, env=tool_env()
    )

    ours, checked, theirs = (_read(ns, tmp_path) for ns in namespaces)
    assert checked == ours
    assert ours.sets == theirs.sets  # every prefix, mapped to the same pool chain
    assert sum(len(s.elements) for s in ours.sets.values()) >= SIZE.elements
    assert {n: (c.hook, len(c.rules)) for n, c in ours.chains.items()} == {
        n: (c.hook, len(c.rules)) for n, c in theirs.chains.items()
    }
    fingerprint = {c for c in ours.counters if c.startswith(FINGERPRINT_PREFIX)}
    assert len(fingerprint) == 1
    assert ours.counters - fingerprint == theirs.counters


def test_warm_series_drives_the_reconciler(namespaces: list[str], tmp_path: Path) -> None:
    policy = inv.synthetic_policy(SIZE)
    pkl = tmp_path / "desired.pickle"
    pkl.write_bytes(pickle.dumps(inv.desired(policy)))
    policy_dir, state_dir = tmp_path / "policy", tmp_path / "state"
    policy_dir.mkdir()
    state_dir.mkdir()
    for name, text in inv.policy_files(policy).items():
        (policy_dir / name).write_text(text)
    got = _worker(
        namespaces[0], "warm", "--desired", str(pkl), "--pool", inv.pool_name(inv.CHANGE_POOL),
        "--runs", "3", "--list-runs", "1",
        "--policy-dir", str(policy_dir), "--state-dir", str(state_dir),
    )  # fmt: skip
    # the worker exits non-zero unless every pass was "fast" and every change a chain rewrite
    assert got["reconcile_what"].startswith("Reconciler.run_once()")
    assert len(got["reconcile"]) == 3 and len(got["change"]) == 3
    assert len(got["recompute"]) >= 2
    assert got["counters"] == 2 * inv.POOL_COUNT + 3  # blocked_/monitored_ per pool + 3 more
