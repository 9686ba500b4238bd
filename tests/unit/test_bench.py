"""The benchmark's pure parts: the synthetic inventory, the baselines' texts, PASS/MISS logic.

The numbers `make bench` reports mean something only if the inventory is a valid policy of
the stated size and the baselines describe the same thing; these tests pin that down.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import inventory as inv
from bench.datapath import Rate, load_sources
from bench.report import Figure, Sense
from bench.run import (
    DataPath,
    SizeResult,
    attempt_cost,
    cost_rows,
    datapath_lines,
    walk_note,
    walk_split,
)
from bench.worker import WALK_TABLE, _is_chain_rewrite, with_pool_mode, without_elements
from op25b_ctl.plan.diff import diff
from op25b_ctl.plan.modes import decide, modes
from op25b_ctl.plan.render import render
from op25b_ctl.plan.ruleset import desired_table, pool_chain
from op25b_ctl.policy.loader import load_policy
from op25b_ctl.policy.model import check_policy, split_families

SMALL = inv.Size(2_000, 1_000)


def test_synthetic_inventory_is_a_valid_policy_of_the_stated_size() -> None:
    policy = inv.synthetic_policy(SMALL)
    assert check_policy(policy) == []  # no overlaps, no relay inside a pool
    assert len(policy.pools) == inv.POOL_COUNT
    v4, v6 = split_families(p for pool in policy.pools for p in pool.prefixes)
    assert (len(v4), len(v6)) == (SMALL.v4, SMALL.v6)
    enforced = policy.pool(inv.pool_name(inv.ENFORCED_POOL))
    assert enforced.mode == "enforce"
    assert {inv.DYN_A_V4, inv.DYN_A_V6} <= set(enforced.prefixes)


def test_counts_stay_exact_when_the_enforced_pool_has_no_v6() -> None:
    policy = inv.synthetic_policy(inv.Size(1_000, 100))  # the scaling table's smallest row
    v4, v6 = split_families(p for pool in policy.pools for p in pool.prefixes)
    assert (len(v4), len(v6)) == (1_000, 100)


def test_unvalidated_build_matches_the_validated_one() -> None:
    assert inv.synthetic_policy(SMALL, validate=False).pools == inv.synthetic_policy(SMALL).pools


def test_sizes_must_spread_evenly_over_the_pools() -> None:
    with pytest.raises(ValueError, match="multiple"):
        inv.synthetic_policy(inv.Size(1_500, 0))


def test_policy_files_load_back_to_the_same_policy(tmp_path: Path) -> None:
    policy = inv.synthetic_policy(SMALL)
    for name, text in inv.policy_files(policy).items():
        (tmp_path / name).write_text(text)
    loaded = load_policy(tmp_path)
    assert loaded.pools == policy.pools
    assert loaded.relays == policy.relays
    assert (loaded.gateway.table, loaded.gateway.action) == ("op25b", "reject")


def test_handwritten_ruleset_declares_every_element_and_chain() -> None:
    policy = inv.synthetic_policy(SMALL)
    text = inv.handwritten_ruleset(policy)
    assert text.count(" : jump pool_pool-") == SMALL.elements
    assert text.count("\n  chain pool_") == inv.POOL_COUNT
    assert "tcp dport 25 jump smtp" in text
    assert text.count("reject with tcp reset") == 900  # nine pools in ten enforced
    assert f"{inv.DYN_A_V4} : jump pool_{inv.pool_name(inv.ENFORCED_POOL)}" in text


def test_linear_ruleset_puts_dyn_a_in_the_middle() -> None:
    policy = inv.synthetic_policy(SMALL)
    window = inv.linear_window(policy, 1_000)
    assert len(window) == 1_000
    assert window[500][0] == inv.DYN_A_V4
    text = inv.linear_ruleset(policy, 1_000)
    assert text.count("    ip saddr ") == 1_000


def test_iptables_rules_are_valid_for_a_tcp_reset() -> None:
    """REJECT --reject-with tcp-reset is refused unless the rule itself matches -p tcp."""
    rules = inv.iptables_restore(inv.synthetic_policy(SMALL)).splitlines()
    per_pool = [r for r in rules if "--match-set" in r]
    assert len(per_pool) == inv.POOL_COUNT
    assert all(" -p tcp " in r for r in per_pool)
    assert sum("tcp-reset" in r for r in per_pool) == 900


def test_ipset_restore_lists_each_prefix_once() -> None:
    text = inv.ipset_restore(inv.synthetic_policy(SMALL))
    adds = [line for line in text.splitlines() if line.startswith("add ")]
    assert len(adds) == SMALL.elements
    assert len({line.split()[2] for line in adds}) == SMALL.elements


def test_a_new_set_is_committed_with_its_elements_declared_inline() -> None:
    """What the cold-apply figure times: one `add map` line per set, no `add element`."""
    policy = inv.synthetic_policy(SMALL)
    text = render(diff(None, desired_table(policy, modes(decide(policy, inv.REFERENCE_TIME)))))
    assert "add element" not in text
    assert text.count(" : jump ") == SMALL.elements


def test_daemon_change_is_a_chain_rewrite_against_the_last_live_table() -> None:
    desired = inv.desired(inv.synthetic_policy(SMALL))
    changed = with_pool_mode(desired, inv.pool_name(inv.CHANGE_POOL), "monitor", "reject")
    assert _is_chain_rewrite(diff(desired, changed))
    assert not _is_chain_rewrite(diff(desired, desired))  # nothing to time
    assert not _is_chain_rewrite(diff(None, changed))  # a full apply is not a change


def test_one_pool_change_rewrites_only_that_chain() -> None:
    desired = inv.desired(inv.synthetic_policy(SMALL))
    pool = inv.pool_name(inv.CHANGE_POOL)
    changed = with_pool_mode(desired, pool, "monitor", "reject")
    assert changed == inv.desired(inv.with_mode(inv.synthetic_policy(SMALL), pool, "monitor"))
    assert [k for k in desired.chains if desired.chains[k] != changed.chains[k]] == [
        pool_chain(pool)
    ]


def test_walk_twin_has_the_same_rules_and_no_elements() -> None:
    desired = inv.desired(inv.synthetic_policy(SMALL))
    twin = without_elements(desired)
    assert (twin.family, twin.name) == ("inet", WALK_TABLE) != (desired.family, desired.name)
    assert twin.chains == desired.chains and twin.counters == desired.counters
    assert set(twin.sets) == set(desired.sets)
    assert all(not s.elements and s.same_shape(desired.sets[n]) for n, s in twin.sets.items())
    assert any(s.elements for s in desired.sets.values())  # the original is untouched
    pool = inv.pool_name(inv.CHANGE_POOL)
    assert _is_chain_rewrite(diff(twin, with_pool_mode(twin, pool, "monitor", "reject")))


def test_walk_split_is_the_commit_minus_the_empty_maps_commit() -> None:
    small, big = SizeResult(inv.Size(1_000, 100)), SizeResult(inv.MAIN)
    small.warm = {"walk": {"full": [0.005, 0.006, 0.007], "empty": [0.004, 0.004, 0.005]}}
    big.warm = {"walk": {"full": [0.020, 0.021, 0.040], "empty": [0.004, 0.005, 0.004]}}
    assert walk_split(small) == pytest.approx((0.006, 0.004, 0.002))
    assert walk_split(big) == pytest.approx((0.021, 0.004, 0.017))
    note = walk_note([small, big])
    assert "1,000 -> 100,000 prefixes" in note
    old = SizeResult(inv.MAIN)
    old.warm = {"change": [0.05]}  # results recorded before the walk was measured
    assert walk_split(old) is None
    assert "not separated" in walk_note([old])


@pytest.mark.parametrize(
    ("sense", "ours", "base", "target", "passed"),
    [
        ("slower", 1.1, 1.0, 1.2, True),
        ("slower", 1.3, 1.0, 1.2, False),
        ("faster", 0.1, 3.0, 30, True),
        ("faster", 0.2, 3.0, 30, False),
        ("rate", 90.0, 100.0, 0.85, True),
        ("rate", 80.0, 100.0, 0.85, False),
        ("ceiling", 140.0, None, 150, True),
        ("ceiling", 160.0, None, 150, False),
    ],
)
def test_figure_pass_or_miss(
    sense: Sense, ours: float, base: float | None, target: float, passed: bool
) -> None:
    fig = Figure("k", "what", ours, base, "base", sense, target, "s", "1")
    assert fig.passed is passed
    assert bool(fig.shortfall) is not passed


def _datapath(none: list[float], ours: list[float], classic: list[float]) -> DataPath:
    """Rates and CPU per attempt (µs) for the rows the report reads; CPU from rate as if
    one CPU were saturated (cost = 1e6 / rate)."""
    rates = {"none_25": none, "ours_25": ours, "classic_25": classic}
    rates["monitor_25"] = none
    rates["linear_25"] = [r / 10 for r in none]
    rates["linear10k_25"] = [r / 2 for r in none]
    rates["none1_25"] = [r / 2 for r in none]
    rates["none_80"] = none
    rates["ours_80"] = [r * 0.99 for r in none]
    for key in ("none", "ours", "classic"):
        rates[f"{key}_syn_25"] = [r * 3 for r in rates[f"{key}_25"]]
    cpu = {k: [1e6 / r for r in v] for k, v in rates.items()}
    busy = {k: [1.0 for _ in v] for k, v in rates.items()}
    dp = DataPath(rates=rates, cpu=cpu, busy=busy, processes=2)
    dp.daemonlike = dict.fromkeys(
        ("load_policy", "compute", "apply", "VmRSS_before_apply", "VmRSS", "VmHWM"), 1.0
    )
    dp.daemon = {"VmRSS": 60.0, "VmHWM": 70.0}
    dp.load_s = {"ours": 1.0, "linear": 2.0, "classic": 3.0}
    return dp


def test_attempt_cost_is_per_round_cpu_in_microseconds() -> None:
    dp = _datapath([40_000.0, 50_000.0], [40_000.0, 50_000.0], [10_000.0, 12_500.0])
    assert dp.costs("classic_25") == pytest.approx([75.0, 60.0])
    assert dp.costs("ours_25") == pytest.approx([0.0, 0.0])
    # the rate ratio CPU cost predicts, per round: 25 µs / 100 µs and 20 µs / 80 µs
    assert dp.cpu_paired("classic_25", "none_25") == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("costs", "noise"),
    [([0.5, -0.4, 0.1], True), ([-2.0, -1.0, -3.0], True), ([10.0, 11.0, 9.0], False)],
)
def test_attempt_cost_within_noise(costs: list[float], noise: bool) -> None:
    assert attempt_cost(costs).within_noise is noise


def test_cost_rows_give_a_bound_when_ours_is_within_noise() -> None:
    dp = _datapath([40_000.0, 50_000.0], [40_100.0, 49_900.0], [10_000.0, 12_500.0])
    rows = {what: (value, ratio) for what, value, ratio in cost_rows(dp)}
    value, _ = next(v for k, v in rows.items() if k.startswith("filter cost per TCP/25 attempt"))
    assert value.startswith("< noise")
    _, ratio = next(v for k, v in rows.items() if "ipset" in k)
    assert ratio.startswith("ours < noise: > ")


def test_whole_process_rows_pair_rounds_and_judge_flatness() -> None:
    from bench import whole

    res = whole.Whole(rounds=2)
    for size, scale in (("big", 1.0), ("small", 0.5)):
        for key in [*whole.TARGETS, "nft_f", "nft_list_counters"]:
            for seconds in (0.2 * scale, 0.25 * scale):
                res.add(size, key, seconds)
        res.add(size, "nft_f", 0.0)  # replaced below: two rounds only
        res.times[size]["nft_f"] = [0.1, 0.5]
    for key in ("big_daemon_cold", "big_daemon_warm", "small_daemon_cold", "big_apply"):
        res.peak_mib[key] = [100.0, 160.0 if key == "big_daemon_warm" else 90.0]
    rows = {r.key: r for r in whole.rows(res)}
    # ratio to nft -f is the median of per-round ratios: 0.2/0.1 and 0.25/0.5
    assert rows["apply_cold"].ratio == pytest.approx((2.0 + 0.5) / 2)
    assert rows["rollback"].flat == pytest.approx(2.0) and not rows["rollback"].met  # 2x 10 pools
    assert rows["validate"].met  # 0.225 s <= 1 s
    assert rows["daemon_peak"].big == 160.0 and not rows["daemon_peak"].met
    text = "\n".join(whole.report_lines(res))
    assert "**MISS**" in text and "`pool rollback`" in text


def test_edit_rows_judge_against_their_own_baselines() -> None:
    from bench import whole

    res = whole.Edits(rounds=2, load=[(1.0, 1.0, 1.0), (2.0, 1.0, 1.0)])
    for key in [*whole.EDIT_TARGETS, *whole.EDIT_CONTEXT]:
        for seconds in (0.25, 0.35):
            res.add(key, seconds)
    res.times["nft_f"] = [0.25, 0.35]
    res.times["pools_apply"] = [0.5, 0.35]  # 2x, then 1x a cold apply: median 1.5x
    res.times["date_validate"] = [0.3, 0.4]  # median 0.35 s
    text = "\n".join(whole.edit_lines(res))
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if "|" in line}
    assert "1.50x a cold apply" in rows[whole.EDIT_TARGETS["pools_apply"][0]]
    assert "met" in rows[whole.EDIT_TARGETS["pools_apply"][0]]
    assert "MISS" in rows[whole.EDIT_TARGETS["date_validate"][0]]
    assert "1.00x `nft -f`" in rows[whole.EDIT_TARGETS["apply_cold"][0]]
    assert "Load average (1 min) after each round: 1.0, 2.0." in text


def test_load_sources_stay_in_the_first_address_s_pool() -> None:
    assert load_sources("192.0.2.10", 3) == ["192.0.2.10", "192.0.2.11", "192.0.2.12"]
    assert load_sources("192.0.2.10", 53)[-1] == "192.0.2.62"  # .63 is the /26's broadcast
    for bad in (0, 54):
        with pytest.raises(ValueError):
            load_sources("192.0.2.10", bad)


def test_summed_rate_is_the_sum_of_each_process_s_own_rate() -> None:
    rate = Rate(300, 1.5, {"refused": 300}, per_process=(100.0, 110.0), cpu_seconds=0.003)
    assert rate.per_second == 210.0  # not 300 / 1.5: each process's own window counts
    assert rate.cpu_per_attempt == pytest.approx(10.0)
    assert Rate(300, 1.5, {}).per_second == 200.0


def test_datapath_report_explains_the_classic_miss_with_cpu_per_attempt() -> None:
    dp = _datapath([40_000.0, 50_000.0], [40_000.0, 50_000.0], [10_000.0, 12_500.0])
    text = "\n".join(datapath_lines(dp))
    assert "| same, vs ipset + iptables-legacy | " in text and "**MISS**" in text
    assert "CPU per attempt: ours 22.5 µs, classic 90.0 µs" in text
    assert "1 process vs 2 processes" in text
    assert "non-port-25 traffic" in text
