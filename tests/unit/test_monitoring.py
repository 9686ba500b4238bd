"""The shipped monitoring and systemd files: promtool, systemd-analyze, and name consistency.

The rules and the dashboard may only use metric names the exporter really exposes, so a
rename in metrics.py cannot silently break an alert.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from op25b_ctl.daemon.discovery import DiscoveryCollector, DiscoveryWatcher
from op25b_ctl.daemon.fleet import FleetCollector, FleetReporter
from op25b_ctl.daemon.metrics import build_registry
from op25b_ctl.daemon.offenders import OffenderCollector, OffenderReader
from op25b_ctl.daemon.reconcile import Reconciler
from op25b_ctl.daemon.stagemetrics import StageCollector
from op25b_ctl.kernel.memory import MemoryKernel
from op25b_ctl.source.directory import DirectorySource
from op25b_ctl.source.etcd import EtcdStore, parse_store_url
from op25b_ctl.source.fleet import FleetSource
from tests.daemonpolicy import daemon_policy
from tests.discoverytools import fake_events, served, with_discovery
from tests.policytools import REPO

RULES = REPO / "monitoring" / "prometheus" / "op25b-rules.yml"
RULES_TEST = REPO / "monitoring" / "prometheus" / "op25b-rules.test.yml"
DASHBOARD = REPO / "monitoring" / "grafana" / "op25b-dashboard.json"
UNIT = REPO / "systemd" / "op25b-ctl.service"
VENV_CTL = REPO / ".venv" / "bin" / "op25b-ctl"
NAME = re.compile(r"\bop25b[_:][a-z0-9_:]+")

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="needs promtool (Debian package prometheus; scripts/bootstrap installs it)",
)


def exposition(tmp: Path) -> str:
    """A real scrape of the exporter, over a fake kernel with traffic in every counter."""
    kernel = MemoryKernel()
    policy_dir = daemon_policy(tmp / "policy")
    # a pending stage to enforce, for the readiness series (op25b_stage_*)
    (policy_dir / "rollout.yaml").write_text(
        "stages:\n  - name: enforce-east-2\n    at: 2011-02-10T10:00:00+09:00\n"
        "    pools: [flets-east-dyn-2]\n    mode: enforce\n    max_offenders: 3\n"
    )
    clock = lambda: datetime(2011, 1, 31, tzinfo=UTC)  # noqa: E731
    rec = Reconciler(kernel, DirectorySource(policy_dir), clock=clock, sample_every_pass=True)
    registry, metrics = build_registry(lambda: rec.view)
    # the readiness of that stage, as the daemon registers it (counts from the offender sets)
    registry.register(StageCollector(lambda: rec.view, clock, lambda: {"flets-east-dyn-2": 5}))
    # the fleet half, as a daemon started with --store registers it (no store contacted)
    source = FleetSource(EtcdStore(parse_store_url("etcd://127.0.0.1:9/op25b")), "gw1", tmp)
    registry.register(FleetCollector(FleetReporter(rec, source)))
    registry.register(OffenderCollector(OffenderReader(kernel, lambda: rec.view)))
    metrics.observe(rec.run_once(), now=1.0e9)
    for name in kernel.tables[("inet", "op25b")].counters:
        kernel.values[name] = (3, 180)
    metrics.observe(rec.run_once(), now=1.0e9 + 5)
    # the hole alarm, with one hole found (daemon/discovery.py; no kernel read)
    assert rec.view.desired is not None
    policy = with_discovery(rec.view.desired.policy)
    watcher = DiscoveryWatcher(
        lambda: policy, read=lambda _: [served("203.0.113.9/32")], events=fake_events
    )
    watcher.step()
    registry.register(DiscoveryCollector(watcher))
    return generate_latest(registry).decode()


def exported_names(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] not in "#"}


def run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_check_rules() -> None:
    cp = run(["promtool", "check", "rules", str(RULES)])
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "SUCCESS" in cp.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_alerts() -> None:
    cp = subprocess.run(
        ["promtool", "test", "rules", RULES_TEST.name],
        cwd=RULES_TEST.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "SUCCESS" in cp.stdout


@needs_promtool
def test_promtool_check_metrics_on_a_scrape(tmp_path: Path) -> None:
    text = exposition(tmp_path)
    cp = run(["promtool", "check", "metrics"], stdin=text)
    assert cp.returncode == 0 and not cp.stdout.strip() and not cp.stderr.strip(), (
        cp.stdout + cp.stderr
    )


def test_rules_and_dashboard_use_only_exported_metrics(tmp_path: Path) -> None:
    exported = exported_names(exposition(tmp_path))
    rules = yaml.safe_load(RULES.read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs += [t["expr"] for p in panels for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = {m for e in exprs for m in NAME.findall(e)}
    assert used - exported - recorded == set()
    # and the headline series are really there
    for name in (
        "op25b_pool_blocked_packets_total",
        "op25b_pool_monitored_packets_total",
        "op25b_relayed_packets_total",
        "op25b_drift_repairs_total",
        "op25b_reconcile_last_success_timestamp_seconds",
        "op25b_policy_revision_applied",
        "op25b_store_connected",
        "op25b_store_last_sync_seconds",
        "op25b_pool_offenders",
        "op25b_pool_offender_set_fill_ratio",
    ):
        assert name in used and name in exported


def test_dashboard_has_per_pool_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert any(p.get("repeat") == "pool" for p in dashboard["panels"])
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "instance", "pool"} <= variables
    pool_panels = [
        p for p in dashboard["panels"] if any("pool" in t["expr"] for t in p.get("targets", []))
    ]
    assert len(pool_panels) >= 4


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text
    assert "CapabilityBoundingSet=CAP_NET_ADMIN\n" in text
    for directive in ("ProtectSystem=strict", "PrivateTmp=yes", "NoNewPrivileges=yes"):
        assert directive in text
    assert "Before=network-pre.target" in text and "Wants=network-pre.target" in text
    # verify needs the executable to exist: point it at this checkout's venv
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("/usr/sbin/op25b-ctl", str(VENV_CTL)))
    cp = run(["systemd-analyze", "verify", str(unit)])
    assert cp.returncode == 0, cp.stderr
    assert not re.search(r"Unknown|Failed|ignoring|Invalid", cp.stderr), cp.stderr
    sec = run(["systemd-analyze", "security", "--offline=yes", str(unit)])
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", sec.stdout + sec.stderr)
    assert level is not None, sec.stdout + sec.stderr
    assert float(level.group(1)) < 3.0  # "OK" in systemd's scale
