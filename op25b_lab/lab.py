"""A lab access gateway in three network namespaces, for the end-to-end tests and `make demo`.

    sub (subscribers) --veth-- gw (forwards, no NAT; the ruleset goes here) --veth-- out (relay, MX)

Why namespaces: the controller's rules must be proven against real TCP handshakes through a
real forwarding path, without touching the host's own namespace or ruleset. Every namespace is
named ``op25b-<ident>-<role>`` so concurrent labs never collide and teardown can find exactly
its own; every process the lab starts is tracked by pid and killed on teardown. Only
documentation addresses are used (RFC 5737, RFC 3849).

The same file is also the small helper program run *inside* the namespaces
(``python -m op25b_lab.lab listen|probe|smtp|remove``), so probes need nothing but this venv.
"""

from __future__ import annotations

import argparse
import contextlib
import email
import enum
import errno
import json
import math
import os
import re
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

# --------------------------------------------------------------------------- addresses


@dataclass(frozen=True)
class Endpoint:
    """One lab host address pair, so tests and the demo name addresses instead of spelling them."""

    name: str
    v4: str
    v6: str
    pool: str | None = None

    @property
    def both(self) -> tuple[str, str]:
        """The IPv4 and the IPv6 address, for tests that must cover both families."""
        return (self.v4, self.v6)


@dataclass(frozen=True)
class Pool:
    """A subscriber pool the lab's sources live in, matching the demo policy."""

    name: str
    v4: str
    v6: str


POOLS: tuple[Pool, ...] = (
    Pool("flets-east-dyn-1", "192.0.2.0/26", "2001:db8:1000::/40"),
    Pool("flets-east-dyn-2", "192.0.2.64/26", "2001:db8:1100::/40"),
    Pool("flets-west-dyn-1", "198.51.100.0/25", "2001:db8:2000::/40"),
    Pool("static-biz", "192.0.2.128/26", "2001:db8:3000::/40"),
)

# Subscriber source addresses, all on sub's one veth.
DYN_A = Endpoint("DYN_A", "192.0.2.10", "2001:db8:1000::10", "flets-east-dyn-1")
DYN_B = Endpoint("DYN_B", "192.0.2.70", "2001:db8:1100::10", "flets-east-dyn-2")
DYN_W = Endpoint("DYN_W", "198.51.100.10", "2001:db8:2000::10", "flets-west-dyn-1")
STATIC = Endpoint("STATIC", "192.0.2.130", "2001:db8:3000::10", "static-biz")
UNLISTED = Endpoint("UNLISTED", "192.0.2.200", "2001:db8:4000::10")
SOURCES: tuple[Endpoint, ...] = (DYN_A, DYN_B, DYN_W, STATIC, UNLISTED)

# Servers in `out`: the ISP's own relay and another network's mail exchanger.
RELAY = Endpoint("RELAY", "203.0.113.25", "2001:db8:ff00::25")
FOREIGN_MX = Endpoint("FOREIGN_MX", "203.0.113.99", "2001:db8:ff00::99")
DESTINATIONS: tuple[Endpoint, ...] = (RELAY, FOREIGN_MX)

# Link addresses.
GW_SUB = Endpoint("GW_SUB", "192.0.2.254", "2001:db8:ffff:1::1")
SUB_LINK_V6 = "2001:db8:ffff:1::2"
GW_OUT = Endpoint("GW_OUT", "203.0.113.1", "2001:db8:ff00::1")

# Interface names inside the namespaces (the same names may exist in every namespace).
IF_SUB = "eth0"  # in sub, towards gw
IF_GW_SUB = "sub0"  # in gw, towards sub
IF_GW_OUT = "out0"  # in gw, towards out
IF_OUT = "eth0"  # in out, towards gw

# Routes gw needs back to the subscriber side beyond its connected 192.0.2.0/24.
_GW_BACK_ROUTES = ("198.51.100.0/24", "2001:db8::/33")

NS_PREFIX = "op25b"
ROLES = ("sub", "gw", "out")
_IDENT_RE = re.compile(r"[a-z0-9]{1,12}")
_CLOSED_PORT = 9  # nothing listens here: an RST from `out` proves the round trip

# --------------------------------------------------------------------------- results


class Outcome(enum.StrEnum):
    """What a TCP connect attempt saw; drop vs reject rules differ exactly here."""

    CONNECTED = "connected"
    REFUSED = "refused"  # RST (or ICMP port unreachable)
    TIMEOUT = "timeout"  # no answer: dropped
    UNREACHABLE = "unreachable"  # ICMP host/net unreachable or prohibited
    ERROR = "error"  # anything else (bind failure, ...): see detail


@dataclass(frozen=True)
class ConnectResult:
    """One probe's outcome, with timing so tests can tell a fast RST from a slow drop."""

    src: str
    dst: str
    port: int
    outcome: Outcome
    elapsed: float
    detail: str = ""

    @property
    def connected(self) -> bool:
        return self.outcome is Outcome.CONNECTED

    @property
    def refused(self) -> bool:
        return self.outcome is Outcome.REFUSED

    @property
    def timed_out(self) -> bool:
        return self.outcome is Outcome.TIMEOUT


@dataclass(frozen=True)
class ReceivedMessage:
    """One message the lab's SMTP server accepted, as it recorded it."""

    peer: str
    local: str
    local_port: int
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: str

    @property
    def subject(self) -> str:
        return str(email.message_from_string(self.data).get("Subject", ""))


class LabError(RuntimeError):
    """The lab could not be built, or a server in it never became ready."""


class LabCommandError(subprocess.CalledProcessError):
    """A command in a namespace failed; unlike the base class, str() shows its stderr."""

    def __str__(self) -> str:
        err = (self.stderr or "").strip()
        return f"{super().__str__()}\n{err}" if err else super().__str__()


# --------------------------------------------------------------------------- host side


def ns_name(ident: str, role: str) -> str:
    """Namespace name for one role of a lab: the ident is what teardown matches on."""
    return f"{NS_PREFIX}-{ident}-{role}"


T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], deadline: float = 20.0) -> T:
    """Poll `probe` until it returns something other than None/False, and return that; an
    AssertionError naming `what` after `deadline` seconds. Readiness is a real condition."""
    end = time.monotonic() + deadline
    while True:
        got = probe()
        if got is not None and got is not False:
            return got
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}")
        time.sleep(0.02)  # poll interval for a real condition, not a readiness guess


def _netns_list() -> set[str]:
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True, env=tool_env()
    )
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def remove(ident: str, *, deadline: float = 5.0) -> None:
    """Delete this lab's namespaces after killing whatever still runs in them.

    Works from the ident alone so a crashed run can be cleaned up later
    (``python -m op25b_lab.lab remove IDENT``); it never matches other labs' names.
    """
    if not _IDENT_RE.fullmatch(ident):
        raise ValueError(f"bad lab ident {ident!r}")
    present = _netns_list()
    for role in ROLES:
        name = ns_name(ident, role)
        if name not in present:
            continue
        delete_netns(name, deadline=deadline)


def delete_netns(name: str, *, deadline: float = 5.0) -> None:
    """Kill what runs in namespace `name` (by pid), then delete it; shared with bench/.

    A namespace outlives `ip netns del` while a process is inside, so it is emptied first.
    """
    end = time.monotonic() + deadline
    while (pids := _ns_pids(name)) and time.monotonic() < end:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)  # poll interval while the kernel tears them down
    _host(["ip", "netns", "del", name])


def _ns_pids(name: str) -> list[int]:
    out = subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True, env=tool_env()
    )
    return [int(tok) for tok in out.stdout.split() if tok.isdigit()]


def _helper_argv(*args: str) -> list[str]:
    """argv that runs this module's helper with the current interpreter (the venv's)."""
    return [sys.executable, "-m", "op25b_lab.lab", *args]


def tool_env() -> dict[str, str]:
    """Environment for every command: ip/nft/sysctl found even if PATH lacks sbin, and this
    very package importable by the helpers inside the namespaces."""
    env = dict(os.environ)
    path = env.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join([*path, *(d for d in ("/usr/sbin", "/sbin") if d not in path)])
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


class SmtpSink:
    """The lab's SMTP server: a real aiosmtpd in `out` that appends each message to a file."""

    def __init__(
        self, lab: Lab, proc: subprocess.Popen[str], spool: Path, ports: tuple[int, ...]
    ) -> None:
        self.lab = lab
        self.proc = proc
        self.spool = spool
        self.ports = ports

    def messages(self) -> list[ReceivedMessage]:
        """Every message accepted so far; the server writes it before answering 250."""
        if not self.spool.exists():
            return []
        found = []
        for line in self.spool.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            rec["rcpt_tos"] = tuple(rec["rcpt_tos"])
            found.append(ReceivedMessage(**rec))
        return found

    def stop(self) -> None:
        self.lab.stop(self.proc)


class Lab:
    """Three namespaces wired as subscriber -> gateway -> outside, and what runs in them."""

    def __init__(self, ident: str) -> None:
        """Names only; use `create()` to build. Separate so teardown can run on a half-built lab."""
        if not _IDENT_RE.fullmatch(ident):
            raise ValueError(f"lab ident must match {_IDENT_RE.pattern}, got {ident!r}")
        self.ident = ident
        self.ns_sub = ns_name(ident, "sub")
        self.ns_gw = ns_name(ident, "gw")
        self.ns_out = ns_name(ident, "out")
        self.workdir = Path(tempfile.mkdtemp(prefix=f"op25b-{ident}-"))
        self._procs: dict[int, subprocess.Popen[str]] = {}
        self._logs: dict[int, Path] = {}
        self._served: dict[int, tuple[int, ...]] = {}  # server pid -> ports it holds

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.ns_sub, self.ns_gw, self.ns_out)

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def create(cls, ident: str | None = None, *, deadline: float = 10.0) -> Lab:
        """Build the topology and return only once v4 and v6 cross gw both ways."""
        lab = cls(ident or secrets.token_hex(3))
        clash = set(lab.namespaces) & _netns_list()
        if clash:
            shutil.rmtree(lab.workdir, ignore_errors=True)
            raise LabError(f"namespaces already exist: {sorted(clash)}")
        try:
            lab._build()
            lab.await_outcomes(
                lab.ns_sub,
                [
                    (src.v4 if fam == 4 else src.v6, dst.v4 if fam == 4 else dst.v6, _CLOSED_PORT)
                    for src in SOURCES
                    for dst in DESTINATIONS
                    for fam in (4, 6)
                ],
                ok={Outcome.REFUSED, Outcome.CONNECTED},
                deadline=deadline,
                what="sub -> out reachability",
            )
        except BaseException:
            lab.destroy()
            raise
        return lab

    def _build(self) -> None:
        sub, gw, out = self.namespaces
        for ns in self.namespaces:
            _host(["ip", "netns", "add", ns])
            # No DAD anywhere: with a tentative link-local, neighbour solicitation waits ~1 s.
            self.run(ns, ["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"])
            self.run(ns, ["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"])
            _host(["ip", "-n", ns, "link", "set", "lo", "up"])
        # Create each veth pair from inside a lab namespace, so nothing ever appears on the host.
        _host(["ip", "-n", sub, "link", "add", IF_SUB, "type", "veth"]
              + ["peer", "name", IF_GW_SUB, "netns", gw])  # fmt: skip
        _host(["ip", "-n", gw, "link", "add", IF_GW_OUT, "type", "veth"]
              + ["peer", "name", IF_OUT, "netns", out])  # fmt: skip

        self.run(gw, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self.run(gw, ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])

        def addr(ns: str, dev: str, cidr: str) -> None:
            extra = ["nodad"] if ":" in cidr else []
            _host(["ip", "-n", ns, "addr", "add", cidr, "dev", dev, *extra])

        def route(ns: str, *spec: str) -> None:
            six = ["-6"] if any(":" in s for s in spec) else []
            _host(["ip", *six, "-n", ns, "route", "add", *spec])

        # sub: host addresses only (no connected subnets), so everything goes to gw.
        for src in SOURCES:
            addr(sub, IF_SUB, f"{src.v4}/32")
            addr(sub, IF_SUB, f"{src.v6}/128")
        addr(sub, IF_SUB, f"{SUB_LINK_V6}/64")
        # gw
        addr(gw, IF_GW_SUB, f"{GW_SUB.v4}/24")
        addr(gw, IF_GW_SUB, f"{GW_SUB.v6}/64")
        addr(gw, IF_GW_OUT, f"{GW_OUT.v4}/24")
        addr(gw, IF_GW_OUT, f"{GW_OUT.v6}/64")
        # out
        for dst in DESTINATIONS:
            addr(out, IF_OUT, f"{dst.v4}/24")
            addr(out, IF_OUT, f"{dst.v6}/64")
        for ns, dev in ((sub, IF_SUB), (gw, IF_GW_SUB), (gw, IF_GW_OUT), (out, IF_OUT)):
            _host(["ip", "-n", ns, "link", "set", dev, "up"])

        route(sub, f"{GW_SUB.v4}/32", "dev", IF_SUB)
        route(sub, "default", "via", GW_SUB.v4, "dev", IF_SUB)
        route(sub, "default", "via", GW_SUB.v6, "dev", IF_SUB)
        for prefix in _GW_BACK_ROUTES:  # on-link: gw resolves each subscriber address directly
            route(gw, prefix, "dev", IF_GW_SUB)
        route(out, "default", "via", GW_OUT.v4, "dev", IF_OUT)
        route(out, "default", "via", GW_OUT.v6, "dev", IF_OUT)

    def destroy(self) -> None:
        """Kill tracked processes, then remove the namespaces by ident. Safe to call twice."""
        for proc in list(self._procs.values()):
            self.stop(proc)
        remove(self.ident)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    # ---------------------------------------------------------------- processes

    def run(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv to completion inside namespace ns (``ip netns exec``), output captured."""
        self._check_ns(ns)
        cmd = ["ip", "netns", "exec", ns, *argv]
        cp = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, env=tool_env()
        )
        if check and cp.returncode != 0:
            raise LabCommandError(cp.returncode, cmd, cp.stdout, cp.stderr)
        return cp

    def start(self, ns: str, argv: Sequence[str]) -> subprocess.Popen[str]:
        """Start a tracked background process in ns; its output goes to a log in workdir.

        ``ip netns exec`` execs in place, so the Popen pid is the program itself; it also gets
        its own process group so anything it forks is killed with it.
        """
        self._check_ns(ns)
        log = self.workdir / f"proc-{len(self._logs)}.log"
        with log.open("w") as fh:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                text=True,
                env=tool_env(),
                start_new_session=True,
            )
        self._procs[proc.pid] = proc
        self._logs[proc.pid] = log
        return proc

    def output(self, proc: subprocess.Popen[str]) -> str:
        """What a started process printed so far (stdout and stderr together)."""
        log = self._logs.get(proc.pid)
        return log.read_text(errors="replace") if log and log.exists() else ""

    def stop(self, proc: subprocess.Popen[str], timeout: float = 5.0) -> None:
        """SIGTERM a tracked process group, SIGKILL if it lingers, and reap it."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        self._procs.pop(proc.pid, None)
        self._served.pop(proc.pid, None)

    @property
    def pids(self) -> list[int]:
        """Pids of tracked processes still registered (for tests of teardown)."""
        return list(self._procs)

    def _check_ns(self, ns: str) -> None:
        if ns not in self.namespaces:
            raise ValueError(f"{ns!r} is not one of this lab's namespaces {self.namespaces}")

    # ---------------------------------------------------------------- probes

    def connect_many(
        self, ns: str, targets: Iterable[tuple[str, str, int]], timeout: float = 2.0
    ) -> list[ConnectResult]:
        """TCP connects from ns, all at once in one helper process, each bound to its source."""
        targets = list(targets)
        if not targets:
            return []
        argv = _helper_argv("probe", "--timeout", f"{timeout}")
        for src, dst, port in targets:
            argv += ["--to", src, dst, str(port)]
        cp = self.run(ns, argv, timeout=timeout + 30)
        return [
            ConnectResult(**{**r, "outcome": Outcome(r["outcome"])}) for r in json.loads(cp.stdout)
        ]

    def connect(self, src: str, dst: str, port: int, timeout: float = 2.0) -> ConnectResult:
        """One TCP connect from sub bound to src: connected, refused (RST) or timeout (drop)."""
        return self.connect_many(self.ns_sub, [(src, dst, port)], timeout)[0]

    def await_outcomes(
        self,
        ns: str,
        targets: Sequence[tuple[str, str, int]],
        *,
        ok: set[Outcome],
        deadline: float,
        what: str,
        proc: subprocess.Popen[str] | None = None,
    ) -> None:
        """Poll connects from ns until every target's outcome is in ok, or raise at deadline.

        Readiness is the real thing being waited for (a handshake or an RST), never a fixed
        sleep; a dead server process fails the wait at once with its output.
        """
        end = time.monotonic() + deadline
        while True:
            if proc is not None and proc.poll() is not None:
                raise LabError(
                    f"{what}: process exited with {proc.returncode}:\n{self.output(proc)}"
                )
            remaining = end - time.monotonic()
            results = self.connect_many(ns, targets, timeout=max(0.2, min(1.0, remaining)))
            bad = [r for r in results if r.outcome not in ok]
            if not bad:
                return
            if time.monotonic() >= end:
                tail = self.output(proc)[-2000:] if proc is not None else ""
                raise LabError(f"{what}: not ready after {deadline}s: {bad}\n{tail}")
            time.sleep(0.02)  # poll interval, not a readiness guess

    def _serve(
        self, argv: list[str], ports: tuple[int, ...], hosts: Iterable[Endpoint], what: str
    ) -> subprocess.Popen[str]:
        """Start a server in `out`; ready once a connect from inside `out` to each address and
        port succeeds. Ports already served by this lab are refused up front: the old server
        would answer the readiness probe and hide the new one's bind failure."""
        busy = {p for held in self._served.values() for p in held} & set(ports)
        if busy:
            raise LabError(f"{what}: port(s) {sorted(busy)} already served in this lab; stop it")
        proc = self.start(self.ns_out, argv)
        self._served[proc.pid] = ports
        targets = [(a, a, p) for h in hosts for a in h.both for p in ports]
        try:
            self.await_outcomes(
                self.ns_out, targets, ok={Outcome.CONNECTED}, deadline=10.0, what=what, proc=proc
            )
        except BaseException:
            self.stop(proc)
            raise
        return proc

    # ---------------------------------------------------------------- servers

    def serve_tcp(
        self, ports: Iterable[int], hosts: Iterable[Endpoint] = DESTINATIONS
    ) -> subprocess.Popen[str]:
        """Plain TCP listeners in `out` (accept and close) on every host address, v4 and v6.

        Ports held here cannot also be served by `serve_smtp`; `stop()` this process first.
        """
        ports, hosts = tuple(ports), tuple(hosts)
        argv = _helper_argv("listen")
        for h in hosts:
            for a in h.both:
                argv += ["--addr", a]
        for p in ports:
            argv += ["--port", str(p)]
        return self._serve(argv, ports, hosts, f"tcp listener {ports}")

    def serve_smtp(self, port: int = 25, also: Iterable[int] = (587,)) -> SmtpSink:
        """A real SMTP server (aiosmtpd) on all of `out`'s addresses; messages go to a spool."""
        ports = (port, *also)
        spool = self.workdir / f"smtp-{port}.jsonl"
        argv = _helper_argv("smtp", "--spool", str(spool))
        for p in ports:
            argv += ["--port", str(p)]
        proc = self._serve(argv, ports, DESTINATIONS, f"smtp server {ports}")
        return SmtpSink(self, proc, spool, ports)

    # ---------------------------------------------------------------- smtp client

    def swaks(
        self,
        src: str,
        server: str,
        port: int = 25,
        *,
        to: str = "postmaster@mx.example.net",
        sender: str = "user@dyn.example.jp",
        subject: str = "op25b lab",
        timeout: float = 2.0,
        extra: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """Send one message from sub with Debian's swaks bound to src; see `swaks_outcome`."""
        argv = [
            "swaks", "--server", server, "--port", str(port), "--local-interface", src,
            "--to", to, "--from", sender, "--helo", "sub.lab.example",
            "--header", f"Subject: {subject}", "--timeout", f"{max(1, math.ceil(timeout))}s",
            *extra,
        ]  # fmt: skip
        return self.run(self.ns_sub, argv, check=False, timeout=timeout * 4 + 30)


def _host(argv: list[str]) -> None:
    """Run an ip(8) command that only addresses lab namespaces (always via -n or netns names)."""
    cp = subprocess.run(argv, capture_output=True, text=True, env=tool_env())
    if cp.returncode != 0:
        raise LabCommandError(cp.returncode, argv, cp.stdout, cp.stderr)


def swaks_outcome(cp: subprocess.CompletedProcess[str]) -> str:
    """Map a swaks run to an Outcome: exit 2 (connect error) is split on swaks's own message.

    Returns "delivered" when swaks exited 0, or ``"smtp-<code>"`` for an SMTP-level failure
    (e.g. smtp-24: no RCPT accepted) so a test sees which stage failed.
    """
    if cp.returncode == 0:
        return "delivered"
    if cp.returncode == 2:
        text = (cp.stdout + cp.stderr).lower()
        if "refused" in text:
            return Outcome.REFUSED
        if "timeout" in text or "timed out" in text:
            return Outcome.TIMEOUT
        if "unreachable" in text:
            return Outcome.UNREACHABLE
        return Outcome.ERROR
    return f"smtp-{cp.returncode}"


# --------------------------------------------------------------------------- helpers in the netns


def _classify(err: int) -> Outcome:
    if err == 0:
        return Outcome.CONNECTED
    if err == errno.ECONNREFUSED:
        return Outcome.REFUSED
    if err == errno.ETIMEDOUT:
        return Outcome.TIMEOUT
    if err in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM):
        return Outcome.UNREACHABLE
    return Outcome.ERROR


def probe(targets: Sequence[tuple[str, str, int]], timeout: float) -> list[ConnectResult]:
    """Non-blocking connects, all in flight at once; no answer by the deadline means dropped."""
    sel = selectors.DefaultSelector()
    started = time.monotonic()
    results: dict[int, ConnectResult] = {}

    def done(i: int, err: int, detail: str = "") -> None:
        src, dst, port = targets[i]
        detail = detail or (errno.errorcode.get(err, str(err)) if err else "")
        results[i] = ConnectResult(
            src, dst, port, _classify(err), round(time.monotonic() - started, 4), detail
        )

    for i, (src, dst, port) in enumerate(targets):
        sock = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if src:
                sock.bind((src, 0))
            err = sock.connect_ex((dst, port))
        except OSError as exc:
            sock.close()
            done(i, exc.errno or -1, f"{type(exc).__name__}: {exc}")  # e.g. src not ours
            continue
        if err == errno.EINPROGRESS:
            sel.register(sock, selectors.EVENT_WRITE, i)
        else:
            sock.close()
            done(i, err)
    end = started + timeout
    while sel.get_map() and (remaining := end - time.monotonic()) > 0:
        for key, _ in sel.select(remaining):
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            done(key.data, conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
            sel.unregister(conn)
            conn.close()
    for key in list(sel.get_map().values()):
        conn = key.fileobj
        assert isinstance(conn, socket.socket)
        done(key.data, errno.ETIMEDOUT, "no answer")
        sel.unregister(conn)
        conn.close()
    sel.close()
    return [results[i] for i in range(len(targets))]


def listen(addrs: Sequence[str], ports: Sequence[int]) -> None:
    """Accept-and-close on every addr x port until killed: enough to complete handshakes."""
    sel = selectors.DefaultSelector()
    for addr in addrs:
        for port in ports:
            sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((addr, port))
            sock.listen(128)
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            lsock = key.fileobj
            assert isinstance(lsock, socket.socket)
            with contextlib.suppress(BlockingIOError, ConnectionError):
                conn, _ = lsock.accept()
                conn.close()


def smtp_serve(spool: Path, ports: Sequence[int]) -> None:
    """aiosmtpd on the wildcard addresses of every port, recording each accepted message."""
    import asyncio

    from aiosmtpd.smtp import SMTP, Envelope, Session

    class SpoolHandler:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            transport = server.transport
            assert transport is not None
            peer = transport.get_extra_info("peername")
            local = transport.get_extra_info("sockname")
            rec = {
                "peer": peer[0],
                "local": local[0],
                "local_port": local[1],
                "mail_from": envelope.mail_from or "",
                "rcpt_tos": list(envelope.rcpt_tos),
                "data": (envelope.original_content or b"").decode("utf-8", "replace"),
            }
            # Written (and flushed by close) before the 250, so a client that saw success
            # can read the record at once.
            with spool.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")
            return "250 2.0.0 Message accepted"

    async def main() -> None:
        handler = SpoolHandler()
        loop = asyncio.get_running_loop()
        servers = [
            # host=None binds 0.0.0.0 and :: (v6-only), i.e. every address `out` has.
            await loop.create_server(
                lambda: SMTP(handler, hostname="mx.lab.example"), host=None, port=p
            )
            for p in ports
        ]
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        for s in servers:
            s.close()

    asyncio.run(main())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the in-namespace helpers (and of `remove IDENT` for stale labs)."""
    parser = argparse.ArgumentParser(prog="python -m op25b_lab.lab")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe", help="TCP connect attempts; prints JSON results")
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--to", nargs=3, action="append", metavar=("SRC", "DST", "PORT"), default=[])
    p = sub.add_parser("listen", help="accept-and-close TCP listeners")
    p.add_argument("--addr", action="append", required=True)
    p.add_argument("--port", action="append", type=int, required=True)
    p = sub.add_parser("smtp", help="aiosmtpd writing accepted messages as JSON lines")
    p.add_argument("--spool", type=Path, required=True)
    p.add_argument("--port", action="append", type=int, required=True)
    p = sub.add_parser("remove", help="delete a lab's namespaces by ident")
    p.add_argument("ident")
    args = parser.parse_args(argv)

    if args.cmd == "probe":
        targets = [(s, d, int(port)) for s, d, port in args.to]
        res = probe(targets, args.timeout)
        json.dump([_jsonable(asdict(r)) for r in res], sys.stdout)
    elif args.cmd == "listen":
        listen(args.addr, args.port)
    elif args.cmd == "smtp":
        smtp_serve(args.spool, args.port)
    elif args.cmd == "remove":
        remove(args.ident)
    return 0


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, enum.Enum) else v) for k, v in d.items()}


if __name__ == "__main__":
    sys.exit(main())
