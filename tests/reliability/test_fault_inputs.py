"""Faults of the daemon's and the CLI's own inputs, on the lab gateway with real packets:
a policy truncated mid-write, a corrupt state file, a full disk, the metrics port taken at
boot, the clock stepping forward and back across a stage, two commands at once. Each ends
with the intended enforcement (real TCP/25 refused from the enforced pools) and nothing lost.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from op25b_lab.lab import DYN_A, DYN_B, DYN_W, FOREIGN_MX, RELAY, Lab, wait_for
from tests.daemonpolicy import EAST1, EAST2, WEST1
from tests.e2e.conftest import lab, make_lab  # noqa: F401  (fixtures)
from tests.e2e.ctl import CTL, ctl, ruleset
from tests.e2e.test_daemon import smtp_attempts
from tests.reliability.conftest import Recorder
from tests.reliability.kernelfaults import Gateway, applied_gateway, assert_enforced

pytestmark = [pytest.mark.root, pytest.mark.slow]
SECTION = "fault"


def refused_by_packets(lab: Lab) -> None:  # noqa: F811
    """Real TCP/25 from both enforced pools refused, to the relay let through (no `plan`:
    these cases break the very inputs plan reads)."""
    assert smtp_attempts(lab, DYN_A.v4, FOREIGN_MX.v4, 1) == ["refused"]
    assert smtp_attempts(lab, DYN_W.v4, FOREIGN_MX.v4, 1) == ["refused"]
    assert smtp_attempts(lab, DYN_A.v6, FOREIGN_MX.v6, 1) == ["refused"]
    assert smtp_attempts(lab, DYN_A.v4, RELAY.v4, 1) == ["connected"]


def plan_is_empty(lab: Lab, gw: Gateway) -> bool:  # noqa: F811
    cp = ctl(lab, "plan", "--policy", str(gw.policy), "--state-dir", str(gw.state), "-o", "json")
    return cp.returncode == 0 and json.loads(cp.stdout)["changes"] == 0


def shape(lab: Lab) -> str:  # noqa: F811
    """The ruleset without counter values (the probes' packets move those) and without the
    offender sets' elements (the probes' sources, written by the kernel: data, not rules)."""
    text = re.sub(r"(set offenders_\S+ \{[^}]*?)\n\s*elements = \{[^}]*\}", r"\1", ruleset(lab))
    return re.sub(r"packets \d+ bytes \d+", "", text)


def chain(gw: Gateway, pool: str) -> str:
    return gw.nft("list", "chain", "inet", "op25b", f"pool_{pool}")


def test_policy_truncated_mid_write(lab: Lab, tmp_path: Path, record: Recorder) -> None:  # noqa: F811
    lab.serve_tcp([25])
    gw = applied_gateway(lab, tmp_path)
    gw.start()
    pools = gw.policy / "pools.yaml"
    good = pools.read_bytes()
    before = shape(lab)
    t0 = time.monotonic()
    with pools.open("r+b") as fh:  # an editor that died half way through an in-place write
        fh.truncate(len(good) // 2)
    wait_for("policy_valid 0", lambda: gw.sample("op25b_policy_valid") == 0)
    noticed = time.monotonic() - t0
    assert gw.proc is not None and gw.proc.poll() is None
    refused_by_packets(lab)
    same = shape(lab) == before
    pools.write_bytes(good)
    wait_for("policy_valid 1", lambda: gw.sample("op25b_policy_valid") == 1)
    assert_enforced(lab, gw)
    gw.stop()
    record(
        "policy truncated mid-write",
        done="pools.yaml cut to half its bytes in place while the daemon runs; then restored",
        expected="daemon keeps running and enforcing the last good policy; policy_valid 0, "
        "then 1 once the file is whole",
        observed=f"daemon alive; TCP/25 from enforced pools refused; ruleset "
        f"{'unchanged' if same else 'CHANGED'}; policy_valid 0 then 1",
        figure=f"refusal seen in {noticed:.1f} s",
    )
    assert same


def test_state_file_corrupt(lab: Lab, tmp_path: Path, record: Recorder) -> None:  # noqa: F811
    lab.serve_tcp([25])
    gw = applied_gateway(lab, tmp_path)
    gw.start()
    before = shape(lab)
    overrides = gw.state / "overrides.json"
    overrides.write_bytes(b'{"format": 1, "overrides": {"flets-east-dyn-1": {"pool"')
    wait_for("state_valid 0", lambda: gw.sample("op25b_state_valid") == 0)
    assert gw.proc is not None and gw.proc.poll() is None
    refused_by_packets(lab)
    cp = ctl(
        lab,
        "pool",
        "rollback",
        EAST1,
        "--reason",
        "INC-9",
        "--policy",
        str(gw.policy),
        "--state-dir",
        str(gw.state),
    )
    same = shape(lab) == before
    overrides.write_text("{}\n")
    wait_for("state_valid 1", lambda: gw.sample("op25b_state_valid") == 1)
    assert_enforced(lab, gw)
    gw.stop()
    record(
        "state file corrupt",
        done="overrides.json truncated mid-object while the daemon runs; an engineer runs "
        "`pool rollback`; then the file is fixed",
        expected="daemon keeps the last good state (state_valid 0); the command refuses "
        "(exit 1, names the file, nothing changed); state_valid 1 after the fix",
        observed=f"daemon alive, enforcing; pool rollback exit {cp.returncode}: "
        f"{cp.stderr.strip().splitlines()[0] if cp.stderr.strip() else ''}; ruleset "
        f"{'unchanged' if same else 'CHANGED'}",
    )
    assert cp.returncode == 1 and "overrides.json" in cp.stderr
    assert same


def test_disk_full(lab: Lab, tmp_path: Path, record: Recorder) -> None:  # noqa: F811
    lab.serve_tcp([25])
    gw = applied_gateway(lab, tmp_path)
    before = ruleset(lab)
    full = tmp_path / "full"
    full.mkdir(mode=0o750)
    # a private mount namespace: a 64 KiB tmpfs over the state directory, filled to the
    # last block, then the engineer's command (the host's mounts are not touched)
    script = (
        'set -e; mount -t tmpfs -o size=64k,mode=0750 tmpfs "$1"; cp -a "$2"/. "$1"/; '
        'dd if=/dev/zero of="$1/filler" bs=4k 2>/dev/null || true; '
        'set +e; "$3" pool rollback flets-east-dyn-1 --reason INC-10 --policy "$4" '
        '--state-dir "$1"; echo "exit=$?"'
    )
    cp = lab.run(
        lab.ns_gw,
        ["unshare", "-m", "sh", "-c", script, "sh", str(full), str(gw.state), CTL, str(gw.policy)],
        check=False,
    )
    code = int(cp.stdout.strip().rsplit("exit=", 1)[-1])
    same = ruleset(lab) == before
    assert_enforced(lab, gw)
    record(
        "disk full",
        done="state directory on a full 64 KiB tmpfs (private mount namespace); "
        "`pool rollback` of an enforced pool",
        expected="refused before anything changes: exit 1, ruleset unchanged, pool still enforced",
        observed=f"exit {code}: {cp.stderr.strip().splitlines()[0] if cp.stderr.strip() else ''}; "
        f"ruleset {'unchanged' if same else 'CHANGED'}; TCP/25 still refused",
    )
    assert code == 1 and "No space left" in cp.stderr.replace("no space left", "No space left")
    assert same


def test_metrics_port_taken_at_boot(lab: Lab, tmp_path: Path, record: Recorder) -> None:  # noqa: F811
    lab.serve_tcp([25])
    gw = Gateway(lab, tmp_path)  # a rebooted gateway: no table yet
    squatter = lab.start(
        lab.ns_gw, ["socat", "TCP-LISTEN:9625,bind=127.0.0.1,reuseaddr,fork", "SYSTEM:true"]
    )
    try:
        wait_for(
            "the squatter listening",
            lambda: "127.0.0.1:9625" in lab.run(lab.ns_gw, ["ss", "-ltn"]).stdout,
        )
        t0 = time.monotonic()
        gw.proc = lab.start(
            lab.ns_gw,
            [
                CTL,
                "daemon",
                "--policy",
                str(gw.policy),
                "--state-dir",
                str(gw.state),
                "--interval",
                "0.5",
            ],
        )
        wait_for("the table programmed", lambda: "pool_" + EAST1 in gw.nft("list", "ruleset"))
        programmed = time.monotonic() - t0
        assert gw.proc.poll() is None
        refused_by_packets(lab)
    finally:
        lab.stop(squatter)
    wait_for("metrics served once the port is free", lambda: gw.sample("op25b_table_in_sync") == 1)
    failures = gw.sample("op25b_metrics_bind_failures_total") or 0
    gw.stop()
    record(
        "metrics port taken at boot",
        done="127.0.0.1:9625 held by another process when the daemon starts on a gateway "
        "without a table; then released",
        expected="the table is programmed anyway; the port is retried and served once free",
        observed=f"table programmed and TCP/25 refused while the port was taken; metrics up "
        f"after {failures:.0f} failed bind(s)",
        figure=f"table in {programmed:.1f} s",
    )
    assert failures >= 1


STAGE = "2011-02-01T00:00:00+00:00"


def test_clock_steps_forward_and_back(lab: Lab, tmp_path: Path, record: Recorder) -> None:  # noqa: F811
    """`rollout tick` at times around a stage: forward across it applies it, back across it
    undoes it (the daemon follows the same rule: tests/unit/test_hardening.py)."""
    lab.serve_tcp([25])
    gw = Gateway(lab, tmp_path)
    (gw.policy / "rollout.yaml").write_text(
        f"stages:\n  - name: east2-on\n    at: {STAGE}\n    mode: enforce\n    pools: [{EAST2}]\n"
    )
    seen = []
    for now in (
        "2011-01-31T23:59+00:00",
        "2011-02-01T00:01+00:00",
        "2011-01-31T23:59+00:00",
        "2011-02-01T00:01+00:00",
    ):
        cp = ctl(
            lab,
            "rollout",
            "tick",
            "--policy",
            str(gw.policy),
            "--state-dir",
            str(gw.state),
            "--now",
            now,
        )
        assert cp.returncode == 0, cp.stderr
        enforced = "blocked_" + EAST2 in chain(gw, EAST2) and "reject" in chain(gw, EAST2)
        attempts = [
            str(r.outcome) for r in lab.connect_many(lab.ns_sub, [(DYN_B.v4, FOREIGN_MX.v4, 25)])
        ]
        seen.append((now[11:16], "enforce" if enforced else "not enforced", attempts[0]))
    record(
        "clock steps forward and back",
        done="rollout tick at 23:59, 00:01, 23:59, 00:01 around a stage at 00:00 that enforces "
        "flets-east-dyn-2",
        expected="the schedule follows the clock both ways: not enforced, enforced, not "
        "enforced, enforced (docs/rollout.md); real TCP/25 agrees",
        observed="; ".join(f"{t} {m} (TCP/25 {o})" for t, m, o in seen),
    )
    assert [m for _, m, _ in seen] == ["not enforced", "enforce", "not enforced", "enforce"]
    assert [o for _, _, o in seen] == ["connected", "refused", "connected", "refused"]


def test_two_clis_at_once(lab: Lab, tmp_path: Path, record: Recorder) -> None:  # noqa: F811
    lab.serve_tcp([25])
    gw = applied_gateway(lab, tmp_path)
    common = ["--policy", str(gw.policy), "--state-dir", str(gw.state)]
    procs = [
        lab.start(lab.ns_gw, [CTL, "pool", "rollback", EAST1, "--reason", "INC-11 a", *common]),
        lab.start(lab.ns_gw, [CTL, "pool", "monitor", WEST1, "--reason", "INC-11 b", *common]),
        lab.start(lab.ns_gw, [CTL, "apply", *common]),
    ]
    codes = []
    for p in procs:
        p.wait(timeout=120)
        codes.append(p.returncode)
    overrides = json.loads((gw.state / "overrides.json").read_text())["overrides"]
    entries = [json.loads(line) for line in (gw.state / "audit.jsonl").read_text().splitlines()]
    pools_audited = sorted(e.get("pool") for e in entries if e.get("pool"))
    # a held lock: the next command gives up after its --lock-timeout, changing nothing
    holder = subprocess.Popen(
        ["flock", str(gw.state / ".lock"), "sleep", "30"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            "lock held",
            lambda: (
                subprocess.run(
                    ["flock", "-n", str(gw.state / ".lock"), "true"], check=False
                ).returncode
                == 1
            ),
        )
        before = ruleset(lab)
        busy = ctl(
            lab, "pool", "enforce", EAST1, "--reason", "INC-12", "--lock-timeout", "0.3", *common
        )
        same = ruleset(lab) == before
    finally:
        holder.kill()
        holder.wait()
    assert plan_is_empty(lab, gw)
    record(
        "two CLIs at once",
        done="`pool rollback` of one pool, `pool monitor` of another and `apply`, started "
        "together; then a command while another process holds the lock",
        expected="all three succeed one after the other, both overrides kept and audited, "
        "the table equals the policy; a held lock gives exit 75, nothing changed",
        observed=f"exits {codes}; overrides {sorted(overrides)}; audited pools "
        f"{pools_audited}; plan empty; held lock: exit {busy.returncode}, ruleset "
        f"{'unchanged' if same else 'CHANGED'}",
    )
    assert codes == [0, 0, 0]
    assert sorted(overrides) == sorted([EAST1, WEST1])
    assert busy.returncode == 75 and same
