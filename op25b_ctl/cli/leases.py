"""`--leases FILE` for a command that lists sources: who held each one (Kea lease files).

The command hands over its rows (anything with a `source` and a `last_seen` time) and gets
back, per row, the lease that covered the source at its last attempt, as JSON fields and as
one text column. A lease file that is missing, unreadable or malformed is reported on stderr
and makes the command exit 1, but never hides the list: the rows are printed without the
lease columns from that file (docs/leases.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from op25b_ctl.errors import LeaseFileError
from op25b_ctl.source.leases import Lease, Leases, load_leases

__all__ = ["Attempted", "LeaseColumns", "add_argument", "load"]


class Attempted(Protocol):
    """A row of a source list: its address or subscriber prefix and its last attempt."""

    @property
    def source(self) -> str: ...

    @property
    def last_seen(self) -> datetime: ...


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--leases",
        action="append",
        default=[],
        metavar="FILE",
        help="Kea memfile lease file (kea-leases4.csv, kea-leases6.csv; repeat for both, "
        "older files first): add each source's hwaddr, client-id or DUID and hostname at "
        "its last attempt",
    )


class LeaseColumns:
    """The lease files of one command, read once; `failed` if any could not be used."""

    def __init__(self, leases: Leases | None, errors: Sequence[str]) -> None:
        self.leases = leases
        self.errors = tuple(errors)

    @property
    def asked(self) -> bool:
        return self.leases is not None or bool(self.errors)

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    def lookup(self, row: Attempted | None) -> Lease | None:
        if self.leases is None or row is None:
            return None
        try:
            return self.leases.lookup(row.source, row.last_seen)
        except ValueError:  # not an address or prefix: nothing to look up
            return None

    def json(self, row: Attempted | None) -> dict[str, Any]:
        """`{"lease": {...} | null}` for a row (None: a row without a usable time), or
        nothing when no file was asked for."""
        if not self.asked:
            return {}
        lease = self.lookup(row)
        return {"lease": lease.to_json() if lease is not None else None}

    def text(self, row: Attempted) -> str:
        """One column: `aa:bb:cc:dd:ee:ff pc-1`, `duid 00:01:... (pd 2001:db8::/56)`, `-`."""
        lease = self.lookup(row)
        return describe(lease) if lease is not None else "-"


def describe(lease: Lease) -> str:
    who = (
        lease.hwaddr
        or (f"client-id {lease.client_id}" if lease.client_id else None)
        or (f"duid {lease.duid}" if lease.duid else None)
        or "?"
    )
    parts = [who]
    if lease.hostname:
        parts.append(lease.hostname)
    if lease.lease_type == "pd":
        parts.append(f"(pd {lease.address})")
    if lease.ended:
        parts.append("(released)")
    return " ".join(parts)


def load(paths: Sequence[str]) -> LeaseColumns:
    """Read every file given; each one that fails is reported on stderr and left out."""
    parts: list[Leases] = []
    errors: list[str] = []
    for path in paths:
        try:
            parts.append(load_leases(path))
        except LeaseFileError as exc:
            errors.append(str(exc))
            print(f"op25b-ctl: {exc}; the list is shown without its leases", file=sys.stderr)
    if not parts:
        return LeaseColumns(None, errors)
    return LeaseColumns(Leases.merged(parts) if len(parts) > 1 else parts[0], errors)
