"""`.live.json` on a real kernel: trusted only in the ruleset (boot, namespace) that wrote it.

A ruleset generation is a per-namespace counter that starts again in every new namespace and
after a reboot. A record that matched on the number alone would let `apply` in a fresh
namespace (or after a reboot) believe our table is there and do nothing.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import lab_unavailable
from tests.e2e.ctl import CTL
from tests.policytools import EXAMPLE

pytestmark = pytest.mark.root


def _ns(name: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", name, *argv], capture_output=True, text=True, check=check
    )


def _generation(name: str) -> int:
    code = "from op25b_ctl.kernel import netlink; print(netlink.ruleset_generation())"
    return int(_ns(name, sys.executable, "-c", code).stdout)


@pytest.fixture
def two_namespaces() -> Iterator[tuple[str, str]]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    names = [f"op25b-t-{secrets.token_hex(4)}" for _ in range(2)]
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        yield names[0], names[1]
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


def test_a_record_is_not_trusted_in_another_namespace_at_the_same_generation(
    two_namespaces: tuple[str, str], tmp_path: Path
) -> None:
    first, second = two_namespaces
    state = tmp_path / "state"
    args = ["--policy", str(EXAMPLE), "--state-dir", str(state)]
    assert _ns(first, CTL, "apply", *args).returncode == 0
    record = json.loads((state / ".live.json").read_text())
    assert record["generation"] == _generation(first)

    # bring the second namespace to the very same generation number with commits of its own
    k = 0
    while _generation(second) < record["generation"]:
        _ns(second, "nft", "add", "table", "inet", f"scratch{k}")
        k += 1
    assert _generation(second) == record["generation"]
    assert _ns(second, "nft", "list", "table", "inet", "op25b", check=False).returncode != 0

    cp = _ns(second, CTL, "apply", *args, "-o", "json")
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["applied"] is True
    assert (
        "chain pool_flets-east-dyn-1" in _ns(second, "nft", "list", "table", "inet", "op25b").stdout
    )
    # and in the first namespace, where the record now does not belong either, a read
    # finds our table as it was: nothing to do
    cp = _ns(first, CTL, "apply", *args, "-o", "json")
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["applied"] is False


def test_after_our_own_commit_a_pool_change_is_one_chain_in_the_kernel(
    two_namespaces: tuple[str, str], tmp_path: Path
) -> None:
    ns = two_namespaces[0]
    state = tmp_path / "state"
    args = ["--policy", str(EXAMPLE), "--state-dir", str(state)]
    assert _ns(ns, CTL, "apply", *args).returncode == 0
    before = _generation(ns)
    cp = _ns(ns, CTL, "pool", "rollback", "flets-east-dyn-1", "--reason", "t", *args, "-o", "json")
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["ops"] == 1  # the chain flushed (and left empty: off)
    assert _generation(ns) == before + 1
    chain = _ns(ns, "nft", "list", "chain", "inet", "op25b", "pool_flets-east-dyn-1").stdout
    assert "counter" not in chain
    record = json.loads((state / ".live.json").read_text())
    assert record["generation"] == before + 1
    # someone else's commit in between: the next command reads the table and still agrees
    _ns(ns, "nft", "add", "table", "inet", "scratch")
    cp = _ns(ns, CTL, "pool", "clear", "flets-east-dyn-1", *args, "-o", "json")
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["applied"] is True
    assert (
        "counter"
        in _ns(ns, "nft", "list", "chain", "inet", "op25b", "pool_flets-east-dyn-1").stdout
    )


def _elements(name: str) -> dict[str, set[str]]:
    """Our sets' elements as the kernel holds them (a netlink dump)."""
    code = (
        "import json; from op25b_ctl.kernel.nft import NftKernel; "
        "t = NftKernel().read('inet', 'op25b'); "
        "print(json.dumps({n: sorted(s.elements) for n, s in t.sets.items()}))"
    )
    return {k: set(v) for k, v in json.loads(_ns(name, sys.executable, "-c", code).stdout).items()}


def test_an_edit_of_the_sets_after_our_own_commit_lands_exactly(
    two_namespaces: tuple[str, str], tmp_path: Path
) -> None:
    """After our commit the next `apply` of changed sets diffs against the elements it
    remembered (`.live-sets.json`), reading none back: the kernel must end up holding exactly
    the new elements, and after someone else's commit, or with the memory damaged, too."""
    ns, _ = two_namespaces
    policy, state = tmp_path / "policy", tmp_path / "state"
    shutil.copytree(EXAMPLE, policy)
    args = ["--policy", str(policy), "--state-dir", str(state)]
    assert _ns(ns, CTL, "apply", *args).returncode == 0
    assert (state / ".live-sets.json").exists()
    relays = policy / "relays.yaml"
    for old, new, before in (
        ("203.0.113.25", "203.0.113.26", None),
        ("203.0.113.26", "203.0.113.27", ["nft", "add", "table", "inet", "scratch"]),
        ("203.0.113.27", "203.0.113.28", "damage"),
    ):
        relays.write_text(relays.read_text().replace(old, new))
        if before == "damage":
            remembered = state / ".live-sets.json"
            remembered.write_text(remembered.read_text().replace(old, "203.0.113.29"))
        elif before:
            _ns(ns, *before)
        cp = _ns(ns, CTL, "apply", *args, "-o", "json")
        assert cp.returncode == 0, cp.stderr
        assert json.loads(cp.stdout)["applied"] is True
        assert _elements(ns)["relays_v4"] == {new + "/32"}
    pools = policy / "pools.yaml"
    text = pools.read_text()
    assert "192.0.2.64/26" in text
    pools.write_text(text.replace("192.0.2.64/26", "192.0.2.64/27"))
    cp = _ns(ns, CTL, "apply", *args)
    assert cp.returncode == 0, cp.stderr
    held = _elements(ns)["pools_v4"]
    assert "192.0.2.64/27" in held and "192.0.2.64/26" not in held
