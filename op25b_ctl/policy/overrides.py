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
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from op25b_ctl.errors import OverrideError
from op25b_ctl.policy.model import Mode, Policy, aware_datetime

Action = Literal["enforce", "monitor", "rollback"]
ACTION_MODE: dict[str, Mode] = {"enforce": "enforce", "monitor": "monitor", "rollback": "off"}
_DURATION = re.compile(r"^\+?(\d+)\s*([mhd])$")
_UNIT = {"m": "minutes", "h": "hours", "d": "days"}
# An override lasts at most this long: longer is a typo (or should be a policy change).
MAX_OVERRIDE = timedelta(days=3653)
MAX_REASON = 500
# Line and paragraph separators and the bidirectional controls (which reorder what a terminal
# shows) are not category Cc but forge lines or text just as well.
_INVISIBLE = {
    "\u2028",
    "\u2029",
    *map(chr, range(0x202A, 0x202F)),
    *map(chr, range(0x2066, 0x206A)),
}


def control_chars(text: str) -> list[str]:
    """The control characters in `text`, as escapes (`\\n`, `\\x1b`): for refusing them."""
    return [
        repr(c)[1:-1]
        for c in dict.fromkeys(text)
        if unicodedata.category(c) in ("Cc", "Cf") and c != "\u200d" or c in _INVISIBLE
    ]


def visible(text: str) -> str:
    """`text` with control characters escaped: safe to print on an operator's terminal."""
    bad = set(control_chars(text))
    return "".join(repr(c)[1:-1] if repr(c)[1:-1] in bad else c for c in text)


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
    """`--until`/`--now`/`--at` input: ISO 8601 with offset, or a duration (4h) after `now`.

    Durations are bounded to MAX_OVERRIDE and times to model.EARLIEST..LATEST, so nothing a
    user types can overflow the date arithmetic."""
    if not text.strip():
        raise OverrideError("empty time: give an ISO 8601 time with offset or a duration (4h)")
    m = _DURATION.match(text.strip())
    if m:
        digits, unit = m.group(1), m.group(2)
        if int(digits) == 0:
            raise OverrideError(f"{text!r}: a duration must be positive")
        # 8 digits of days still fit a timedelta; more is over the bound anyway
        delta = timedelta(**{_UNIT[unit]: int(digits)}) if len(digits) <= 8 else None
        if delta is None or delta > MAX_OVERRIDE:
            raise OverrideError(
                f"{text!r}: longer than {MAX_OVERRIDE.days} days (10 years); refused"
            )
        return now + delta
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
    check_reason(reason, required=True)
    if until is not None and until <= now:
        raise OverrideError(
            f"--until {until.isoformat()} is not in the future (now {now.isoformat()})"
        )
    if until is not None and until - now > MAX_OVERRIDE:
        raise OverrideError(
            f"--until {until.isoformat()} is more than {MAX_OVERRIDE.days} days (10 years) "
            "away; refused"
        )


def check_reason(reason: str, *, required: bool) -> None:
    """Refuse a reason that is empty (when required), too long, or carries control
    characters: a newline would forge a second audit line, an ESC reach terminals raw."""
    if required and not reason.strip():
        raise OverrideError("--reason must say why (it goes into the audit log)")
    bad = control_chars(reason)
    if bad:
        raise OverrideError(
            f"--reason contains control characters ({', '.join(bad)}); write it on one line "
            "of plain text"
        )
    if len(reason) > MAX_REASON:
        raise OverrideError(f"--reason is {len(reason)} characters; at most {MAX_REASON}")
