"""The data-path benchmark's load generator: several processes, each from its own source
address, started together, their rates summed; every attempt answered by `out`'s reset."""

from __future__ import annotations

import json
import re
import sys

import pytest

from bench.datapath import load_sources
from bench.run import add_load_sources
from op25b_lab.lab import DYN_A, FOREIGN_MX, Lab

pytestmark = pytest.mark.root

COUNT_SOURCES = """
table inet loadgen_test {
    chain seen {
        type filter hook input priority 0; policy accept;
        ip saddr 192.0.2.10 tcp dport 25 counter
        ip saddr 192.0.2.11 tcp dport 25 counter
    }
}
"""


def _loadgen(
    lab: Lab, sources: list[str], *, check: bool = True, syn: bool = False
) -> tuple[int, str]:
    argv = [sys.executable, "-m", "bench.worker", "loadgen", "--dst", FOREIGN_MX.v4]
    argv += ["--port", "25", "--seconds", "0.3", "--window", "4"]
    argv += ["--syn"] if syn else []
    for src in sources:
        argv += ["--src", src]
    cp = lab.run(lab.ns_sub, argv, check=check)
    return cp.returncode, cp.stdout if cp.returncode == 0 else cp.stderr


def test_each_process_sends_from_its_own_source_and_the_rates_add_up(lab: Lab) -> None:
    sources = load_sources(DYN_A.v4, 2)
    add_load_sources(lab, sources)
    lab.run(lab.ns_out, ["nft", "-f", "-"], input=COUNT_SOURCES)
    _, out = _loadgen(lab, sources)
    got = json.loads(out)
    assert len(got["per_process"]) == 2 and all(r > 0 for r in got["per_process"])
    assert got["per_second"] == pytest.approx(sum(got["per_process"]))
    assert got["attempts"] > 0 and got["outcomes"]["refused"] == got["attempts"]
    assert got["cpu_per_attempt"] > 0 and 0 < got["busy"] <= 1
    chain = lab.run(lab.ns_out, ["nft", "list", "chain", "inet", "loadgen_test", "seen"]).stdout
    seen = [int(n) for n in re.findall(r"counter packets (\d+)", chain)]
    assert len(seen) == 2 and all(n > 0 for n in seen), chain  # both sources sent SYNs


@pytest.mark.parametrize("syn", [False, True], ids=["connects", "raw SYNs"])
def test_a_source_sub_does_not_have_fails_the_sample(lab: Lab, syn: bool) -> None:
    status, err = _loadgen(lab, [DYN_A.v4, "192.0.2.12"], check=False, syn=syn)
    assert status != 0 and "192.0.2.12" in err


def test_raw_syns_are_counted_by_the_resets_that_come_back(lab: Lab) -> None:
    sources = load_sources(DYN_A.v4, 2)
    add_load_sources(lab, sources)
    lab.run(lab.ns_out, ["nft", "-f", "-"], input=COUNT_SOURCES)
    got = json.loads(_loadgen(lab, sources, syn=True)[1])
    # out's TCP answers every SYN with a reset (valid checksums); sub counts them
    assert got["attempts"] > 0 and got["outcomes"]["refused"] == got["attempts"]
    assert got["outcomes"]["unanswered"] <= got["attempts"] // 100
    chain = lab.run(lab.ns_out, ["nft", "list", "chain", "inet", "loadgen_test", "seen"]).stdout
    seen = [int(n) for n in re.findall(r"counter packets (\d+)", chain)]
    assert len(seen) == 2 and all(n > 0 for n in seen), chain
    assert sum(seen) >= got["attempts"]  # every counted reset answered a SYN that arrived
