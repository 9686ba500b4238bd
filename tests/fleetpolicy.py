"""The fleet tests' policy: the lab's pools on three gateways in two groups.

    bras-east-1  group east  flets-east-dyn-1, flets-east-dyn-2
    bras-east-2  group east  flets-east-dyn-1, flets-west-dyn-1
    bras-west-1  group west  flets-east-dyn-1, flets-west-dyn-1

flets-east-dyn-1 is carried by all three (a fleet rollback reaches three gateways);
flets-west-dyn-1 starts in monitor, and a stage for group `east` enforces it (given `at`).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tests.daemonpolicy import EAST1, EAST2, WEST1, daemon_policy

GATEWAYS: dict[str, tuple[str, list[str]]] = {
    "bras-east-1": ("east", [EAST1, EAST2]),
    "bras-east-2": ("east", [EAST1, WEST1]),
    "bras-west-1": ("west", [EAST1, WEST1]),
}


def fleet_policy(dest: Path, *, east_stage_at: datetime | None = None) -> Path:
    """daemon_policy with WEST1 in monitor, plus gateways.yaml and (if given) the east stage."""
    daemon_policy(dest, flets_west_dyn_1="monitor")
    gateways: list[dict[str, Any]] = [
        {"name": name, "group": group, "pools": pools} for name, (group, pools) in GATEWAYS.items()
    ]
    (dest / "gateways.yaml").write_text(yaml.safe_dump({"gateways": gateways}, sort_keys=False))
    if east_stage_at is not None:
        rollout = {
            "timezone": "Asia/Tokyo",
            "stages": [
                {
                    "name": "east-enforce-west-pool",
                    "at": east_stage_at.isoformat(),
                    "mode": "enforce",
                    "pools": [WEST1],
                    "groups": ["east"],
                }
            ],
        }
        (dest / "rollout.yaml").write_text(yaml.safe_dump(rollout, sort_keys=False))
    return dest
