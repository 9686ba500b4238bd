"""(I/O) Who held an address at a time: Kea's memfile lease files (v4 and v6 CSV).

The abuse desk has an address (or an IPv6 subscriber prefix) and a time; the DHCP server
knows the subscriber: hwaddr, client-id or DUID, hostname. This reads Kea's own lease files
(`kea-leases4.csv`, `kea-leases6.csv`) and answers `Leases.lookup(source, at)`.

How a row is read (isc-projects/kea, src/lib/dhcpsrv/csv_lease_file4.cc, 6.cc):

* Columns by header name, never by position: Kea added columns over versions (`state` 2.0,
  `user_context` 2.1, `pool_id` 3.0). A file without `state` (before 2.0) has every row in
  state 0. Unknown extra columns are ignored.
* A lease starts at `expire - valid_lifetime` (Kea writes the client's last transmission time
  that way) and ends at `expire`. Only state 0 (default) leases name a holder: 1 (declined)
  clears the client's identity, 2 (expired-reclaimed) and 3 (released) and a row with
  `valid_lifetime` 0 (how memfile records a released or deleted lease, measured with Kea 2.2)
  say the lease ended, not when: Kea writes the last renewal's time. The holding is then
  still shown up to its expiry (nobody else held the address, or a row would say so), with
  `ended` set.
* The file is append-only: each renewal appends a row, and the last row wins. Rows of one
  address by one client (same hwaddr, client-id or DUID) that follow each other without a
  gap are one holding, so an attempt before the latest renewal still finds the client. A row
  of another client, or a decline, cuts the earlier holding at its start (an address is never
  held twice). kea-lfc (default every 3600 s) drops superseded rows: the file is not a
  history, and a time before its oldest row finds nothing.
* Kea escapes a comma inside a field as `&#x2c`; there is no CSV quoting.

IPv6: `lookup` takes the subscriber prefix op25b-ctl counts by (`2001:db8:1:2::/64`): a
delegated prefix (lease_type 2) covering it (the longest first), else an address lease
(IA_NA, IA_TA) inside it; several clients inside one prefix are ambiguous and give None,
because naming the wrong subscriber is worse than naming none.

A missing, unreadable or malformed file raises `LeaseFileError` naming the file (and the
line): the caller reports it and still shows what it has.
"""

from __future__ import annotations

import bisect
import re
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from op25b_ctl.errors import LeaseFileError
from op25b_ctl.fileio import UnsafeFileError, describe_oserror, read_bounded

__all__ = ["Lease", "Leases", "LeaseFileError", "load_leases"]

# A memfile of 1,000,000 leases with an hour of renewals is a few hundred MB.
MAX_LEASE_FILE_BYTES = 1 << 30
LeaseType = Literal["v4", "na", "ta", "pd"]
_V6_TYPES: dict[str, LeaseType] = {"0": "na", "1": "ta", "2": "pd"}
STATE_DEFAULT, STATE_DECLINED = 0, 1
STATE_NAMES = {0: "default", 1: "declined", 2: "expired-reclaimed", 3: "released"}
_V4_REQUIRED = ("address", "hwaddr", "client_id", "valid_lifetime", "expire")
_V6_REQUIRED = ("address", "duid", "valid_lifetime", "expire", "lease_type", "prefix_len")
_ESCAPE = re.compile(r"&#x([0-9a-fA-F]{2})")


@dataclass(frozen=True, slots=True)
class Lease:
    """One client's holding of an address or a delegated prefix, as the lease file shows it.

    The identity and hostname are the last row's; `start` is the first row's of the holding
    (renewals extend it), `end` the last row's expiry, or the start of the next holding.
    """

    address: str  # "192.0.2.10", "2001:db8::10" or, delegated, "2001:db8:1:100::/56"
    lease_type: LeaseType
    start: datetime
    end: datetime
    hwaddr: str | None = None
    client_id: str | None = None
    duid: str | None = None
    hostname: str | None = None
    subnet_id: int | None = None
    # a later row says it was released, reclaimed or deleted, but not when (Kea writes the
    # last renewal's time): the holding is still shown up to its expiry, flagged
    ended: bool = False
    file: str = ""
    line: int = 0  # the holding's last row, for "where did this come from"

    def valid_at(self, at: datetime) -> bool:
        return self.start <= at <= self.end

    def to_json(self) -> dict[str, object]:
        return {
            "address": self.address,
            "lease_type": self.lease_type,
            "hwaddr": self.hwaddr,
            "client_id": self.client_id,
            "duid": self.duid,
            "hostname": self.hostname,
            "subnet_id": self.subnet_id,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "ended": self.ended,
            "file": self.file,
            "line": self.line,
        }


# an address or prefix as integers: (version, first address, prefix length)
_Key = tuple[int, int, int]
# one valid or ending row, as parsing leaves it: (start, expire, state, valid_lifetime,
# identity, line number, source); the rest of the row is read again only for an answer
_RawRow = tuple[int, int, int, int, str, int, int]


@dataclass(frozen=True)
class _Source:
    file: str
    lines: list[str]
    col: dict[str, int]
    v6: bool


@dataclass(slots=True)
class _Holding:
    """A run of rows of one client for one address: [start, end] in epoch seconds."""

    key: _Key
    identity: str
    start: int
    end: int
    line: int
    source: int
    ended: bool = False  # a later row said it ended: a new row starts a new holding


def _fold(key: _Key, rows: Iterable[_RawRow]) -> list[_Holding]:
    """The holdings one address's rows (in file order) describe; see the module docstring."""
    out: list[_Holding] = []
    for start, expire, state, valid, identity, line, source in rows:
        last = out[-1] if out else None
        if state != STATE_DEFAULT or valid == 0:
            # the lease ended (released, reclaimed, deleted) or the address was declined:
            # no holder; a decline also means someone else uses it from then on
            if last is not None:
                if state == STATE_DECLINED and last.end > start:
                    last.end = max(last.start, start)
                last.ended = True
            continue
        if last is not None and not last.ended and last.identity == identity and start <= last.end:
            last.end = max(last.end, expire)  # a renewal: the same holding goes on
            last.line, last.source = line, source
            continue
        if last is not None and last.end > start:
            last.end = max(last.start, start)  # the address moved on: never held twice
        out.append(_Holding(key, identity, start, expire, line, source))
    return out


@dataclass
class Leases:
    """Every row of the files read, indexed by address or prefix; holdings are worked out
    per address when asked (parsing 100,000 rows stays a tight loop)."""

    files: tuple[str, ...] = ()
    rows: int = 0
    _rows: dict[_Key, list[_RawRow]] = field(default_factory=dict, repr=False)
    _sources: list[_Source] = field(default_factory=list, repr=False)
    _held: dict[_Key, list[_Holding]] = field(default_factory=dict, repr=False)  # folded
    _v6: list[int] | None = field(default=None, repr=False)  # sorted NA/TA addresses
    _pd_lengths: tuple[int, ...] = field(default=(), repr=False)

    def __len__(self) -> int:
        """Addresses and delegated prefixes the files have rows for."""
        return len(self._rows)

    @staticmethod
    def merged(parts: Iterable[Leases]) -> Leases:
        """One index over several files (a v4 and a v6 file, or `kea-leases4.csv.2` then
        `kea-leases4.csv`: older files first, since a later row wins)."""
        out = Leases()
        for part in parts:
            offset = len(out._sources)
            out.files += part.files
            out.rows += part.rows
            out._sources += part._sources
            for key, rows in part._rows.items():
                out._rows.setdefault(key, []).extend((*row[:6], row[6] + offset) for row in rows)
        out._index()
        return out

    def _index(self) -> None:
        self._held = {}
        self._v6 = None
        self._pd_lengths = tuple(
            sorted({k[2] for k in self._rows if k[0] == 6 and k[2] < 128}, reverse=True)
        )

    def _holdings(self, key: _Key) -> list[_Holding]:
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = _fold(key, self._rows.get(key, ()))
        return held

    def lookup(self, source: str, at: datetime) -> Lease | None:
        """The lease that covered `source` (an IPv4 address, an IPv6 address or subscriber
        prefix) at `at`, or None: not in the files, not valid then, or ambiguous."""
        version, first, plen = _parse_source(source)
        stamp = at.timestamp()
        if version == 4:
            return self._valid((4, first, 32), stamp)
        for length in self._pd_lengths:  # delegated prefixes covering it, longest first
            if length > plen:
                continue
            found = self._valid((6, first & ~((1 << (128 - length)) - 1), length), stamp)
            if found is not None:
                return found
        last = first | ((1 << (128 - plen)) - 1)
        if self._v6 is None:
            self._v6 = sorted(k[1] for k in self._rows if k[0] == 6 and k[2] == 128)
        lo = bisect.bisect_left(self._v6, first)
        hi = bisect.bisect_right(self._v6, last)
        hits = [
            lease
            for addr in self._v6[lo:hi]
            if (lease := self._valid((6, addr, 128), stamp)) is not None
        ]
        identities = {(h.hwaddr, h.client_id, h.duid) for h in hits}
        return hits[-1] if len(identities) == 1 else None

    def _valid(self, key: _Key, stamp: float) -> Lease | None:
        if key not in self._rows:
            return None
        for h in reversed(self._holdings(key)):  # the latest information wins
            if h.start <= stamp <= h.end:
                return self._lease(h)
        return None

    def _lease(self, h: _Holding) -> Lease:
        src = self._sources[h.source]
        f = src.lines[h.line - 1].split(",")
        col = src.col

        def text(name: str) -> str | None:
            i = col.get(name)
            return _unescape(f[i]) if i is not None and f[i] else None

        subnet = text("subnet_id")
        return Lease(
            address=_address_text(h),
            lease_type=_V6_TYPES[f[col["lease_type"]]] if src.v6 else "v4",
            start=datetime.fromtimestamp(h.start, UTC),
            end=datetime.fromtimestamp(h.end, UTC),
            hwaddr=text("hwaddr"),
            client_id=text("client_id"),
            duid=text("duid"),
            hostname=text("hostname"),
            subnet_id=int(subnet) if subnet else None,
            ended=h.ended,
            file=src.file,
            line=h.line,
        )

    def holdings(self) -> Iterator[Lease]:
        """Every holding, for listing and tests."""
        for key in self._rows:
            yield from (self._lease(h) for h in self._holdings(key))


def _address_text(h: _Holding) -> str:
    version, first, plen = h.key
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, first.to_bytes(4))
    text = socket.inet_ntop(socket.AF_INET6, first.to_bytes(16))
    return text if plen == 128 else f"{text}/{plen}"


def _parse_source(source: str) -> _Key:
    """An address or prefix as (version, first, prefixlen); ValueError if it is neither."""
    addr, sep, length = source.strip().partition("/")
    version = 6 if ":" in addr else 4
    family, bits = (socket.AF_INET6, 128) if version == 6 else (socket.AF_INET, 32)
    try:
        value = int.from_bytes(socket.inet_pton(family, addr))
    except OSError:
        raise ValueError(f"{source!r} is not an IPv4 or IPv6 address or prefix") from None
    plen = bits
    if sep:
        if not length.isdigit() or int(length) > bits:
            raise ValueError(f"{source!r}: bad prefix length")
        plen = int(length)
    if version == 4 and plen != 32:
        raise ValueError(f"{source!r}: IPv4 sources are single addresses")
    return version, value & ~((1 << (bits - plen)) - 1), plen


def _unescape(text: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text) if "&#x" in text else text


def load_leases(path: str | Path) -> Leases:
    """Read one Kea memfile lease file (v4 or v6, told apart by its header)."""
    path = Path(path)
    try:
        raw = read_bounded(path, MAX_LEASE_FILE_BYTES)
    except FileNotFoundError:
        raise LeaseFileError(f"{path}: no such lease file") from None
    except UnsafeFileError as exc:
        raise LeaseFileError(f"lease file {exc}") from None
    except OSError as exc:
        raise LeaseFileError(f"{path}: cannot read lease file: {describe_oserror(exc)}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise LeaseFileError(f"{path}:{line}: not UTF-8 text; not a Kea lease file") from None
    return parse_leases(text, str(path))


def parse_leases(text: str, file: str) -> Leases:
    """The parsing itself (pure), for `load_leases` and the tests."""
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise LeaseFileError(f"{file}:1: empty; a Kea lease file starts with its header line")
    header = [name.strip() for name in lines[0].split(",")]
    col = {name: i for i, name in enumerate(header)}
    v6 = "duid" in col or "lease_type" in col
    required = _V6_REQUIRED if v6 else _V4_REQUIRED
    missing = [name for name in required if name not in col]
    if missing:
        raise LeaseFileError(
            f"{file}:1: header lacks {', '.join(missing)}; not a Kea memfile "
            f"{'v6' if v6 else 'v4'} lease file (header: {lines[0][:120]!r})"
        )
    width = len(header)
    i_addr, i_valid, i_expire = col["address"], col["valid_lifetime"], col["expire"]
    i_state = col.get("state")
    i_subnet = col.get("subnet_id")
    i_hw = col.get("hwaddr")
    i_cid = col.get("client_id")
    i_duid = col.get("duid")
    i_type = col.get("lease_type")
    i_plen = col.get("prefix_len")
    by_key: dict[_Key, list[_RawRow]] = {}
    rows = 0
    family = socket.AF_INET6 if v6 else socket.AF_INET
    version = 6 if v6 else 4
    for n, line in enumerate(lines[1:], start=2):
        if not line or line.isspace():
            continue
        f = line.split(",")
        if len(f) != width:
            raise LeaseFileError(
                f"{file}:{n}: {len(f)} fields, the header has {width}; malformed row"
            )
        try:
            value = int.from_bytes(socket.inet_pton(family, f[i_addr]))
        except OSError:
            raise LeaseFileError(
                f"{file}:{n}: address {f[i_addr]!r} is not an IPv{version} address"
            ) from None
        try:
            valid = int(f[i_valid])
            expire = int(f[i_expire])
            state = int(f[i_state]) if i_state is not None and f[i_state] else STATE_DEFAULT
            if i_subnet is not None and f[i_subnet]:
                int(f[i_subnet])
            plen = int(f[i_plen]) if i_plen is not None else 32
        except ValueError:
            raise LeaseFileError(
                f"{file}:{n}: valid_lifetime, expire, state, subnet_id and prefix_len must be "
                "integers"
            ) from None
        if valid < 0 or expire < valid:
            raise LeaseFileError(f"{file}:{n}: valid_lifetime or expire out of range")
        if v6:
            assert i_type is not None
            kind = _V6_TYPES.get(f[i_type])
            if kind is None:
                raise LeaseFileError(
                    f"{file}:{n}: lease_type {f[i_type]!r} is not 0 (NA), 1 (TA) or 2 (PD)"
                )
            if kind != "pd":
                plen = 128
            elif not 0 < plen <= 128:
                raise LeaseFileError(f"{file}:{n}: prefix_len {plen} is not 1..128")
            value &= ~((1 << (128 - plen)) - 1)
            identity = f[i_duid] if i_duid is not None else ""
        else:
            identity = (
                f"{f[i_hw] if i_hw is not None else ''},{f[i_cid] if i_cid is not None else ''}"
            )
        rows += 1
        key: _Key = (version, value, plen)
        raw: _RawRow = (expire - valid, expire, state, valid, identity, n, 0)
        chain = by_key.get(key)
        if chain is None:
            by_key[key] = [raw]
        else:
            chain.append(raw)
    out = Leases((file,), rows, by_key, [_Source(file, lines, col, v6)])
    out._index()
    return out
