"""A script above the in-process limit is committed by a child `nft -f -`: still one batch.

Runs in its own namespace (`ip netns exec NS python -c ...`), reporting JSON back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces"),
    pytest.mark.skipif(
        shutil.which("ip") is None or shutil.which("nft") is None,
        reason="needs the `ip` (iproute2) and `nft` (nftables) commands",
    ),
]

SCRIPT = """
import json, resource
import netaddr
from bench import inventory as inv
from op25b_ctl.errors import KernelError
from op25b_ctl.kernel import netlink, nft as nftk
from op25b_ctl.ops import applier
from op25b_ctl.plan.render import render
from op25b_ctl.plan.transaction import AddElements, Transaction

nft = nftk.NftKernel()
want = inv.desired(inv.synthetic_policy(inv.Size(40_000, 4_000)))
tx = applier.plan(nft, want)
out = {"script": len(render(tx)), "limit": nftk.CHILD_ABOVE}
applier.apply(nft, want)
out["v4"] = len(netlink.read_elements("op25b", "pools_v4"))
out["v6"] = len(netlink.read_elements("op25b", "pools_v6"))
out["again"] = len(applier.plan(nft, want).ops)
gen = netlink.ruleset_generation()
out["relays_before"] = len(netlink.read_elements("op25b", "relays_v4"))
# 100,000 new relay elements and, last, one overlapping the relay already there: refused whole
extra = {f"172.{16 + i // 65536}.{i // 256 % 256}.{i % 256}": None for i in range(100_000)}
relay = next(iter(want.sets["relays_v4"].elements)).split("/")[0]
wider = str(netaddr.IPNetwork(relay + "/24").cidr)  # overlaps the relay: nft refuses it
bad = Transaction("inet", "op25b", (AddElements("relays_v4", {**extra, wider: None}),))
out["bad_script"] = len(render(bad))
try:
    nft.apply(bad)
    out["refused"] = ""
except KernelError as exc:
    out["refused"] = str(exc)[:300]
out["relays_after"] = len(netlink.read_elements("op25b", "relays_v4"))
out["gen_unchanged"] = netlink.ruleset_generation() == gen
out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def test_a_big_script_commits_in_a_child_and_is_refused_whole(netns: str) -> None:
    cp = subprocess.run(
        ["ip", "netns", "exec", netns, str(PYTHON), "-c", SCRIPT],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert cp.returncode == 0, cp.stderr[-3000:]
    out = json.loads(cp.stdout)
    assert out["script"] > out["limit"] and out["bad_script"] > out["limit"]  # the child path
    assert out["v4"] == 40_000 and out["v6"] == 4_000
    assert out["again"] == 0  # what the child committed is exactly the desired table
    assert "nftables refused" in out["refused"]
    assert (
        out["relays_after"] == out["relays_before"] and out["gen_unchanged"]
    )  # nothing of the batch landed
