"""Run the real `op25b-ctl` (real binding, real kernel) inside a lab's gateway namespace."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from op25b_lab.lab import Lab

REPO = Path(__file__).resolve().parents[2]
CTL = str(REPO / ".venv" / "bin" / "op25b-ctl")


def ctl(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    """op25b-ctl in the gateway namespace; returns the process, whatever its exit status."""
    return lab.run(lab.ns_gw, [CTL, *args], check=False, timeout=120)


def ctl_json(lab: Lab, *args: str) -> Any:
    cp = ctl(lab, *args, "-o", "json")
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)


def ruleset(lab: Lab) -> str:
    """The gateway's whole ruleset as nft prints it: the before/after of 'nothing changed'."""
    return lab.run(lab.ns_gw, ["nft", "list", "ruleset"]).stdout


def pool_counters(lab: Lab, policy: Path) -> dict[str, dict[str, Any]]:
    status = ctl_json(lab, "status", "--policy", str(policy))
    return {p["name"]: p for p in status["pools"]}
