"""Who still tries TCP/25: the kernel's offender sets turned into a ranked list, pure.

Each monitored or enforced pool records its sources in two dynamic sets (ruleset.py): an
element per IPv4 address or IPv6 subscriber prefix, a counter of its SYNs, and a timeout
that `update` refreshes on every attempt. So the kernel knows, per source, the attempts and
the time left until it is forgotten; "last seen" is `now - (timeout - expires)`. It keeps no
creation time: "first seen" is what a reader observed (`FirstSeen`, kept by the daemon
between its reads), exact to one read interval, or only an upper bound ("at or before") for
a source already there when the daemon first looked. Nothing here touches the kernel or the
clock: the elements and `now` are handed in.

Metadata only: an address or prefix, counts and times. Nothing in this module logs.
"""

from __future__ import annotations

import heapq
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import netaddr

from op25b_ctl.plan.ruleset import Tracking, offender_set

# One element of an offender set as the kernel dumps it: (key bytes, attempts (packets of its
# counter), its own timeout in ms or 0 for the set's, ms until it expires).
Element = tuple[bytes, int, int, int]


@dataclass(frozen=True)
class PoolSeen:
    """One pool's offender sets as read at one moment: the elements of each IP version."""

    pool: str
    mode: str  # the pool's mode now (off: tracking stopped, the list runs out)
    tracking: Tracking
    v4: Sequence[Element] = ()
    v6: Sequence[Element] = ()

    @property
    def distinct(self) -> int:
        return len(self.v4) + len(self.v6)

    def fill(self, version: int) -> float:
        """How full the set of that version is: 1.0 means new sources are no longer recorded
        (and are still blocked)."""
        return len(self.v4 if version == 4 else self.v6) / self.tracking.size


@dataclass(frozen=True)
class Offender:
    """One row of `offenders`: a source (address or subscriber prefix) of one pool."""

    source: str
    pool: str
    mode: str
    attempts: int
    last_seen: datetime
    first_seen: datetime | None = None
    # False: the source was already recorded when the daemon first looked; first_seen is then
    # an upper bound. None first_seen: no daemon kept a record (a standalone command).
    first_seen_exact: bool = False
    exempted: bool = False  # all of the source lies in active exemptions
    partly_exempted: bool = False  # some of it does (a /60 exempted in a /56 source)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "pool": self.pool,
            "mode": self.mode,
            "attempts": self.attempts,
            "first_seen": self.first_seen.isoformat() if self.first_seen else None,
            "first_seen_exact": self.first_seen_exact,
            "last_seen": self.last_seen.isoformat(),
            "exempted": self.exempted,
            "partly_exempted": self.partly_exempted,
        }


def source_text(key: bytes, prefix_v6: int) -> str:
    """A set key as an address (IPv4) or the subscriber prefix it stands for (IPv6)."""
    if len(key) == 4:
        return socket.inet_ntop(socket.AF_INET, key)
    address = socket.inet_ntop(socket.AF_INET6, key)
    return address if prefix_v6 == 128 else f"{address}/{prefix_v6}"


def _age_ms(element: Element, tracking: Tracking) -> int:
    """Milliseconds since the element's last update (its timeout minus what is left)."""
    _, _, timeout, expires = element
    return max(0, (timeout or tracking.timeout * 1000) - expires)


@dataclass
class FirstSeen:
    """When each source was first observed by this reader: {set: {key: (ms, exact, n)}}.

    Kept by the daemon between reads (`active`; bounded: only what the sets hold now), never
    written anywhere. A source whose attempts went down was forgotten and recorded anew in
    between. Times are ms since the epoch: a full set is 65,536 sources a read.
    """

    active: bool = False
    book: dict[str, dict[bytes, tuple[int, bool, int]]] = field(default_factory=dict)

    def observe(
        self, set_name: str, elements: Iterable[Element], tracking: Tracking, now: datetime
    ) -> None:
        if not self.active:
            return
        old = self.book.get(set_name)
        exact = old is not None
        previous = old or {}
        now_ms = int(now.timestamp() * 1000)
        default = tracking.timeout * 1000
        new: dict[bytes, tuple[int, bool, int]] = {}
        for key, attempts, timeout, expires in elements:
            prev = previous.get(key)
            if prev is not None and attempts >= prev[2]:
                new[key] = (prev[0], prev[1], attempts)
            else:
                new[key] = (now_ms - max(0, (timeout or default) - expires), exact, attempts)
        self.book[set_name] = new

    def lookup(self, set_name: str, key: bytes) -> tuple[datetime | None, bool]:
        entry = self.book.get(set_name, {}).get(key)
        if entry is None:
            return None, False
        return datetime.fromtimestamp(entry[0] / 1000, UTC), entry[1]


Coverage = Literal["all", "part", "none"]


class Exemptions:
    """How much of a source an active exemption of exemptions.yaml covers.

    A source is an address or a subscriber prefix (an IPv6 /56 holds sixteen /60s): an
    exemption inside it lets only a part of it through, and the rest is still blocked, so
    "exempted" alone would tell the support desk the wrong thing.
    """

    def __init__(self, prefixes: Iterable[str]) -> None:
        self._nets = [netaddr.IPNetwork(p) for p in prefixes]

    def coverage(self, source: str) -> Coverage:
        """`all` when the source lies inside exemptions (one, or several that fill it; they
        never overlap, as validation ensures), `part` when some lie inside it, else `none`."""
        if not self._nets:
            return "none"
        net = netaddr.IPNetwork(source)
        inside = 0
        for n in self._nets:
            if n.version != net.version:
                continue
            if net in n:
                return "all"
            if n in net:
                inside += n.size
        if inside == 0:
            return "none"
        return "all" if inside >= net.size else "part"

    def covers(self, source: str) -> bool:
        """All of the source is exempted."""
        return self.coverage(source) == "all"


def ranked(
    pools: Sequence[PoolSeen],
    now: datetime,
    *,
    top: int | None = None,
    exemptions: Exemptions | None = None,
    first_seen: FirstSeen | None = None,
) -> list[Offender]:
    """Every pool's sources, most attempts first (then the most recent), at most `top`.

    Ranked on the raw elements; only the rows shown become `Offender`s (a full set is 65,536
    elements, and `--top 20` needs 20 of them)."""

    # (attempts, -age ms, pool index, version, element index): plain tuples, ordered as shown
    def keys() -> Iterator[tuple[int, int, int, int, int]]:
        for p, ps in enumerate(pools):
            default = ps.tracking.timeout * 1000
            for version, elements in ((4, ps.v4), (6, ps.v6)):
                for i, (_, attempts, timeout, expires) in enumerate(elements):
                    yield attempts, min(0, expires - (timeout or default)), p, version, i

    chosen = heapq.nlargest(top, keys()) if top is not None else sorted(keys(), reverse=True)
    rows: list[Offender] = []
    for attempts, neg_age, p, version, i in chosen:
        ps = pools[p]
        pool = ps.pool
        element = (ps.v4 if version == 4 else ps.v6)[i]
        source = source_text(element[0], ps.tracking.prefix_v6)
        first: datetime | None = None
        exact = False
        if first_seen is not None:
            first, exact = first_seen.lookup(offender_set(pool, version), element[0])
        covered = exemptions.coverage(source) if exemptions is not None else "none"
        rows.append(
            Offender(
                source=source,
                pool=pool,
                mode=ps.mode,
                attempts=attempts,
                last_seen=now + timedelta(milliseconds=neg_age),
                first_seen=first,
                first_seen_exact=exact,
                exempted=covered == "all",
                partly_exempted=covered == "part",
            )
        )
    return rows


def distinct_by_pool(pools: Iterable[PoolSeen]) -> dict[str, int]:
    """Distinct sources per pool in the retention window: the number readiness needs."""
    return {ps.pool: ps.distinct for ps in pools}
