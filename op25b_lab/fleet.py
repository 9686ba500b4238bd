"""A lab fleet: one real etcd on the host's loopback and several lab gateways, each a Lab
(sub -> gw -> out namespaces) running `op25b-ctl daemon --store ... --gateway NAME` in its gw.

Used by the fleet's end-to-end tests, `make demo-fleet` and the bench. Every gateway reaches
etcd as 127.0.0.1:PORT inside its own namespace (a socat there, see `EtcdServer.expose`);
engineers' commands run on the host, "outside the gateways". Everything started is tracked
and removed by id: labs by their namespaces and pids, etcd by its pid and data directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from op25b_lab.etcd import EtcdServer
from op25b_lab.lab import Lab, wait_for

REPO = Path(__file__).resolve().parent.parent
CTL = str(REPO / ".venv" / "bin" / "op25b-ctl")
T = TypeVar("T")

# Connects from sub until one completes; prints the CLOCK_MONOTONIC time it did (the clock
# is the same in every namespace, so the host can compare it with a command's start).
FIRST_THROUGH = """
import socket, sys, time
src, dst, port, deadline = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
family = socket.AF_INET6 if ":" in dst else socket.AF_INET
print("probing", flush=True)
end = time.monotonic() + deadline
while time.monotonic() < end:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(0.2)
    try:
        s.bind((src, 0))
        s.connect((dst, port))
        print(f"through {time.monotonic():.6f}", flush=True)
        sys.exit(0)
    except OSError:
        time.sleep(0.005)
    finally:
        s.close()
print("never", flush=True)
sys.exit(1)
"""


class FleetLab:
    """etcd plus one Lab per gateway name; `start(name)` runs that gateway's daemon."""

    def __init__(self, names: Sequence[str], *, prefix: str = "/op25b") -> None:
        self.etcd = EtcdServer(prefix=prefix)
        self.labs: dict[str, Lab] = {}
        self.daemons: dict[str, subprocess.Popen[str]] = {}
        self.workdir = Path(tempfile.mkdtemp(prefix="op25b-fleet-"))
        self.names = list(names)

    def create(self) -> Self:
        try:
            self.etcd.start()
            for name in self.names:
                lab = Lab.create()
                self.labs[name] = lab
                self.etcd.expose(lab, lab.ns_gw)
        except BaseException:
            self.destroy()
            raise
        return self

    @property
    def store_url(self) -> str:
        return self.etcd.store_url

    def state_dir(self, name: str) -> Path:
        return self.workdir / name

    # ---------------------------------------------------------------- commands

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """op25b-ctl on the host ("outside the gateways"), against the fleet's store."""
        argv = [CTL, *args]
        if "--store" not in args:
            argv += ["--store", self.store_url]
        cp = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "OP25B_STATE_DIR": str(self.workdir / "cli")},
        )
        if check and cp.returncode != 0:
            raise AssertionError(f"{argv} failed ({cp.returncode}): {cp.stderr}")
        return cp

    def publish(self, policy: Path, *extra: str) -> dict[str, Any]:
        out = json.loads(self.ctl("publish", "--policy", str(policy), "-o", "json", *extra).stdout)
        assert isinstance(out, dict)
        return out

    def statuses(self) -> dict[str, dict[str, Any]]:
        from op25b_ctl.source.etcd import EtcdStore, parse_store_url

        store = EtcdStore(parse_store_url(self.store_url), timeout=2.0)
        try:
            return store.statuses()
        finally:
            store.close()

    # ---------------------------------------------------------------- gateways

    def start(self, name: str, *extra: str, interval: float = 0.5) -> subprocess.Popen[str]:
        lab = self.labs[name]
        argv = [
            CTL, "daemon",
            "--store", self.store_url,
            "--gateway", name,
            "--state-dir", str(self.state_dir(name)),
            "--interval", str(interval),
            *extra,
        ]  # fmt: skip
        proc = lab.start(lab.ns_gw, argv)
        self.daemons[name] = proc
        return proc

    def stop(self, name: str) -> int | None:
        proc = self.daemons.pop(name)
        self.labs[name].stop(proc)
        return proc.returncode

    def log(self, name: str) -> str:
        proc = self.daemons.get(name)
        return self.labs[name].output(proc) if proc is not None else ""

    def wait_applied(
        self, names: Iterable[str], *, policy_revision: int | None = None, store_revision: int = 0,
        deadline: float = 30.0,
    ) -> dict[str, dict[str, Any]]:  # fmt: skip
        """Until every named gateway reports in sync at (at least) these revisions."""
        names = list(names)

        def done() -> dict[str, dict[str, Any]] | None:
            for name in names:
                proc = self.daemons.get(name)
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"daemon {name} exited:\n{self.log(name)}")
            st = self.statuses()
            ok = all(
                n in st
                and st[n].get("in_sync")
                and (policy_revision is None or st[n].get("policy_revision") == policy_revision)
                and int(st[n].get("store_revision") or 0) >= store_revision
                for n in names
            )
            return st if ok else None

        return wait_for(f"{names} applied", done, deadline)

    def first_through(
        self, name: str, src: str, dst: str, port: int = 25, deadline: float = 20.0
    ) -> subprocess.Popen[str]:
        """Start a prober in gateway `name`'s subscriber namespace; `through_at` reads it."""
        lab = self.labs[name]
        proc = lab.start(
            lab.ns_sub, [sys.executable, "-c", FIRST_THROUGH, src, dst, str(port), str(deadline)]
        )
        wait_for("prober running", lambda: "probing" in lab.output(proc), 10)
        return proc

    def through_at(self, name: str, proc: subprocess.Popen[str], timeout: float = 30.0) -> float:
        """The monotonic time the prober's first connection completed."""
        proc.wait(timeout)
        out = self.labs[name].output(proc)
        for line in out.splitlines():
            if line.startswith("through "):
                return float(line.split()[1])
        raise AssertionError(f"nothing got through on {name}: {out}")

    def destroy(self) -> None:
        for name in list(self.daemons):
            self.stop(name)
        for lab in self.labs.values():
            lab.destroy()
        self.labs.clear()
        self.etcd.destroy()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()
