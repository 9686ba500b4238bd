"""The real kernel accepts every transaction diff() orders, across random policy changes."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from tests.e2e.ctl import CTL

pytestmark = pytest.mark.root

SCRIPT = """
import json, random, sys
from datetime import UTC, datetime
from op25b_ctl.ops import applier
from op25b_ctl.kernel.nft import NftKernel
from op25b_ctl.plan.modes import decide, modes
from op25b_ctl.plan.ruleset import desired_table
from tests.randompolicy import ACTIONS, random_policy

rng = random.Random(int(sys.argv[1]))
backend = NftKernel()
steps = []
for _ in range(8):
    policy = random_policy(rng, action=rng.choice(ACTIONS))
    want = desired_table(policy, modes(decide(policy, datetime(2026, 1, 1, tzinfo=UTC))))
    tx = applier.apply(backend, want)
    left = applier.plan(backend, want)
    steps.append({"ops": len(tx.ops), "left": len(left.ops)})
print(json.dumps(steps))
"""


@pytest.mark.parametrize("seed", range(1, 7))
def test_random_changes_apply_and_converge(seed: int, tmp_path: Path) -> None:
    import json

    from op25b_lab.lab import ns_name, remove

    ident = f"cv{seed}{random.randrange(16**6):06x}"
    ns = ns_name(ident, "gw")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        python = str(Path(CTL).parent / "python")
        cp = subprocess.run(
            ["ip", "netns", "exec", ns, python, "-c", SCRIPT, str(seed)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert cp.returncode == 0, cp.stderr
        steps = json.loads(cp.stdout)
        assert steps[0]["ops"] > 0
        assert all(s["left"] == 0 for s in steps), steps
    finally:
        remove(ident)
