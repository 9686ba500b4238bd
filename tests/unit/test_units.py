"""The shipped systemd units and crontab line: they parse, and they run a real tick command."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from op25b_ctl.cli.main import build_parser
from tests.policytools import REPO

UNITS = REPO / "systemd"


def exec_start() -> list[str]:
    lines = (UNITS / "op25b-rollout-tick.service").read_text().splitlines()
    (line,) = [x for x in lines if x.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def test_service_and_cron_run_rollout_tick() -> None:
    argv = exec_start()
    assert Path(argv[0]).name == "op25b-ctl"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.rollout_action, args.dry_run) == ("rollout", "tick", False)
    cron = [
        x
        for x in (UNITS / "op25b-rollout-tick.cron").read_text().splitlines()
        if x and not x.startswith("#") and "=" not in x.split()[0]
    ]
    assert len(cron) == 1
    fields = cron[0].split()
    assert fields[:6] == ["*", "*", "*", "*", "*", "root"] and fields[6] == "op25b-ctl"
    args = build_parser().parse_args(fields[7:])
    assert (args.rollout_action, str(args.state_dir)) == ("tick", "/var/lib/op25b")


def test_units_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("needs systemd-analyze")
    venv_cli = REPO / ".venv" / "bin" / "op25b-ctl"
    for unit in ("op25b-rollout-tick.service", "op25b-rollout-tick.timer"):
        text = (UNITS / unit).read_text().replace("/usr/sbin/op25b-ctl", str(venv_cli))
        (tmp_path / unit).write_text(text)
    cp = subprocess.run(
        [tool, "verify", str(tmp_path / "op25b-rollout-tick.timer")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cp.returncode == 0, cp.stderr
    assert "op25b-rollout-tick" not in cp.stderr, cp.stderr


@pytest.mark.parametrize("unit", ["op25b-ctl.service", "op25b-rollout-tick.service"])
def test_units_are_hardened(unit: str) -> None:
    """Both services run with CAP_NET_ADMIN only, sandboxed: `systemd-analyze security` scores
    each at 2.0 ("OK") or better. The tick scored 6.0 MEDIUM before it was hardened."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("needs systemd-analyze")
    cp = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(UNITS / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", cp.stdout + cp.stderr)
    assert match is not None, cp.stdout + cp.stderr
    assert float(match.group(1)) <= 2.0, cp.stdout
