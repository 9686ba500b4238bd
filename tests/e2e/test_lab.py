"""The lab itself, with no op25b ruleset loaded: later e2e tests trust exactly these behaviours."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest

from op25b_lab.lab import (
    DESTINATIONS,
    DYN_A,
    DYN_W,
    FOREIGN_MX,
    RELAY,
    SOURCES,
    Lab,
    Outcome,
    swaks_outcome,
)

pytestmark = pytest.mark.root

PORTS = (25, 587)


def _host_netns() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def served(lab: Lab) -> Iterator[Lab]:
    """The lab with plain TCP listeners on RELAY and FOREIGN_MX, ports 25 and 587."""
    proc = lab.serve_tcp(PORTS)
    yield lab
    lab.stop(proc)


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_every_source_reaches_relay_and_foreign_mx(served: Lab, family: str) -> None:
    targets = [
        (getattr(src, family), getattr(dst, family), port)
        for src in SOURCES
        for dst in DESTINATIONS
        for port in PORTS
    ]
    results = served.connect_many(served.ns_sub, targets)
    assert [r for r in results if not r.connected] == []
    assert len(results) == len(SOURCES) * len(DESTINATIONS) * len(PORTS)


@pytest.mark.parametrize("src,dst", [(DYN_A.v4, FOREIGN_MX.v4), (DYN_W.v6, RELAY.v6)])
def test_port_without_listener_is_refused(served: Lab, src: str, dst: str) -> None:
    result = served.connect(src, dst, 2525)
    assert result.outcome is Outcome.REFUSED
    assert result.elapsed < 0.5


SCRATCH = """\
table inet lab_scratch {{
    chain block25 {{
        type filter hook forward priority 0; policy accept;
        tcp dport 25 {verdict}
    }}
}}
"""


@pytest.mark.parametrize(
    "verdict,expected",
    [("drop", Outcome.TIMEOUT), ("reject with tcp reset", Outcome.REFUSED)],
)
def test_gw_rule_turns_port_25_into_timeout_or_refused(
    served: Lab, verdict: str, expected: Outcome
) -> None:
    host_ruleset = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True)
    served.run(served.ns_gw, ["nft", "-f", "-"], input=SCRATCH.format(verdict=verdict))

    targets = [(DYN_A.v4, FOREIGN_MX.v4, 25), (DYN_A.v6, FOREIGN_MX.v6, 25)]
    blocked = served.connect_many(served.ns_sub, targets, timeout=1.0)
    assert [r.outcome for r in blocked] == [expected, expected]
    # Only port 25 is affected: submission still connects.
    assert served.connect(DYN_A.v4, FOREIGN_MX.v4, 587).connected
    # swaks sees the same thing, and swaks_outcome tells the two apart.
    cp = served.swaks(DYN_A.v4, FOREIGN_MX.v4, 25, timeout=1)
    assert cp.returncode == 2
    assert swaks_outcome(cp) == expected
    # The scratch table lives in gw only; the host's ruleset is as it was.
    after = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True)
    assert after.stdout == host_ruleset.stdout
    assert "lab_scratch" not in after.stdout


def test_swaks_delivers_to_foreign_mx_and_sink_records_it(lab: Lab) -> None:
    if shutil.which("swaks") is None:
        pytest.skip("needs Debian's swaks")
    pytest.importorskip("aiosmtpd", reason="the lab's SMTP server is aiosmtpd")
    sink = lab.serve_smtp()
    v4 = lab.swaks(DYN_A.v4, FOREIGN_MX.v4, 25, subject="lab-v4")
    v6 = lab.swaks(DYN_W.v6, FOREIGN_MX.v6, 25, subject="lab-v6")
    sub = lab.swaks(DYN_A.v4, RELAY.v4, 587, subject="lab-587")
    for cp in (v4, v6, sub):
        assert swaks_outcome(cp) == "delivered", cp.stdout + cp.stderr

    got = {m.subject: m for m in sink.messages()}
    assert set(got) == {"lab-v4", "lab-v6", "lab-587"}
    # No NAT anywhere: the server sees the subscriber's own source address.
    assert (got["lab-v4"].peer, got["lab-v4"].local, got["lab-v4"].local_port) == (
        DYN_A.v4,
        FOREIGN_MX.v4,
        25,
    )
    assert (got["lab-v6"].peer, got["lab-v6"].local) == (DYN_W.v6, FOREIGN_MX.v6)
    assert (got["lab-587"].local, got["lab-587"].local_port) == (RELAY.v4, 587)
    assert got["lab-v4"].rcpt_tos == ("postmaster@mx.example.net",)


def test_gw_forwards_inside_its_namespace_only(lab: Lab) -> None:
    fwd = lab.run(
        lab.ns_gw, ["sysctl", "-n", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"]
    )
    assert fwd.stdout.split() == ["1", "1"]
    links = lab.run(lab.ns_gw, ["ip", "-o", "link", "show"]).stdout
    assert "sub0" in links and "out0" in links
    host_links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True)
    assert "sub0" not in host_links.stdout and "out0" not in host_links.stdout


def test_destroy_removes_namespaces_and_processes(make_lab: Callable[[], Lab]) -> None:
    lab = make_lab()
    proc = lab.serve_tcp([25])
    pids = lab.pids
    assert pids == [proc.pid] and _alive(proc.pid)
    assert all(ns in _host_netns() for ns in lab.namespaces)
    lab.destroy()
    assert not any(ns in _host_netns() for ns in lab.namespaces)
    assert not any(_alive(pid) for pid in pids)
    assert lab.pids == []
    assert not lab.workdir.exists()
    lab.destroy()  # idempotent
