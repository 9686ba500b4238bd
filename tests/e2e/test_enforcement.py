"""The foundation end to end: policy files -> real nftables in a gateway -> real packets."""

from __future__ import annotations

from pathlib import Path

import pytest

from op25b_lab.lab import (
    DYN_A,
    DYN_B,
    DYN_W,
    FOREIGN_MX,
    RELAY,
    STATIC,
    UNLISTED,
    Lab,
    Outcome,
    swaks_outcome,
)
from tests.e2e.ctl import CTL, ctl, ctl_json, pool_counters, ruleset
from tests.policytools import EXAMPLE, edit, example_policy

pytestmark = pytest.mark.root

# A table standing for another owner's (docker's) on the same gateway.
FOREIGN_TABLE = """\
table ip docker_stub {
    chain forward {
        type filter hook forward priority 10; policy accept;
        tcp dport 8080 counter accept
    }
}
"""


def outcomes(lab: Lab, targets: list[tuple[str, str, int]]) -> dict[tuple[str, str, int], Outcome]:
    results = lab.connect_many(lab.ns_sub, targets, timeout=1.0)
    return {t: r.outcome for t, r in zip(targets, results, strict=True)}


@pytest.fixture
def gateway(lab: Lab) -> Lab:
    """The lab with TCP listeners on 25/587/465 and another owner's table already loaded."""
    lab.serve_tcp([25, 465, 587])
    lab.run(lab.ns_gw, ["nft", "-f", "-"], input=FOREIGN_TABLE)
    return lab


def test_enforced_pool_blocked_relay_and_submission_pass(gateway: Lab) -> None:
    lab = gateway
    other_before = lab.run(lab.ns_gw, ["nft", "list", "table", "ip", "docker_stub"]).stdout
    assert ctl(lab, "apply", "--policy", str(EXAMPLE)).returncode == 0

    t = []
    for v in (0, 1):  # IPv4 and IPv6
        t += [
            (DYN_A.both[v], FOREIGN_MX.both[v], 25),  # enforced pool, direct: blocked
            (DYN_W.both[v], FOREIGN_MX.both[v], 25),  # second enforced pool: blocked
            (DYN_A.both[v], RELAY.both[v], 25),  # to NMTnet's relay: passes
            (DYN_A.both[v], FOREIGN_MX.both[v], 587),  # submission: passes
            (DYN_A.both[v], FOREIGN_MX.both[v], 465),  # submissions (TLS): passes
            (DYN_B.both[v], FOREIGN_MX.both[v], 25),  # monitor pool: counted, passes
            (STATIC.both[v], FOREIGN_MX.both[v], 25),  # static IP: untouched
            (UNLISTED.both[v], FOREIGN_MX.both[v], 25),  # in no pool: untouched
        ]
    got = outcomes(lab, t)
    for target, outcome in got.items():
        src, dst, port = target
        blocked = port == 25 and dst in FOREIGN_MX.both and src in DYN_A.both + DYN_W.both
        assert outcome == (Outcome.REFUSED if blocked else Outcome.CONNECTED), (target, outcome)

    pools = pool_counters(lab, EXAMPLE)
    # each refused attempt is one SYN answered by our reset: exactly one packet per attempt
    assert pools["flets-east-dyn-1"]["blocked"]["packets"] == 2
    assert pools["flets-west-dyn-1"]["blocked"]["packets"] == 2
    assert pools["flets-east-dyn-1"]["blocked"]["bytes"] > 0
    assert pools["flets-east-dyn-2"]["blocked"]["packets"] == 0
    assert pools["flets-east-dyn-2"]["monitored"]["packets"] >= 2  # would-block, let through
    assert pools["static-biz"]["blocked"]["packets"] == 0
    status = ctl_json(lab, "status", "--policy", str(EXAMPLE))
    assert status["rules_in_sync"] is True
    assert status["relayed"]["packets"] >= 2
    assert {p["name"]: p["live_mode"] for p in status["pools"]} == {
        "flets-east-dyn-1": "enforce",
        "flets-east-dyn-2": "monitor",
        "flets-west-dyn-1": "enforce",
        "static-biz": "off",
    }
    assert lab.run(lab.ns_gw, ["nft", "list", "table", "ip", "docker_stub"]).stdout == other_before


def test_drop_mode_times_out_instead_of_reset(gateway: Lab, tmp_path: Path) -> None:
    lab = gateway
    policy = example_policy(tmp_path)
    edit(policy / "gateway.yaml", "action: reject", "action: drop")
    assert ctl(lab, "apply", "--policy", str(policy)).returncode == 0
    got = outcomes(lab, [(DYN_A.v4, FOREIGN_MX.v4, 25), (DYN_A.v6, FOREIGN_MX.v6, 25)])
    assert set(got.values()) == {Outcome.TIMEOUT}
    assert pool_counters(lab, policy)["flets-east-dyn-1"]["blocked"]["packets"] >= 2


def test_second_apply_changes_nothing_and_keeps_counters(gateway: Lab, tmp_path: Path) -> None:
    lab = gateway
    assert ctl(lab, "apply", "--policy", str(EXAMPLE)).returncode == 0
    outcomes(lab, [(DYN_A.v4, FOREIGN_MX.v4, 25)] * 3)
    before = pool_counters(lab, EXAMPLE)["flets-east-dyn-1"]["blocked"]
    assert before["packets"] == 3

    again = ctl_json(lab, "apply", "--policy", str(EXAMPLE))
    assert again["changes"] == 0 and again["applied"] is False
    assert pool_counters(lab, EXAMPLE)["flets-east-dyn-1"]["blocked"] == before

    # another pool changing mode rewrites only its own chain: our counter keeps counting
    policy = example_policy(tmp_path)
    # (flets-east-dyn-2's enforcement date, "tbd" in the example, is announced)
    edit(policy / "rollout.yaml", "at: tbd", "at: 2011-01-31T10:00:00+09:00")
    changed = ctl_json(lab, "apply", "--policy", str(policy))
    assert changed["diff"][0] == "~ chain pool_flets-east-dyn-2: rules replaced"
    assert pool_counters(lab, policy)["flets-east-dyn-1"]["blocked"] == before
    assert outcomes(lab, [(DYN_B.v4, FOREIGN_MX.v4, 25)]) == {
        (DYN_B.v4, FOREIGN_MX.v4, 25): Outcome.REFUSED
    }


def test_real_smtp_refused_direct_accepted_on_submission(lab: Lab) -> None:
    sink = lab.serve_smtp(25, also=(587,))
    assert ctl(lab, "apply", "--policy", str(EXAMPLE)).returncode == 0

    direct = lab.swaks(DYN_A.v4, FOREIGN_MX.v4, 25, subject="direct-to-mx")
    assert swaks_outcome(direct) == Outcome.REFUSED, direct.stdout
    submission = lab.swaks(DYN_A.v4, FOREIGN_MX.v4, 587, subject="via-submission")
    assert swaks_outcome(submission) == "delivered", submission.stdout
    relayed = lab.swaks(DYN_A.v6, RELAY.v6, 25, subject="via-relay")
    assert swaks_outcome(relayed) == "delivered", relayed.stdout

    subjects = {m.subject for m in sink.messages()}
    assert subjects == {"via-submission", "via-relay"}


BAD_EDITS = {
    "host bits": ("pools.yaml", "192.0.2.0/26", "192.0.2.1/26"),
    "malformed prefix": ("pools.yaml", "192.0.2.0/26", "192.0.2.0/2x"),
    "overlapping pools": ("pools.yaml", "192.0.2.64/26", "192.0.2.0/25"),
    "relay inside pool": ("relays.yaml", "203.0.113.25", "192.0.2.25"),
    "duplicate name": ("pools.yaml", "flets-east-dyn-2", "flets-east-dyn-1"),
    "unsafe name": ("pools.yaml", "flets-west-dyn-1", "x; flush ruleset"),
    "unknown key": ("gateway.yaml", "priority: 0", "prio: 0"),
    "empty pool": ("pools.yaml", "[198.51.100.0/25, 2001:db8:2000::/40]", "[]"),
    "wrong type": ("gateway.yaml", "priority: 0", 'priority: "0"'),
}


def test_bad_input_leaves_live_ruleset_unchanged(gateway: Lab, tmp_path: Path) -> None:
    lab = gateway
    assert ctl(lab, "apply", "--policy", str(EXAMPLE)).returncode == 0
    before = ruleset(lab)
    for case, (file, old, new) in BAD_EDITS.items():
        policy = example_policy(tmp_path / case.replace(" ", "-"))
        edit(policy / file, old, new)
        cp = ctl(lab, "apply", "--policy", str(policy))
        assert cp.returncode == 2, (case, cp.stdout, cp.stderr)
        assert f"{file}:" in cp.stderr and "nothing applied" in cp.stderr, (case, cp.stderr)
        assert ruleset(lab) == before, case


def test_foreign_table_with_our_name_is_refused(lab: Lab) -> None:
    lab.run(lab.ns_gw, ["nft", "add", "table", "inet", "op25b"])
    lab.run(lab.ns_gw, ["nft", "add", "chain", "inet", "op25b", "mine"])
    lab.run(lab.ns_gw, ["nft", "add", "rule", "inet", "op25b", "mine", "counter"])
    before = ruleset(lab)
    cp = ctl(lab, "apply", "--policy", str(EXAMPLE))
    assert cp.returncode == 2 and "not created by op25b-ctl" in cp.stderr
    assert ruleset(lab) == before


def test_teardown_removes_only_our_table(gateway: Lab) -> None:
    lab = gateway
    other = lab.run(lab.ns_gw, ["nft", "list", "table", "ip", "docker_stub"]).stdout
    assert ctl(lab, "apply", "--policy", str(EXAMPLE)).returncode == 0
    assert outcomes(lab, [(DYN_A.v4, FOREIGN_MX.v4, 25)])[(DYN_A.v4, FOREIGN_MX.v4, 25)] == (
        Outcome.REFUSED
    )
    gone = ctl_json(lab, "teardown", "--yes", "--policy", str(EXAMPLE))
    assert gone["removed"] is True
    assert outcomes(lab, [(DYN_A.v4, FOREIGN_MX.v4, 25)])[(DYN_A.v4, FOREIGN_MX.v4, 25)] == (
        Outcome.CONNECTED
    )
    assert ruleset(lab) == other  # only the other owner's table is left, byte for byte


FAILING_TX = """
from op25b_ctl.kernel.nft import NftKernel
from op25b_ctl.errors import KernelError
from op25b_ctl.plan.transaction import AddElements, FlushChain, Transaction

tx = Transaction("inet", "op25b", (
    FlushChain("pool_flets-east-dyn-1"),
    # overlaps 192.0.2.0/26 already in the map: nftables refuses the whole batch
    AddElements("pools_v4", {"192.0.2.0/27": "pool_flets-east-dyn-1"}),
))
try:
    NftKernel().apply(tx)
except KernelError as exc:
    print("refused:", exc)
else:
    raise SystemExit("the kernel accepted an overlapping element")
"""


def test_refused_transaction_leaves_everything_as_it_was(gateway: Lab) -> None:
    lab = gateway
    assert ctl(lab, "apply", "--policy", str(EXAMPLE)).returncode == 0
    before = ruleset(lab)
    python = str(Path(CTL).parent / "python")
    cp = lab.run(lab.ns_gw, [python, "-c", FAILING_TX], check=False)
    assert cp.returncode == 0, cp.stderr
    assert "refused:" in cp.stdout and "overlap" in cp.stdout
    assert ruleset(lab) == before  # the flush in the same batch did not happen either


@pytest.mark.parametrize(
    ("interfaces", "expected"), [("[sub0]", Outcome.REFUSED), ("[ppp9]", Outcome.CONNECTED)]
)
def test_subscriber_interfaces_limit_where_we_enforce(
    gateway: Lab, tmp_path: Path, interfaces: str, expected: Outcome
) -> None:
    lab = gateway
    policy = example_policy(tmp_path)
    edit(
        policy / "gateway.yaml",
        "  # subscriber_interfaces: [ppp0, ppp1]",
        f"  subscriber_interfaces: {interfaces}",
    )
    assert ctl(lab, "apply", "--policy", str(policy)).returncode == 0
    target = (DYN_A.v4, FOREIGN_MX.v4, 25)
    assert outcomes(lab, [target])[target] == expected
