"""`make bench`: op25b-ctl at ISP scale, each figure a ratio against a baseline of the same run.

    python -m bench.run [--runs N] [--rounds N] [--no-million] [--output docs/benchmarks.md]

Needs root (namespaces, nftables, ipset, iptables-legacy). Builds everything in throw-away
namespaces (`op25bb-<id>-<n>` for cold applies, lab namespaces `op25b-<id>-sub|gw|out` for
traffic) and removes them by name on every exit, Ctrl-C included. Writes the report to
docs/benchmarks.md and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import inventory as inv
from bench.netns import Namespaces
from bench.report import Figure, figures_table, fmt, median, plain, table
from op25b_ctl.lab import DYN_A, FOREIGN_MX, Lab, _env
from op25b_ctl.model import Policy

ROOT = Path(__file__).resolve().parent.parent
LINEAR_RULES = inv.MAIN.v4  # rule per prefix: every v4 prefix of the inventory
LINEAR_SMALL = 10_000  # and a 10,000-rule subset, for context
SMTP, OTHER_PORT = 25, 80
# `nft list counters` at 1,000,000 prefixes takes minutes; it is cut off here.
LIST_TIMEOUT_S = 60.0
# Time budget: the whole run must stay well under 15 minutes on 2 shared cores.
BUDGET_S = 15 * 60


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ results


@dataclass
class SizeResult:
    size: inv.Size
    build_s: float = 0.0  # synthetic Policy models
    desired_s: float = 0.0  # ruleset.desired_table() for the whole inventory
    cold: dict[str, list[float]] = field(default_factory=dict)
    warm: dict[str, Any] = field(default_factory=dict)

    def med(self, key: str) -> float:
        return median(self.cold[key])

    def wmed(self, key: str) -> float:
        return median(self.warm[key])

    def nft_list(self) -> tuple[float, bool]:
        """`nft list counters` median, or its cut-off (True) when it ran out of time."""
        if self.warm["nft_list_counters"]:
            return self.wmed("nft_list_counters"), False
        return float(self.warm["nft_list_cut"]), True

    def nft_list_text(self) -> str:
        value, cut = self.nft_list()
        return ("> " if cut else "") + fmt(value, "s")


@dataclass
class DataPath:
    rates: dict[str, list[float]] = field(default_factory=dict)
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    load_s: dict[str, float] = field(default_factory=dict)
    daemon: dict[str, float] = field(default_factory=dict)

    def med(self, key: str) -> float:
        return median(self.rates[key])

    def paired(self, ours: str, base: str) -> float:
        """Median over rounds of ours/base within the same round."""
        return median([o / b for o, b in zip(self.rates[ours], self.rates[base], strict=True)])


# ------------------------------------------------------------------ process helpers


def worker_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.worker", *args]


def in_ns(ns: str, *args: str, timeout: float = 600) -> dict[str, Any]:
    """Run a worker command inside namespace ns; its JSON answer."""
    argv = ["ip", "netns", "exec", ns, *worker_argv(*args)]
    cp = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=timeout)
    if cp.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:1])} in {ns} failed: {cp.stderr[-3000:]}")
    result = json.loads(cp.stdout)
    assert isinstance(result, dict)
    return result


def in_lab(lab: Lab, ns: str, *args: str, timeout: float = 600) -> dict[str, Any]:
    cp = lab.run(ns, worker_argv(*args), timeout=timeout)
    result = json.loads(cp.stdout)
    assert isinstance(result, dict)
    return result


def ensure_tools() -> None:
    """ipset and iptables-legacy for the classic baseline: installed from apt if missing."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [
        pkg
        for tool, pkg in (("ipset", "ipset"), ("iptables-legacy", "iptables"))
        if shutil.which(tool, path=path) is None
    ]
    if missing:
        log(f"installing {' '.join(missing)} from apt (the classic ipset+iptables baseline)")
        env = {**_env(), "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=True,
            env=env,
        )


def _version(argv: Sequence[str]) -> str:
    cp = subprocess.run(argv, capture_output=True, text=True, env=_env())
    return (cp.stdout or cp.stderr).strip().splitlines()[0] if cp.returncode == 0 else "?"


def machine() -> dict[str, str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    os_name = "?"
    osr = Path("/etc/os-release")
    if osr.exists():
        for line in osr.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    return {
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "os": os_name,
        "kernel": platform.release(),
        "nft": _version(["nft", "--version"]),
        "ipset": _version(["ipset", "--version"]),
        "iptables": _version(["iptables-legacy", "--version"]),
        "python": platform.python_version(),
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


@contextmanager
def interrupts_unwind() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP unwind once, as KeyboardInterrupt, so every `finally`
    removes its namespaces; further signals are ignored until that clean-up is done."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def unwind(signum: int, frame: FrameType | None) -> None:
        for s in signals:
            signal.signal(s, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, unwind) for s in signals}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


# ------------------------------------------------------------------ the measurements


class Bench:
    def __init__(
        self,
        work: Path,
        nss: Namespaces,
        runs: int,
        rounds: int,
        seconds: float,
        list_timeout: float = LIST_TIMEOUT_S,
    ):
        self.list_timeout = list_timeout
        self.work = work
        self.nss = nss
        self.runs = runs
        self.rounds = rounds
        self.seconds = seconds
        self.labs: list[Lab] = []

    def cold(self, args: Sequence[str]) -> dict[str, Any]:
        ns = self.nss.create()
        try:
            return in_ns(ns, *args)
        finally:
            self.nss.remove(ns)

    def size(self, size: inv.Size, *, main: bool) -> SizeResult:
        """Cold applies (ours and baselines, interleaved) and the warm operations at one size."""
        res = SizeResult(size)
        big = size.v4 > inv.MAIN.v4
        t = time.perf_counter()
        policy = inv.synthetic_policy(size, validate=not big)
        res.build_s = time.perf_counter() - t
        t = time.perf_counter()
        desired = inv.desired(policy)
        res.desired_s = time.perf_counter() - t
        tag = f"{size.v4}"
        pkl = self.work / f"desired-{tag}.pickle"
        pkl.write_bytes(pickle.dumps(desired, protocol=pickle.HIGHEST_PROTOCOL))
        hand = self.work / f"hand-{tag}.nft"
        hand.write_text(inv.handwritten_ruleset(policy))
        variants: dict[str, list[str]] = {
            "ours": ["apply", "--desired", str(pkl), "--variant", "full"],
            "ours_nocheck": ["apply", "--desired", str(pkl), "--variant", "nocheck"],
            "nft_file": ["run", "nft", "-f", str(hand)],
        }
        policy_dir: Path | None = None
        if main:
            ipset = self.work / f"ipset-{tag}.txt"
            ipset.write_text(inv.ipset_restore(policy))
            variants["ipset"] = ["run", "ipset", "restore", "-f", str(ipset)]
            variants["declared"] = ["apply", "--desired", str(pkl), "--variant", "declared"]
            variants["declared_nocheck"] = [
                "apply", "--desired", str(pkl), "--variant", "declared-nocheck",
            ]  # fmt: skip
            policy_dir = self.write_policy(policy, "policy")
        runs = 1 if big else self.runs
        res.cold = {k: [] for k in variants}
        names = list(variants)
        for r in range(runs):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
                res.cold[name].append(float(self.cold(variants[name])["seconds"]))
            log(
                f"{size.label}: run {r + 1}/{runs}: "
                + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in res.cold.items())
            )
        warm_args = [
            "warm", "--desired", str(pkl), "--pool", inv.pool_name(inv.CHANGE_POOL),
            "--action", policy.gateway.action,
            "--runs", str(3 if big else 2 * self.runs - 1),
            "--list-runs", str(1 if big else self.runs), "--list-timeout", str(self.list_timeout),
        ]  # fmt: skip
        if policy_dir is not None:
            state = self.work / "state"
            state.mkdir(exist_ok=True)
            warm_args += ["--policy-dir", str(policy_dir), "--state-dir", str(state)]
        res.warm = self.cold(warm_args)
        log(
            f"{size.label}: change {fmt(res.wmed('change'), 's')}, scrape "
            f"{fmt(res.wmed('scrape'), 's')} vs nft list counters "
            f"{res.nft_list_text()}, no-change pass "
            f"{fmt(res.wmed('reconcile'), 's')}"
        )
        return res

    def write_policy(self, policy: Policy, name: str) -> Path:
        d = self.work / name
        d.mkdir(exist_ok=True)
        for fname, text in inv.policy_files(policy).items():
            (d / fname).write_text(text)
        return d

    # -------------------------------------------------------------- data path

    def datapath(self, policy_dir: Path) -> DataPath:
        """Six identical lab gateways, one per ruleset, measured round-robin."""
        dp = DataPath()
        policy = inv.synthetic_policy(inv.MAIN)
        labs: dict[str, Lab] = {}
        for key in ("none", "ours", "monitor", "linear", "linear10k", "classic"):
            labs[key] = Lab.create()
            self.labs.append(labs[key])
        # ours: the daemon-like process loads the YAML inventory into this gateway
        dp.daemon = {
            k: float(v)
            for k, v in in_lab(
                labs["ours"], labs["ours"].ns_gw, "daemonlike", "--policy-dir", str(policy_dir)
            ).items()
        }
        dp.load_s["ours"] = dp.daemon["apply"]
        # the same inventory with DYN_A's pool monitored: the lookup without the reject
        mon = inv.with_mode(policy, inv.pool_name(inv.ENFORCED_POOL), "monitor")
        pkl = self.work / "desired-monitor.pickle"
        pkl.write_bytes(pickle.dumps(inv.desired(mon)))
        in_lab(labs["monitor"], labs["monitor"].ns_gw, "load", "--desired", str(pkl))
        for key, rules in (("linear", LINEAR_RULES), ("linear10k", LINEAR_SMALL)):
            linear = self.work / f"{key}.nft"
            linear.write_text(inv.linear_ruleset(policy, rules))
            got = in_lab(labs[key], labs[key].ns_gw, "run", "nft", "-f", str(linear))
            dp.load_s[key] = float(got["seconds"])
        ipset = self.work / "ipset-classic.txt"
        ipset.write_text(inv.ipset_restore(policy))
        ipt = self.work / "iptables-classic.txt"
        ipt.write_text(inv.iptables_restore(policy))
        gw = labs["classic"].ns_gw
        t1 = in_lab(labs["classic"], gw, "run", "ipset", "restore", "-f", str(ipset))
        t2 = in_lab(labs["classic"], gw, "run", "iptables-legacy-restore", str(ipt))
        dp.load_s["classic"] = float(t1["seconds"]) + float(t2["seconds"])
        self._check_loaded(labs)
        log("data path: six gateways loaded; measuring connect rates round-robin")

        plan = [(k, SMTP) for k in labs] + [("none", OTHER_PORT), ("ours", OTHER_PORT)]
        for r in range(self.rounds):
            for key, port in plan if r % 2 == 0 else plan[::-1]:  # alternate to cancel drift
                lab = labs[key]
                out = in_lab(
                    lab, lab.ns_sub, "loadgen", "--src", DYN_A.v4, "--dst", FOREIGN_MX.v4,
                    "--port", str(port), "--seconds", str(self.seconds),
                )  # fmt: skip
                name = f"{key}_{port}"
                dp.rates.setdefault(name, []).append(float(out["per_second"]))
                agg = dp.outcomes.setdefault(name, {})
                for k, n in out["outcomes"].items():
                    agg[k] = agg.get(k, 0) + int(n)
            log(
                f"data path round {r + 1}/{self.rounds}: "
                + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in dp.rates.items())
            )
        self._verify(labs, dp)
        return dp

    def _check_loaded(self, labs: dict[str, Lab]) -> None:
        """Each gateway holds exactly the ruleset its row is named after, before timing."""
        want = {
            "none": "",
            "ours": f"table inet {inv.TABLE}",
            "monitor": f"table inet {inv.TABLE}",
            "linear": f"table inet {inv.LINEAR_TABLE}",
            "linear10k": f"table inet {inv.LINEAR_TABLE}",
            "classic": "",
        }
        for key, lab in labs.items():
            got = lab.run(lab.ns_gw, ["nft", "list", "tables"]).stdout.strip()
            if got != want[key]:
                raise RuntimeError(f"gateway {key!r} holds {got!r}, expected {want[key]!r}")
        rules = labs["classic"].run(labs["classic"].ns_gw, ["iptables-legacy", "-S", "SMTP"])
        if rules.stdout.count("--match-set") != inv.POOL_COUNT:
            raise RuntimeError("classic gateway: iptables rules missing")

    def _verify(self, labs: dict[str, Lab], dp: DataPath) -> None:
        """Every gateway must have done what its row claims, or the row means nothing."""
        pool = inv.pool_name(inv.ENFORCED_POOL)
        for name, outcomes in dp.outcomes.items():
            total = sum(n for k, n in outcomes.items() if k != "pending")
            refused = outcomes.get("refused", 0)
            ok = total > 0 and refused / total >= 0.99
            dp.checks.append(
                f"{'ok' if ok else 'FAILED'}: {name}: {refused:,} of {total:,} attempts reset"
                + ("" if ok else f" (outcomes {outcomes})")
            )
        for key, table_name, counter in (
            ("ours", inv.TABLE, f"blocked_{pool}"),
            ("monitor", inv.TABLE, f"monitored_{pool}"),
            ("linear", inv.LINEAR_TABLE, f"blocked_{pool}"),
            ("linear10k", inv.LINEAR_TABLE, f"blocked_{pool}"),
        ):
            lab = labs[key]
            got = in_lab(lab, lab.ns_gw, "counters", "--table", table_name).get(counter, 0)
            dp.checks.append(
                f"{'ok' if got else 'FAILED'}: {key}: counter {counter} = {got:,} packets"
            )
        cp = labs["classic"].run(
            labs["classic"].ns_gw, ["iptables-legacy", "-L", "SMTP", "-v", "-n", "-x"]
        )
        hits = [
            int(line.split()[0])
            for line in cp.stdout.splitlines()
            if f"{pool}-v4" in line and line.split()[0].isdigit()
        ]
        dp.checks.append(
            f"{'ok' if hits and hits[0] else 'FAILED'}: classic: iptables rule for "
            f"{pool}-v4 = {hits[0] if hits else 0:,} packets"
        )

    def close(self) -> None:
        for lab in self.labs:
            lab.destroy()
        self.labs.clear()
        self.nss.close()


# ------------------------------------------------------------------ figures and report


def main_figures(sizes: dict[int, SizeResult], dp: DataPath, limit_mb: float) -> list[Figure]:
    m = sizes[inv.MAIN.v4]
    small = sizes[min(sizes)]
    n, nf = len(m.cold["ours"]), len(m.warm["change"])
    rounds = f"{len(dp.rates['ours_25'])} rounds"
    return [
        Figure("apply", "full apply of the whole inventory (cold)", m.med("ours"),
               m.med("nft_file"), "`nft -f` hand-written", "slower", 1.2, "s", f"{n} / {n}"),
        Figure("change", "one pool's mode change (rollout step / rollback)", m.wmed("change"),
               m.med("ours"), "full re-apply, cold", "faster", 30, "s", f"{nf} / {n}"),
        Figure("flat", f"one pool's mode change at {inv.MAIN.v4:,} vs {small.size.v4:,} v4 "
               "prefixes (flatness)", m.wmed("change"), small.wmed("change"),
               f"same at {small.size.v4:,}", "slower", 1.5, "s", f"{nf} / {nf}"),
        Figure("scrape", "reading all 1,000 pools' counters (a metrics scrape)",
               m.wmed("scrape"), m.nft_list()[0],
               "`nft list counters`" + (", cut off" if m.nft_list()[1] else ""), "faster",
               15, "s", f"{nf} / {len(m.warm['nft_list_counters'])}"),
        Figure("reconcile", "a no-change reconcile pass", m.wmed("reconcile"), m.med("ours"),
               "full apply, cold", "slower", 0.05, "s", f"{nf} / {n}"),
        Figure("dp", "TCP/25 connects/s, enforced pool", dp.med("ours_25"), dp.med("none_25"),
               "no ruleset", "rate", 0.85, "/s", rounds, dp.paired("ours_25", "none_25")),
        Figure("linear", "same, vs rule-per-prefix ruleset", dp.med("ours_25"),
               dp.med("linear_25"), f"{LINEAR_RULES:,} nft rules, one per prefix", "rate", 8, "/s", rounds,
               dp.paired("ours_25", "linear_25")),
        Figure("classic", "same, vs ipset + iptables-legacy", dp.med("ours_25"),
               dp.med("classic_25"), "1,000 ipsets + 1,000 rules", "rate", 8, "/s", rounds,
               dp.paired("ours_25", "classic_25")),
        Figure("other", f"non-port-25 traffic (TCP/{OTHER_PORT} connects/s)",
               dp.med(f"ours_{OTHER_PORT}"), dp.med(f"none_{OTHER_PORT}"), "no ruleset", "rate",
               0.97, "/s", rounds, dp.paired(f"ours_{OTHER_PORT}", f"none_{OTHER_PORT}")),
        Figure("rss", "daemon resident memory, inventory loaded", dp.daemon["VmRSS"], None, "",
               "ceiling", limit_mb, "MiB", "1"),
    ]  # fmt: skip


def context_rows(m: SizeResult, dp: DataPath) -> list[tuple[str, str, str]]:
    """Figures without a target that explain the ones with one."""
    nft = m.med("nft_file")

    def vs(key: str, base: float) -> str:
        return f"{m.med(key) / base:.2f}x"

    parts = m.warm["change_parts"]
    rows = [
        ("full apply, ours vs `ipset restore` of the same prefixes",
         f"{fmt(m.med('ours'), 's')} vs {fmt(m.med('ipset'), 's')}", vs("ours", m.med("ipset"))),
        ("full apply without the dry-run check (plan + commit)", fmt(m.med("ours_nocheck"), "s"),
         f"{vs('ours_nocheck', nft)} of `nft -f`"),
        ("full apply, elements declared inside `add map` (render variant, not shipped), "
         "with check", fmt(m.med("declared"), "s"), f"{vs('declared', nft)} of `nft -f`"),
        ("same render variant, without the check", fmt(m.med("declared_nocheck"), "s"),
         f"{vs('declared_nocheck', nft)} of `nft -f`"),
        ("one-pool change, parts: skeleton read / diff / nft check / nft commit",
         " / ".join(fmt(median(parts[k]), "s") for k in ("read", "diff", "check", "commit")),
         "-"),
        ("ruleset generation id (NFT_MSG_GETGEN)", fmt(median(m.warm["generation"]), "s"),
         f"{median(m.warm['generation']) / m.med('ours'):.5f}x of a full apply"),
        ("TCP/25 connects/s, DYN_A's pool in *monitor* (lookup only, `out` resets)",
         fmt(dp.med("monitor_25"), "/s"), f"{dp.paired('monitor_25', 'none_25'):.2f}x of no ruleset"),
        (f"TCP/25 connects/s through a rule-per-prefix ruleset of only {LINEAR_SMALL:,} rules",
         fmt(dp.med("linear10k_25"), "/s"),
         f"ours is {dp.med('ours_25') / dp.med('linear10k_25'):.1f}x faster"),
        ("what the no-change pass measured", m.warm["reconcile_what"], "-"),
        ("`load_policy` of the YAML inventory (110,000 prefixes)", fmt(dp.daemon["load_policy"], "s"), "-"),
        ("desired state from the loaded policy (`desired.from_policy`)",
         fmt(dp.daemon["compute"], "s"), "-"),
        ("daemon-like process: VmRSS before apply / after / after `malloc_trim(0)` / peak (VmHWM)",
         f"{dp.daemon['VmRSS_before_apply']:.0f} / {dp.daemon['VmRSS']:.0f} / "
         f"{dp.daemon['VmRSS_after_trim']:.0f} / {dp.daemon['VmHWM']:.0f} MiB", "-"),
        ("ruleset load in the lab: ours (daemon-like apply) / rule per prefix (`nft -f`) / "
         "ipset+iptables", " / ".join(fmt(dp.load_s[k], "s") for k in ("ours", "linear", "classic")),
         "-"),
    ]  # fmt: skip
    return rows


def scaling_rows(sizes: dict[int, SizeResult]) -> list[list[str]]:
    rows = []
    for s in sorted(sizes.values(), key=lambda s: s.size.v4):
        full, nft = s.med("ours"), s.med("nft_file")
        change, scrape = s.wmed("change"), s.wmed("scrape")
        lst, cut = s.nft_list()
        rows.append(
            [
                s.size.label,
                fmt(full, "s"),
                fmt(s.med("ours_nocheck"), "s"),
                fmt(nft, "s"),
                f"{full / nft:.2f}x",
                fmt(change, "s"),
                f"{full / change:.1f}x",
                fmt(scrape, "s"),
                s.nft_list_text(),
                ("> " if cut else "") + f"{lst / scrape:.1f}x",
                fmt(s.wmed("reconcile"), "s"),
                str(len(s.cold["ours"])),
            ]
        )
    return rows


def parts_rows(sizes: dict[int, SizeResult]) -> list[list[str]]:
    """Where a one-pool change's time goes, per size."""
    rows = []
    for s in sorted(sizes.values(), key=lambda s: s.size.v4):
        p = {k: median(v) for k, v in s.warm["change_parts"].items()}
        rows.append(
            [
                s.size.label,
                fmt(p["read"], "s"),
                fmt(p["diff"], "s"),
                fmt(p["check"], "s"),
                fmt(p["commit"], "s"),
                fmt(s.wmed("change"), "s"),
            ]
        )
    return rows


def miss_notes(
    figs: list[Figure],
    m: SizeResult,
    dp: DataPath,
    sizes: dict[int, SizeResult],
    mach: dict[str, str],
) -> list[str]:
    """For each MISS: by how much, what limits it, and the design change that would close it."""
    nft = m.med("nft_file")
    parts = {k: median(v) for k, v in m.warm["change_parts"].items()}
    gen = median(m.warm["generation"])
    per_msg_us = m.wmed("scrape") / m.warm["counters"] * 1e6

    lo, hi = sizes[min(sizes)], sizes[max(sizes)]

    def growth(part: str) -> str:
        a, b = (median(x.warm["change_parts"][part]) for x in (lo, hi))
        return f"{fmt(a, 's')} at {lo.size.v4:,} -> {fmt(b, 's')} at {hi.size.v4:,} prefixes"

    def ceiling_note(key: str) -> str:
        none, base = dp.med("none_25"), dp.med(key)
        added = (1 / base - 1 / none) * 1e6
        return (
            f"That ruleset adds about {added:.0f} µs to each attempt, while an attempt costs "
            f"{1e6 / none:.0f} µs here with no ruleset at all (one Python client, two veth "
            f"hops, the reset, 2 CPUs shared with other work): even no ruleset is only "
            f"{none / base:.1f}x faster than it on this rig. Our own per-packet cost is what the "
            f"monitor row shows ({dp.paired('monitor_25', 'none_25'):.2f}x of no ruleset: the "
            f"map lookup costs a few per cent at most), and ours in reject mode reaches "
            f"{dp.paired('ours_25', 'none_25'):.2f}x of no ruleset only because the gateway "
            f"resets the attempt itself. So the ratio is bounded by what an attempt costs on "
            f"this rig, not by the rule design; a faster load generator (several processes, or "
            f"a C client on more cores) would raise the bound."
        )

    notes: dict[str, Callable[[Figure], str]] = {
        "apply": lambda f: (
            f"Our cold apply runs nftables twice: a dry run (`backend.check`) and then the commit. "
            f"Without the check it takes {fmt(m.med('ours_nocheck'), 's')} "
            f"({m.med('ours_nocheck') / nft:.2f}x of `nft -f`). The rest of the gap is how "
            f"render.py writes elements: {mach['nft']} evaluates separate `add element` lines "
            f"for a map created in the same batch more slowly than the same elements declared "
            f"with the map; declaring them (a render variant measured here, not shipped) gives "
            f"{fmt(m.med('declared_nocheck'), 's')} without the check "
            f"({m.med('declared_nocheck') / nft:.2f}x) and {fmt(m.med('declared'), 's')} with it "
            f"({m.med('declared') / nft:.2f}x). Design changes that close it: render a new set's "
            f"elements inside its `add set/map` declaration, and skip the dry run when the table "
            f"is absent (a cold apply is one atomic batch; a refusal changes nothing, so the "
            f"check only buys an earlier error message at the price of a second full parse)."
        ),
        "change": lambda f: (
            f"A one-pool change costs skeleton read {fmt(parts['read'], 's')} + diff "
            f"{fmt(parts['diff'], 's')} + nft dry run "
            f"{fmt(parts['check'], 's')} + commit {fmt(parts['commit'], 's')}. The skeleton read "
            f"decodes one netlink message per chain, rule and counter (~4,000 at 1,000 pools) "
            f"with pyroute2's pure-Python decoder (the scrape measures about {per_msg_us:.0f} µs "
            f"per message, Python {mach['python']}); it does not grow with prefixes. The diff "
            f"does: with the fingerprint trusted, read_live hands back the desired sets as the "
            f"live ones, and diff.py still compares every element with itself in Python "
            f"({growth('diff')}; nft dry run {growth('check')}; commit {growth('commit')}). "
            f"Design changes: skip the "
            f"element comparison when live and desired sets are the same object (or when the "
            f"fingerprints match), decode the few attributes we need with `struct` instead of "
            f"pyroute2's generic parser, dump only the changed pool's chain and rules and the "
            f"counters' names rather than the whole table, and skip the dry run for a one-chain "
            f"rewrite (the commit is atomic)."
        ),
        "flat": lambda f: (
            "By design the change neither reads nor writes elements; the parts table shows "
            "which part grew with the prefixes (the in-Python element diff, see above) and "
            "what is noise on the shared machine."
        ),
        "scrape": lambda f: (
            f"`netlink.read_counters` spends about {per_msg_us:.0f} µs per counter object in "
            f"pyroute2's pure-Python decoder ({m.warm['counters']:,} counters: a blocked_ and a "
            f"monitored_ counter per pool). Design changes: parse NFT_MSG_NEWOBJ replies with "
            f"`struct` (three attributes), or keep one counter per pool (its mode says whether "
            f"it counts blocked or monitored packets), which halves the messages."
        ),
        "reconcile": lambda f: (
            f"The pass measured here ({m.warm['reconcile_what']}) reads the table skeleton "
            f"every time ({fmt(parts['read'], 's')}). The generation id alone costs "
            f"{fmt(gen, 's')} ({gen / m.med('ours'):.5f}x of a full apply): a daemon that "
            f"remembers the generation after its own last commit can skip the read and the diff "
            f"whenever the generation is unchanged; the speed-ups for the skeleton read above "
            f"apply when it has changed."
        ),
        "dp": lambda f: (
            f"With the ruleset the gateway itself builds and sends every reset "
            f"(`reject with tcp reset`); without it the far host's closed port does. The "
            f"monitor-mode gateway (the same map lookup, the packet forwarded and reset by `out`) "
            f"runs at {dp.paired('monitor_25', 'none_25'):.2f}x of no ruleset, so the "
            f"lookup itself is {'not ' if dp.paired('monitor_25', 'none_25') >= f.target else ''}"
            f"the limit. Kernel {mach['kernel']}."
        ),
        "linear": lambda f: ceiling_note("linear_25"),
        "classic": lambda f: (
            f"ipset's hash:net costs one hash lookup per prefix length present in a set, and the "
            f"classic layout walks the per-pool rules in order (DYN_A's pool is rule "
            f"{inv.ENFORCED_POOL + 2:,} of {inv.POOL_COUNT + 1:,}). " + ceiling_note("classic_25")
        ),
        "other": lambda f: (
            f"The only per-packet cost for other ports is the base chain's `tcp dport 25` test; "
            f"the per-round rates (ours {', '.join(f'{x:,.0f}' for x in dp.rates[f'ours_{OTHER_PORT}'])}"
            f"; none {', '.join(f'{x:,.0f}' for x in dp.rates[f'none_{OTHER_PORT}'])}) show "
            f"how much of the gap is noise from other work on the machine."
        ),
        "rss": lambda f: (
            f"Before the apply the process holds {dp.daemon['VmRSS_before_apply']:.0f} MiB "
            f"(the policy's pydantic models and the desired table). The apply runs libnftables "
            f"in-process, which parses the whole {inv.MAIN.elements:,}-element batch twice "
            f"(check and commit) and peaks at {dp.daemon['VmHWM']:.0f} MiB; afterwards "
            f"{dp.daemon['VmRSS']:.0f} MiB stay resident, and `malloc_trim(0)` brings that to "
            f"{dp.daemon['VmRSS_after_trim']:.0f} MiB, so "
            f"{dp.daemon['VmRSS'] - dp.daemon['VmRSS_after_trim']:.0f} MiB is freed heap that "
            f"glibc kept. Design changes: run full applies in a short-lived child process (or "
            f"`nft -f`) so that memory goes back with the process, `malloc_trim(0)` after an "
            f"apply, and keep the desired Table rather than the per-prefix pydantic models once "
            f"the policy is validated."
        ),
    }
    out = []
    for f in figs:
        if not f.passed:
            out.append(f"- **{f.what}**: MISS, {f.shortfall}. {notes[f.key](f)}")
    return out


def render_report(
    sizes: dict[int, SizeResult],
    dp: DataPath,
    mach: dict[str, str],
    started: datetime,
    elapsed: float,
    runs: int,
    limit_mb: float,
    seconds: float,
) -> list[str]:
    m = sizes[inv.MAIN.v4]
    figs = main_figures(sizes, dp, limit_mb)
    missed = [f for f in figs if not f.passed]
    lines = [
        "# Benchmarks at ISP scale",
        "",
        "Generated by `make bench` (`python -m bench.run`); do not edit by hand. Every figure is a",
        "median over several runs and a ratio against a baseline measured in the same run, so",
        "the ratios, not the absolute times, are what to compare between machines.",
        "",
        "Run it as root with `make bench` (about 10 minutes on 2 cores; `make bench "
        "BENCH_ARGS='--runs 3 --no-million'` for a shorter run, `python -m bench.run --help` "
        "for the options). It installs `ipset` and `iptables` from apt if they are missing.",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; whole run {elapsed / 60:.1f} min",
        f"- machine: {mach['cpus']} CPUs ({mach['cpu']}), {mach['memory']}, {mach['os']}, "
        f"kernel {mach['kernel']}; load average at start {mach['loadavg']}",
        f"- software: {mach['nft']}; {mach['ipset']}; {mach['iptables']}; Python {mach['python']}",
        f"- inventory: {inv.POOL_COUNT:,} pools, {inv.MAIN.label} prefixes "
        f"({inv.MAIN.v4 // inv.POOL_COUNT} + {inv.MAIN.v6 // inv.POOL_COUNT} per pool), 9 in 10 "
        "pools enforced (reject), the rest monitored; one relay",
        "",
        "## Figures",
        "",
        *figures_table(figs),
        "",
        f"{len(figs) - len(missed)} of {len(figs)} targets met.",
        "",
        "### Context (no target; explains the figures above)",
        "",
        *table(("measurement", "value", "ratio"), context_rows(m, dp)),
        "",
        "## Scaling",
        "",
        f"{inv.POOL_COUNT:,} pools at every size; prefixes spread evenly over them. Medians of "
        f"{runs} cold runs each (1 at 1,000,000) and of the warm runs.",
        "",
        *table(
            (
                "prefixes",
                "full apply",
                "no check",
                "`nft -f`",
                "full / nft",
                "one-pool change",
                "full / change",
                "scrape (netlink)",
                "`nft list counters`",
                "list / scrape",
                "no-change pass",
                "runs",
            ),
            scaling_rows(sizes),
        ),  # fmt: skip
        "",
        "Where a one-pool change's time goes (medians of separately timed steps):",
        "",
        *table(
            (
                "prefixes",
                "live read (netlink skeleton)",
                "diff",
                "nft dry run",
                "nft commit",
                "whole change",
            ),
            parts_rows(sizes),
        ),
        "",
        "## Data path checks",
        "",
        *(f"- {c}" for c in dp.checks),
        "",
        "## Method",
        "",
        "- **Addresses.** 100,000 /30s do not fit in the documentation ranges, so the synthetic "
        "prefixes are set elements from 10.0.0.0/8 (a /30 every 8 addresses) and "
        "2001:db8:8000::/40 (a /64 every second /64). They exist only as elements of rulesets "
        "inside throw-away namespaces and are never routed. Real traffic uses the lab's "
        "documentation addresses only: the enforced pool `pool-0500` also holds DYN_A's "
        "192.0.2.0/26 and 2001:db8:1000::/40; the destination is the lab's FOREIGN_MX "
        "(203.0.113.99); the relay is RELAY.",
        "- **Full apply (cold).** Each run in a fresh namespace: `applier.apply(NftBackend(), "
        "desired)` in the venv's Python, timed inside the process (the pickled desired table is "
        "loaded before the clock starts); `nft -f` of an equivalent hand-written ruleset (the "
        "same counters, sets, verdict maps and chains in one `table { }` block) and `ipset "
        "restore` of one hash:net set per pool and family, each timed around the command. The "
        "variants run in rotating order.",
        "- **One-pool change.** In a namespace holding the whole table: `applier.apply(..., "
        "trust_fingerprint=True)` with one pool flipped between enforce and monitor (a netlink "
        "skeleton read, a one-chain rewrite; the worker refuses to time a change that touched "
        "anything else). Baseline: the cold full apply of the same size. Flat means: the "
        "median at 100,000 prefixes within 1.5x of the median at 1,000.",
        "- **Scrape.** `netlink.read_counters(table)` (all named counters) against `nft list "
        "counters table inet op25b`, in the same namespace.",
        "- **No-change pass.** `op25b_ctl.reconcile.Reconciler.run_once()` when the daemon "
        "exists on the branch, otherwise its core: `netlink.ruleset_generation()` + "
        "`applier.plan(trust_fingerprint=True)` (the worker checks that it planned nothing). "
        "The row above says which ran.",
        f"- **Data path.** Six identical lab gateways (sub -> gw -> out), each with one "
        f"ruleset: none; ours; ours with DYN_A's pool monitored; a rule-per-prefix nft ruleset "
        f"of {LINEAR_RULES:,} `ip saddr <prefix> jump pool_<name>` rules (DYN_A's /26 is rule "
        f"{LINEAR_RULES // 2 + 1:,}, the middle: an average match); the classic way "
        f"(`ipset` hash:net per pool, FORWARD `-p tcp --dport 25 -j SMTP`, one `-m set "
        f"--match-set <pool>-v4 src` rule per pool in SMTP, REJECT --reject-with tcp-reset for "
        f"enforced pools, `iptables-legacy`; DYN_A's pool is rule {inv.ENFORCED_POOL + 2:,} of "
        f"{inv.POOL_COUNT + 1:,}). A Python epoll loop in `sub` keeps 32 non-blocking connects "
        f"from DYN_A ({DYN_A.v4}) to FOREIGN_MX in flight for {seconds:g} s per "
        f"sample and counts finished attempts per second; the gateways are measured "
        f"round-robin so load from other work on the machine hits them alike. Nothing listens "
        f"on `out`'s ports 25 and {OTHER_PORT}, so without a rule `out` resets the attempt. "
        f"The order alternates every round, and each data-path ratio is the median of the "
        f"per-round ratios (both sides measured seconds apart), not the ratio of the medians.",
        "- **Memory.** No daemon on this branch: a process that loads the YAML policy "
        "(`load_policy`), computes the desired state, applies it and reads the counters, then "
        "reports its VmRSS/VmHWM. It is also what loads the `ours` lab gateway.",
        "",
        "## Closing note",
        "",
    ]
    if missed:
        lines += [
            f"{len(missed)} target(s) missed; measured with {mach['nft']}, kernel "
            f"{mach['kernel']}, Python {mach['python']}, on {mach['cpus']} CPUs shared with "
            "other work:",
            "",
            *miss_notes(figs, m, dp, sizes, mach),
        ]
    else:
        lines.append("Every target met.")
    return lines


# ------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="cold runs per figure (default 5)")
    p.add_argument("--rounds", type=int, default=7, help="data-path rounds (default 7)")
    p.add_argument("--seconds", type=float, default=1.5, help="seconds per connect-rate sample")
    p.add_argument("--no-million", action="store_true", help="skip the 1,000,000-prefix row")
    p.add_argument(
        "--list-timeout", type=float, default=LIST_TIMEOUT_S,
        help="cut `nft list counters` off after this many seconds (default %(default)s)",
    )  # fmt: skip
    p.add_argument("--rss-limit", type=float, default=150.0, help="memory target in MiB")
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces, nftables, ipset, iptables)", file=sys.stderr)
        return 2
    ensure_tools()
    started = datetime.now(UTC)
    t0 = time.monotonic()
    mach = machine()
    sizes_to_run = [s for s in inv.SCALING if not (args.no_million and s.v4 > inv.MAIN.v4)]
    work = Path(tempfile.mkdtemp(prefix="op25b-bench-"))
    bench = Bench(work, Namespaces(), args.runs, args.rounds, args.seconds, args.list_timeout)
    with interrupts_unwind():
        try:
            sizes: dict[int, SizeResult] = {}
            for size in sizes_to_run:
                if size.v4 > inv.MAIN.v4:
                    continue  # the biggest row runs last: it is the one to drop if time is short
                sizes[size.v4] = bench.size(size, main=size == inv.MAIN)
            dp = bench.datapath(work / "policy")
            for size in sizes_to_run:
                if size.v4 > inv.MAIN.v4:
                    if time.monotonic() - t0 > BUDGET_S * 0.6:
                        log(f"skipping {size.label}: the 15-minute budget is too close")
                        continue
                    sizes[size.v4] = bench.size(size, main=False)
        finally:
            bench.close()
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - t0
    lines = render_report(
        sizes, dp, mach, started, elapsed, args.runs, args.rss_limit, args.seconds
    )
    print(plain(lines))
    if not args.no_write:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("\n".join(lines) + "\n")
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
