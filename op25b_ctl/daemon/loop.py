"""`op25b-ctl daemon`: the reconcile loop, its signals, systemd notification and the exporter.

    loop:  pass = reconciler.run_once() -> metrics, log, systemd status/watchdog
           sleep until the next pass: min(--interval, next stage/override change, watchdog/2),
           cut short by SIGHUP (reload + full verify) or SIGTERM/SIGINT (exit)

Signal handlers only set flags and wake the loop. Nothing the daemon reads may stop it: a pass
that raises unexpectedly is logged with its traceback and counted, and the loop goes on (the
table stays as it was). The metrics port is opened after the first pass has programmed the
table, and retried after every pass while another process holds it: a reboot never leaves a
gateway unprotected because of a port. Stopping leaves the table in place: the
gateway keeps enforcing the last state without the controller (use `teardown` to remove it).
Log records go to the journal with fields (POOL, MODE, REVISION, REASON) under systemd, to
stderr elsewhere (`journal`): one record per pool whenever its mode or the reason changes.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import select
import signal
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from op25b_ctl.daemon import DEFAULT_INTERVAL, DEFAULT_VERIFY_INTERVAL, exporter, journal
from op25b_ctl.daemon.control import ControlServer
from op25b_ctl.daemon.discovery import DiscoveryCollector, DiscoveryWatcher
from op25b_ctl.daemon.metrics import Metrics, build_registry
from op25b_ctl.daemon.offenders import OffenderCollector, OffenderReader
from op25b_ctl.daemon.reconcile import Reconciler
from op25b_ctl.daemon.sdnotify import Notifier
from op25b_ctl.daemon.stagemetrics import StageCollector
from op25b_ctl.daemon.view import ReconcileResult
from op25b_ctl.kernel.nft import NftKernel
from op25b_ctl.plan.render import describe
from op25b_ctl.plan.transaction import AddTable
from op25b_ctl.source import rulerefs
from op25b_ctl.source.directory import DirectorySource
from op25b_ctl.source.fleet import FleetSource

log = logging.getLogger("op25b_ctl.daemon")

MAX_LOGGED_CHANGES = 20  # lines of a transaction written to the log per pass
MIN_SLEEP = 0.01


@dataclass
class _Flags:
    stop: bool = False
    signal_name: str = ""


class Waker:
    """Cuts the loop's sleep short, from a signal handler or another thread: a byte down a
    pipe. Not a `threading.Event`: its `set` takes a lock, and a second SIGTERM whose handler
    runs while the main thread holds that same lock (re-acquiring it on the way out of
    `Event.wait`, woken by the first) deadlocks the daemon on itself. Seen: a stop that never
    stopped, in about 1 of 3 package-test runs, where a process group's SIGTERM and a
    forwarded one arrive together."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        weakref.finalize(self, os.close, self._read)
        weakref.finalize(self, os.close, self._write)

    @property
    def write_fd(self) -> int:
        return self._write

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: it is awake anyway
            os.write(self._write, b"\0")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass

    def wait(self, timeout: float | None) -> bool:
        """Sleep up to `timeout` seconds; True if woken (a wake-up stays until `clear`)."""
        ready, _, _ = select.select([self._read], [], [], timeout)
        return bool(ready)


class Daemon:
    """The loop around a Reconciler; every side effect is injected so tests can drive it."""

    def __init__(
        self,
        reconciler: Reconciler,
        *,
        interval: float = DEFAULT_INTERVAL,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        wall: Callable[[], float] = time.time,
        after_pass: Callable[[], None] | None = None,
        report: Callable[[ReconcileResult], None] | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.report = report  # the fleet's status report
        self.interval = interval
        self.metrics = metrics
        self.notifier = notifier or Notifier({})
        self.wall = wall
        # fed within long passes too (between their phases), at most 4 times a period
        reconciler.progress = self._feed_watchdog
        self._last_ping = wall()
        self.after_pass = after_pass
        self.passes = 0
        self._wake = Waker()
        self._flags = _Flags()
        self._last_error: str | None = None
        self._last_status = ""
        self._logged_modes: dict[str, tuple[str, str]] = {}  # pool -> (mode, reason) logged

    # -- called from signal handlers or other threads: set a flag, wake the loop

    def request_stop(self, why: str = "") -> None:
        self._flags.stop = True
        self._flags.signal_name = why
        self._wake.set()

    def request_reload(self) -> None:
        self.reconciler.request_reload()
        self._wake.set()

    def wake(self) -> None:
        """Run a pass now (the fleet store's watch brought a change)."""
        self._wake.set()

    def install_signal_handlers(self) -> None:
        def on_stop(signum: int, frame: FrameType | None) -> None:
            self.request_stop(signal.Signals(signum).name)

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self.request_reload()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        # A process-directed signal may land in any thread (metrics, fleet watch, command
        # socket): Python runs the handler only once the main thread runs again, which its
        # sleep in select() would not do before the timeout. The wakeup fd wakes it now.
        signal.set_wakeup_fd(self._wake.write_fd, warn_on_full_buffer=False)

    # -- the loop

    def serve(self, max_passes: int | None = None) -> int:
        """Run passes until asked to stop (or `max_passes`, for tests); exit status 0."""
        while True:
            # clear first, then look at the flag: a stop that lands between the two is seen
            # here, and one during the pass cuts the next sleep short (no interval-long wait)
            self._wake.clear()
            if self._flags.stop:
                break
            result = self.step()
            if self.passes == 1:
                self.notifier.ready(self._status(result))
                log.info("ready: %s", self._status(result))
            if max_passes is not None and self.passes >= max_passes:
                break
            self._wake.wait(self._sleep_time())
        want = self.reconciler.desired
        table = want.table.spec if want else "(none written by this run)"
        why = f" ({self._flags.signal_name})" if self._flags.signal_name else ""
        msg = f"stopping{why}; table {table} left in place, enforcement continues"
        self.notifier.stopping(msg)
        log.info("%s", msg)
        return 0

    def step(self) -> ReconcileResult:
        """One pass with its bookkeeping: metrics, log lines, systemd status and watchdog."""
        try:
            result = self.reconciler.run_once()
        except Exception as exc:  # a bug must not take enforcement's repairer down with it
            log.exception("reconcile pass raised; carrying on with the table as it is")
            if self.metrics is not None:
                self.metrics.internal_errors.inc()
            result = ReconcileResult(
                changed=False,
                ops=0,
                duration=0.0,
                drift_repaired=False,
                error=f"internal error: {type(exc).__name__}: {exc}",
            )
        self.passes += 1
        if self.metrics is not None:
            self.metrics.observe(result, self.wall())
        self._log(result)
        if self.report is not None:
            try:
                self.report(result)
            except Exception:  # a report must never stop enforcement
                log.exception("status report failed")
        status = self._status(result)
        if status != self._last_status:
            self.notifier.status(status)
            self._last_status = status
        self._feed_watchdog(force=True)
        if self.after_pass is not None:
            try:
                self.after_pass()
            except Exception:
                log.exception("after-pass hook raised")
        return result

    def _feed_watchdog(self, *, force: bool = False) -> None:
        """WATCHDOG=1 after every pass, and from within a pass (between its phases) once a
        quarter period has gone by: a pass at ISP scale takes seconds, a hung one forever."""
        period = self.notifier.watchdog_interval
        if period is None:
            return
        now = self.wall()
        if force or now - self._last_ping >= period / 4:
            self.notifier.watchdog()
            self._last_ping = now

    def _sleep_time(self) -> float:
        timeout = self.interval
        nxt = self.reconciler.next_wakeup()
        if nxt is not None:
            timeout = min(timeout, (nxt - self.reconciler.clock()).total_seconds())
        if self.notifier.watchdog_interval is not None:
            timeout = min(timeout, self.notifier.watchdog_interval / 2)
        return max(MIN_SLEEP, timeout)

    def _status(self, result: ReconcileResult) -> str:
        want = self.reconciler.desired
        if want is None:
            return f"no valid policy: {result.error}"
        counts: dict[str, int] = {}
        for d in want.decisions.values():
            counts[d.mode] = counts.get(d.mode, 0) + 1
        pools = ", ".join(f"{n} {m}" for m, n in sorted(counts.items()))
        state = "in sync" if result.ok else f"FAILING: {result.error}"
        bad = "; policy change refused" if self.reconciler.policy_error else ""
        return f"{want.table.spec} {state}; pools: {pools}{bad}"

    def _log(self, result: ReconcileResult) -> None:
        revision = self.reconciler.digest
        if result.error is not None:
            if result.error != self._last_error:
                log.error(
                    "reconcile failed: %s",
                    result.error,
                    extra=journal.fields(revision=revision, reason=result.error),
                )
            self._last_error = result.error
            return
        if self._last_error is not None:
            log.info("reconcile succeeded again", extra=journal.fields(revision=revision))
            self._last_error = None
        self._log_modes(revision)
        if result.tx is None:
            return
        why = (
            "start-up sync"
            if self.passes == 1 and not result.drift_repaired
            else "drift repaired"
            if result.drift_repaired
            else "desired state changed"
            if result.desired_changed
            else "table brought in line"
        )
        log.info(
            "%s: committed %d change(s) to table %s in %.3f s",
            why,
            result.ops,
            result.tx.spec,
            result.duration,
            extra=journal.fields(revision=revision, reason=why),
        )
        if result.drift_repaired and any(isinstance(op, AddTable) for op in result.tx.ops):
            log.warning(
                "table %s had been deleted and is recreated; to switch enforcement off, stop "
                "this daemon first (systemctl stop op25b-ctl), then `op25b-ctl teardown --yes`",
                result.tx.spec,
            )
        lines = describe(result.tx)
        for line in lines[:MAX_LOGGED_CHANGES]:
            log.info("  %s", line)
        if len(lines) > MAX_LOGGED_CHANGES:
            log.info("  ... and %d more", len(lines) - MAX_LOGGED_CHANGES)

    def _log_modes(self, revision: str | None) -> None:
        """One record per pool whose mode or reason differs from the last one logged, so
        `journalctl -u op25b-ctl POOL=<pool>` is that pool's history (all pools at start)."""
        want = self.reconciler.desired
        if want is None:
            return
        for pool, d in want.decisions.items():
            if self._logged_modes.get(pool) == (d.mode, d.reason):
                continue
            self._logged_modes[pool] = (d.mode, d.reason)
            log.info(
                "pool %s: %s (%s)",
                pool,
                d.mode,
                d.reason,
                extra=journal.fields(pool=pool, mode=d.mode, revision=revision, reason=d.reason),
            )


def start_metrics_server(address: tuple[str, int], registry: Any) -> Callable[[], None]:
    """Serve /metrics on address in a background thread; returns the shutdown function.
    No name lookup on the way (`exporter`): a resolver must never hold up the loop."""
    return exporter.serve(address, registry)


class MetricsServer:
    """The exporter, started after the first pass and retried after every pass until the
    port is free (another process may hold it at boot); enforcement never waits for it."""

    def __init__(
        self, address: tuple[str, int], registry: Any, metrics: Metrics | None = None
    ) -> None:
        self.address = address
        self.registry = registry
        self.metrics = metrics
        self.failures = 0
        self._shutdown: Callable[[], None] | None = None

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def try_start(self) -> None:
        if self._shutdown is not None:
            return
        try:
            self._shutdown = start_metrics_server(self.address, self.registry)
        except OSError as exc:
            self.failures += 1
            if self.metrics is not None:
                self.metrics.metrics_bind_failures.inc()
            if self.failures == 1:
                log.error(
                    "cannot serve metrics on %s: %s; enforcing anyway, retrying every pass",
                    self.url,
                    exc.strerror or exc,
                )
            return
        log.info(
            "metrics on %s%s",
            self.url,
            f" (after {self.failures} failed attempt(s))" if self.failures else "",
        )

    def stop(self) -> None:
        if self._shutdown is not None:
            self._shutdown()
            self._shutdown = None


def run(
    policy_dir: Path,
    state_dir: Path | None,
    *,
    interval: float = DEFAULT_INTERVAL,
    verify_interval: float | None = DEFAULT_VERIFY_INTERVAL,
    metrics_address: tuple[str, int] | None = None,
    fleet: FleetSource | None = None,
    control: ControlServer | None = None,
) -> int:
    """The real daemon: the running kernel, the policy directory (or, with `fleet`, one
    gateway's view of the fleet store, already started), signals, systemd, exporter;
    `control`, the command socket, wakes the loop when a forwarded command has ended."""
    reconciler = Reconciler(
        NftKernel(),
        fleet if fleet is not None else DirectorySource(policy_dir, state_dir),
        verify_interval=verify_interval,
        # the exporter shows what the passes sample: every pass samples when it is on
        sample_every_pass=metrics_address is not None or fleet is not None,
        rule_reference=rulerefs.path_in(state_dir),
    )
    # scrapes read the counters from the kernel themselves (cached 1 s): never a pass old
    registry, metrics = build_registry(lambda: reconciler.view, reconciler.kernel.counters)
    # the hole alarm: its own thread, reading the policy the passes enforce (discovery.py)
    watcher = DiscoveryWatcher(
        lambda: reconciler.view.desired.policy if reconciler.view.desired else None
    )
    registry.register(DiscoveryCollector(watcher))
    offenders = OffenderReader(reconciler.kernel, lambda: reconciler.view)
    registry.register(OffenderCollector(offenders))
    # each pending stage's readiness, from the same cached reading of the sets
    registry.register(StageCollector(lambda: reconciler.view, reconciler.clock, offenders.distinct))
    notifier = Notifier()
    server = (
        MetricsServer(metrics_address, registry, metrics) if metrics_address is not None else None
    )
    reporter = None
    if fleet is not None:
        from op25b_ctl.daemon.fleet import FleetCollector, FleetReporter

        reporter = FleetReporter(reconciler, fleet, discovery=watcher, offenders=offenders)
        registry.register(FleetCollector(reporter))
    daemon = Daemon(
        reconciler,
        interval=interval,
        metrics=metrics,
        notifier=notifier,
        after_pass=offenders.after(server.try_start if server is not None else None),
        report=reporter.after_pass if reporter is not None else None,
    )
    if fleet is not None:
        fleet.on_change = daemon.wake  # the watch wakes the loop: no polling of the store
    if control is not None:
        control.on_done = daemon.wake  # a forwarded command's change: metrics follow at once
    daemon.install_signal_handlers()
    # `kill -USR2 <pid>`: every thread's Python stack to stderr (the journal), to see where a
    # daemon that does not stop or pass is stuck; nothing else changes
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    log.info(
        "policy %s, state %s, pass every %.1f s, full verify every %s",
        f"{fleet.store.config.url} as gateway {fleet.gateway}" if fleet else policy_dir,
        state_dir,
        interval,
        f"{verify_interval:.0f} s" if verify_interval else "never",
    )
    watcher.start()
    try:
        return daemon.serve()
    finally:
        watcher.stop()
        if server is not None:
            server.stop()
        if fleet is not None:
            fleet.stop()
