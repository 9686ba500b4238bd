"""The Debian package on this machine, installed and run the way an operator does.

`make deb` is built twice (the same version, rebuilt: the upgrade), installed with `dpkg -i`
on the machine itself (CI machines are throw-away), and then:

- the install starts nothing and blocks nothing while /etc/op25b is missing (the unit's
  ConditionPathIsDirectory, evaluated by systemd's own `systemd-analyze condition`);
- `/usr/sbin/op25b-ctl validate` accepts the shipped example; every unit passes
  `systemd-analyze verify`; lintian reports no error and no warning that is not overridden;
- the installed unit's exact ExecStart, with the unit's Environment= and an admin drop-in
  pointing it at test directories, runs in a lab gateway namespace with a clean environment,
  NOTIFY_SOCKET and a journal stream as systemd would (a stand-in journald in a private mount
  namespace, tests/journalsink), blocks real TCP/25, and logs with journal fields;
- the package is upgraded under it while a prober keeps connecting: no connection ever gets
  through, the table and its counters stay, the state directory stays;
- remove leaves the table (only `teardown --yes` removes it) and the state; purge removes the
  state directory, and nothing the package brought is left: files, processes, namespaces.

The whole run holds a machine-wide lock: parallel `make test` runs (other worktrees on the same
machine) would otherwise install and purge the same package under each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from op25b_ctl import __version__
from op25b_lab.lab import DYN_A, DYN_W, FOREIGN_MX, RELAY, Lab, Outcome
from tests.daemonpolicy import EAST1, daemon_policy
from tests.policytools import REPO

pytestmark = pytest.mark.root

PKG = "op25b-ctl"
SBIN = Path("/usr/sbin/op25b-ctl")
VENV = Path("/usr/lib/op25b-ctl")
STATE = Path("/var/lib/op25b")
CACHE = Path("/var/cache/op25b")
POLICY = Path("/etc/op25b")
EXAMPLE = Path("/usr/share/doc/op25b-ctl/examples/nmtnet")
UNIT_DIR = Path("/lib/systemd/system")
UNITS = ("op25b-ctl.service", "op25b-rollout-tick.service", "op25b-rollout-tick.timer")
DROPIN = Path("/etc/systemd/system/op25b-ctl.service.d/50-op25b-package-test.conf")
LOCK = Path("/run/lock/op25b-package-test.lock")
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
DEV_CTL = str(REPO / ".venv" / "bin" / "op25b-ctl")  # teardown after the package is gone
DEV_PYTHON = str(REPO / ".venv" / "bin" / "python")
FETCH = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"


# --------------------------------------------------------------------------- helpers


def run(
    argv: list[str], *, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """A host command with a clean environment (as a maintainer script or systemd gets it)."""
    cp = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": PATH, "LC_ALL": "C.UTF-8", "OP25B_CACHE_DIR": "off"},  # no ~root/.cache
    )
    if check and cp.returncode != 0:
        raise AssertionError(f"{argv} exited {cp.returncode}:\n{cp.stdout}\n{cp.stderr}")
    return cp


def dpkg(*args: str) -> subprocess.CompletedProcess[str]:
    """dpkg, waiting while another process (an apt-get on a shared machine) holds its lock."""
    end = time.monotonic() + 300
    while True:
        cp = run(["dpkg", *args], check=False)
        if cp.returncode == 0:
            return cp
        if "lock" not in cp.stderr or time.monotonic() > end:
            raise AssertionError(
                f"dpkg {' '.join(args)} exited {cp.returncode}:\n{cp.stdout}\n{cp.stderr}"
            )
        time.sleep(1)  # retry interval while the dpkg lock is held elsewhere


def poll(what: str, cond: Callable[[], bool], deadline: float = 20) -> None:
    """Wait for a real condition (a scrape, a listing), polling; fail after `deadline`."""
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}")
        time.sleep(0.1)  # poll interval, not a readiness guess


def installed() -> bool:
    cp = run(["dpkg-query", "-W", "-f=${db:Status-Status}", PKG], check=False)
    return cp.stdout.strip() == "installed"


def package_processes() -> list[str]:
    """Command lines of running processes started from the package's files."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if str(SBIN) in cmd or str(VENV) in cmd:
                found.append(f"{entry.name}: {cmd}")
    return found


def unit_config(name: str) -> tuple[list[str], dict[str, str]]:
    """The unit's ExecStart (one word per argument, ${VAR} expanded) and the environment
    systemd gives it: Environment= and $CACHE_DIRECTORY for CacheDirectory= (the directory is
    made as systemd would), from the installed unit file and its drop-ins in systemd's order
    (later assignments win)."""
    files = [UNIT_DIR / name]
    dropins: dict[str, Path] = {}
    for base in ("/lib/systemd/system", "/run/systemd/system", "/etc/systemd/system"):
        for conf in sorted(Path(base, f"{name}.d").glob("*.conf")):
            dropins[conf.name] = conf  # same name in a later directory overrides
    files += [dropins[k] for k in sorted(dropins)]
    env: dict[str, str] = {}
    exec_start: list[str] = []
    for path in files:
        section = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line
                continue
            key, _, value = line.partition("=")
            if section != "[Service]":
                continue
            if key == "Environment":
                for item in shlex.split(value):
                    k, _, v = item.partition("=")
                    env[k] = v
            elif key == "ExecStart":
                exec_start = [] if not value else shlex.split(value)
            elif key == "CacheDirectory":
                env["CACHE_DIRECTORY"] = str(Path("/var/cache", value))
    assert exec_start, f"no ExecStart in {files}"
    if "CACHE_DIRECTORY" in env:
        Path(env["CACHE_DIRECTORY"]).mkdir(mode=0o700, exist_ok=True)
    words = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], w) for w in exec_start]
    return words, env


def scrape(lab: Lab, metrics: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    cp = lab.run(lab.ns_gw, [DEV_PYTHON, "-c", FETCH, metrics], check=False)
    if cp.returncode != 0:
        return {}
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(cp.stdout)
        for s in family.samples
    }


def blocked(lab: Lab, metrics: str) -> float:
    return scrape(lab, metrics).get(
        ("op25b_pool_blocked_packets_total", frozenset({("pool", EAST1)})), -1.0
    )


class Notify:
    """systemd's side of Type=notify: a datagram socket the service reports READY=1 on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))  # a path socket: reachable from inside the lab namespace

    def wait_ready(self, proc: subprocess.Popen[str], lab: Lab, deadline: float = 60) -> str:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise AssertionError(f"service exited {proc.returncode}:\n{lab.output(proc)}")
            self.sock.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                msg = self.sock.recv(4096).decode()
                if "READY=1" in msg:
                    return msg
        raise AssertionError(f"no READY=1 within {deadline}s:\n{lab.output(proc)}")

    def close(self) -> None:
        self.sock.close()


class Prober:
    """Connects from enforced pools to a foreign MX on TCP/25, batch after batch, until
    stopped; every outcome is kept, so a single connection that got through is seen."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.outcomes: list[Outcome] = []
        self.batches = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        targets = [(src, FOREIGN_MX.v4, 25) for src in (DYN_A.v4, DYN_W.v4)]
        targets += [(DYN_A.v6, FOREIGN_MX.v6, 25)]
        while not self._stop.is_set():
            try:
                results = self.lab.connect_many(self.lab.ns_sub, targets, timeout=1.0)
            except Exception as exc:  # the assertion below reports it
                self.errors.append(repr(exc))
                return
            self.outcomes += [r.outcome for r in results]
            self.batches += 1

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def machine() -> Iterator[None]:
    """The machine-wide lock, and a machine fit for the test: root, no real gateway config."""
    if os.geteuid() != 0:
        pytest.skip("needs root: installs the package with dpkg and builds namespaces")
    if POLICY.exists():
        pytest.skip(f"{POLICY} exists: a configured gateway, not a throw-away test machine")
    with LOCK.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # parallel runs on one machine take turns
        if installed() or run(["dpkg-query", "-W", PKG], check=False).returncode == 0:
            dpkg("--purge", PKG)  # a leftover from an interrupted run
        yield
        if DROPIN.exists():
            DROPIN.unlink()
            with contextlib.suppress(OSError):
                DROPIN.parent.rmdir()
        if run(["dpkg-query", "-W", PKG], check=False).returncode == 0:
            dpkg("--purge", PKG)


@pytest.fixture(scope="module")
def debs(machine: None) -> tuple[Path, Path]:
    """Two builds of the same version (the second is the upgrade), built in parallel."""
    out = REPO / "build" / "deb-test"
    env = {**os.environ, "PIP_CACHE_DIR": str(REPO / "build" / "pip-cache")}
    procs = [
        subprocess.Popen(
            [str(REPO / "scripts" / "build-deb"), str(out / name)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for name in ("first", "second")
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output
    first, second = (
        next((out / n).glob(f"{PKG}_{__version__}_*.deb")) for n in ("first", "second")
    )
    return first, second


# --------------------------------------------------------------------------- the test


def test_package_install_run_upgrade_remove_purge(debs: tuple[Path, Path], lab: Lab) -> None:
    first, second = debs
    shipped = [
        Path(line.split(" -> ")[0].split(None, 5)[5].removeprefix("."))
        for line in run(["dpkg-deb", "-c", str(first)]).stdout.splitlines()
    ]
    new_paths = [p for p in shipped if p != Path("/") and not p.exists() and not p.is_symlink()]
    assert SBIN in new_paths and VENV in new_paths

    # lintian: no error, and every warning overridden with its reason in debian/
    lint = run(["lintian", "--fail-on", "none", "--show-overrides", str(first)], timeout=600)
    tags = [x for x in lint.stdout.splitlines() if re.match(r"^[EW]: ", x)]
    assert not tags, lint.stdout

    # install: nothing starts, nothing blocks while /etc/op25b is missing
    host_table = ["nft", "list", "table", "inet", "op25b"]  # ours only; the host's namespace
    had_table = run(host_table, check=False).returncode == 0  # (another test run's, if any)
    dpkg("-i", str(first))
    assert installed()
    assert run([str(SBIN), "--version"]).stdout.strip() == f"op25b-ctl {__version__}"
    st = STATE.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o750, 0, 0)
    assert not package_processes()
    assert not list(Path("/etc/systemd/system").glob("*.wants/op25b*")), "enabled on install"
    cond = run(["systemd-analyze", "condition", "--unit=op25b-ctl.service"], check=False)
    assert cond.returncode != 0
    assert "ConditionPathIsDirectory=/etc/op25b failed" in cond.stdout + cond.stderr
    # ... and the same unit's conditions hold once /etc/op25b exists: an /etc with it, as an
    # overlay in a private mount namespace (the host's /etc is not touched)
    over = lab.workdir / "etc-overlay"
    (over / "upper" / "op25b").mkdir(parents=True)
    (over / "work").mkdir()
    script = 'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc && exec "$3" condition --unit=op25b-ctl.service'
    tool = shutil.which("systemd-analyze", path=PATH) or "systemd-analyze"
    argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"]
    cond = run([*argv, str(over / "upper"), str(over / "work"), tool], check=False)
    assert cond.returncode == 0, cond.stdout + cond.stderr
    assert not POLICY.exists()
    assert had_table or run(host_table, check=False).returncode != 0
    deps = run(["dpkg-query", "-W", "-f=${Depends}", PKG]).stdout
    assert "python3-nftables" in deps and re.search(r"\bnftables\b", deps)

    # the venv: Debian's nftables binding, PyPI's pydantic 2; man page and completion shipped
    probe = "import nftables, pydantic; print(nftables.__file__, pydantic.VERSION)"
    where, pyd = run([str(VENV / "bin" / "python"), "-c", probe]).stdout.split()
    assert where.startswith("/usr/lib/python3/dist-packages/") and pyd.startswith("2.")
    man = gzip.decompress(Path("/usr/share/man/man8/op25b-ctl.8.gz").read_bytes()).decode()
    assert man.startswith(".TH OP25B-CTL 8") and f"op25b-ctl {__version__}" in man
    assert "rollout" in man and r"\-\-metrics\-address" in man
    assert "daemon" in Path("/usr/share/bash-completion/completions/op25b-ctl").read_text()

    # the shipped example validates; every installed unit verifies
    run([str(SBIN), "validate", "--policy", str(EXAMPLE)])
    for unit in UNITS:
        cp = run(["systemd-analyze", "verify", str(UNIT_DIR / unit)], check=False)
        assert cp.returncode == 0 and "op25b" not in cp.stderr, cp.stderr

    # the installed unit's ExecStart, pointed at test directories by an admin's drop-in
    tmp = lab.workdir / "package"
    policy, state = daemon_policy(tmp / "policy"), tmp / "state"
    DROPIN.parent.mkdir(parents=True, exist_ok=True)
    DROPIN.write_text(
        f"[Service]\nEnvironment=OP25B_POLICY={policy}\nEnvironment=OP25B_STATE_DIR={state}\n"
    )
    cp = run(["systemd-analyze", "verify", str(UNIT_DIR / "op25b-ctl.service")], check=False)
    assert cp.returncode == 0, cp.stderr
    argv, env = unit_config("op25b-ctl.service")
    assert argv[:2] == [str(SBIN), "daemon"]
    assert argv[argv.index("--policy") + 1] == str(policy)
    metrics = f"http://{argv[argv.index('--metrics-address') + 1]}/metrics"
    lab.serve_tcp([25])
    notify = Notify(lab.workdir / "notify.sock")

    journal = lab.workdir / "journal"  # what a stand-in journald received (tests/journalsink)
    journal.mkdir()

    def start() -> subprocess.Popen[str]:
        clean = ["env", "-i", f"PATH={PATH}", f"NOTIFY_SOCKET={notify.path}"]
        clean += [f"{k}={v}" for k, v in env.items()]
        sink = ["unshare", "--mount", "--propagation", "private", DEV_PYTHON, "-m"]
        sink += ["tests.journalsink", str(journal), "--"]
        proc = lab.start(lab.ns_gw, [*sink, *clean, *argv])
        notify.wait_ready(proc, lab)
        return proc

    def entries(**want: str) -> list[dict[str, str]]:
        lines = (journal / "journal.jsonl").read_text().splitlines()
        found = [json.loads(x) for x in lines]
        return [e for e in found if all(e.get(k) == v for k, v in want.items())]

    try:
        daemon = start()
        assert lab.connect(DYN_A.v4, FOREIGN_MX.v4, 25).outcome == Outcome.REFUSED
        assert lab.connect(DYN_A.v4, RELAY.v4, 25).outcome == Outcome.CONNECTED
        poll("the refused connect counted", lambda: blocked(lab, metrics) >= 1)
        before = blocked(lab, metrics)
        build = scrape(lab, metrics)
        assert build[("op25b_build_info", frozenset({("version", __version__)}))] == 1

        # logs: native journal protocol with fields, nothing on the journal stream besides
        (east1,) = entries(POOL=EAST1, SYSLOG_IDENTIFIER="op25b-ctl")
        assert east1["MODE"] == "enforce" and east1["REASON"] and east1["PRIORITY"] == "6"
        assert re.fullmatch(r"[0-9a-f]{16}", east1["REVISION"]), east1
        assert (journal / "stderr").read_text() == ""
        (STATE / "kept").write_text("state survives upgrade and remove\n")

        # upgrade under a running daemon with a prober, then restart it as systemd would
        with Prober(lab) as prober:
            while prober.batches < 3 and not prober.errors:
                time.sleep(0.05)  # poll: the prober is under way before the upgrade starts
            up = dpkg("-i", str(second))
            assert f"over ({__version__})" in up.stdout, up.stdout
            # as systemd would (TimeoutStopSec is far longer): a stop within a pass finishes it
            lab.stop(daemon, timeout=30)
            assert daemon.returncode == 0, (journal / "stderr").read_text()
            assert [e for e in entries() if "left in place" in e["MESSAGE"]]
            daemon = start()
            seen = prober.batches
            while prober.batches < seen + 3 and not prober.errors:
                time.sleep(0.05)  # poll: probes after the restart too
        assert not prober.errors, prober.errors
        leaks = [o for o in prober.outcomes if o == Outcome.CONNECTED]
        assert not leaks, f"{len(leaks)} of {len(prober.outcomes)} TCP/25 connects got through"
        assert prober.batches >= 6
        # not reset: counting goes on from where it was (each batch has one EAST1 source)
        floor = before + prober.outcomes.count(Outcome.REFUSED) / 3
        poll("the counter continued", lambda: blocked(lab, metrics) >= floor)
        assert (STATE / "kept").exists()

        # remove: the daemon stops (as prerm does), the table and the state stay
        lab.stop(daemon)
        DROPIN.unlink()
        DROPIN.parent.rmdir()
        dpkg("-r", PKG)
        assert not SBIN.exists() and (STATE / "kept").exists()
        assert "table inet op25b" in lab.run(lab.ns_gw, ["nft", "list", "tables"]).stdout
        assert lab.connect(DYN_A.v4, FOREIGN_MX.v4, 25).outcome == Outcome.REFUSED

        # purge: the state goes; the table only goes with teardown --yes
        assert CACHE.is_dir()  # the daemon's policy cache, as CacheDirectory= made it
        dpkg("--purge", PKG)
        assert not STATE.exists() and not CACHE.exists()
        assert lab.connect(DYN_A.v4, FOREIGN_MX.v4, 25).outcome == Outcome.REFUSED
        lab.run(lab.ns_gw, [DEV_CTL, "teardown", "--yes", "--table", "op25b"])
        assert lab.connect(DYN_A.v4, FOREIGN_MX.v4, 25).outcome == Outcome.CONNECTED
    finally:
        notify.close()

    left = [str(p) for p in new_paths if p.exists() or p.is_symlink()]
    assert not left, f"left behind after purge: {left}"
    assert not DROPIN.parent.exists()
    assert not package_processes()
    assert run(["dpkg-query", "-W", PKG], check=False).returncode != 0
    namespaces = set(lab.namespaces)
    lab.destroy()
    listed = run(["ip", "netns", "list"]).stdout
    assert not [ns for ns in namespaces if ns in listed]
