"""Element changes in a big map, committed again and again while raw SYNs pour out of an
enforced pool that the change does not touch: not one SYN may cross gw.

Fails on a same-name rebuild (flush the smtp rules, delete the map, add it again with its
elements inline, add the rules back, one batch): the kernel publishes a new set's packet-path
structure in the set backend's commit step, after the generation flip, so for the rest of that
commit the new rule matches on an empty map and every pool falls through to `policy accept`.
On e01bba1 at 5,000 elements: 682 of 2.3M SYNs crossed in 10 commits (16 s). Passes only if
no rule ever references a set created in the same batch (create the set in one commit, point
the rules at it in a later one).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from op25b_lab.lab import DYN_A, FOREIGN_MX, Lab
from tests.daemonpolicy import daemon_policy
from tests.e2e.conftest import lab, make_lab  # noqa: F401  (fixtures)
from tests.e2e.ctl import ctl
from tests.e2e.test_bulk_changes import set_extra, synthetic

pytestmark = pytest.mark.root

ELEMENTS = 5_000  # synthetic /30s in west-1; the probed pool is east-1
COMMITS = 10
FLOODERS = 2
COUNT_LEAKS = f"""table inet leakcount {{
  counter crossed {{ }}
  chain pre {{
    type filter hook prerouting priority -300;
    ip saddr {DYN_A.v4} tcp dport 25 counter name crossed
  }}
}}
"""


def crossed(lab: Lab) -> int:  # noqa: F811  (not the fixture)
    out = lab.run(lab.ns_out, ["nft", "list", "counter", "inet", "leakcount", "crossed"]).stdout
    return int(out.split("packets ")[1].split()[0])


def test_element_changes_leak_no_syn_from_an_untouched_enforced_pool(
    lab: Lab,  # noqa: F811
    tmp_path: Path,
) -> None:
    policy, state = daemon_policy(tmp_path / "policy"), tmp_path / "state"
    extra = synthetic(ELEMENTS + 1)
    set_extra(policy, extra[:ELEMENTS])
    assert ctl(lab, "apply", "--policy", str(policy), "--state-dir", str(state)).returncode == 0
    lab.run(lab.ns_out, ["nft", "-f", "-"], input=COUNT_LEAKS)  # the lab's `out`, not gw
    outs = [tmp_path / f"flood-{i}" for i in range(FLOODERS)]
    argv = [sys.executable, "-m", "tests.reliability.synflood", "--src", DYN_A.v4,
            "--dst", FOREIGN_MX.v4]  # fmt: skip
    floods: list[subprocess.Popen[str]] = [
        lab.start(lab.ns_sub, [*argv, "--out", str(o)]) for o in outs
    ]
    try:
        for i in range(COMMITS):
            set_extra(policy, extra[: ELEMENTS + (i + 1) % 2])  # one prefix in, then out
            cp = ctl(lab, "apply", "--policy", str(policy), "--state-dir", str(state))
            assert cp.returncode == 0, cp.stderr
    finally:
        for f in floods:
            lab.stop(f)
    sent = sum(int(o.read_text()) for o in outs)
    leaked = crossed(lab)
    assert sent > 100_000, f"only {sent} SYNs sent: the test proves nothing"
    assert leaked == 0, (
        f"{leaked} of {sent} SYNs from an enforced pool crossed gw in {COMMITS} commits"
    )
