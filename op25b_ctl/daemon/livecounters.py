"""Our table's counters at scrape time: at most `max_age` old, and never going backwards.

A scrape used to show the counters as the last reconcile pass sampled them: with
`--interval 30` the kernel held 6 blocked packets while the metric read 0 for 30 s (issue
17). The collector now reads them itself, over netlink (the same counter dump the reconciler
samples), behind a cache of `max_age` (1 s) so that any number of scrapers cost at most one
dump a second. Nothing read here goes back to the control loop.

Continuity stays the reconciler's, and reaches the collector only through the `View`:

* the reconciler carries a counter someone deleted into the one it recreates (its last
  sample), and `View.offsets` holds what a counter had counted before someone reset it
  (`nft reset counters`) or recreated it empty: shown = kernel now + offset;
* the reconciler's last sample is up to one interval old, so a repair may restore less than
  a scrape in between showed. Each counter's highest value shown is kept here as a floor;
  a counter stays at its floor until the kernel's count passes it again.

A counter that leaves the desired table (a pool removed) drops its floor: its series ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from op25b_ctl.errors import Op25bError, TableNotFound
from op25b_ctl.kernel.base import Counter

MAX_AGE = 1.0  # seconds a scrape may show counters old (the bound)

ReadCounters = Callable[[str, str], Mapping[str, Counter]]  # (family, table) -> counters


@dataclass(frozen=True)
class Reading:
    """The kernel's counters for one table at one moment, as the kernel told them."""

    present: bool | None  # False: no such table; None: the kernel could not be read
    counters: Mapping[str, Counter] = field(default_factory=dict)
    at: float = 0.0  # monotonic time of the read


def shifted(value: Counter, offset: Counter | None) -> Counter:
    """`value` plus what its counter had counted before a reset (refs are the kernel's)."""
    if offset is None:
        return value
    return Counter(value.packets + offset.packets, value.bytes + offset.bytes, value.refs)


class LiveCounters:
    """Reads one table's counters at most once per `max_age`; keeps each counter's floor.

    Thread-safe: the exporter serves every scrape in a thread of its own."""

    def __init__(
        self,
        read: ReadCounters,
        *,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self.max_age = max_age
        self.clock = clock
        self.reads = 0  # kernel reads done (the cache's effect, for tests and the bench)
        self._lock = threading.Lock()
        self._cached: tuple[tuple[str, str, object], Reading] | None = None
        self._floor: dict[str, Counter] = {}

    def read(self, family: str, name: str, epoch: object = None) -> Reading:
        """The table's counters, read now unless a read younger than `max_age` exists for
        the same `epoch` (the ruleset generation the last pass saw: a read from before a
        commit of the pass's is never shown after the pass says it committed)."""
        key = (family, name, epoch)
        with self._lock:
            now = self.clock()
            cached = self._cached
            if cached is not None and cached[0] == key and now - cached[1].at < self.max_age:
                return cached[1]
            try:
                reading = Reading(True, self._read(family, name), now)
            except TableNotFound:
                reading = Reading(False, {}, now)
            except (Op25bError, OSError):
                reading = Reading(None, {}, now)
            self.reads += 1
            self._cached = (key, reading)
            return reading

    def shown(
        self,
        counters: Mapping[str, Counter],
        offsets: Mapping[str, Counter],
        names: Collection[str],
        sampled: Mapping[str, Counter] | None = None,
    ) -> dict[str, Counter]:
        """What a scrape shows for `counters`: shifted by the offsets, never below what an
        earlier scrape showed nor below the reconciler's last sample (`sampled`, shifted
        too). `names` are the desired table's counters: the others' floors are forgotten
        (their series end)."""
        sampled = sampled or {}
        with self._lock:
            for gone in [n for n in self._floor if n not in names]:
                del self._floor[gone]
            out: dict[str, Counter] = {}
            for name, value in counters.items():
                offset = offsets.get(name)
                now = shifted(value, offset)
                last = sampled.get(name)
                for floor in (self._floor.get(name), shifted(last, offset) if last else None):
                    if floor is not None:
                        now = Counter(
                            max(now.packets, floor.packets), max(now.bytes, floor.bytes), now.refs
                        )
                if name in names:
                    self._floor[name] = now
                out[name] = now
            return out
