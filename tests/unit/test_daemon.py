"""The daemon loop: systemd notification, signals-as-flags, address parsing, CLI options."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from op25b_ctl.cli.main import build_parser, main
from op25b_ctl.daemon.exporter import parse_address
from op25b_ctl.daemon.loop import Daemon, Waker
from op25b_ctl.daemon.metrics import build_registry
from op25b_ctl.daemon.reconcile import Reconciler
from op25b_ctl.daemon.sdnotify import Notifier
from op25b_ctl.daemon.view import View
from op25b_ctl.kernel.memory import MemoryKernel
from op25b_ctl.plan import desired
from op25b_ctl.plan.desired import Desired
from op25b_ctl.policy.model import Policy
from op25b_ctl.policy.overrides import Override
from op25b_ctl.source.directory import DirectorySource
from tests.daemonpolicy import EAST2, daemon_policy, set_mode

NOW = datetime(2011, 1, 31, 9, 0, tzinfo=UTC)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(str(tmp_path / "notify"))
    yield listener
    listener.close()


class NotifyListener:
    """systemd's end of $NOTIFY_SOCKET: reads every datagram as it arrives, as systemd does
    (an unread socket holds only net.unix.max_dgram_qlen datagrams, 10 by default)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.05)
        self._got: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self._got.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def messages(self) -> list[str]:
        """Everything received so far, once the sender has finished."""
        self._stop.set()
        self._thread.join()
        self.sock.setblocking(False)
        try:
            while True:
                self._got.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        return list(self._got)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_notifier_outside_systemd_is_a_no_op() -> None:
    n = Notifier({})
    assert not n.enabled and not n.ready("x") and not n.watchdog()
    assert n.watchdog_interval is None


def test_notifier_watchdog_only_for_our_pid(notify_socket: NotifyListener) -> None:
    path = notify_socket.path
    mine = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    assert mine.watchdog_interval == 4.0
    other = Notifier(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    )
    assert other.watchdog_interval is None
    assert Notifier({"NOTIFY_SOCKET": "@abstract-name"}).address == "\0abstract-name"


def test_notifier_survives_a_vanished_socket(tmp_path: Path) -> None:
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).ready("x") is False


def test_notifier_never_waits_on_a_socket_nobody_reads(tmp_path: Path) -> None:
    path = str(tmp_path / "unread")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unread:
        unread.bind(path)
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
        sent = [n.watchdog() for _ in range(50)]  # would block at the 11th without DONTWAIT
    assert sent[0] is True and sent[-1] is False


def test_daemon_reports_ready_status_watchdog_and_stopping(
    tmp_path: Path, notify_socket: NotifyListener
) -> None:
    path = notify_socket.path
    kernel = MemoryKernel()
    rec = Reconciler(kernel, DirectorySource(daemon_policy(tmp_path / "p")), clock=lambda: NOW)
    registry, metrics = build_registry(lambda: rec.view)
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    daemon = Daemon(rec, interval=0.01, metrics=metrics, notifier=notifier)

    assert daemon.serve(max_passes=3) == 0

    got = notify_socket.messages()
    ready = [m for m in got if "READY=1" in m]
    assert len(ready) == 1
    assert "STATUS=inet op25b in sync; pools: 2 enforce, 1 monitor, 1 off" in ready[0]
    # one ping after each pass at least; long passes also ping between their phases
    assert sum(m == "WATCHDOG=1" for m in got) >= 3
    assert got[-1].startswith("STOPPING=1\nSTATUS=stopping; table inet op25b left in place")
    assert registry.get_sample_value("op25b_reconcile_runs_total", {"read": "fast"}) == 2
    assert ("inet", "op25b") in kernel.tables  # stopping never removes the table


def test_the_watchdog_is_fed_within_a_long_pass(
    tmp_path: Path, notify_socket: NotifyListener
) -> None:
    """A pass that loads, reads and commits for longer than a quarter of the watchdog period
    (seconds each at 100,000 prefixes) pings between its phases, not only at its end."""
    rec = Reconciler(
        MemoryKernel(), DirectorySource(daemon_policy(tmp_path / "p")), clock=lambda: NOW
    )
    ticks = iter(range(1000))
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "2000000"})
    # every look at the clock is one second later: each phase "took" longer than 0.5 s
    daemon = Daemon(rec, interval=0.01, notifier=notifier, wall=lambda: float(next(ticks)))
    daemon.serve(max_passes=1)
    got = notify_socket.messages()
    assert sum(m == "WATCHDOG=1" for m in got) >= 4  # load, read, commit, end


def test_stop_and_reload_flags_wake_the_loop(tmp_path: Path) -> None:
    kernel = MemoryKernel()
    policy = daemon_policy(tmp_path / "p")
    rec = Reconciler(kernel, DirectorySource(policy), clock=lambda: NOW)
    daemon = Daemon(rec, interval=3600)  # only a wake-up can end the sleep in time
    done = threading.Event()

    def serve() -> None:
        daemon.serve()
        done.set()

    t = threading.Thread(target=serve)
    t.start()
    try:
        set_mode(policy, EAST2, "enforce")
        while daemon.passes < 1:
            done.wait(0.01)
        daemon.request_reload()
        while daemon.passes < 2:
            done.wait(0.01)
        assert rec.desired is not None
        assert rec.desired.decisions[EAST2].mode == "enforce"
        daemon.request_stop("test")
        assert done.wait(5)
    finally:
        daemon.request_stop()
        t.join(5)
    assert ("inet", "op25b") in kernel.tables


def test_signal_handlers_only_set_flags(tmp_path: Path) -> None:
    kernel = MemoryKernel()
    rec = Reconciler(kernel, DirectorySource(daemon_policy(tmp_path / "p")), clock=lambda: NOW)
    daemon = Daemon(rec, interval=3600)
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        daemon.install_signal_handlers()
        os.kill(os.getpid(), signal.SIGHUP)
        assert rec._reload is True
        os.kill(os.getpid(), signal.SIGTERM)
        assert daemon.serve() == 0 and daemon.passes == 0  # asked to stop before any pass
        assert kernel.applied == []
    finally:
        signal.set_wakeup_fd(-1)
        for s, h in old.items():
            signal.signal(s, h)


def test_a_stop_signal_during_the_sleep_always_stops(tmp_path: Path) -> None:
    """SIGTERMs (two, as systemd's and a process group's) sent while the main thread sleeps
    between passes. The handler used to call threading.Event.set(), which takes the lock the
    sleeping Event.wait() may hold at that moment: the daemon deadlocked on itself and only
    SIGKILL ended it (1 run in 3 of the package test)."""
    kernel = MemoryKernel()
    rec = Reconciler(kernel, DirectorySource(daemon_policy(tmp_path / "p")), clock=lambda: NOW)
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        for _ in range(20):
            daemon = Daemon(rec, interval=3600)
            daemon.install_signal_handlers()

            def kill_twice(d: Daemon = daemon) -> None:
                while d.passes < 1:
                    time.sleep(0.001)  # poll: the loop is in its sleep once a pass is done
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)

            killer = threading.Thread(target=kill_twice)
            killer.start()
            alarm = signal.signal(signal.SIGALRM, signal.default_int_handler)
            signal.alarm(10)  # a deadlock fails the test instead of hanging it
            try:
                assert daemon.serve() == 0
            finally:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, alarm)
            killer.join(5)
    finally:
        signal.set_wakeup_fd(-1)
        for s, h in old.items():
            signal.signal(s, h)


def test_the_waker_is_a_pipe_that_keeps_a_wake_up_until_cleared() -> None:
    waker = Waker()
    assert waker.wait(0) is False
    for _ in range(100_000):  # more than a pipe holds: never blocks the caller
        waker.set()
    assert waker.wait(None) is True and waker.wait(0) is True
    waker.clear()
    assert waker.wait(0.01) is False


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.1:9625", ("127.0.0.1", 9625)),
        ("[::1]:9625", ("::1", 9625)),
        (":9100", ("0.0.0.0", 9100)),
        ("off", None),
    ],
)
def test_parse_address(text: str, want: tuple[str, int] | None) -> None:
    assert parse_address(text) == want


@pytest.mark.parametrize(
    "text",
    ["9625", "::1:9625", "host:0", "host:port", "gw1.example.net:9625", "[192.0.2.1]:9625"],
)
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="metrics address"):
        parse_address(text)


def test_parse_address_takes_localhost_without_a_lookup() -> None:
    assert parse_address("localhost:9625") == ("127.0.0.1", 9625)
    assert parse_address("[2001:db8::0:1]:9625") == ("2001:db8::1", 9625)


def test_the_metrics_endpoint_binds_and_serves_without_any_name_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """http.server's server_bind calls getfqdn (reverse DNS): with an unreachable resolver
    that held the daemon's loop for ~10 s after its start-up sync (issue 17)."""
    import urllib.request

    from op25b_ctl.daemon import exporter

    real_getaddrinfo = socket.getaddrinfo

    def no_lookup(*args: object, **kwargs: object) -> object:
        raise AssertionError(f"name lookup {args}")

    def numeric_only(host: str, *args: Any, **kwargs: Any) -> Any:
        ipaddress.ip_address(host)  # a name here would be a resolver query
        return real_getaddrinfo(host, *args, **kwargs)

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    registry, _ = build_registry(lambda: View())
    for name in ("getfqdn", "gethostbyaddr", "gethostbyname", "gethostbyname_ex", "getnameinfo"):
        monkeypatch.setattr(socket, name, no_lookup)
    monkeypatch.setattr(socket, "getaddrinfo", numeric_only)
    stop = exporter.serve(("127.0.0.1", port), registry)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        stop()
    assert b"op25b_build_info" in body


def test_daemon_cli_options(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OP25B_STATE_DIR", raising=False)
    args = build_parser().parse_args(["daemon"])
    assert args.state_dir == Path("/var/lib/op25b")
    assert args.metrics_address == ("127.0.0.1", 9625)
    assert args.interval == 5.0 and args.verify_interval == 300.0
    with pytest.raises(SystemExit) as exc:
        main(["daemon", "--interval", "0"])
    assert exc.value.code == 2
    assert "must be more than 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["daemon", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--metrics-address" in out and "--state-dir" in out and "--policy" in out


def test_sleep_until_the_next_stage_or_half_the_watchdog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, notify_socket: NotifyListener
) -> None:
    real = desired.from_policy

    def soon(policy: Policy, now: datetime, overrides: Iterable[Override]) -> Desired:
        return replace(real(policy, now, overrides), next_change=now + timedelta(seconds=2))

    monkeypatch.setattr("op25b_ctl.daemon.reconcile.from_policy", soon)
    kernel = MemoryKernel()
    rec = Reconciler(kernel, DirectorySource(daemon_policy(tmp_path / "p")), clock=lambda: NOW)
    daemon = Daemon(rec, interval=3600)
    daemon.step()
    assert daemon._sleep_time() == 2.0  # the stage fires on time, not at the next interval
    path = notify_socket.path
    daemon.notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    assert daemon._sleep_time() == 0.5


def test_metrics_port_in_use_programs_the_table_first_then_retries_the_port(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A port taken at boot must not leave the gateway without its table (issue 10): the
    first pass programs the table, the port is retried after every pass until it is free."""
    import urllib.request

    from op25b_ctl.daemon.loop import MetricsServer

    kernel = MemoryKernel()
    rec = Reconciler(kernel, DirectorySource(daemon_policy(tmp_path / "p")), clock=lambda: NOW)
    registry, metrics = build_registry(lambda: rec.view)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    server = MetricsServer(("127.0.0.1", port), registry, metrics)
    daemon = Daemon(rec, metrics=metrics, after_pass=server.try_start)
    try:
        daemon.step()
        assert kernel.read("inet", "op25b") is not None  # enforcement first
        assert server.failures == 1
        assert f"cannot serve metrics on http://127.0.0.1:{port}/metrics" in caplog.text
        daemon.step()
        assert server.failures == 2  # retried, logged once
        assert caplog.text.count("cannot serve metrics") == 1
        busy.close()
        daemon.step()
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b"op25b_metrics_bind_failures_total 2.0" in body
        assert b"op25b_table_in_sync 1.0" in body
    finally:
        busy.close()
        server.stop()
