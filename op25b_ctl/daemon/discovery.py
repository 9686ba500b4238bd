"""The daemon's hole alarm: watch routes, addresses and links; re-check; export the answer.

A thread of its own, so the reconcile pass stays exactly as cheap as without it (no dump,
no comparison in a pass). It reads the policy the reconciler enforces (`policy()`), and:

    events (route/address/link groups) --debounce--> read served --compare--> DiscoveryView
    ENOBUFS (a mass reconnect overflowed the socket) -> events were lost: read everything
    periodic re-check every `discovery.interval` seconds; a new policy -> re-check now

Debouncing: a check runs once events have been quiet for `quiet` seconds, or `max_delay`
after the first unhandled one while a storm goes on, so 10,000 session routes coming and
going cost a few reads, not 10,000. Events that arrive while a check reads are queued on
the socket and start the next one, so a dump that raced with changes is corrected. Discovery never changes the table: it reads and reports
(`op25b_discovery_*` metrics, the fleet status, the log).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from op25b_ctl.errors import Op25bError
from op25b_ctl.plan.coverage import Coverage, Served, compare
from op25b_ctl.policy.discovery import Discovery
from op25b_ctl.policy.model import Policy

log = logging.getLogger("op25b_ctl.daemon.discovery")

QUIET = 0.3  # seconds without a relevant event before a check
MAX_DELAY = 2.0  # seconds from the first unhandled event to a check, however busy
POLL = 1.0  # seconds between looks at the reconciler's policy
MAX_HOLE_SERIES = 20  # op25b_discovery_uncovered_prefix{prefix=...}: bounded cardinality
FAMILIES = {4: "ipv4", 6: "ipv6"}


@dataclass(frozen=True)
class DiscoveryView:
    """The last check's answer (None: never checked, or discovery not configured)."""

    coverage: Coverage | None = None
    checked_at: float | None = None  # wall-clock time of the last successful check
    duration: float = 0.0
    error: str | None = None  # the last check failed (the previous answer is kept)
    configured: bool = False


class Events(Protocol):
    """What the watcher needs from an event source (kernel/discovery.RouteEvents)."""

    def fileno(self) -> int: ...
    def drain(self) -> tuple[int, bool]: ...  # (relevant messages, overflowed)
    def close(self) -> None: ...


def _kernel_events(section: Discovery) -> Events:
    from op25b_ctl.kernel.discovery import RouteEvents

    watch = RouteEvents(section)

    class Adapter:
        def fileno(self) -> int:
            return watch.fileno()

        def drain(self) -> tuple[int, bool]:
            d = watch.drain()
            return d.messages, d.overflowed

        def close(self) -> None:
            watch.close()

    return Adapter()


def _kernel_read(section: Discovery) -> list[Served]:
    from op25b_ctl.kernel.discovery import read_served

    return read_served(section)


class DiscoveryWatcher:
    """Runs checks in a thread; `view` is replaced (one attribute swap) after each."""

    def __init__(
        self,
        policy: Callable[[], Policy | None],
        *,
        read: Callable[[Discovery], list[Served]] = _kernel_read,
        events: Callable[[Discovery], Events] = _kernel_events,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        quiet: float = QUIET,
        max_delay: float = MAX_DELAY,
    ) -> None:
        self.policy = policy
        self.read = read
        self.make_events = events
        self.monotonic = monotonic
        self.wall = wall
        self.quiet = quiet
        self.max_delay = max_delay
        self.view = DiscoveryView()
        self.checks = 0
        self.errors = 0
        self.resyncs = 0  # ENOBUFS: the event queue overflowed, everything read again
        self.events_seen = 0
        self._events: Events | None = None
        self._section: Discovery | None = None
        self._policy: Policy | None = None
        self._dirty_since: float | None = None
        self._last_event = 0.0
        self._last_check: float | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._last_logged: tuple[tuple[int, int, int], ...] | None = None

    # -- lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="op25b-discovery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._close_events()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step(block=True)
            except Exception:  # never take the daemon down; try again after a pause
                log.exception("discovery step raised")
                self._stop.wait(POLL)

    # -- one turn of the loop (tests call it with block=False)

    def step(self, *, block: bool = False) -> bool:
        """Follow the policy, wait for events or a due check, check when due; True if a
        check ran."""
        self._follow_policy()
        if self._section is None:
            if block:
                self._stop.wait(POLL)
            return False
        now = self.monotonic()
        due = self._due()
        if block:
            fds = [self._wake_r] + ([self._events.fileno()] if self._events else [])
            timeout = max(0.0, min(due - now, POLL))
            ready, _, _ = select.select(fds, [], [], timeout)
            if self._wake_r in ready:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 64)
        self._drain()
        if self.monotonic() >= self._due():
            self.check()
            return True
        return False

    def _due(self) -> float:
        if self._dirty_since is not None:
            return min(self._last_event + self.quiet, self._dirty_since + self.max_delay)
        if self._last_check is None:
            return self.monotonic()
        assert self._section is not None
        return self._last_check + self._section.interval

    def _follow_policy(self) -> None:
        policy = self.policy()
        if policy is self._policy:
            return
        old = self._policy
        self._policy = policy
        section = policy.gateway.discovery if policy is not None else None
        if section != self._section:
            self._close_events()
            self._section = section
            if section is None:
                self.view = DiscoveryView()
                return
            try:
                self._events = self.make_events(section)
            except Op25bError as exc:  # checks still run on the periodic interval
                log.error("discovery: %s; re-checking every %.0f s only", exc, section.interval)
            self._mark(self.monotonic(), at_once=True)
        elif old is None or policy is None or old.pools != policy.pools:
            self._mark(self.monotonic(), at_once=True)

    def _mark(self, now: float, *, at_once: bool = False) -> None:
        """Something changed: check after the debounce, or at once (a new policy, the
        first check)."""
        if self._dirty_since is None:
            self._dirty_since = now
        self._last_event = now
        if at_once or self._last_check is None:
            self._last_event = now - self.quiet

    def _drain(self) -> None:
        if self._events is None:
            return
        try:
            messages, overflowed = self._events.drain()
        except Op25bError as exc:
            log.error("discovery: %s; reopening the watch", exc)
            self._close_events()
            if self._section is not None:
                with contextlib.suppress(Op25bError):
                    self._events = self.make_events(self._section)
            overflowed, messages = True, 0
        self.events_seen += messages
        if overflowed:
            self.resyncs += 1
            if self.resyncs == 1 or self.resyncs % 100 == 0:
                log.warning(
                    "discovery: route/address events overflowed the socket (%d time(s)); "
                    "reading everything again",
                    self.resyncs,
                )
        if messages or overflowed:
            self._mark(self.monotonic())

    def _close_events(self) -> None:
        if self._events is not None:
            with contextlib.suppress(Exception):
                self._events.close()
            self._events = None

    def check(self) -> DiscoveryView:
        """Read what is served now and compare it with the pools; publish the answer."""
        policy, section = self._policy, self._section
        self._dirty_since = None
        self._last_check = self.monotonic()
        if policy is None or section is None:
            return self.view
        start = time.perf_counter()
        try:
            coverage = compare(self.read(section), policy, section)
        except Op25bError as exc:
            self.errors += 1
            log.error("discovery check failed: %s", exc)
            self.view = DiscoveryView(
                self.view.coverage, self.view.checked_at, 0.0, str(exc), configured=True
            )
            return self.view
        self.checks += 1
        self.view = DiscoveryView(
            coverage, self.wall(), time.perf_counter() - start, None, configured=True
        )
        self._log(coverage)
        return self.view

    def _log(self, coverage: Coverage) -> None:
        if coverage.fingerprint == self._last_logged:
            return
        self._last_logged = coverage.fingerprint
        if coverage.holes:
            shown = ", ".join(h.prefix for h in coverage.holes[:5])
            more = f" and {len(coverage.holes) - 5} more" if len(coverage.holes) > 5 else ""
            log.warning(
                "discovery: HOLE: %d served prefix(es) in no pool: %s%s (TCP/25 from them is "
                "never blocked; `op25b-ctl discover --suggest`)",
                len(coverage.holes),
                shown,
                more,
            )
        else:
            log.info("discovery: no holes (%d served prefixes compared)", coverage.served)

    def report(self) -> dict[str, object] | None:
        """The fleet status's `discovery` entry: counts and the first holes."""
        view = self.view
        if not view.configured:
            return None
        cov = view.coverage
        return {
            "uncovered_prefixes": len(cov.holes) if cov else None,
            "uncovered": [h.prefix for h in cov.holes[:MAX_HOLE_SERIES]] if cov else [],
            "unserved_pools": len(cov.unserved) if cov else None,
            "error": view.error,
        }


class DiscoveryCollector(Collector):
    """op25b_discovery_* from the watcher's last view (nothing is read at scrape time)."""

    def __init__(self, watcher: DiscoveryWatcher) -> None:
        self.watcher = watcher

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        w = self.watcher
        view = w.view
        enabled = GaugeMetricFamily(
            "op25b_discovery_enabled", "1 if the policy has a discovery section for this gateway"
        )
        enabled.add_metric([], 1 if view.configured else 0)
        yield enabled
        for name, doc, value in (
            ("op25b_discovery_checks", "Discovery checks completed", w.checks),
            ("op25b_discovery_errors", "Discovery checks that could not read the kernel", w.errors),
            (
                "op25b_discovery_resyncs",
                "Times the route/address event socket overflowed (ENOBUFS) and everything was "
                "read again",
                w.resyncs,
            ),
            (
                "op25b_discovery_events",
                "Route, address and link notifications that started a check (debounced)",
                w.events_seen,
            ),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], float(value))
            yield c
        cov = view.coverage
        if cov is None or not view.configured:
            return
        prefixes = GaugeMetricFamily(
            "op25b_discovery_uncovered_prefixes",
            "Served prefixes in no pool (holes: TCP/25 from them is never blocked), merged",
            labels=["family"],
        )
        addresses = GaugeMetricFamily(
            "op25b_discovery_uncovered_addresses",
            "Addresses inside the uncovered prefixes",
            labels=["family"],
        )
        for version, family in FAMILIES.items():
            prefixes.add_metric([family], cov.uncovered_prefixes(version))
            addresses.add_metric([family], float(cov.uncovered_addresses(version)))
        yield from (prefixes, addresses)
        hole = GaugeMetricFamily(
            "op25b_discovery_uncovered_prefix",
            f"The first {MAX_HOLE_SERIES} uncovered prefixes, each with its address count",
            labels=["prefix", "seen_as"],
        )
        for h in cov.holes[:MAX_HOLE_SERIES]:
            hole.add_metric([h.prefix, h.origins[0] if h.origins else ""], float(h.addresses))
        yield hole
        served = GaugeMetricFamily(
            "op25b_discovery_served_prefixes", "Served prefixes compared with the pools"
        )
        served.add_metric([], cov.served)
        unserved = GaugeMetricFamily(
            "op25b_discovery_unserved_pools",
            "Pools listed but not served on this gateway (a warning: empty pools are normal)",
        )
        unserved.add_metric([], len(cov.unserved))
        yield from (served, unserved)
        if view.checked_at is not None:
            last = GaugeMetricFamily(
                "op25b_discovery_last_check_timestamp_seconds",
                "When discovery last compared what is served with the pools",
            )
            last.add_metric([], view.checked_at)
            yield last
            took = GaugeMetricFamily(
                "op25b_discovery_check_duration_seconds", "How long the last check took"
            )
            took.add_metric([], view.duration)
            yield took
