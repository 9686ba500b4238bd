"""Whole-process figures: `op25b-ctl ...` run as an engineer runs it, one process per command.

The library figures in run.py time calls inside one warm process; these time the command from
fork to exit (Python start-up, imports, reading the policy, the kernel work), each in the
same kind of namespace as its baseline and in the same round:

- `nft -f` of the exact script `plan --script` prints, into a fresh namespace, is the
  baseline of a cold `apply` and of the daemon's start to a live table;
- `nft list counters` is the baseline of `status`;
- every pool command is also run on a 10-pool policy (the first 10 pools of the same
  inventory), the flatness baseline.

"Cold cache" means the validated-policy cache (op25b_ctl/policy/cache.py) is empty, as after
an edit of the policy; the other commands find it warm, as they would after any earlier
command on the same files. The commands of one namespace run one after the other, as an
engineer's would, so each finds the live record (`.live.json`) the previous one left and
reads no table; two rows time the same commands after another commit to the ruleset, when
the table must be read. Every command must exit 0; the runner stops otherwise.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import inventory as inv
from bench.netns import Namespaces
from bench.report import fmt, median, plain, table
from op25b_ctl.policy.model import Policy

CTL = str(Path(sys.executable).with_name("op25b-ctl"))
SMALL_POOLS = 10
DAEMON_READY_S = 180.0
POOL = inv.pool_name(inv.CHANGE_POOL)
EXPLAIN = ("explain", "192.0.2.10", "--to", "203.0.113.99")

# key -> (what the README and the report call it, target: ("abs", seconds) | ("ratio", x));
# the empty-table and daemon-start ratios are issue 19's (1.1x warm, 1.5x cold, both)
TARGETS: dict[str, tuple[str, tuple[str, float]]] = {
    "apply_cold": (
        "`apply` into an empty table, cache warm (after `validate`) / `nft -f`",
        ("ratio", 1.1),
    ),
    "apply_cold_nocache": (
        "`apply` into an empty table, cold cache (files just edited) / `nft -f`",
        ("ratio", 1.5),
    ),
    "apply_noop": ("`apply`, nothing to do", ("abs", 0.3)),
    "tick_noop": ("`rollout tick`, nothing to do", ("abs", 0.3)),
    "validate_cold": ("`validate`, cold cache (files just edited)", ("abs", 1.0)),
    "validate": ("`validate`, warm cache", ("abs", 1.0)),
    "status": ("`status -o json`", ("abs", 0.3)),
    "explain": ("`explain 192.0.2.10 --to 203.0.113.99`", ("abs", 0.3)),
    "rollback": ("`pool rollback`", ("abs", 0.3)),
    "monitor": ("`pool monitor`", ("abs", 0.3)),
    "enforce": ("`pool enforce`", ("abs", 0.3)),
    "clear": ("`pool clear`", ("abs", 0.3)),
    # the same after another commit to the ruleset: no live record, the table is read
    "rollback_read": ("`pool rollback` after another commit (the table is read)", ("abs", 0.3)),
    "apply_noop_read": ("`apply`, nothing to do, after another commit", ("abs", 0.3)),
    # with `op25b-ctl daemon` running on the same state directory: its command socket
    "status_daemon": ("`status -o json`, daemon running (its command socket)", ("abs", 0.3)),
    "explain_daemon": ("`explain ...`, daemon running", ("abs", 0.3)),
    "rollback_daemon": ("`pool rollback`, daemon running", ("abs", 0.3)),
    "clear_daemon": ("`pool clear`, daemon running", ("abs", 0.3)),
    "daemon_cold": ("daemon start to table live, cold cache / `nft -f`", ("ratio", 1.5)),
    "daemon_warm": ("daemon start to table live, warm cache / `nft -f`", ("ratio", 1.1)),
}
POOL_COMMANDS = ("rollback", "monitor", "enforce", "clear")
# commands shown against another baseline than `nft -f` (no target on that ratio)
BASELINES = {"status": "nft_list_counters"}
FLAT = 1.5  # a pool command at 1,000 pools within this of the same at 10 pools


@dataclass
class Whole:
    """Seconds per command and round, per policy size ("big", "small"), plus baselines."""

    times: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    peak_mib: dict[str, list[float]] = field(default_factory=dict)
    rounds: int = 0
    edits: Edits | None = None  # the edit rounds (EDIT_TARGETS), 1,000 pools only

    def add(self, size: str, key: str, seconds: float) -> None:
        self.times.setdefault(size, {}).setdefault(key, []).append(seconds)


def small_policy(policy: Policy) -> Policy:
    return Policy(policy.gateway, policy.pools[:SMALL_POOLS], policy.relays)


def _wait4(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Exit status and peak RSS (MiB) of a child (`ip netns exec` execs the command itself)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024


class Runner:
    def __init__(self, work: Path, nss: Namespaces, dirs: dict[str, Path]) -> None:
        self.work = work
        self.nss = nss
        self.dirs = dirs  # "big"/"small" -> policy directory
        self.cache = work / "whole-cache"
        self.state = work / "whole-state"
        self.env = {
            **os.environ,
            "OP25B_CACHE_DIR": str(self.cache),
            "OP25B_STATE_DIR": str(self.state),
        }

    def cold_cache(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)

    def fresh_state(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)
        self.state.mkdir()

    def timed(self, ns: str, argv: Sequence[str]) -> tuple[float, float]:
        """(seconds, peak MiB) of one whole process in namespace ns; raises unless exit 0."""
        t = time.perf_counter()
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        rc, peak = _wait4(proc)
        seconds = time.perf_counter() - t
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        if rc != 0:
            raise RuntimeError(f"{' '.join(argv)} in {ns}: exit {rc}: {err[-2000:]}")
        return seconds, peak

    def ctl(self, ns: str, size: str, *args: str) -> tuple[float, float]:
        return self.timed(ns, [CTL, *args, "--policy", str(self.dirs[size])])

    def script(self, size: str) -> Path:
        """The exact script `plan --script` prints for an empty namespace."""
        ns = self.nss.create()
        try:
            cp = subprocess.run(
                ["ip", "netns", "exec", ns, CTL, "plan", "--script", "-o", "json"]
                + ["--policy", str(self.dirs[size])],
                env=self.env,
                capture_output=True,
                text=True,
                check=True,
            )
        finally:
            self.nss.remove(ns)
        path = self.work / f"whole-{size}.nft"
        path.write_text(json.loads(cp.stdout)["script"])
        return path

    def daemon(
        self, ns: str, size: str, then: Callable[[], None] | None = None
    ) -> tuple[float, float]:
        """Start `op25b-ctl daemon` and wait for its READY=1 (sent after the first pass has
        made the table live); (seconds to READY, VmHWM MiB at READY). `then` runs while it
        still runs (commands through its socket); then it is stopped."""
        sock_path = self.work / "whole-notify.sock"
        sock_path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(sock_path))
        argv = [CTL, "daemon", "--policy", str(self.dirs[size]), "--state-dir", str(self.state)]
        argv += ["--metrics-address", "off", "--interval", "5"]
        t = time.perf_counter()
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            env={**self.env, "NOTIFY_SOCKET": str(sock_path)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            sock.settimeout(DAEMON_READY_S)
            while True:
                msg = sock.recv(4096).decode(errors="replace")
                if "READY=1" in msg.split("\n"):
                    break
            seconds = time.perf_counter() - t
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak = next(
                int(line.split()[1]) / 1024
                for line in status.splitlines()
                if line.startswith("VmHWM:")
            )
            if then is not None:
                then()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            sock.close()
            sock_path.unlink(missing_ok=True)
        return seconds, peak

    def through_daemon(self, res: Whole, ns: str, size: str) -> None:
        """The commands an engineer types while the daemon runs: each goes to its socket
        (OP25B_DAEMON=require fails the run if one does not)."""
        env, self.env = self.env, {**self.env, "OP25B_DAEMON": "require"}
        try:
            res.add(size, "status_daemon", self.ctl(ns, size, "status", "-o", "json")[0])
            res.add(size, "explain_daemon", self.ctl(ns, size, *EXPLAIN)[0])
            extra = ("--reason", "bench")
            res.add(
                size, "rollback_daemon", self.ctl(ns, size, "pool", "rollback", POOL, *extra)[0]
            )
            res.add(size, "clear_daemon", self.ctl(ns, size, "pool", "clear", POOL)[0])
        finally:
            self.env = env

    def round(self, res: Whole, size: str, script: Path) -> None:
        """Every command once, in a fresh namespace, baselines first."""
        ns = self.nss.create()
        try:
            res.add(size, "nft_f", self.timed(ns, ["nft", "-f", str(script)])[0])
        finally:
            self.nss.remove(ns)
        ns = self.nss.create()
        try:
            self.fresh_state()
            self.cold_cache()
            seconds, peak = self.ctl(ns, size, "apply")
            res.add(size, "apply_cold_nocache", seconds)
            res.peak_mib.setdefault(f"{size}_apply", []).append(peak)
        finally:
            self.nss.remove(ns)
        ns = self.nss.create()
        try:
            self.fresh_state()  # the cache is warm now, as after `validate` or `plan`
            res.add(size, "apply_cold", self.ctl(ns, size, "apply")[0])
            res.add(size, "apply_noop", self.ctl(ns, size, "apply")[0])
            res.add(size, "tick_noop", self.ctl(ns, size, "rollout", "tick")[0])
            res.add(size, "status", self.ctl(ns, size, "status", "-o", "json")[0])
            res.add(size, "explain", self.ctl(ns, size, *EXPLAIN)[0])
            for action in POOL_COMMANDS:
                extra = () if action == "clear" else ("--reason", "bench")
                res.add(size, action, self.ctl(ns, size, "pool", action, POOL, *extra)[0])
            # someone else's commit (any table) before each: `.live.json` no longer holds
            self.timed(ns, ["nft", "add", "table", "inet", "bench_other1"])
            extra = ("--reason", "bench")
            res.add(size, "rollback_read", self.ctl(ns, size, "pool", "rollback", POOL, *extra)[0])
            self.timed(ns, ["nft", "add", "table", "inet", "bench_other2"])
            res.add(size, "apply_noop_read", self.ctl(ns, size, "apply")[0])
            self.ctl(ns, size, "pool", "clear", POOL)
            res.add(size, "validate", self.ctl(ns, size, "validate")[0])
            self.cold_cache()
            res.add(size, "validate_cold", self.ctl(ns, size, "validate")[0])
            res.add(size, "nft_list_counters", self.timed(ns, ["nft", "list", "counters"])[0])
        finally:
            self.nss.remove(ns)
        for key, cold in (("daemon_cold", True), ("daemon_warm", False)):
            ns = self.nss.create()
            try:
                self.fresh_state()
                if cold:
                    self.cold_cache()
                # the warm daemon also serves the one-shot commands (cli/thin.py)
                then = None if cold else functools.partial(self.through_daemon, res, ns, size)
                seconds, peak = self.daemon(ns, size, then)
                res.add(size, key, seconds)
                res.peak_mib.setdefault(f"{size}_{key}", []).append(peak)
            finally:
                self.nss.remove(ns)


def measure(
    work: Path, nss: Namespaces, policy: Policy, rounds: int, log: Callable[[str], None] = print
) -> Whole:
    """`rounds` rounds of every command on the 1,000-pool and the 10-pool policy."""
    dirs = {}
    for size, pol in (("big", policy), ("small", small_policy(policy))):
        d = work / f"whole-policy-{size}"
        d.mkdir(exist_ok=True)
        for name, text in inv.policy_files(pol).items():
            (d / name).write_text(text)
        dirs[size] = d
    runner = Runner(work, nss, dirs)
    scripts = {size: runner.script(size) for size in dirs}
    res = Whole(rounds=rounds)
    for r in range(rounds):
        for size in ("big", "small") if r % 2 == 0 else ("small", "big"):
            runner.round(res, size, scripts[size])
        big = res.times["big"]
        log(
            f"whole processes, round {r + 1}/{rounds}: "
            + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in big.items())
        )
    shutil.rmtree(runner.cache, ignore_errors=True)
    res.edits = measure_edits(work, nss, policy, rounds, log)
    return res


# ------------------------------------------------------------------ edits

# key -> (what the report calls it, target, baseline key for a ratio or None)
EDIT_TARGETS: dict[str, tuple[str, tuple[str, float], str | None]] = {
    "date_validate": ("`validate` after moving a stage's date", ("abs", 0.3), None),
    "date_apply": ("`apply` after moving a stage's date", ("abs", 0.4), None),
    "exempt_validate": ("`validate` after adding an exemption", ("abs", 0.3), None),
    "exempt_apply": ("`apply` after adding an exemption", ("abs", 0.4), None),
    "pools_validate": ("`validate` after editing pools.yaml", ("abs", 1.0), None),
    "pools_apply": (
        "`apply` after removing one pool's 100 of 100,000 IPv4 prefixes / a cold apply",
        ("ratio", 1.5),
        "apply_cold_nocache",
    ),
    "apply_cold_nocache": (
        "`apply` into an empty table, cold cache / `nft -f`",
        ("ratio", 1.5),
        "nft_f",
    ),
    "apply_cold": ("`apply` into an empty table, warm cache / `nft -f`", ("ratio", 1.1), "nft_f"),
}
MANY_EXEMPTIONS = 10_000
# in the same rounds, for comparison: nothing edited; thousands of exemptions
EDIT_CONTEXT = {
    "validate": "`validate`, nothing edited",
    "apply_noop": "`apply`, nothing edited",
    "nft_f": "`nft -f` of the same table into an empty namespace",
    "exempt_many_apply": f"`apply` after adding {MANY_EXEMPTIONS:,} exemptions (one rule each family)",
    "exempt_many_noop": f"`apply`, nothing edited, {MANY_EXEMPTIONS:,} exemptions in force",
    "exempt_many_add": f"`apply` after adding one exemption to {MANY_EXEMPTIONS:,}",
}
EDIT_STAGE_POOL = 9  # monitored; the stage enforces it at a date always in the future
FUTURE = ("2030-01-07T10:00:00+09:00", "2030-01-14T10:00:00+09:00", "2030-01-21T10:00:00+09:00")


@dataclass
class Edits:
    """Seconds per command and round, after each kind of edit (1,000 pools)."""

    times: dict[str, list[float]] = field(default_factory=dict)
    rounds: int = 0
    load: list[tuple[float, float, float]] = field(default_factory=list)

    def add(self, key: str, seconds: float) -> None:
        self.times.setdefault(key, []).append(seconds)


def _rollout(at: str) -> str:
    return (
        "stages:\n  - name: enforce-next\n"
        f"    at: {at}\n    mode: enforce\n    pools: [{inv.pool_name(EDIT_STAGE_POOL)}]\n"
    )


def _exemptions(count: int) -> str:
    """`count` exemptions, each a /32 at the start of a prefix, from pool 2 on (never the
    whole of one)."""
    lines = ["exemptions:"] if count else ["exemptions: []"]
    base = ipaddress.IPv4Address(inv.V4_BASE)
    per = inv.MAIN.v4 // inv.POOL_COUNT
    for k in range(count):
        addr = base + (inv.CHANGE_POOL * per + k) * inv.V4_STEP
        lines += [f"  - prefix: {addr}/32", f"    ticket: BENCH-{k}"]
    return "\n".join(lines) + "\n"


def _without_v4(pools_yaml: str, pool: int) -> str:
    """pools.yaml with pool `pool`'s IPv4 prefixes removed (its IPv6 ones keep it valid)."""
    out = []
    mine = False
    for line in pools_yaml.splitlines():
        if line.startswith("  - name: "):
            mine = line == f"  - name: {inv.pool_name(pool)}"
        if mine and line.startswith("    prefixes: ["):
            kept = [x for x in line[len("    prefixes: [") : -1].split(", ") if ":" in x]
            assert kept, "the pool needs its IPv6 prefixes to stay valid"
            line = f"    prefixes: [{', '.join(kept)}]"
        out.append(line)
    return "\n".join(out) + "\n"


def edits_round(runner: Runner, res: Edits, script: Path, files: dict[str, str]) -> None:
    """One round: `nft -f` baseline; a cold then a warm `apply` into an empty table; the
    unchanged-policy commands; then each kind of edit followed by `validate` (a second
    edit of the same kind) and by `apply` directly, as an engineer runs them."""
    d = runner.dirs["edits"]

    def write(name: str, text: str) -> None:
        (d / name).write_text(text)

    for name, text in files.items():
        write(name, text)
    ns = runner.nss.create()
    try:
        res.add("nft_f", runner.timed(ns, ["nft", "-f", str(script)])[0])
    finally:
        runner.nss.remove(ns)
    ns = runner.nss.create()
    try:
        runner.fresh_state()
        runner.cold_cache()
        res.add("apply_cold_nocache", runner.ctl(ns, "edits", "apply")[0])
    finally:
        runner.nss.remove(ns)
    ns = runner.nss.create()
    try:
        runner.fresh_state()
        res.add("apply_cold", runner.ctl(ns, "edits", "apply")[0])
        res.add("apply_noop", runner.ctl(ns, "edits", "apply")[0])
        res.add("validate", runner.ctl(ns, "edits", "validate")[0])
        write("rollout.yaml", _rollout(FUTURE[1]))
        res.add("date_validate", runner.ctl(ns, "edits", "validate")[0])
        write("rollout.yaml", _rollout(FUTURE[2]))
        res.add("date_apply", runner.ctl(ns, "edits", "apply")[0])
        write("exemptions.yaml", _exemptions(1))
        res.add("exempt_validate", runner.ctl(ns, "edits", "validate")[0])
        write("exemptions.yaml", _exemptions(2))
        res.add("exempt_apply", runner.ctl(ns, "edits", "apply")[0])
        write("pools.yaml", _without_v4(files["pools.yaml"], 3))
        res.add("pools_validate", runner.ctl(ns, "edits", "validate")[0])
        write("pools.yaml", _without_v4(_without_v4(files["pools.yaml"], 3), 4))
        res.add("pools_apply", runner.ctl(ns, "edits", "apply")[0])
    finally:
        runner.nss.remove(ns)
    ns = runner.nss.create()
    try:  # the exempt chain's rule with thousands of elements (plan/ruleset.py)
        for name, text in files.items():
            write(name, text)
        runner.fresh_state()
        runner.ctl(ns, "edits", "apply")
        write("exemptions.yaml", _exemptions(MANY_EXEMPTIONS))
        res.add("exempt_many_apply", runner.ctl(ns, "edits", "apply")[0])
        res.add("exempt_many_noop", runner.ctl(ns, "edits", "apply")[0])
        write("exemptions.yaml", _exemptions(MANY_EXEMPTIONS + 1))
        res.add("exempt_many_add", runner.ctl(ns, "edits", "apply")[0])
    finally:
        runner.nss.remove(ns)
    res.load.append(os.getloadavg())


def measure_edits(
    work: Path, nss: Namespaces, policy: Policy, rounds: int, log: Callable[[str], None] = print
) -> Edits:
    """`rounds` edit rounds on the 1,000-pool policy with a one-stage rollout.yaml and an
    exemptions.yaml."""
    d = work / "whole-policy-edits"
    d.mkdir(exist_ok=True)
    files = {
        **inv.policy_files(policy),
        "rollout.yaml": _rollout(FUTURE[0]),
        "exemptions.yaml": _exemptions(0),
    }
    for name, text in files.items():
        (d / name).write_text(text)
    runner = Runner(work, nss, {"edits": d})
    script = runner.script("edits")
    res = Edits(rounds=rounds)
    for r in range(rounds):
        edits_round(runner, res, script, files)
        log(
            f"edits, round {r + 1}/{rounds} (load {res.load[-1][0]:.1f}): "
            + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in res.times.items())
        )
    shutil.rmtree(runner.cache, ignore_errors=True)
    return res


def edit_lines(res: Edits) -> list[str]:
    """The edit rows: medians, ratios paired per round, targets; the context rows after."""
    body = []
    met = 0
    for key, (what, (kind, limit), base) in EDIT_TARGETS.items():
        b = median(res.times[key])
        ratio = _paired(res.times[key], res.times[base]) if base else None
        ok = (ratio if ratio is not None else b) <= limit
        met += ok
        target = f"<= {limit:g}x" if kind == "ratio" else f"<= {limit:g} s"
        extra = (
            f"{ratio:.2f}x {'a cold apply' if base != 'nft_f' else '`nft -f`'}" if ratio else "-"
        )
        body.append([what, fmt(b, "s"), extra, target, "met" if ok else "**MISS**"])
    for key, what in EDIT_CONTEXT.items():
        body.append([what, fmt(median(res.times[key]), "s"), "-", "-", "context"])
    loads = ", ".join(f"{one:.1f}" for one, _, _ in res.load)
    return [
        f"Medians of {res.rounds} rounds on the 1,000-pool inventory with a one-stage "
        "`rollout.yaml` and an `exemptions.yaml`; each round starts from the same files, "
        "applies them into an empty namespace (cold, then warm cache), then edits one file at "
        "a time (a stage's date, an exemption added, one pool's 100 IPv4 prefixes removed) "
        "and runs `validate` after one such edit and `apply` directly after the next.",
        "",
        *table(("command (whole process)", "1,000 pools", "ratio", "target", "result"), body),
        "",
        f"{met} of {len(EDIT_TARGETS)} targets met. Load average (1 min) after each round: "
        f"{loads}.",
    ]


# ------------------------------------------------------------------ report


def _paired(ours: Sequence[float], base: Sequence[float]) -> float:
    return median([o / b for o, b in zip(ours, base, strict=True)])


@dataclass(frozen=True)
class Row:
    key: str
    what: str
    big: float
    small: float
    ratio: float | None  # against the baseline, paired per round
    flat: float | None  # big / small, paired per round (pool commands)
    met: bool
    target: str


def rows(res: Whole, rss_limit: float = 150.0) -> list[Row]:
    big, small = res.times["big"], res.times["small"]
    out = []
    for key, (what, (kind, limit)) in TARGETS.items():
        b, s = median(big[key]), median(small[key])
        base = BASELINES.get(key, "nft_f")
        ratio = _paired(big[key], big[base]) if kind == "ratio" or key in BASELINES else None
        flat = _paired(big[key], small[key]) if key in POOL_COMMANDS else None
        if kind == "ratio":
            assert ratio is not None
            met, target = ratio <= limit, f"<= {limit:g}x"
        else:
            met, target = b <= limit, f"<= {limit:g} s"
        if flat is not None:
            met = met and flat <= FLAT
            target += f", <= {FLAT:g}x 10 pools"
        out.append(Row(key, what, b, s, ratio, flat, met, target))
    peak = max(res.peak_mib["big_daemon_cold"] + res.peak_mib["big_daemon_warm"])
    out.append(
        Row("daemon_peak", "daemon peak memory (VmHWM at READY), MiB", peak,
            max(res.peak_mib["small_daemon_cold"]), None, None, peak <= rss_limit,
            f"<= {rss_limit:g} MiB")
    )  # fmt: skip
    return out


def report_lines(res: Whole, rss_limit: float = 150.0) -> list[str]:
    big, small = res.times["big"], res.times["small"]
    rs = rows(res, rss_limit)
    body = []
    for r in rs:
        unit = "MiB" if r.key == "daemon_peak" else "s"
        extra = []
        if r.ratio is not None:
            base = "`nft list counters`" if BASELINES.get(r.key) else "`nft -f`"
            extra.append(f"{r.ratio:.2f}x {base}")
        if r.flat is not None:
            extra.append(f"{r.flat:.2f}x 10 pools")
        body.append(
            [r.what, fmt(r.big, unit), fmt(r.small, unit), "; ".join(extra) or "-", r.target,
             "met" if r.met else "**MISS**"]
        )  # fmt: skip
    apply_peak = max(res.peak_mib["big_apply"])
    return [
        f"Medians of {res.rounds} rounds; each round runs every command once on the 1,000-pool "
        f"inventory and on its first {SMALL_POOLS} pools, baselines in the same round.",
        "",
        *table(
            (
                "command (whole process)",
                "1,000 pools",
                f"{SMALL_POOLS} pools",
                "ratio",
                "target",
                "result",
            ),
            body,
        ),  # fmt: skip
        "",
        f"{sum(r.met for r in rs)} of {len(rs)} targets met. Baselines: `nft -f` of the "
        f"`plan --script` script into an empty namespace {fmt(median(big['nft_f']), 's')} "
        f"(10 pools: {fmt(median(small['nft_f']), 's')}); `nft list counters` "
        f"{fmt(median(big['nft_list_counters']), 's')}. Peak resident memory of a cold "
        f"`apply`: {apply_peak:.0f} MiB.",
        *(
            ["", "After an edit of one policy file:", "", *edit_lines(res.edits)]
            if res.edits
            else []
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Only the whole-process table (for iterating; `make bench` runs it with the rest)."""
    import argparse
    import tempfile

    p = argparse.ArgumentParser(prog="python -m bench.whole", description=main.__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--edits", action="store_true", help="only the edit rounds")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.whole: needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="op25b-whole-"))
    try:
        with Namespaces() as nss:
            if args.edits:
                edits = measure_edits(work, nss, inv.synthetic_policy(inv.MAIN), args.rounds)
                print(plain(edit_lines(edits)))
                return 0
            res = measure(work, nss, inv.synthetic_policy(inv.MAIN), args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(plain(report_lines(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
