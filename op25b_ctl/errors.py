"""Exceptions, so callers and the CLI can map failures to exit codes.

Op25bError                 base; anything op25b-ctl raises on purpose
├── PolicyError            the policy files are invalid: exit 2, nothing applied
├── NotOurTableError       a table of the configured name exists but was not made by us
└── BackendError           nftables refused or failed: exit 1, live ruleset unchanged
"""

from __future__ import annotations

from dataclasses import dataclass


class Op25bError(Exception):
    """Base of every error op25b-ctl raises deliberately."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the policy, located as precisely as we can."""

    file: str
    where: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        place = f"{self.file}:{self.line}" if self.line else self.file
        return (
            f"{place}: {self.where}: {self.message}" if self.where else f"{place}: {self.message}"
        )


class PolicyError(Op25bError):
    """The policy is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class NotOurTableError(Op25bError):
    """Refuse to adopt a table that another owner created under our name."""


class BackendError(Op25bError):
    """nftables rejected a transaction or could not be read; carries nft's own message."""
