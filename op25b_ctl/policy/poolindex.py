"""Which pool holds an address, answered from packed integer spans.

`explain` and the exemption metrics ask "which pool is this address in?". Answering from the
prefix strings means parsing all 110,000 of them first (~0.4 s, most of an `explain`). The
spans are computed once, when the policy is validated, kept packed in the validated-policy
cache (`cache.py`) as a few base64 strings, and unpacked in milliseconds, only by the commands
that ask (`DeferredPoolIndex`): a lookup is then one
bisect over a C array (IPv4) or over 16-byte big-endian keys (IPv6).

Pools never overlap (validation refuses it), so at most one span holds an address.
"""

from __future__ import annotations

import base64
import bisect
import json
from array import array
from collections.abc import Callable, Iterable, Sequence

_V6 = 16  # bytes per IPv6 key


class _Keys128(Sequence[int]):
    """A bytes buffer of 16-byte big-endian integers, as a sequence `bisect` can search."""

    def __init__(self, raw: bytes) -> None:
        self._raw = raw

    def __len__(self) -> int:
        return len(self._raw) // _V6

    def __getitem__(self, i: int) -> int:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        return int.from_bytes(self._raw[i * _V6 : (i + 1) * _V6])


class PoolIndex:
    """Sorted spans (first, last address) -> index of the pool in `Policy.pools`."""

    def __init__(
        self,
        v4: tuple[array[int], array[int], array[int]],
        v6: tuple[bytes, bytes, array[int]],
    ) -> None:
        self._v4 = v4
        self._v6 = (_Keys128(v6[0]), _Keys128(v6[1]), v6[2])

    @classmethod
    def build(cls, spans: Iterable[tuple[int, int, int, int]]) -> PoolIndex:
        """From (IP version, first, last address, pool index) of non-overlapping prefixes."""
        ordered = sorted(spans)
        v4 = [s for s in ordered if s[0] == 4]
        v6 = [s for s in ordered if s[0] == 6]
        return cls(
            (
                array("I", [s[1] for s in v4]),
                array("I", [s[2] for s in v4]),
                array("I", [s[3] for s in v4]),
            ),
            (
                b"".join(s[1].to_bytes(_V6) for s in v6),
                b"".join(s[2].to_bytes(_V6) for s in v6),
                array("I", [s[3] for s in v6]),
            ),
        )

    def pool_at(self, version: int, first: int, last: int) -> int | None:
        """The index of the pool holding all of first..last (an address: first == last)."""
        firsts, lasts, pools = self._v4 if version == 4 else self._v6
        k = bisect.bisect_right(firsts, first) - 1
        if k >= 0 and last <= lasts[k]:
            return pools[k]
        return None

    def spans(self, version: int) -> tuple[list[int], list[int], list[int]]:
        """One family's spans as plain lists (firsts, lasts, pool indexes): for a caller
        making 100,000 lookups, where decoding a 16-byte key per bisect step shows."""
        firsts, lasts, pools = self._v4 if version == 4 else self._v6
        return list(firsts), list(lasts), list(pools)

    def overlapping(self, version: int, first: int, last: int) -> list[tuple[int, int, int]]:
        """(first, last, pool index) of every span sharing an address with first..last, in
        address order: what a served prefix wider than a pool's prefix is compared with."""
        firsts, lasts, pools = self._v4 if version == 4 else self._v6
        k = max(bisect.bisect_right(firsts, first) - 1, 0)
        out = []
        while k < len(firsts) and firsts[k] <= last:
            if lasts[k] >= first:
                out.append((firsts[k], lasts[k], pools[k]))
            k += 1
        return out

    def to_json(self) -> dict[str, str]:
        (f4, l4, p4), (f6, l6, p6) = self._v4, self._v6
        parts = {
            "v4_first": f4.tobytes(),
            "v4_last": l4.tobytes(),
            "v4_pool": p4.tobytes(),
            "v6_first": f6._raw,  # noqa: SLF001 - our own class
            "v6_last": l6._raw,  # noqa: SLF001
            "v6_pool": p6.tobytes(),
        }
        return {"itemsize": str(array("I").itemsize)} | {
            k: base64.b64encode(v).decode("ascii") for k, v in parts.items()
        }

    @classmethod
    def from_json(cls, data: dict[str, str]) -> PoolIndex:
        """`to_json` back; ValueError if it is not one (or from a machine with other ints)."""
        if data.get("itemsize") != str(array("I").itemsize):
            raise ValueError("pool index packed with another integer size")

        def ints(key: str) -> array[int]:
            out = array("I")
            out.frombytes(base64.b64decode(data[key], validate=True))
            return out

        v4 = (ints("v4_first"), ints("v4_last"), ints("v4_pool"))
        v6_first = base64.b64decode(data["v6_first"], validate=True)
        v6_last = base64.b64decode(data["v6_last"], validate=True)
        v6 = (v6_first, v6_last, ints("v6_pool"))
        if not (len(v4[0]) == len(v4[1]) == len(v4[2])) or not (
            len(v6_first) == len(v6_last) == len(v6[2]) * _V6
        ):
            raise ValueError("pool index arrays of unequal length")
        return cls(v4, v6)


class DeferredPoolIndex(PoolIndex):
    """A packed index (`to_json` text) unpacked on its first lookup: most commands never ask.
    If it does not unpack, `fallback` builds the index from the prefixes instead."""

    def __init__(self, packed: str, fallback: Callable[[], PoolIndex]) -> None:
        self._packed = packed
        self._fallback = fallback
        self._index: PoolIndex | None = None

    def _unpacked(self) -> PoolIndex:
        if self._index is None:
            try:
                self._index = PoolIndex.from_json(json.loads(self._packed))
            except (ValueError, TypeError, KeyError, AttributeError):
                self._index = self._fallback()
        return self._index

    def pool_at(self, version: int, first: int, last: int) -> int | None:
        return self._unpacked().pool_at(version, first, last)

    def overlapping(self, version: int, first: int, last: int) -> list[tuple[int, int, int]]:
        return self._unpacked().overlapping(version, first, last)

    def spans(self, version: int) -> tuple[list[int], list[int], list[int]]:
        return self._unpacked().spans(version)

    def to_json(self) -> dict[str, str]:
        return self._unpacked().to_json()
