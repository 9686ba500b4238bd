"""Policy changes that touch thousands of set elements, with the daemon running and TCP/25
probers in both enforced pools: the changed map is flushed and refilled in one batch (the path is checked),
no probe connects at any moment, and an engineer's `pool rollback` meanwhile is not refused."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest
import yaml

from op25b_lab.lab import DYN_A, DYN_W, FOREIGN_MX, Lab, wait_for
from tests.daemonpolicy import WEST1
from tests.e2e.ctl import ctl
from tests.e2e.test_daemon import Gateway
from tests.reliability.prober import Prober

pytestmark = pytest.mark.root

EXTRA = 4000  # synthetic /30s in west-1 (10.0.0.0/8: never routed, only set elements)
ROUNDS = 3  # each removes another quarter of them


def synthetic(n: int) -> list[str]:
    base = int(ipaddress.IPv4Address("10.0.0.0"))
    return [f"{ipaddress.IPv4Address(base + 8 * k)}/30" for k in range(n)]


def set_extra(policy: Path, prefixes: list[str]) -> None:
    path = policy / "pools.yaml"
    data = yaml.safe_load(path.read_text())
    (pool,) = [p for p in data["pools"] if p["name"] == WEST1]
    pool["prefixes"] = [x for x in pool["prefixes"] if not x.startswith("10.")] + prefixes
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)  # as an editor or config management writes it: one rename


def test_prefix_removals_rebuild_the_map_without_a_leak(lab: Lab, tmp_path: Path) -> None:
    lab.serve_tcp([25])
    gw = Gateway(lab, tmp_path)
    extra = synthetic(EXTRA)
    set_extra(gw.policy, extra)
    gw.start()
    probers = [Prober(lab, DYN_A.v4, FOREIGN_MX.v4), Prober(lab, DYN_W.v4, FOREIGN_MX.v4)]
    for p in probers:
        p.wait_attempts(5)

    quarter = EXTRA // 4
    for r in range(1, ROUNDS + 1):
        set_extra(gw.policy, extra[: EXTRA - r * quarter])
        wait_for(
            f"the daemon to commit round {r}",
            lambda r=r: gw.log().count("~ map pools_v4 refilled: ") == r,  # type: ignore[misc]
            60,
        )
        for p in probers:
            p.wait_attempts(5)
    # the path: the map was flushed and refilled in one batch each time, never edited element by element
    rebuilt = [x for x in gw.log().splitlines() if "~ map pools_v4 refilled: " in x]
    assert len(rebuilt) == ROUNDS and all(f": -{quarter} +0 " in x for x in rebuilt), rebuilt
    assert gw.plan_is_empty()

    # an engineer's rollback of another pool while a bulk change is being committed
    set_extra(gw.policy, [])
    started = time.monotonic()
    cp = ctl(
        lab, "pool", "rollback", "flets-east-dyn-2", "--reason", "INC-1 relay test",
        "--policy", str(gw.policy), "--state-dir", str(gw.state),
    )  # fmt: skip
    rollback = time.monotonic() - started
    assert cp.returncode == 0, cp.stderr  # never 75 (lock busy) behind a bulk change
    cp = ctl(lab, "pool", "clear", "flets-east-dyn-2", "--policy", str(gw.policy),
             "--state-dir", str(gw.state))  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    wait_for("the last change committed", gw.plan_is_empty, 60)
    for p in probers:
        p.wait_attempts(5)

    finals = [p.stop() for p in probers]
    for f in finals:
        assert f["counts"].get("connected", 0) == 0, f  # not one TCP/25 connection leaked
    assert rollback < 30, rollback  # the CLI's lock timeout; in practice one commit at most
