"""A new table committed through our netlink scaffold is the table `nft -f` makes.

Each side runs in its own namespace (`tests/scaffoldtools.py`); the kernel's dumps of the
two tables are compared byte for byte, handles aside.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="needs root: creates network namespaces and loads nftables"
    ),
    pytest.mark.skipif(
        shutil.which("ip") is None or shutil.which("nft") is None,
        reason="needs the `ip` (iproute2) and `nft` (nftables) commands",
    ),
]


def tool(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, str(PYTHON), "-m", "tests.scaffoldtools", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=check,
    )


def dump(ns: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(tool(ns, "dump").stdout)
    return out


def nft(ns: str, *args: str) -> str:
    cp = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", *args], capture_output=True, text=True, check=True
    )
    return cp.stdout


def test_the_kernel_holds_the_same_table_as_after_nft_f(netns: str, second_netns: str) -> None:
    tool(netns, "ours")
    tool(second_netns, "nft")
    ours, theirs = dump(netns), dump(second_netns)
    assert ours.keys() == theirs.keys()
    assert len(ours["sets"]) >= 10 and any(len(v) > 1 for v in ours["rules"])
    # the elements-fingerprint counter is created last (kernel/nlbatch.py): the objects
    # are the same, their dump order is not
    assert sorted(ours.pop("objects")) == sorted(theirs.pop("objects"))
    for what in theirs:
        assert ours[what] == theirs[what], what
    assert blocks(nft(netns, "list", "ruleset")) == blocks(nft(second_netns, "list", "ruleset"))


def blocks(listing: str) -> list[str]:
    """A listing's blocks (a counter, a set, a chain) in order of name: what was created in
    another order lists in another order."""
    return sorted(listing.split("\n\n"))


def test_a_refill_leaves_the_kernel_as_nft_f_of_the_same_edit(
    netns: str, second_netns: str
) -> None:
    tool(netns, "refill-ours")
    tool(second_netns, "refill-nft")
    ours, theirs = dump(netns), dump(second_netns)
    assert ours == theirs
    listing = nft(netns, "list", "ruleset")
    assert listing == nft(second_netns, "list", "ruleset")
    assert "0.0.0.0/8 : jump" in listing and "192.0.2.200" in listing


def ctl(ns: str, state: Path, command: str) -> subprocess.CompletedProcess[str]:
    """`op25b-ctl COMMAND` on the NMTnet example policy in `ns`, state and cache in `state`."""
    env = {**os.environ, "OP25B_DAEMON": "off", "OP25B_CACHE_DIR": str(state / "cache")}
    argv = [str(ROOT / ".venv" / "bin" / "op25b-ctl"), command, "-o", "json"]
    argv += ["--policy", str(ROOT / "policies" / "nmtnet"), "--state-dir", str(state)]
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, env=env, check=False
    )


def test_a_scaffold_cut_short_is_ours_and_the_next_apply_completes_it(
    netns: str, second_netns: str, tmp_path: Path
) -> None:
    cp = tool(netns, "cut-short", check=False)
    assert cp.returncode == 9, cp.stderr
    partial = nft(netns, "list", "table", "inet", "op25b")
    assert "elements_pending" in partial and "hook forward" not in partial
    for command in ("apply", "plan"):
        done = ctl(netns, tmp_path / "a", command)
        assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["changes"] == 0  # the plan after the apply
    assert ctl(second_netns, tmp_path / "b", "apply").returncode == 0  # a fresh apply
    ours, theirs = dump(netns), dump(second_netns)
    assert sorted(ours.pop("objects")) == sorted(theirs.pop("objects"))
    assert ours == theirs


def test_a_refused_rule_batch_leaves_no_table(netns: str) -> None:
    cp = tool(netns, "fail-rules", check=False)
    assert cp.returncode == 3, cp.stderr
    assert "nftables refused the transaction" in cp.stdout
    assert "nosuch" in cp.stdout  # libnftables' own message, naming the missing set
    assert nft(netns, "list", "tables") == ""


def test_a_refused_scaffold_names_the_object_and_changes_nothing(netns: str) -> None:
    nft(netns, "add", "table", "inet", "op25b", "{", "comment", '"someone else"', ";", "}")
    cp = tool(netns, "ours", check=False)
    assert cp.returncode != 0
    assert "nftables refused the transaction: table op25b: File exists" in cp.stderr
    assert "someone else" in nft(netns, "list", "table", "inet", "op25b")
    assert "chain" not in nft(netns, "list", "table", "inet", "op25b")


def test_a_scaffold_refused_after_its_first_commit_leaves_no_table(netns: str) -> None:
    cp = tool(netns, "fail-late", check=False)
    assert cp.returncode == 3, cp.stderr
    assert "elements of set m: No such file or directory" in cp.stdout
    assert nft(netns, "list", "tables") == ""


def test_a_refused_refill_changes_nothing(netns: str) -> None:
    cp = tool(netns, "fail-refill", check=False)
    assert cp.returncode == 3, cp.stderr
    out = json.loads(cp.stdout)
    assert "nftables refused the transaction: elements of set pools_v4" in out["error"]
    assert out["kept"]  # the flush in the same batch did not land either
    assert "carried" not in nft(netns, "list", "counters")
