"""The synthetic ISP inventory, and the same inventory written the ways the baselines load it.

Addresses: 100,000 /30s do not fit in the documentation ranges, so the *set elements* come
from 10.0.0.0/8 (one /30 every 8 addresses, never adjacent) and 2001:db8:8000::/40 (one /64
every second /64). They only ever exist as elements of a ruleset inside a throw-away
namespace and are never routed or addressed. The hosts that send and receive real traffic are
the lab's documentation addresses: the enforced pool also holds DYN_A's 192.0.2.0/26 and
2001:db8:1000::/40, and the relay is the lab's RELAY.

Pure: text in, text out; the runner writes the files.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from op25b_ctl.plan.modes import decide, modes
from op25b_ctl.plan.ruleset import (
    desired_table,
    offender_set,
    pool_chain,
    tracking_of,
    tracking_rules,
)
from op25b_ctl.plan.table import Table
from op25b_ctl.policy.model import Gateway, Mode, Policy, Pool, Relay, split_families
from op25b_lab.lab import DYN_A, POOLS, RELAY

POOL_COUNT = 1000
V4_BASE = int(ipaddress.IPv4Address("10.0.0.0"))
V4_STEP = 8  # a /30 every 8 addresses: a gap after each element, so none are adjacent
V4_LEN = 30
V6_BASE = int(ipaddress.IPv6Address("2001:db8:8000::"))
V6_STEP = 2 << 64  # every second /64
V6_LEN = 64
# DYN_A's pool sits mid-way through the pools, so a linear ruleset's match is average-case.
ENFORCED_POOL = 500
CHANGE_POOL = 2  # the pool whose mode the rollout/rollback figure flips
REFERENCE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
TABLE = "op25b"
LINEAR_TABLE = "op25b_linear"
DYN_A_V4 = next(p.v4 for p in POOLS if p.name == DYN_A.pool)
DYN_A_V6 = next(p.v6 for p in POOLS if p.name == DYN_A.pool)


def pool_name(i: int) -> str:
    return f"pool-{i:04d}"


def pool_mode(i: int) -> Mode:
    """Nine pools in ten enforced, the tenth monitored: a rollout well under way."""
    return "monitor" if i % 10 == 9 else "enforce"


@dataclass(frozen=True)
class Size:
    """One inventory size: total IPv4 and IPv6 prefixes over POOL_COUNT pools."""

    v4: int
    v6: int

    @property
    def label(self) -> str:
        return f"{self.v4:,} v4 + {self.v6:,} v6"

    @property
    def elements(self) -> int:
        return self.v4 + self.v6


MAIN = Size(100_000, 10_000)
SCALING = (Size(1_000, 100), Size(10_000, 1_000), MAIN, Size(1_000_000, 100_000))


def _v4(k: int) -> str:
    return f"{ipaddress.IPv4Address(V4_BASE + k * V4_STEP)}/{V4_LEN}"


def _v6(k: int) -> str:
    return f"{ipaddress.IPv6Address(V6_BASE + k * V6_STEP)}/{V6_LEN}"


def synthetic_policy(size: Size, *, validate: bool = True) -> Policy:
    """POOL_COUNT dynamic pools sharing size.v4 /30s and size.v6 /64s, action reject.

    `validate=False` builds the pool models without pydantic's per-prefix checks (the
    prefixes are canonical by construction); the 1,000,000-prefix row uses it to save time.
    """
    if size.v4 % POOL_COUNT:
        raise ValueError(f"v4 prefixes ({size.v4}) must be a multiple of {POOL_COUNT}")
    per = size.v4 // POOL_COUNT
    v6_of: list[list[str]] = [[] for _ in range(POOL_COUNT)]
    for k in range(size.v6):
        v6_of[k % POOL_COUNT].append(_v6(k))
    pools = []
    for i in range(POOL_COUNT):
        v4 = [_v4(k) for k in range(i * per, (i + 1) * per)]
        v6 = v6_of[i]
        if i == ENFORCED_POOL:  # the lab's DYN_A sends real traffic from here
            v4 = [DYN_A_V4, *v4[1:]]
            v6 = [DYN_A_V6, *v6[1:]] if v6 else []  # keep the counts exact
        fields = {"name": pool_name(i), "mode": pool_mode(i), "prefixes": v4 + v6}
        pools.append(Pool(**fields) if validate else Pool.model_construct(**fields))  # type: ignore[arg-type]
    relay = Relay(name="lab-relay", addresses=list(RELAY.both))
    return Policy(Gateway(table=TABLE, action="reject"), tuple(pools), (relay,))


def with_mode(policy: Policy, pool: str, mode: Mode) -> Policy:
    """The same policy with one pool's mode changed."""
    pools = tuple(
        p.model_copy(update={"mode": mode}) if p.name == pool else p for p in policy.pools
    )
    return Policy(policy.gateway, pools, policy.relays)


def desired(policy: Policy, now: datetime = REFERENCE_TIME) -> Table:
    """The table op25b-ctl builds for `policy`; the synthetic policy has no rollout stages,
    so any `now` gives the same table (the daemon computes it with the real clock)."""
    return desired_table(policy, modes(decide(policy, now)))


# ------------------------------------------------------------------ policy files (YAML)


def policy_files(policy: Policy) -> dict[str, str]:
    """gateway.yaml, pools.yaml and relays.yaml for `policy`, as the operator would write them.

    Written as flow lists line by line: PyYAML's emitter takes far longer than the loader
    at 110,000 prefixes, and every value here is a plain token that needs no quoting.
    """
    gw = policy.gateway
    pools = ["pools:"]
    for p in policy.pools:
        pools += [
            f"  - name: {p.name}",
            f"    mode: {p.mode}",
            f"    prefixes: [{', '.join(p.prefixes)}]",
        ]
    relays = ["relays:"]
    for r in policy.relays:
        relays += [f"  - name: {r.name}", f"    addresses: [{', '.join(r.addresses)}]"]
    return {
        "gateway.yaml": f"gateway:\n  table: {gw.table}\n  action: {gw.action}\n",
        "pools.yaml": "\n".join(pools) + "\n",
        "relays.yaml": "\n".join(relays) + "\n",
    }


# ------------------------------------------------------------------ baseline: nft -f text


def _chain_body(policy: Policy, pool: Pool, action: str) -> list[str]:
    """The pool chain's rules: the offender recording rules (no verdict), then the count."""
    tracking = tracking_of(policy, pool.name)
    track = [] if tracking is None or pool.mode == "off" else tracking_rules(pool.name, tracking)
    return [f"    {r.text}" for r in track] + [f"    {_verdict(pool, action)}"]


def _offender_sets(policy: Policy) -> list[str]:
    """Each tracked pool's two dynamic sets, declared as op25b-ctl declares them."""
    lines = []
    for p in policy.pools:
        tracking = tracking_of(policy, p.name)
        if tracking is None:
            continue
        for version, kind in ((4, "ipv4_addr"), (6, "ipv6_addr")):
            lines.append(
                f"  set {offender_set(p.name, version)} {{ type {kind}; flags dynamic,timeout; "
                f"timeout {tracking.timeout}s; size {tracking.size}; counter; }}"
            )
    return lines


def _verdict(pool: Pool, action: str) -> str:
    if pool.mode == "enforce":
        verdict = "reject with tcp reset" if action == "reject" else "drop"
        return f"counter name blocked_{pool.name} {verdict}"
    if pool.mode == "monitor":
        return f"counter name monitored_{pool.name}"
    return ""


def _elements(items: list[str]) -> str:
    return f"elements = {{ {', '.join(items)} }}; " if items else ""


def handwritten_ruleset(policy: Policy) -> str:
    """What an engineer would write by hand for the same table: the same counters, sets,
    verdict maps and chains as op25b-ctl's, as one declarative `table { ... }` block."""
    action = policy.gateway.action
    relays_v4, relays_v6 = split_families(policy.relay_prefixes())
    lines = [f"table inet {policy.gateway.table} {{"]
    lines += ["  counter relayed {}", "  counter exempted {}"]
    for p in policy.pools:
        lines += [f"  counter blocked_{p.name} {{}}", f"  counter monitored_{p.name} {{}}"]
    for p in policy.pools:
        lines += [f"  chain {pool_chain(p.name)} {{", *_chain_body(policy, p, action), "  }"]
    lines += _offender_sets(policy)
    for name, kind, items in (
        ("relays_v4", "ipv4_addr", relays_v4),
        ("relays_v6", "ipv6_addr", relays_v6),
    ):
        lines.append(f"  set {name} {{ type {kind}; flags interval; {_elements(items)}}}")
    for name, kind, fam in (("pools_v4", "ipv4_addr", 0), ("pools_v6", "ipv6_addr", 1)):
        items = [
            f"{prefix} : jump {pool_chain(p.name)}"
            for p in policy.pools
            for prefix in split_families(p.prefixes)[fam]
        ]
        lines.append(f"  map {name} {{ type {kind} : verdict; flags interval; {_elements(items)}}}")
    lines += [
        "  chain exempt {",  # the bench policy exempts nobody: no rule
        "  }",
        "  chain smtp {",
        "    ip daddr @relays_v4 counter name relayed accept",
        "    ip6 daddr @relays_v6 counter name relayed accept",
        "    jump exempt",
        "    ip saddr vmap @pools_v4",
        "    ip6 saddr vmap @pools_v6",
        "  }",
        "  chain gate {",
        f"    type filter hook forward priority {policy.gateway.priority}; policy accept;",
        "    tcp dport 25 jump smtp",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ baseline: rule per prefix


def _v4_pairs(policy: Policy) -> list[tuple[str, Pool]]:
    return [(prefix, p) for p in policy.pools for prefix in split_families(p.prefixes)[0]]


def linear_window(policy: Policy, rules: int) -> list[tuple[str, Pool]]:
    """`rules` consecutive (v4 prefix, pool) pairs with DYN_A's prefix in the middle."""
    pairs = _v4_pairs(policy)
    at = next(i for i, (prefix, _) in enumerate(pairs) if prefix == DYN_A_V4)
    start = max(0, min(at - rules // 2, len(pairs) - rules))
    return pairs[start : start + rules]


def linear_ruleset(policy: Policy, rules: int) -> str:
    """The rule-per-prefix way, in nftables: the same port-25 dispatch and per-pool chains,
    but one `ip saddr <prefix> jump pool_<name>` rule per prefix instead of one map lookup."""
    window = linear_window(policy, rules)
    action = policy.gateway.action
    pools = {p.name: p for _, p in window}
    relays_v4, _ = split_families(policy.relay_prefixes())
    lines = [f"table inet {LINEAR_TABLE} {{"]
    for p in pools.values():
        lines += [f"  counter blocked_{p.name} {{}}", f"  counter monitored_{p.name} {{}}"]
        lines += [f"  chain {pool_chain(p.name)} {{", *_chain_body(policy, p, action), "  }"]
    lines += _offender_sets(policy)
    lines += ["  chain smtp {"]
    lines += [f"    ip daddr {r} accept" for r in relays_v4]
    lines += [f"    ip saddr {prefix} jump {pool_chain(p.name)}" for prefix, p in window]
    lines += [
        "  }",
        "  chain gate {",
        "    type filter hook forward priority 0; policy accept;",
        "    tcp dport 25 jump smtp",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ baseline: ipset + iptables


def ipset_name(pool: Pool, family: int) -> str:
    return f"{pool.name}-v{family}"  # ipset names: at most 31 characters


def ipset_restore(policy: Policy, *, v6: bool = True) -> str:
    """`ipset restore` input: one hash:net set per pool and family, with every prefix."""

    def lines() -> Iterator[str]:
        for p in policy.pools:
            v4s, v6s = split_families(p.prefixes)
            for fam, items, family in ((4, v4s, "inet"), (6, v6s, "inet6")):
                if fam == 6 and not v6:
                    continue
                name = ipset_name(p, fam)
                yield f"create {name} hash:net family {family} maxelem {max(65536, len(items))}"
                yield from (f"add {name} {prefix}" for prefix in items)

    return "\n".join(lines()) + "\n"


def iptables_restore(policy: Policy) -> str:
    """`iptables-legacy-restore` input, the classic way: port 25 jumps to a chain holding one
    rule per pool that matches the pool's ipset (enforce: REJECT with a TCP reset; monitor:
    ACCEPT, which counts it). The relay is accepted first, as in op25b-ctl's table."""
    relays_v4, _ = split_families(policy.relay_prefixes())
    lines = ["*filter", ":FORWARD ACCEPT [0:0]", ":SMTP - [0:0]"]
    lines.append("-A FORWARD -p tcp --dport 25 -j SMTP")
    lines += [f"-A SMTP -d {r} -j ACCEPT" for r in relays_v4]
    for p in policy.pools:
        if p.mode == "off":
            continue
        target = "REJECT --reject-with tcp-reset" if p.mode == "enforce" else "ACCEPT"
        lines.append(f"-A SMTP -p tcp -m set --match-set {ipset_name(p, 4)} src -j {target}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
