"""`make bench`: op25b-ctl at ISP scale, each figure a ratio against a baseline of the same run.

    python -m bench.run [--runs N] [--rounds N] [--no-million] [--output docs/benchmarks.md]
    python -m bench.run --only datapath [--rounds N] [--load-processes N]   # prints only
    python -m bench.run --only discovery [--whole-rounds N]                  # prints only
    python -m bench.run --only edits [--whole-rounds N]   # after one file's edit; prints only

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
from bench import whole
from bench.datapath import load_sources
from bench.netns import Namespaces
from bench.report import Figure, figures_table, fmt, median, plain, table
from op25b_ctl.policy.model import Policy
from op25b_lab.lab import DYN_A, FOREIGN_MX, IF_SUB, Lab, LabCommandError, Outcome, tool_env

ROOT = Path(__file__).resolve().parent.parent
LINEAR_RULES = inv.MAIN.v4  # rule per prefix: every v4 prefix of the inventory
LINEAR_SMALL = 10_000  # and a 10,000-rule subset, for context
SMTP, OTHER_PORT = 25, 80
# Load processes, each with its own source address in DYN_A's /26: one per CPU by default.
LOAD_PROCESSES = os.cpu_count() or 1
LOAD_WINDOW = 32  # attempts in flight per process
# `nft list counters` at 1,000,000 prefixes takes minutes; it is cut off here.
LIST_TIMEOUT_S = 60.0
# Time budget: the whole run must stay well under 15 minutes on 2 shared cores.
BUDGET_S = 15 * 60
RAW = Path(tempfile.gettempdir()) / "op25b-bench-last.pickle"  # the last run's measurements
# The real daemon: settled after this many no-change ("fast") passes, or failed at the deadline.
DAEMON_FAST_PASSES = 3
DAEMON_DEADLINE_S = 180.0


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
    # per sample: µs of the load processes' CPU (user + system) per finished attempt
    cpu: dict[str, list[float]] = field(default_factory=dict)
    # per sample: share of the machine's CPUs busy (anyone's work) while it ran
    busy: dict[str, list[float]] = field(default_factory=dict)
    processes: int = 1  # load processes per sample (the `none1_25` samples use one)
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    load_s: dict[str, float] = field(default_factory=dict)
    daemonlike: dict[str, float] = field(default_factory=dict)  # start-up steps, one process
    daemon: dict[str, float] = field(default_factory=dict)  # the real daemon: VmRSS, VmHWM
    memory_what: str = ""

    def costs(self, key: str, base: str = "none_25") -> list[float]:
        """Per round, what the ruleset adds to one attempt: the load processes' CPU per
        attempt through it minus through `base`, in µs. CPU time rather than 1/rate: other
        work on the machine takes wall time from a sample, not CPU time per attempt."""
        return [k - b for k, b in zip(self.cpu[key], self.cpu[base], strict=True)]

    def med(self, key: str) -> float:
        return median(self.rates[key])

    def paired(self, ours: str, base: str) -> float:
        """Median over rounds of ours/base within the same round."""
        return median([o / b for o, b in zip(self.rates[ours], self.rates[base], strict=True)])

    def cpu_paired(self, key: str, base: str) -> float:
        """Median over rounds of cpu(base)/cpu(key): the rate ratio key/base that the CPU
        cost per attempt predicts when the CPUs, not the load generator, set the rate."""
        return median([b / k for k, b in zip(self.cpu[key], self.cpu[base], strict=True)])


# ------------------------------------------------------------------ process helpers


def worker_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.worker", *args]


def in_ns(ns: str, *args: str, timeout: float = 600) -> dict[str, Any]:
    """Run a worker command inside namespace ns; its JSON answer."""
    argv = ["ip", "netns", "exec", ns, *worker_argv(*args)]
    cp = subprocess.run(argv, capture_output=True, text=True, env=tool_env(), timeout=timeout)
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
        env = {**tool_env(), "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=True,
            env=env,
        )


def _version(argv: Sequence[str]) -> str:
    cp = subprocess.run(argv, capture_output=True, text=True, env=tool_env())
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


def add_load_sources(lab: Lab, sources: Sequence[str]) -> None:
    """Give sub the load processes' source addresses and wait until each one's connect to
    `out` is answered by a reset (routes and gw's neighbour entries in place)."""
    for addr in sources:
        if addr != DYN_A.v4:  # the lab has that one
            lab.run(lab.ns_sub, ["ip", "addr", "add", f"{addr}/32", "dev", IF_SUB])
    lab.await_outcomes(
        lab.ns_sub,
        [(addr, FOREIGN_MX.v4, OTHER_PORT) for addr in sources],
        ok={Outcome.REFUSED},
        deadline=20.0,
        what="load sources reach out",
    )


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
        load_processes: int = LOAD_PROCESSES,
    ):
        self.list_timeout = list_timeout
        self.load_processes = load_processes
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
            "ours": ["apply", "--desired", str(pkl), "--variant", "ours"],
            "checked": ["apply", "--desired", str(pkl), "--variant", "checked"],
            "nft_file": ["run", "nft", "-f", str(hand)],
        }
        policy_dir: Path | None = None
        if main:
            ipset = self.work / f"ipset-{tag}.txt"
            ipset.write_text(inv.ipset_restore(policy))
            variants["ipset"] = ["run", "ipset", "restore", "-f", str(ipset)]
        if not big:  # a real Reconciler needs the YAML (1,100,000 prefixes would take minutes)
            policy_dir = self.write_policy(policy, "policy" if main else f"policy-{tag}")
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
            state = self.work / f"state-{tag}"
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
        dp = DataPath(processes=self.load_processes)
        policy = inv.synthetic_policy(inv.MAIN)
        sources = load_sources(DYN_A.v4, self.load_processes)
        labs: dict[str, Lab] = {}
        for key in ("none", "ours", "monitor", "linear", "linear10k", "classic"):
            labs[key] = Lab.create()
            self.labs.append(labs[key])
            add_load_sources(labs[key], sources)
        # the daemon's start-up, step by step, in a throw-away namespace (timings, memory)
        dp.daemonlike = {
            k: float(v)
            for k, v in self.cold(["daemonlike", "--policy-dir", str(policy_dir)]).items()
        }
        # ours: the real daemon loads the YAML inventory into this gateway
        self.run_daemon(labs["ours"], policy_dir, dp)
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

        # (row, gateway, port, load processes); `none1` is the no-ruleset gateway driven by one
        # process, to show whether the processes, not the client, set the rate
        # process, to show whether the processes, not the client, set the rate; `*_syn` rows
        # send raw SYNs instead of connects: the same packets at the gateway, a cheap client
        plan = [(k, k, SMTP, sources, False) for k in labs]
        plan += [("none", "none", OTHER_PORT, sources, False)]
        plan += [("ours", "ours", OTHER_PORT, sources, False)]
        plan += [("none1", "none", SMTP, sources[:1], False)]
        plan += [(f"{k}_syn", k, SMTP, sources, True) for k in ("none", "ours", "classic")]
        for r in range(self.rounds):
            for row, key, port, srcs, syn in plan if r % 2 == 0 else plan[::-1]:  # drift
                lab = labs[key]
                argv = ["loadgen", "--dst", FOREIGN_MX.v4, "--port", str(port)]
                argv += ["--seconds", str(self.seconds), "--window", str(LOAD_WINDOW)]
                argv += ["--syn"] if syn else []
                for src in srcs:
                    argv += ["--src", src]
                out = in_lab(lab, lab.ns_sub, *argv)
                name = f"{row}_{port}"
                dp.rates.setdefault(name, []).append(float(out["per_second"]))
                dp.cpu.setdefault(name, []).append(float(out["cpu_per_attempt"]))
                if out["busy"] is not None:
                    dp.busy.setdefault(name, []).append(float(out["busy"]))
                agg = dp.outcomes.setdefault(name, {})
                for k, n in out["outcomes"].items():
                    agg[k] = agg.get(k, 0) + int(n)
            log(
                f"data path round {r + 1}/{self.rounds}: "
                + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in dp.rates.items())
            )
        self._verify(labs, dp)
        return dp

    def run_daemon(self, lab: Lab, policy_dir: Path, dp: DataPath) -> None:
        """Start `op25b-ctl daemon` in the gateway, wait until its first pass has applied the
        table and a few no-change passes followed, then read its VmRSS/VmHWM and stop it (the
        table stays: the daemon leaves enforcement in place when it stops)."""
        state = self.work / "daemon-state"
        state.mkdir(exist_ok=True)
        address = "127.0.0.1:9625"  # the gateway namespace's own loopback: always free
        argv = [
            str(Path(sys.executable).with_name("op25b-ctl")), "daemon",
            "--policy", str(policy_dir), "--state-dir", str(state),
            "--metrics-address", address, "--interval", "1",
        ]  # fmt: skip
        t = time.perf_counter()
        proc = lab.start(lab.ns_gw, argv)
        loaded_at: float | None = None
        deadline = t + DAEMON_DEADLINE_S
        runs: dict[str, float] = {}
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"daemon exited ({proc.returncode}): {lab.output(proc)}")
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"daemon not settled: passes {runs}: {lab.output(proc)}")
                try:
                    runs = in_lab(lab, lab.ns_gw, "metrics", "--address", address)["runs"]
                except LabCommandError:
                    continue  # the exporter is not listening yet
                done = sum(runs.values())
                if done >= 1 and loaded_at is None:
                    loaded_at = time.perf_counter() - t  # first pass (the apply) done
                if runs.get("fast", 0) >= DAEMON_FAST_PASSES:
                    break
            status = Path(f"/proc/{proc.pid}/status").read_text()
        finally:
            lab.stop(proc)
        mem = {}
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                mem[key] = int(value.split()[0]) / 1024
        dp.daemon = {**mem, "passes": sum(runs.values()), "fast": runs.get("fast", 0)}
        assert loaded_at is not None
        dp.load_s["ours"] = loaded_at
        dp.memory_what = (
            f"`op25b-ctl daemon` in the lab gateway after {sum(runs.values()):.0f} passes "
            f"({runs.get('fast', 0):.0f} of them fast)"
        )
        log(
            f"daemon: table live {loaded_at:.1f} s after start; VmRSS {mem['VmRSS']:.0f} MiB, "
            f"VmHWM {mem['VmHWM']:.0f} MiB after {runs}"
        )

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


def datapath_figures(dp: DataPath) -> list[Figure]:
    rounds = f"{len(dp.rates['ours_25'])} rounds"
    return [
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
    ]  # fmt: skip


def main_figures(sizes: dict[int, SizeResult], dp: DataPath, limit_mb: float) -> list[Figure]:
    m = sizes[inv.MAIN.v4]
    small = sizes[min(sizes)]
    n, nf = len(m.cold["ours"]), len(m.warm["change"])
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
               "full apply, cold", "slower", 0.05, "s", f"{len(m.warm['reconcile'])} / {n}"),
        *datapath_figures(dp),
        Figure("rss", "daemon resident memory, inventory loaded", dp.daemon["VmRSS"], None, "",
               "ceiling", limit_mb, "MiB", "1"),
    ]  # fmt: skip


@dataclass(frozen=True)
class AttemptCost:
    """What a ruleset adds to one connect attempt (µs), from the paired rounds."""

    median: float
    bound: float  # the largest |cost| of any round: what "within noise" means here

    @property
    def within_noise(self) -> bool:
        return self.median <= 0 or self.median < self.bound / 2

    def times(self, cost: float) -> str:
        """How many times the noise bound `cost` is ("any number" when the bound is 0)."""
        return f"{cost / self.bound:.0f}x" if self.bound > 0 else "any number of times"


def attempt_cost(costs: Sequence[float]) -> AttemptCost:
    return AttemptCost(median(costs), max(abs(c) for c in costs))


def cost_rows(dp: DataPath) -> list[tuple[str, str, str]]:
    """The filter's own cost per attempt: CPU per attempt through it minus without a ruleset,
    per round."""
    ours = attempt_cost(dp.costs("ours_25"))
    mon = attempt_cost(dp.costs("monitor_25"))
    classic = median(dp.costs("classic_25"))
    linear = median(dp.costs("linear_25"))
    gap = median([c - o for c, o in zip(dp.costs("classic_25"), dp.costs("ours_25"), strict=True)])

    def vs_ours(cost: float) -> str:
        if ours.within_noise:
            return f"ours < noise: > {ours.times(cost)} (bound {ours.bound:.1f} µs)"
        return f"{cost / ours.median:.0f}x of ours"

    ours_text = (
        f"< noise (median {ours.median:+.1f} µs; every round within ±{ours.bound:.1f} µs)"
        if ours.within_noise
        else f"{ours.median:.1f} µs"
    )
    return [
        ("filter cost per TCP/25 attempt (CPU per attempt minus that with no ruleset), ours "
         "(reject at the gateway)", ours_text, "-"),
        ("same, ours in monitor (map lookup + counter; forwarded, `out` resets, as with no "
         "ruleset)", f"{mon.median:+.1f} µs (rounds within ±{mon.bound:.1f} µs)", "-"),
        ("same, ipset + iptables-legacy (1,000 rules)", f"{classic:.1f} µs", vs_ours(classic)),
        (f"same, rule per prefix ({LINEAR_RULES:,} nft rules)", f"{linear:.0f} µs",
         vs_ours(linear)),
        ("classic minus ours, per round (both reset at the gateway: the rule design alone)",
         f"{gap:.1f} µs", "-"),
    ]  # fmt: skip


def context_rows(m: SizeResult, dp: DataPath) -> list[tuple[str, str, str]]:
    """Figures without a target that explain the ones with one."""
    nft = m.med("nft_file")
    parts = m.warm["change_parts"]
    rows = [
        ("full apply, ours vs `ipset restore` of the same prefixes",
         f"{fmt(m.med('ours'), 's')} vs {fmt(m.med('ipset'), 's')}",
         f"{m.med('ours') / m.med('ipset'):.2f}x"),
        ("full apply with nft's dry run first (`plan`, `backend.check`, `backend.apply`: what "
         "dropping the check saved)", fmt(m.med("checked"), "s"),
         f"{m.med('checked') / nft:.2f}x of `nft -f`, {m.med('checked') / m.med('ours'):.2f}x "
         "of ours"),
        ("one-pool change the CLI way (`applier.apply(trust_fingerprint=True)`: skeleton "
         "read + diff + commit)", fmt(m.wmed("change_cli"), "s"),
         f"{m.med('ours') / m.wmed('change_cli'):.1f}x faster than a full apply"),
        ("same, parts: netlink skeleton read / diff / nft commit",
         " / ".join(fmt(median(parts[k]), "s") for k in ("read", "diff", "commit")), "-"),
        ("daemon pass incl. recompute (a real Reconciler after an override file was written: "
         "`source.load()` + `desired.from_policy`, which reuse the parsed policy while its "
         "files are unchanged, + "
         "the one-chain commit, read == \"known\")",
         fmt(m.wmed("recompute"), "s"), f"{len(m.warm['recompute'])} runs"),
        ("ruleset generation id (NFT_MSG_GETGEN)", fmt(median(m.warm["generation"]), "s"),
         f"{median(m.warm['generation']) / m.med('ours'):.5f}x of a full apply"),
        ("what the no-change pass measured", m.warm["reconcile_what"], "-"),
        *scrape_rows(m),
        *datapath_context_rows(dp),
    ]  # fmt: skip
    return rows


def scrape_rows(m: SizeResult) -> list[tuple[str, str, str]]:
    """A whole /metrics scrape (collector + exposition), counters read at scrape time."""
    whole = m.warm.get("scrape_whole") or {}
    if not whole:
        return []
    live, cached = median(whole["live"]), median(whole["cached"])
    return [
        ("whole metrics scrape, counters read from the kernel (`LiveCounters`, first scraper "
         "in a second): collector + exposition text", fmt(live, "s"),
         f"{live / m.wmed('scrape'):.1f}x the counter dump alone"),
        ("same, within the cache's second (further scrapers)", fmt(cached, "s"),
         f"{cached / live:.2f}x of the first"),
    ]  # fmt: skip


def load_rows(dp: DataPath) -> list[tuple[str, str, str]]:
    """Whether the load processes or the machine's CPUs set the rate, and the CPU each
    attempt costs (which the rate ratios follow once the CPUs are saturated)."""
    n = dp.processes
    cpu = {k: median(v) for k, v in dp.cpu.items()}
    busy = {k: median(v) * 100 for k, v in dp.busy.items()}
    return [
        (f"load generator: no ruleset, TCP/25, 1 process vs {n} processes (each its own "
         "sockets and source address)",
         f"{fmt(dp.med('none1_25'), '/s')} vs {fmt(dp.med('none_25'), '/s')}",
         f"{dp.paired('none_25', 'none1_25'):.2f}x with {n}"),
        (f"CPUs busy while the load ran (whole machine, anyone's work): {n} processes / 1",
         f"{busy.get('none_25', float('nan')):.0f}% / {busy.get('none1_25', float('nan')):.0f}%",
         "-"),
        ("CPU per TCP/25 attempt (the load processes' user + system time, which on veth "
         "includes sub's, gw's and out's packet work): no ruleset / ours / ipset + iptables",
         " / ".join(f"{cpu[k]:.1f}" for k in ("none_25", "ours_25", "classic_25")) + " µs",
         f"classic / ours {dp.cpu_paired('classic_25', 'ours_25') ** -1:.2f}x"),
        ("raw SYNs instead of connects (the same packets at the gateway, answered by a reset; "
         "no client socket work): ours / ipset + iptables / no ruleset",
         " / ".join(fmt(dp.med(k), "/s") for k in ("ours_syn_25", "classic_syn_25",
                                                   "none_syn_25")),
         f"ours {dp.paired('ours_syn_25', 'classic_syn_25'):.2f}x classic"),
        ("same, CPU per attempt: ours / ipset + iptables / no ruleset",
         " / ".join(f"{cpu[k]:.1f}" for k in ("ours_syn_25", "classic_syn_25", "none_syn_25"))
         + " µs", "-"),
        (f"CPU per TCP/{OTHER_PORT} attempt: no ruleset / ours (paired rounds)",
         f"{cpu[f'none_{OTHER_PORT}']:.2f} / {cpu[f'ours_{OTHER_PORT}']:.2f} µs",
         f"ours {dp.cpu_paired(f'ours_{OTHER_PORT}', f'none_{OTHER_PORT}'):.3f}x the rate"),
    ]  # fmt: skip


def datapath_context_rows(dp: DataPath) -> list[tuple[str, str, str]]:
    """The data path's context rows: they need only the data-path measurements."""
    dl = dp.daemonlike
    return [
        ("TCP/25 connects/s, DYN_A's pool in *monitor* (lookup only, `out` resets)",
         fmt(dp.med("monitor_25"), "/s"), f"{dp.paired('monitor_25', 'none_25'):.2f}x of no ruleset"),
        (f"TCP/25 connects/s through a rule-per-prefix ruleset of only {LINEAR_SMALL:,} rules",
         fmt(dp.med("linear10k_25"), "/s"),
         f"ours is {dp.paired('ours_25', 'linear10k_25'):.1f}x faster"),
        *load_rows(dp),
        *cost_rows(dp),
        ("daemon start-up steps (one process): `load_policy` / `desired.from_policy` / apply",
         " / ".join(fmt(dl[k], "s") for k in ("load_policy", "compute", "apply")), "-"),
        ("same process: VmRSS before the apply / after it / peak (VmHWM)",
         f"{dl['VmRSS_before_apply']:.0f} / {dl['VmRSS']:.0f} / {dl['VmHWM']:.0f} MiB", "-"),
        (f"real daemon ({dp.memory_what}): VmRSS / peak (VmHWM)",
         f"{dp.daemon['VmRSS']:.0f} / {dp.daemon['VmHWM']:.0f} MiB", "-"),
        ("ruleset load in the lab: ours (daemon start to table live) / rule per prefix "
         "(`nft -f`) / ipset+iptables",
         " / ".join(fmt(dp.load_s[k], "s") for k in ("ours", "linear", "classic")), "-"),
    ]  # fmt: skip


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
                fmt(s.med("checked"), "s"),
                fmt(nft, "s"),
                f"{full / nft:.2f}x",
                fmt(change, "s"),
                f"{full / change:.0f}x",
                fmt(s.wmed("change_cli"), "s"),
                fmt(scrape, "s"),
                s.nft_list_text(),
                ("> " if cut else "") + f"{lst / scrape:.0f}x",
                fmt(s.wmed("reconcile"), "s")
                + ("" if s.warm["reconcile_what"].startswith("Reconciler") else " (plan)"),
                str(len(s.cold["ours"])),
            ]
        )
    return rows


def parts_rows(sizes: dict[int, SizeResult]) -> list[list[str]]:
    """Where a one-pool change's time goes, per size."""
    rows = []
    for s in sorted(sizes.values(), key=lambda s: s.size.v4):
        p = {k: median(v) for k, v in s.warm["change_parts"].items()}
        walk = walk_split(s)
        rows.append(
            [
                s.size.label,
                fmt(p["read"], "s"),
                fmt(p["diff"], "s"),
                fmt(p["commit"], "s"),
                " / ".join(fmt(x, "s") for x in walk) if walk else "-",
                fmt(s.wmed("change_cli"), "s"),
                fmt(s.wmed("change"), "s"),
            ]
        )
    return rows


def walk_split(s: SizeResult) -> tuple[float, float, float] | None:
    """The one-pool change's commit in our table / in its empty-maps twin / the difference:
    the kernel's walk of the verdict maps (bench.worker.walk_series). None for results
    recorded before it was measured."""
    walk = s.warm.get("walk")
    if not walk:
        return None
    full, empty = median(walk["full"]), median(walk["empty"])
    return full, empty, full - empty


def walk_note(ordered: list[SizeResult]) -> str:
    """What the walk columns say about the flatness miss, over the sizes measured."""
    walks = [(x, w) for x in ordered if (w := walk_split(x)) is not None]
    if not walks:
        return (
            "Whether that is libnftables or the kernel's validation of the batch is not "
            "separated in these results."
        )
    over = " -> ".join(fmt(w[2], "s") for _, w in walks)
    rest = " -> ".join(fmt(w[1], "s") for _, w in walks)
    sizes = " -> ".join(f"{x.size.v4:,}" for x, _ in walks)
    return (
        f"Of the commit, the kernel's validation walk of the verdict maps takes {over} "
        f"at {sizes} prefixes, while the same commit in a copy of the table with its maps "
        f"empty stays at {rest}. The walk is linear in the map's elements and nft "
        f"1.0.6 cannot express a lookup that would leave the pool chains out of it; why it is "
        f"accepted, and a measured shape without it, are in docs/performance.md."
    )


def datapath_notes(dp: DataPath) -> dict[str, Callable[[Figure], str]]:
    """What limits each data-path figure, for its MISS note."""
    ours_cost = attempt_cost(dp.costs("ours_25"))
    classic_cost = median(dp.costs("classic_25"))
    cpu = {k: median(v) for k, v in dp.cpu.items()}
    n = dp.processes
    other = OTHER_PORT
    busy = median(dp.busy["none_25"]) * 100 if dp.busy.get("none_25") else float("nan")

    def cpu_spread(key: str, base: str) -> str:
        """The rate ratio CPU cost predicts: its median and range over the rounds."""
        ratios = [b / k for k, b in zip(dp.cpu[key], dp.cpu[base], strict=True)]
        return (
            f"as a rate ratio {median(ratios):.3f}x, median of paired rounds; rounds "
            f"{min(ratios):.3f}-{max(ratios):.3f}"
        )

    return {
        "dp": lambda f: (
            f"Per-round ratios: "
            f"{', '.join(f'{o / b:.2f}' for o, b in zip(dp.rates['ours_25'], dp.rates['none_25'], strict=True))}"
            f". The monitor-mode gateway (same map lookup, forwarded, `out` resets) runs at "
            f"{dp.paired('monitor_25', 'none_25'):.2f}x of no ruleset. CPU per attempt, which "
            f"other work on the machine does not move: ours {cpu['ours_25']:.1f} µs, no "
            f"ruleset {cpu['none_25']:.1f} µs ({cpu_spread('ours_25', 'none_25')})."
        ),
        "linear": lambda f: (
            f"The rule-per-prefix ruleset adds {median(dp.costs('linear_25')):.0f} µs of CPU "
            "per attempt."
        ),
        "classic": lambda f: (
            f"With {n} load processes (each its own sockets and source address) the no-ruleset "
            f"rate is {dp.paired('none_25', 'none1_25'):.2f}x the one-process rate and the "
            f"CPUs are {busy:.0f}% busy, so the machine's CPUs set the rate, not one client. "
            f"They set it for both sides alike: on veth a packet's way through gw (and out) "
            f"runs in the softirq of the CPU that sent it, so an attempt costs the client's, "
            f"the kernel path's and the filter's CPU together, and the rates follow that "
            f"cost. CPU per attempt: ours {cpu['ours_25']:.1f} µs, classic "
            f"{cpu['classic_25']:.1f} µs, no ruleset {cpu['none_25']:.1f} µs "
            f"({dp.cpu_paired('classic_25', 'ours_25') ** -1:.2f}x). The filter's own cost "
            f"(minus no ruleset, paired rounds) isolates it: classic {classic_cost:.1f} µs, "
            f"ours "
            + (
                f"< noise (every round within ±{ours_cost.bound:.1f} µs, so classic costs "
                f"more than {ours_cost.times(classic_cost)} ours)"
                if ours_cost.within_noise
                else f"{ours_cost.median:.1f} µs ({classic_cost / ours_cost.median:.0f}x)"
            )
            + f" (context rows). A rate ratio of {f.target:g}x needs the rest of an attempt "
            f"(client and kernel path) to cost at most {classic_cost / (f.target - 1):.1f} µs "
            f"of CPU, now {cpu['ours_25']:.1f} µs. With raw SYNs instead of connects (the same "
            f"packets at the gateway, {cpu['ours_syn_25']:.1f} µs per attempt through ours) "
            f"ours runs at {fmt(dp.med('ours_syn_25'), '/s')} against classic's "
            f"{fmt(dp.med('classic_syn_25'), '/s')}: "
            f"{dp.paired('ours_syn_25', 'classic_syn_25'):.2f}x (context rows)."
        ),
        "other": lambda f: (
            f"The only per-packet cost for other ports is the base chain's `tcp dport 25` "
            f"test (on the SYN and on the reset). Its CPU cost per TCP/{other} attempt: "
            f"{cpu[f'ours_{other}']:.2f} µs through ours against {cpu[f'none_{other}']:.2f} "
            f"µs with no ruleset ({cpu_spread(f'ours_{other}', f'none_{other}')}): the "
            f"ratio the rates take once the CPUs are saturated. The wall-clock rates move "
            f"with other work on the machine more than that "
            f"(per round: ours "
            f"{', '.join(f'{x:,.0f}' for x in dp.rates[f'ours_{other}'])}; none "
            f"{', '.join(f'{x:,.0f}' for x in dp.rates[f'none_{other}'])})."
        ),
    }


def miss_notes(
    figs: list[Figure],
    m: SizeResult,
    dp: DataPath,
    sizes: dict[int, SizeResult],
    mach: dict[str, str],
) -> list[str]:
    """For each MISS: by how much, what limits it, and what would close it."""
    nft = m.med("nft_file")
    parts = {k: median(v) for k, v in m.warm["change_parts"].items()}
    gen = median(m.warm["generation"])
    ordered = sorted(sizes.values(), key=lambda x: x.size.v4)
    lo, hi = ordered[0], m

    def growth(part: str) -> str:
        a, b = (median(x.warm["change_parts"][part]) for x in (lo, hi))
        return f"{fmt(a, 's')} at {lo.size.v4:,} -> {fmt(b, 's')} at {hi.size.v4:,} prefixes"

    notes: dict[str, Callable[[Figure], str]] = {
        "apply": lambda f: (
            f"One commit, no dry run ({fmt(m.med('checked'), 's')} with one, "
            f"{m.med('checked') / m.med('ours'):.2f}x). What remains over `nft -f` is our "
            f"script (one `add` line per object, elements inline in each `add set/map`) against "
            f"one declarative block, plus the Python side (a netlink read that finds no table, "
            f"the diff, rendering {inv.MAIN.elements:,} elements): "
            f"{fmt(m.med('ours') - nft, 's')} in all."
        ),
        "change": lambda f: (
            f"The daemon's change is a generation check, a diff against the table it last made "
            f"live and one commit of a one-chain rewrite; the commit dominates "
            f"(CLI path parts: commit {fmt(parts['commit'], 's')}, diff "
            f"{fmt(parts['diff'], 's')}). The CLI path adds a skeleton read "
            f"({fmt(parts['read'], 's')}): {fmt(m.wmed('change_cli'), 's')} in all."
        ),
        "flat": lambda f: (
            f"The daemon's change reads nothing and writes no elements, and its diff stays flat "
            f"(CLI parts: diff {growth('diff')}); what grows is the commit itself "
            f"({growth('commit')}): the daemon change goes "
            f"{' -> '.join(fmt(x.wmed('change'), 's') for x in ordered)} over the sizes. "
            + walk_note(ordered)
        ),
        "scrape": lambda f: (
            f"`netlink.read_counters` parses the counter dump by hand "
            f"({m.warm['counters']:,} counters); `nft list counters` is what it is measured "
            f"against."
        ),
        "reconcile": lambda f: (
            f"The pass ({m.warm['reconcile_what']}) stats the input files and reads the "
            f"generation id ({fmt(gen, 's')}); nothing else."
        ),
        **datapath_notes(dp),
        "rss": lambda f: (
            f"Measured on {dp.memory_what}: peak {dp.daemon['VmHWM']:.0f} MiB. The backend "
            f"gives freed heap back after big libnftables calls and full reads, so what stays "
            f"is live data: the policy's per-prefix pydantic models and the desired table "
            f"({dp.daemonlike['VmRSS_before_apply']:.0f} MiB before any apply in the "
            f"step-by-step process). Closing it: keep the desired Table, not the per-prefix "
            f"models, once the policy is validated."
        ),
    }
    out = []
    for f in figs:
        if not f.passed:
            out.append(f"- **{f.what}**: MISS, {f.shortfall}. {notes[f.key](f)}")
    return out


def _offender_lines(res: Any) -> list[str]:
    from bench import offenders

    return [*offenders.lines(res), ""]


def render_report(
    sizes: dict[int, SizeResult],
    dp: DataPath,
    mach: dict[str, str],
    started: datetime,
    elapsed: float,
    runs: int,
    limit_mb: float,
    seconds: float,
    processes: whole.Whole | None = None,
    offenders: Any = None,  # bench.offenders.OffenderBench of the same run, if measured
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
        "BENCH_ARGS='--runs 3 --no-million'` for a shorter run, `.venv/bin/python -m "
        "bench.run --only datapath` for the connect rates alone, printed and not written; "
        "`python -m bench.run --help` for the options). It installs `ipset` and `iptables` "
        "from apt if they are missing.",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; whole run {elapsed / 60:.1f} min",
        f"- machine: {mach['cpus']} CPUs ({mach['cpu']}), {mach['memory']}, {mach['os']}, "
        f"kernel {mach['kernel']}; load average at start {mach['loadavg']}",
        f"- software: {mach['nft']}; {mach['ipset']}; {mach['iptables']}; Python {mach['python']}",
        f"- inventory: {inv.POOL_COUNT:,} pools, {inv.MAIN.label} prefixes "
        f"({inv.MAIN.v4 // inv.POOL_COUNT} + {inv.MAIN.v6 // inv.POOL_COUNT} per pool), 9 in 10 "
        "pools enforced (reject), the rest monitored; one relay",
        "",
        *(
            [
                "## Whole processes: `op25b-ctl` as an engineer runs it",
                "",
                "Each command is timed from fork to exit as its own process (`ip netns exec "
                "NS op25b-ctl ...`): start-up, imports, the policy, the kernel work. "
                "See bench/whole.py for the method.",
                "",
                *whole.report_lines(processes, limit_mb),
                "",
            ]
            if processes is not None
            else []
        ),
        *(_offender_lines(offenders) if offenders is not None else []),
        "## Figures (library calls inside one process)",
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
                "with dry run first",
                "`nft -f`",
                "full / nft",
                "one-pool change (daemon)",
                "full / change",
                "one-pool change (CLI)",
                "scrape (netlink)",
                "`nft list counters`",
                "list / scrape",
                "no-change pass",
                "runs",
            ),
            scaling_rows(sizes),
        ),  # fmt: skip
        "",
        "Where a one-pool change's time goes (the CLI path, medians of separately timed "
        "steps; the daemon's path skips the read and diffs against the table it last made "
        "live):",
        "",
        *table(
            (
                "prefixes",
                "live read (netlink skeleton)",
                "diff",
                "nft commit",
                "commit / same, maps empty / kernel's walk",
                "CLI change",
                "daemon change",
            ),
            parts_rows(sizes),
        ),
        "",
        "The kernel's walk: nf_tables validates the table at commit whenever the batch adds a "
        "rule, and walks every element of the verdict maps `pools_v4`/`pools_v6` while doing "
        "so. The same one-pool change is committed alternately in our table and in a copy of "
        "it with every set and map empty (`op25b_walk`, same chains, rules and counters, "
        'removed afterwards); the difference is that walk (docs/performance.md, "One-pool '
        "change and the kernel's loop walk\").",
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
        "- **Full apply (cold).** Each run in a fresh namespace: `applier.apply(NftKernel(), "
        "desired)` (what ships: read, diff, one commit; the kernel validates the whole batch) "
        "in the venv's Python, timed inside the process (the pickled desired table is loaded "
        "before the clock starts); for context the same with nft's dry run first "
        "(`applier.plan`, `backend.check`, `backend.apply`); `nft -f` of an equivalent "
        "hand-written ruleset (the same counters, sets, verdict maps and chains in one "
        "`table { }` block) and `ipset restore` of one hash:net set per pool and family, each "
        "timed around the command. The variants run in rotating order.",
        "- **One-pool change.** In a namespace holding the whole table, one pool flipped "
        "between enforce and monitor the way the daemon's Reconciler does it for a due stage "
        'or an override (read "known"): `netlink.ruleset_generation()` must equal the one '
        "after our own last commit, `diff(last live table, target)` (the worker refuses "
        "anything but FlushChain + AddRule), `backend.apply(tx)`, and the generation read "
        "again (it must be the old one + 1). Nothing is read from the kernel. Context: the "
        "CLI's `applier.apply(..., trust_fingerprint=True)` (netlink skeleton read + diff + "
        "commit) and a real Reconciler pass after an override file was written (which "
        "recomputes the desired state; the parsed policy is reused while its files are "
        "unchanged). Baseline: the cold full apply of the "
        "same size. Flat means: the median at 100,000 prefixes within 1.5x of the median at "
        "1,000.",
        "- **Scrape.** `NftKernel().counters(family, table)` (all named counters, the dump parsed by "
        "hand) against `nft list counters table inet op25b`, in the same namespace.",
        "- **No-change pass.** A real `op25b_ctl.daemon.reconcile.Reconciler(NftKernel(), "
        "DirectorySource(policy_dir, state_dir)).run_once()` on the YAML inventory, after its start-up pass; the worker "
        'fails unless every timed pass reports read == "fast" and no change. The '
        "1,000,000-prefix row has no YAML: there it is `applier.plan(trust_fingerprint=True)` "
        '(marked "plan"), what a pass costs when the generation has changed.',
        f"- **Data path.** Six identical lab gateways (sub -> gw -> out), each with one "
        f"ruleset: none; ours; ours with DYN_A's pool monitored; a rule-per-prefix nft ruleset "
        f"of {LINEAR_RULES:,} `ip saddr <prefix> jump pool_<name>` rules (DYN_A's /26 is rule "
        f"{LINEAR_RULES // 2 + 1:,}, the middle: an average match); the classic way "
        f"(`ipset` hash:net per pool, FORWARD `-p tcp --dport 25 -j SMTP`, one `-m set "
        f"--match-set <pool>-v4 src` rule per pool in SMTP, REJECT --reject-with tcp-reset for "
        f"enforced pools, `iptables-legacy`; DYN_A's pool is rule {inv.ENFORCED_POOL + 2:,} of "
        f"{inv.POOL_COUNT + 1:,}). The load: {dp.processes} processes in `sub` (one per CPU), "
        f"each a Python epoll loop with its own sockets and its own source address in DYN_A's "
        f"/26 (from {DYN_A.v4} on), keeping {LOAD_WINDOW} non-blocking connects to FOREIGN_MX "
        f"in flight; all start together once each is ready, run {seconds:g} s, and their "
        f"finished attempts per second are summed. The no-ruleset gateway is also driven by "
        f"one process, to show whether the client or the CPUs set the rate. Each sample also "
        f"records the load processes' CPU time (user + system) per attempt: on veth the "
        f"packet work of sub, gw and out runs in the softirq of the sending CPU and is charged "
        f"to the sender, so this is the attempt's whole CPU cost, and unlike the rate it does "
        f"not move when other work on the machine takes CPU time. For context the none, ours "
        f"and classic gateways are also driven by raw SYNs (the same processes and sources, a "
        f"raw socket each, segments with valid checksums built before the clock starts), "
        f"counted by the resets that come back to `sub` (its Tcp InSegs): the gateway sees "
        f"the same packets as for a connect, the client does no socket work. The gateways are "
        f"measured "
        f"round-robin so load from other work on the machine hits them alike. Nothing listens "
        f"on `out`'s ports 25 and {OTHER_PORT}, so without a rule `out` resets the attempt. "
        f"The order alternates every round, and each data-path ratio is the median of the "
        f"per-round ratios (both sides measured seconds apart), not the ratio of the medians.",
        "- **Memory.** `op25b-ctl daemon --policy DIR --state-dir DIR --interval 1` started in "
        "the `ours` lab gateway (metrics on the namespace's own loopback); once its exporter "
        f'counts {DAEMON_FAST_PASSES} no-change ("fast") passes after the start-up apply, '
        "its /proc/PID/status VmRSS and VmHWM are read and it is stopped (the table stays). "
        "The start-up steps are also timed one by one in a separate process (`daemonlike`).",
        "- **Filter cost per attempt.** Per round, the load processes' CPU per attempt through "
        'the ruleset minus that through no ruleset, in µs, median over rounds; "< noise" '
        "when that median is below half the largest |cost| of any round (the bound given).",
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


HAND_KEPT = "<!-- hand-kept below this line: `make bench` rewrites only what is above -->"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="cold runs per figure (default 5)")
    p.add_argument("--rounds", type=int, default=7, help="data-path rounds (default 7)")
    p.add_argument("--seconds", type=float, default=1.5, help="seconds per connect-rate sample")
    p.add_argument("--no-million", action="store_true", help="skip the 1,000,000-prefix row")
    p.add_argument(
        "--load-processes", type=int, default=LOAD_PROCESSES,
        help="connect-rate load processes per sample (default: one per CPU, %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--only", choices=("datapath", "discovery", "offenders", "edits"),
        help="run only this part and print its figures (writes nothing; `datapath`: the six "
        "lab gateways' connect rates, about 3 minutes; `discovery`: `discover` at 100,000 "
        "routes and the daemon's pass with discovery on and off, about 1 minute; "
        "`offenders`: offender tracking's rate ratio, set memory and `offenders --top 20` "
        "at 65,536 elements, about 1 minute; `edits`: the whole-process commands after an "
        "edit of one policy file, --whole-rounds rounds, about 15 s each)",
    )  # fmt: skip
    p.add_argument(
        "--list-timeout", type=float, default=LIST_TIMEOUT_S,
        help="cut `nft list counters` off after this many seconds (default %(default)s)",
    )  # fmt: skip
    p.add_argument("--rss-limit", type=float, default=150.0, help="memory target in MiB")
    p.add_argument(
        "--whole-rounds", type=int, default=5,
        help="rounds of the whole-process commands (default 5; 0 skips them)",
    )  # fmt: skip
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument(
        "--from-raw", action="store_true", help=f"only render the report from {RAW}"
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.from_raw:
        return report(args, *pickle.loads(RAW.read_bytes()))
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces, nftables, ipset, iptables)", file=sys.stderr)
        return 2
    ensure_tools()
    if args.only == "datapath":
        return only_datapath(args)
    if args.only == "discovery":
        from bench import discovery

        print(plain(discovery.run(max(3, args.whole_rounds))))
        return 0
    if args.only == "offenders":
        from bench import offenders

        return offenders.run(args, log)
    if args.only == "edits":
        return only_edits(args)
    started = datetime.now(UTC)
    t0 = time.monotonic()
    mach = machine()
    sizes_to_run = [s for s in inv.SCALING if not (args.no_million and s.v4 > inv.MAIN.v4)]
    work, bench = new_bench(args)
    with interrupts_unwind():
        try:
            sizes: dict[int, SizeResult] = {}
            for size in sizes_to_run:
                if size.v4 > inv.MAIN.v4:
                    continue  # the biggest row runs last: it is the one to drop if time is short
                sizes[size.v4] = bench.size(size, main=size == inv.MAIN)
            dp = bench.datapath(work / "policy")
            from bench import offenders

            tracking = offenders.measure(args.rounds, args.seconds, args.load_processes, log)
            processes = None
            if args.whole_rounds > 0:
                processes = whole.measure(
                    work, bench.nss, inv.synthetic_policy(inv.MAIN), args.whole_rounds, log
                )
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
    raw = (
        *(sizes, dp, mach, started, elapsed, args.runs, args.rss_limit, args.seconds),
        *(processes, tracking),
    )
    RAW.write_bytes(pickle.dumps(raw))  # re-render with --from-raw without measuring again
    log(f"raw results in {RAW}")
    return report(args, *raw)


def datapath_lines(dp: DataPath) -> list[str]:
    """The data-path figures alone: what `--only datapath` prints."""
    figs = datapath_figures(dp)
    notes = datapath_notes(dp)
    return [
        "## Data path (`--only datapath`)",
        "",
        *figures_table(figs),
        "",
        *table(("measurement", "value", "ratio"), datapath_context_rows(dp)),
        "",
        *(f"- {c}" for c in dp.checks),
        "",
        *(f"- **{f.what}**: MISS, {f.shortfall}. {notes[f.key](f)}" for f in figs if not f.passed),
    ]


def new_bench(args: argparse.Namespace) -> tuple[Path, Bench]:
    """A scratch directory and the runner over it, as the command line asked."""
    work = Path(tempfile.mkdtemp(prefix="op25b-bench-"))
    bench = Bench(
        work, Namespaces(), args.runs, args.rounds, args.seconds, args.list_timeout,
        args.load_processes,
    )  # fmt: skip
    return work, bench


def only_datapath(args: argparse.Namespace) -> int:
    """`--only datapath`: the lab gateways' connect rates, printed, nothing written."""
    t0 = time.monotonic()
    work, bench = new_bench(args)
    with interrupts_unwind():
        try:
            policy_dir = bench.write_policy(inv.synthetic_policy(inv.MAIN), "policy")
            dp = bench.datapath(policy_dir)
        finally:
            bench.close()
            shutil.rmtree(work, ignore_errors=True)
    log(f"data path done in {(time.monotonic() - t0) / 60:.1f} min (load {os.getloadavg()})")
    print(plain(datapath_lines(dp)))
    return 0


def only_edits(args: argparse.Namespace) -> int:
    """`--only edits`: the whole-process commands after one file's edit, printed only."""
    t0 = time.monotonic()
    work, bench = new_bench(args)
    with interrupts_unwind():
        try:
            edits = whole.measure_edits(
                work, bench.nss, inv.synthetic_policy(inv.MAIN), args.whole_rounds, log
            )
        finally:
            bench.close()
            shutil.rmtree(work, ignore_errors=True)
    log(f"edits done in {(time.monotonic() - t0) / 60:.1f} min (load {os.getloadavg()})")
    print(
        plain(
            ["## After an edit of one policy file (`--only edits`)", "", *whole.edit_lines(edits)]
        )
    )
    return 0


def report(args: argparse.Namespace, *raw: Any) -> int:
    lines = render_report(*raw)
    print(plain(lines))
    if not args.no_write:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        # the hand-kept section (figures the code's design quotes) survives a new run
        old = args.output.read_text() if args.output.exists() else ""
        kept = old[old.index(HAND_KEPT) :] if HAND_KEPT in old else ""
        args.output.write_text("\n".join(lines) + "\n" + ("\n" + kept if kept else ""))
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
