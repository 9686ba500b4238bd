"""Operator overrides: an engineer's `pool enforce|monitor|rollback` that outranks the schedule.

Pure: what an override is, how its expiry is written on the command line, and what makes one
acceptable. Persisting them is `state`'s job; applying them is `modes.decide`'s.

`--until` takes either an ISO 8601 time *with* its UTC offset (2011-01-31T18:00+09:00) or a
duration from now (90m, 4h, 2d). A time without an offset is refused rather than read as Japan
time or as the gateway's zone: an override that lifts blocking nine hours early or late is
exactly the mistake this refuses to guess about.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from op25b_ctl.errors import OverrideError
from op25b_ctl.policy.model import Mode, Policy, aware_datetime

Action = Literal["enforce", "monitor", "rollback"]
ACTION_MODE: dict[str, Mode] = {"enforce": "enforce", "monitor": "monitor", "rollback": "off"}
_DURATION = re.compile(r"^\+?(\d+)\s*([mhd])$")
_UNIT = {"m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True)
class Override:
    pool: str
    action: Action
    reason: str
    user: str
    set_at: datetime
    until: datetime | None = None

    @property
    def mode(self) -> Mode:
        return ACTION_MODE[self.action]

    def active(self, now: datetime) -> bool:
        return self.until is None or now < self.until

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "action": self.action,
            "mode": self.mode,
            "reason": self.reason,
            "user": self.user,
            "set_at": self.set_at.isoformat(),
            "until": self.until.isoformat() if self.until else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Override:
        try:
            action = data["action"]
            if action not in ACTION_MODE:
                raise ValueError(f"unknown action {action!r}")
            until = data.get("until")
            return cls(
                pool=str(data["pool"]),
                action=action,
                reason=str(data["reason"]),
                user=str(data.get("user", "")),
                set_at=aware_datetime(data["set_at"]),
                until=aware_datetime(until) if until else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise OverrideError(f"malformed override record {data!r}: {exc}") from None


def parse_when(text: str, now: datetime) -> datetime:
    """`--until`/`--now`/`--at` input: ISO 8601 with offset, or a duration (4h) after `now`."""
    m = _DURATION.match(text.strip())
    if m:
        amount, unit = int(m.group(1)), m.group(2)
        if amount == 0:
            raise OverrideError(f"{text!r}: a duration must be positive")
        return now + timedelta(**{_UNIT[unit]: amount})
    try:
        return aware_datetime(text)
    except ValueError as exc:
        raise OverrideError(f"{exc} (or give a duration such as 90m, 4h, 2d)") from None


def check(policy: Policy, pool: str, reason: str, until: datetime | None, now: datetime) -> None:
    """Refuse an override that names no dynamic pool, gives no reason or has already expired."""
    names = [p.name for p in policy.pools]
    if pool not in names:
        raise OverrideError(f"unknown pool {pool!r} (known: {', '.join(names)})")
    if not policy.pool(pool).dynamic:
        raise OverrideError(f"{pool!r} is a static pool: it is never blocked, nothing to override")
    if not reason.strip():
        raise OverrideError("--reason must say why (it goes into the audit log)")
    if until is not None and until <= now:
        raise OverrideError(
            f"--until {until.isoformat()} is not in the future (now {now.isoformat()})"
        )
