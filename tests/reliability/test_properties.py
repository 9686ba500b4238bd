"""Property-based (hypothesis): any valid policy renders a ruleset that nft loads, and what the
kernel then holds equals the model.

Hypothesis draws policy directories (pools with random prefix lengths in documentation
space, static and dynamic pools in every mode, relays, exemptions inside pools, both actions,
priorities, subscriber interfaces) and writes them as YAML. Each must load through the real
loader; a worker inside a network namespace (tests/reliability/nftworker.py) applies it with
the real binding, reads the whole table back (every element) and compares it with the model.
Examples alternate between a fresh table and a transition from the previous example's
table, so the diff path (element adds and removals, chain rewrites) is exercised too.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from op25b_ctl.errors import PolicyError
from op25b_ctl.policy.loader import load_policy
from tests.e2e.conftest import lab_unavailable
from tests.policytools import REPO
from tests.reliability.conftest import ROWS_ENV, Recorder

SECTION = "property"
pytestmark = pytest.mark.root

PYTHON = str(REPO / ".venv" / "bin" / "python")
NOW = "2011-01-20T09:00:00+09:00"
# make test: a quick sample; make reliability: a thorough one
EXAMPLES = int(
    os.environ.get("OP25B_PROPERTY_EXAMPLES", "150" if os.environ.get(ROWS_ENV) else "25")
)

V4_BLOCKS = [
    ipaddress.ip_network(f"{net}.{i * 32}/27")
    for net in ("192.0.2", "198.51.100")
    for i in range(8)
]
V6_BLOCKS = [ipaddress.ip_network(f"2001:db8:{i:x}::/48") for i in range(1, 40)]
RELAY_V4 = [f"203.0.113.{i}" for i in range(1, 60)]
RELAY_V6 = [f"2001:db8:ff00::{i:x}" for i in range(1, 60)]
MODES = ("off", "monitor", "enforce")


@st.composite
def sub_prefix(draw: st.DrawFn, block: Any) -> Any:
    """A prefix inside `block`, of any length from the block's to a host."""
    bits = block.max_prefixlen
    plen = draw(
        st.integers(block.prefixlen, bits if bits == 32 else min(bits, block.prefixlen + 24))
    )
    count = 1 << (plen - block.prefixlen)
    index = draw(st.integers(0, count - 1))
    size = 1 << (bits - plen)
    return ipaddress.ip_network((int(block.network_address) + index * size, plen))


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    n_pools = draw(st.integers(1, 6))
    v4 = draw(st.lists(st.sampled_from(V4_BLOCKS), min_size=1, max_size=12, unique=True))
    v6 = draw(st.lists(st.sampled_from(V6_BLOCKS), max_size=12, unique=True))
    blocks = v4 + v6
    n_pools = min(n_pools, len(blocks))
    names = draw(
        st.lists(
            st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True),
            min_size=n_pools,
            max_size=n_pools,
            unique=True,
        )
    )
    pools: list[dict[str, Any]] = []
    dynamic_prefixes: list[Any] = []
    for i, name in enumerate(names):
        mine = blocks[i::n_pools]
        prefixes = [draw(sub_prefix(b)) for b in mine]
        dynamic = draw(st.booleans()) if i else True  # at least one dynamic pool
        pool: dict[str, Any] = {
            "name": name,
            "dynamic": dynamic,
            "prefixes": [str(p) for p in prefixes],
        }
        if dynamic:
            pool["mode"] = draw(st.sampled_from(MODES))
            dynamic_prefixes += prefixes
        pools.append(pool)
    relays = [
        {
            "name": f"relay-{i}",
            "addresses": draw(
                st.lists(st.sampled_from(RELAY_V4 + RELAY_V6), min_size=1, max_size=3, unique=True)
            ),
        }
        for i in range(draw(st.integers(1, 2)))
    ]
    seen = {a for r in relays[:-1] for a in r["addresses"]}
    relays[-1]["addresses"] = [a for a in relays[-1]["addresses"] if a not in seen] or [
        RELAY_V4[-1]
    ]
    exempt_from = draw(st.lists(st.sampled_from(dynamic_prefixes), max_size=3, unique=True))
    exemptions = [
        {"prefix": str(draw(sub_prefix(p))), "ticket": f"NMT-{i}"}
        for i, p in enumerate(exempt_from)
    ]
    gateway = {
        "table": "op25b",
        "action": draw(st.sampled_from(["drop", "reject"])),
        "priority": draw(st.integers(-400, 400)),
        "subscriber_interfaces": draw(
            st.lists(
                st.from_regex(r"[a-z]{1,6}[0-9]{0,2}", fullmatch=True), max_size=2, unique=True
            )
        ),
    }
    return {
        "gateway.yaml": {"gateway": gateway},
        "pools.yaml": {"pools": pools},
        "relays.yaml": {"relays": relays},
        "exemptions.yaml": {"exemptions": exemptions},
    }


class Worker:
    def __init__(self, ns: str) -> None:
        env = {**os.environ, "OP25B_CACHE_DIR": "off", "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, PYTHON, "-m", "tests.reliability.nftworker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the worker died"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    ns = f"op25b-prop-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    w = Worker(ns)
    try:
        yield w
    finally:
        w.close()
        subprocess.run(["ip", "netns", "delete", ns], check=False, capture_output=True)


def test_any_valid_policy_loads_into_nft_and_the_kernel_holds_the_model(
    worker: Worker, tmp_path_factory: pytest.TempPathFactory, record: Recorder
) -> None:
    stats = {"examples": 0, "fresh": 0, "ops": 0, "elements": 0, "seconds": 0.0, "rejected": 0}
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
        derandomize=True,
    )
    @given(files=policies(), fresh=st.booleans())
    def check(files: dict[str, Any], fresh: bool) -> None:
        d = tmp_path_factory.mktemp("prop")
        for name, data in files.items():
            (d / name).write_text(yaml.safe_dump(data, sort_keys=False))
        try:
            policy = load_policy(d)
        except PolicyError as exc:
            # only the exemption checks may refuse what the strategy draws (two exemptions in
            # one pool prefix, say): anything else is the strategy's bug or the loader's
            assert all(p.file == "exemptions.yaml" for p in exc.problems), str(exc)
            stats["rejected"] += 1
            assume(False)
        answer = worker.ask({"policy": str(d), "fresh": fresh, "now": NOW})
        assert answer.get("ok"), answer
        stats["examples"] += 1
        stats["fresh"] += fresh
        stats["ops"] += answer["ops"]
        stats["seconds"] += answer["seconds"]
        stats["elements"] += sum(len(p.prefixes) for p in policy.pools)

    check()
    n = max(stats["examples"], 1)
    record(
        "valid policy -> nft -> kernel == model",
        done=f"{stats['examples']} hypothesis-drawn policies ({stats['fresh']} onto a fresh "
        f"table, the rest as a change from the previous one): 1-6 pools, prefixes /27-/32 and "
        f"/48-/72, every mode, both actions, relays, exemptions; applied with the real binding "
        f"in a namespace, read back in full",
        expected="every one loads; the kernel's table equals the model (sets element by "
        "element, chains rule by rule, counters)",
        observed=f"{stats['examples']} of {stats['examples']} equal; "
        f"{stats['rejected']} draws refused by the exemption checks (skipped)",
        figure=f"{stats['seconds'] / n * 1000:.0f} ms per apply; {stats['ops'] / n:.0f} ops "
        f"per change; {time.monotonic() - started:.0f} s in all",
    )
    assert stats["examples"] >= EXAMPLES // 2
