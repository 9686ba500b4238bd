"""Served versus listed: which addresses the gateway serves that no pool holds (the holes).

Pure: the kernel adapter (kernel/discovery.py) hands over what it read as `Served` items;
this compares them with the policy's pools (the packed spans of `policy/poolindex.py`, one
bisect per item) and says, for `discover`, the daemon's metrics and the fleet's status:

* holes: served addresses in no pool, merged into the fewest CIDR prefixes; every
  subscriber in one can send on port 25 and nothing alarms;
* covered: served addresses per pool (a static pool is listed apart: never blocked);
* unserved: listed pools nothing on this gateway serves (a warning: empty pools are normal).

A served prefix wider than a pool's prefix (an aggregate) is covered where pools hold it and
a hole for the rest. Addresses that are never a subscriber's (loopback, link-local,
multicast) and the section's `ignore:` prefixes are left out, as are prefixes broader than
`min_prefixlen` (no pool can be that broad, so they could never be covered).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

from op25b_ctl.policy.discovery import Discovery
from op25b_ctl.policy.model import Net, Policy, parse_net

__all__ = ["Coverage", "Hole", "Served", "compare", "net_text", "range_to_nets", "suggest"]

BITS = {4: 32, 6: 128}
MAX_ORIGINS = 5  # per hole: enough to find the session or route, short enough to read
# Never a subscriber's address: loopback, link-local, multicast, "this network".
NEVER = tuple(
    parse_net(p)
    for p in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
    + ("::/127", "fe80::/10", "ff00::/8")
)


@dataclass(frozen=True)
class Served:
    """One thing the kernel says this gateway serves, and where it was seen."""

    net: Net
    origin: str  # "ppp0 peer", "route main proto 100 dev eth1", "blackhole main proto static"


@dataclass(frozen=True)
class Hole:
    """A prefix served but listed in no pool."""

    net: Net
    origins: tuple[str, ...]  # the first few served items it came from
    items: int  # how many served items fell (partly) into it

    @property
    def prefix(self) -> str:
        return net_text(self.net)

    @property
    def addresses(self) -> int:
        return self.net.last - self.net.first + 1


@dataclass(frozen=True)
class PoolSeen:
    name: str
    dynamic: bool
    served: int  # served items inside (or partly inside) the pool


@dataclass(frozen=True)
class Coverage:
    holes: tuple[Hole, ...]
    pools: tuple[PoolSeen, ...]  # every pool of the policy, in pools.yaml order
    static: tuple[tuple[str, str, str], ...]  # (served prefix, static pool, origin)
    served: int  # served items compared
    skipped: int  # left out: never a subscriber's, ignored, or broader than min_prefixlen
    fingerprint: tuple[tuple[int, int, int], ...] = field(default=(), compare=False)

    @property
    def unserved(self) -> list[str]:
        return [p.name for p in self.pools if p.served == 0]

    def uncovered_prefixes(self, version: int) -> int:
        return sum(1 for h in self.holes if h.net.version == version)

    def uncovered_addresses(self, version: int) -> int:
        return sum(h.addresses for h in self.holes if h.net.version == version)


def net_text(net: Net) -> str:
    import ipaddress

    addr = ipaddress.ip_address(net.first) if net.version == 4 else ipaddress.IPv6Address(net.first)
    return f"{addr}/{net.prefixlen}"


def range_to_nets(version: int, first: int, last: int) -> list[Net]:
    """The fewest CIDR prefixes covering exactly first..last."""
    bits = BITS[version]
    out = []
    while first <= last:
        size = (first & -first).bit_length() - 1 if first else bits  # alignment of first
        span = (last - first + 1).bit_length() - 1  # largest power of two that fits
        k = min(size, span, bits)
        out.append(Net(version, first, first + (1 << k) - 1, bits - k))
        first += 1 << k
    return out


class _Spans:
    """Sorted, non-overlapping spans of one family, each with a tag: bisect over plain
    lists of ints (a lookup per served prefix, 100,000 of them)."""

    def __init__(self, firsts: list[int], lasts: list[int], tags: list[int]) -> None:
        self.firsts, self.lasts, self.tags = firsts, lasts, tags

    @classmethod
    def merged(cls, nets: Iterable[Net]) -> dict[int, _Spans]:
        """Per family, the union of `nets` (tags unused)."""
        out = {}
        for version in BITS:
            runs: list[list[int]] = []
            for f, la in sorted((n.first, n.last) for n in nets if n.version == version):
                if runs and f <= runs[-1][1] + 1:
                    runs[-1][1] = max(runs[-1][1], la)
                else:
                    runs.append([f, la])
            out[version] = cls([r[0] for r in runs], [r[1] for r in runs], [0] * len(runs))
        return out

    def holding(self, first: int, last: int) -> int | None:
        """The index of the span holding all of first..last, or None."""
        k = bisect.bisect_right(self.firsts, first) - 1
        if k >= 0 and last <= self.lasts[k]:
            return k
        return None

    def overlapping(self, first: int, last: int) -> list[int]:
        """Indexes of the spans sharing an address with first..last."""
        k = max(bisect.bisect_right(self.firsts, first) - 1, 0)
        out = []
        firsts, lasts = self.firsts, self.lasts
        while k < len(firsts) and firsts[k] <= last:
            if lasts[k] >= first:
                out.append(k)
            k += 1
        return out


def _subtract(first: int, last: int, cuts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """first..last minus the (sorted) cut spans."""
    out = []
    at = first
    for f, la in sorted(cuts):
        if f > at:
            out.append((at, min(f - 1, last)))
        at = max(at, la + 1)
        if at > last:
            break
    if at <= last:
        out.append((at, last))
    return out


def compare(served: Iterable[Served], policy: Policy, section: Discovery) -> Coverage:
    """What of `served` the policy's pools hold, and the holes (module docstring)."""
    index = policy.pool_spans
    pools = policy.pools
    listed = {v: _Spans(*index.spans(v)) for v in BITS}
    skip = _Spans.merged([*NEVER, *(parse_net(p) for p in section.ignore)])
    counts = [0] * len(pools)
    minimum = {4: section.min_prefixlen.ipv4, 6: section.min_prefixlen.ipv6}
    static: list[tuple[str, str, str]] = []
    loose: list[tuple[int, int, int, str]] = []  # (version, first, last, origin) of holes
    seen = skipped = 0
    # one served item per distinct prefix: a session seen as a peer and as a route counts once
    distinct: dict[Net, str] = {}
    for item in served:
        distinct.setdefault(item.net, item.origin)
    for net, origin in distinct.items():
        version, first, last, plen = net
        if plen < minimum[version]:
            skipped += 1
            continue
        skips = skip[version]
        if skips.holding(first, last) is not None:
            skipped += 1
            continue
        seen += 1
        spans = listed[version]
        k = spans.holding(first, last)
        if k is not None and not skips.overlapping(first, last):
            pool = spans.tags[k]
            counts[pool] += 1
            if not pools[pool].dynamic:
                static.append((net_text(net), pools[pool].name, origin))
            continue
        cuts = []
        for k in spans.overlapping(first, last):
            counts[spans.tags[k]] += 1
            cuts.append((spans.firsts[k], spans.lasts[k]))
        cuts += [(skips.firsts[k], skips.lasts[k]) for k in skips.overlapping(first, last)]
        for f, la in _subtract(first, last, cuts):
            loose.append((version, f, la, origin))
    holes = _merge(loose)
    return Coverage(
        holes=tuple(holes),
        pools=tuple(PoolSeen(p.name, p.dynamic, counts[i]) for i, p in enumerate(pools)),
        static=tuple(sorted(static)),
        served=seen,
        skipped=skipped,
        fingerprint=tuple((h.net.version, h.net.first, h.net.last) for h in holes),
    )


def _merge(loose: list[tuple[int, int, int, str]]) -> list[Hole]:
    """Uncovered spans, coalesced where they touch, as the fewest CIDR prefixes, each with
    the origins of the served items that fell into it."""
    loose.sort()
    runs: list[tuple[int, int, int, list[tuple[int, int, str]]]] = []
    for v, f, la, origin in loose:
        if runs and runs[-1][0] == v and f <= runs[-1][2] + 1:
            run = runs[-1]
            runs[-1] = (v, run[1], max(run[2], la), run[3])
            run[3].append((f, la, origin))
        else:
            runs.append((v, f, la, [(f, la, origin)]))
    holes = []
    for v, f, la, items in runs:
        starts = [i[0] for i in items]
        for net in range_to_nets(v, f, la):
            k = max(bisect.bisect_right(starts, net.first) - 1, 0)
            origins: list[str] = []
            count = 0
            for first, last, origin in items[k:]:
                if first > net.last:
                    break
                if last >= net.first:
                    count += 1
                    if len(origins) < MAX_ORIGINS and origin not in origins:
                        origins.append(origin)
            holes.append(Hole(net, tuple(origins), count))
    return holes


def suggest(coverage: Coverage, name: str = "discovered", note: str = "") -> str:
    """YAML for pools.yaml holding every hole as one new pool, `mode: "off"` and dynamic
    (decide both before pasting: a static pool is never blocked). Prints, never writes."""
    if not coverage.holes:
        return "# no holes: every served address is in a pool\n"
    taken = {p.name for p in coverage.pools}
    n, chosen = 1, name
    while chosen in taken:
        n += 1
        chosen = f"{name}-{n}"
    lines = [
        "# paste under `pools:` in pools.yaml; check `dynamic:` (static pools are never",
        "# blocked) and `mode:`, then `op25b-ctl validate` and `op25b-ctl discover`",
        f"  - name: {chosen}",
        f"    description: {_quote(note or 'found by op25b-ctl discover')}",
        "    dynamic: true",
        '    mode: "off"',
        "    prefixes:",
    ]
    for hole in coverage.holes:
        lines.append(f"      - {hole.prefix}    # {'; '.join(hole.origins)}")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
