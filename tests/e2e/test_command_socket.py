"""One-shot commands handed to the running daemon (cli/thin.py, daemon/control.py), for real:
the same effect on the kernel, the same output and exit status, the same audit trail."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from op25b_lab.lab import DYN_A, FOREIGN_MX, Lab, Outcome, wait_for
from tests.daemonpolicy import EAST1, EAST2
from tests.e2e.test_daemon import CTL, Gateway, gw  # noqa: F401  (the fixture)

pytestmark = pytest.mark.root


def _ctl(
    gateway: Gateway, mode: str, *args: str, ns: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv = ["env", f"OP25B_DAEMON={mode}", CTL, *args]
    argv += ["--policy", str(gateway.policy), "--state-dir", str(gateway.state)]
    return gateway.lab.run(ns or gateway.lab.ns_gw, argv, check=False, timeout=60)


def _modes(status: str) -> dict[str, tuple[str, str]]:
    data = json.loads(status)
    return {p["name"]: (p["mode"], p["live_mode"]) for p in data["pools"]}


def test_a_command_through_the_daemon_does_what_it_does_alone(lab: Lab, gw: Gateway) -> None:  # noqa: F811
    gw.start()
    socket_file = gw.state / ".ctl.sock"
    assert socket_file.is_socket() and oct(socket_file.stat().st_mode & 0o777) == "0o600"

    via, alone = (
        _ctl(gw, "require", "status", "-o", "json"),
        _ctl(gw, "off", "status", "-o", "json"),
    )
    assert via.returncode == alone.returncode == 0, via.stderr + alone.stderr
    assert _modes(via.stdout) == _modes(alone.stdout)
    assert json.loads(via.stdout)["rules_in_sync"] is True

    assert lab.connect(DYN_A.v4, FOREIGN_MX.v4, 25).outcome == Outcome.REFUSED
    cp = _ctl(gw, "require", "pool", "rollback", EAST1, "--reason", "through the socket")
    assert cp.returncode == 0, cp.stderr
    assert f"pool {EAST1}: off" in cp.stdout
    assert lab.connect(DYN_A.v4, FOREIGN_MX.v4, 25).outcome == Outcome.CONNECTED
    audit = json.loads(_ctl(gw, "off", "audit", "-o", "json").stdout)["entries"]
    assert audit[-1]["action"] == "pool rollback" and audit[-1]["reason"] == "through the socket"
    assert (
        audit[-1]["user"]
        == json.loads(_ctl(gw, "off", "audit", "-o", "json").stdout)["entries"][-1]["user"]
    )

    # the exit status and stderr are the command's own
    bad_via = _ctl(gw, "require", "pool", "rollback", "no-such-pool", "--reason", "x")
    bad_alone = _ctl(gw, "off", "pool", "rollback", "no-such-pool", "--reason", "x")
    assert bad_via.returncode == bad_alone.returncode == 2
    assert bad_via.stderr == bad_alone.stderr and "unknown pool" in bad_via.stderr

    cp = _ctl(gw, "require", "pool", "clear", EAST1)
    assert cp.returncode == 0, cp.stderr
    wait_for(
        "TCP/25 refused again",
        lambda: lab.connect(DYN_A.v4, FOREIGN_MX.v4, 25).outcome == Outcome.REFUSED,
    )

    # another network namespace: refused by the daemon, so the command runs where it was typed
    other = _ctl(gw, "require", "status", "-o", "json", ns=lab.ns_sub)
    assert other.returncode == 1 and "another network namespace" in other.stderr
    here = _ctl(gw, "auto", "status", "-o", "json", ns=lab.ns_sub)
    assert here.returncode == 0 and json.loads(here.stdout)["present"] is False

    gw.stop()
    assert not socket_file.exists()
    assert _ctl(gw, "auto", "status").returncode == 0  # no daemon: runs alone


def test_no_command_socket_when_asked(lab: Lab, gw: Gateway, tmp_path: Path) -> None:  # noqa: F811
    gw.start("--no-command-socket")
    assert not (gw.state / ".ctl.sock").exists()
    cp = _ctl(gw, "require", "status")
    assert cp.returncode == 1 and "no daemon took the command" in cp.stderr


def test_metrics_follow_a_forwarded_command_without_waiting_for_the_interval(
    lab: Lab,
    gw: Gateway,  # noqa: F811
) -> None:
    """The fork changed the overrides and the table; the daemon's own view (and so every
    metric drawn from it) would lag until its next pass, an hour here, without the wake-up."""
    gw.start("--interval", "3600")  # the last --interval wins: no pass comes by itself
    assert gw.sample("op25b_pool_mode", pool=EAST2, mode="monitor") == 1
    cp = _ctl(gw, "require", "pool", "enforce", EAST2, "--reason", "through the socket")
    assert cp.returncode == 0, cp.stderr
    wait_for(
        "the scrape shows the forwarded mode",
        lambda: gw.sample("op25b_pool_mode", pool=EAST2, mode="enforce") == 1,
        deadline=10.0,
    )
    assert gw.sample("op25b_pool_mode", pool=EAST2, mode="monitor") == 0
    gw.stop()
