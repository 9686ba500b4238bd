"""The daemon's reading of the offender sets: at scrape time, at most once a second.

The metrics never carry a label per address (`op25b_pool_offenders{pool,mode}` counts the
distinct sources; `op25b_pool_offender_set_fill_ratio{pool,family}` says how full each set
is). Each read also updates the daemon's first-seen record (`ops.offenders.FIRST_SEEN`),
which `offenders` run through the command socket inherits; and the fleet status report and
the rollout's readiness take their per-pool counts from the same cached reading.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from op25b_ctl.daemon.view import View
from op25b_ctl.errors import KernelError
from op25b_ctl.kernel.base import Kernel
from op25b_ctl.ops.offenders import FIRST_SEEN, read_pools
from op25b_ctl.plan.offenders import PoolSeen, distinct_by_pool

log = logging.getLogger("op25b_ctl.offenders")

CACHE_SECONDS = 1.0
# without scrapes, the loop reads this often anyway: the resolution of "first seen"
OBSERVE_EVERY = 60.0
FAMILIES = {4: "ipv4", 6: "ipv6"}


class OffenderReader:
    """The offender sets of the pools the last `View` enforces, read at most every second."""

    def __init__(
        self,
        kernel: Kernel,
        view: Callable[[], View],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kernel = kernel
        self.view = view
        self.monotonic = monotonic
        self.clock = clock
        self._lock = threading.Lock()
        self._at: float | None = None
        self._last: list[PoolSeen] | None = None
        FIRST_SEEN.active = True  # this process keeps the record from now on

    def read(self) -> list[PoolSeen] | None:
        """The pools' sets now (cached for a second); None if there is nothing to read (no
        policy yet) or the kernel could not be read (the reason is logged, not the list)."""
        with self._lock:
            now = self.monotonic()
            if self._at is not None and now - self._at < CACHE_SECONDS:
                return self._last
            want = self.view().desired
            if want is None:
                return None
            modes = {name: d.mode for name, d in want.decisions.items()}
            try:
                self._last = read_pools(
                    self.kernel, want.policy, modes, now=self.clock(), first_seen=FIRST_SEEN
                )
            except KernelError as exc:
                log.warning("cannot read the offender sets: %s", exc)
                self._last = None
            self._at = now
            return self._last

    def observe(self) -> None:
        """After a pass: read if nothing (no scrape, no report) has for OBSERVE_EVERY s."""
        if self._at is None or self.monotonic() - self._at >= OBSERVE_EVERY:
            self.read()

    def after(self, then: Callable[[], None] | None) -> Callable[[], None]:
        """The loop's after-pass hook: `then` (the metrics server's start), then `observe`
        (so that a failing read can never keep the metrics server from starting)."""

        def hook() -> None:
            if then is not None:
                then()
            self.observe()

        return hook

    def distinct(self) -> Mapping[str, int]:
        """{pool: distinct offenders in the window}: the readiness seam, from the daemon."""
        pools = self.read()
        return distinct_by_pool(pools) if pools is not None else {}


class OffenderCollector(Collector):
    """op25b_pool_offenders and op25b_pool_offender_set_fill_ratio, from `OffenderReader`."""

    def __init__(self, reader: OffenderReader) -> None:
        self.reader = reader

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # collect() reads the kernel: do not let register() call it

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pools = self.reader.read()
        if pools is None:
            return
        distinct = GaugeMetricFamily(
            "op25b_pool_offenders",
            "Distinct sources (IPv4 addresses, IPv6 subscriber prefixes) that tried TCP/25 "
            "within the retention window, per pool and its mode now",
            labels=["pool", "mode"],
        )
        fill = GaugeMetricFamily(
            "op25b_pool_offender_set_fill_ratio",
            "How full each offender set is (1: new sources are no longer recorded; they are "
            "still blocked)",
            labels=["pool", "family"],
        )
        for ps in pools:
            distinct.add_metric([ps.pool, ps.mode], ps.distinct)
            for version, family in FAMILIES.items():
                fill.add_metric([ps.pool, family], ps.fill(version))
        yield from (distinct, fill)
