"""A self-contained policy for the daemon's tests: the lab's pools with modes set explicitly.

The example policy's modes come from its rollout schedule, which moves with the rollout work;
the daemon's tests need modes they set themselves, and to change one by rewriting a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from op25b_lab.lab import POOLS, RELAY

EAST1, EAST2, WEST1, STATIC = (
    "flets-east-dyn-1",
    "flets-east-dyn-2",
    "flets-west-dyn-1",
    "static-biz",
)
MODES = {EAST1: "enforce", EAST2: "monitor", WEST1: "enforce"}


def daemon_policy(dest: Path, **modes: str) -> Path:
    """gateway.yaml (reject), pools.yaml (the lab's pools; modes as in MODES unless given as
    pool_name_with_underscores=mode) and relays.yaml (the lab's relay) in `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    want = {**MODES, **{k.replace("_", "-"): v for k, v in modes.items()}}
    (dest / "gateway.yaml").write_text("gateway:\n  table: op25b\n  action: reject\n")
    pools: list[dict[str, Any]] = []
    for pool in POOLS:
        item: dict[str, Any] = {"name": pool.name}
        if pool.name == STATIC:
            item["dynamic"] = False
        else:
            item["mode"] = want.get(pool.name, "off")
        item["prefixes"] = [pool.v4, pool.v6]
        pools.append(item)
    (dest / "pools.yaml").write_text(yaml.safe_dump({"pools": pools}, sort_keys=False))
    relays = {"relays": [{"name": "smtp-relay", "addresses": list(RELAY.both)}]}
    (dest / "relays.yaml").write_text(yaml.safe_dump(relays, sort_keys=False))
    return dest


def set_mode(dest: Path, pool: str, mode: str) -> None:
    """Rewrite pools.yaml with one pool's mode changed (any text: invalid ones included)."""
    path = dest / "pools.yaml"
    data = yaml.safe_load(path.read_text())
    (item,) = [p for p in data["pools"] if p["name"] == pool]
    item["mode"] = mode
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def break_prefix(dest: Path) -> None:
    """Make pools.yaml invalid: a prefix with host bits set (pools[0].prefixes[0])."""
    path = dest / "pools.yaml"
    text = path.read_text()
    assert "192.0.2.0/26" in text
    path.write_text(text.replace("192.0.2.0/26", "192.0.2.1/26"))


def fix_prefix(dest: Path) -> None:
    path = dest / "pools.yaml"
    path.write_text(path.read_text().replace("192.0.2.1/26", "192.0.2.0/26"))
