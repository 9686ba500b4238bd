"""What every command is handed: its arguments, the kernel, the source, the time, the output.

Both command modules (`main`, `ops`) import this and nothing of each other's but their
`register` hooks, so the CLI has no import cycle.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from op25b_ctl.kernel.base import Kernel
from op25b_ctl.policy.model import Policy
from op25b_ctl.policy.overrides import parse_when
from op25b_ctl.source.base import Source
from op25b_ctl.source.directory import DirectorySource
from op25b_ctl.source.state import StateDir

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
EXIT_NOT_RECORDED = 3  # the gateway was changed, but the audit/state record failed after it
EXIT_NOT_ALL_OK = 4  # `fleet status`: it worked, but not every gateway is ok (for scripts)
EXIT_HOLE = 5  # `discover`: it worked, and a served prefix is in no pool (TCP/25 not blocked)
EXIT_BUSY = 75  # EX_TEMPFAIL: the state lock was held; cron's next run will retry


class Context:
    """What a command needs; the kernel is made on first use so `validate` needs no root."""

    def __init__(
        self,
        args: argparse.Namespace,
        kernel: Kernel | None = None,
        command: Sequence[str] = (),
    ) -> None:
        self.args = args
        self._kernel = kernel
        self.json = args.output == "json"
        self.command = list(command)
        self._now: datetime | None = None
        self.source: Source = DirectorySource(args.policy, args.state_dir)
        self.state = StateDir(args.state_dir)  # this gateway's own rollout bookkeeping

    @property
    def now(self) -> datetime:
        """The time commands act at: the clock, or --now (for tests and dry runs)."""
        if self._now is None:
            clock = datetime.now(UTC)
            self._now = parse_when(self.args.now, clock) if self.args.now else clock
        return self._now

    def lock(self, what: str) -> AbstractContextManager[None]:
        return self.source.lock(what, timeout=self.args.lock_timeout)

    @property
    def kernel(self) -> Kernel:
        if self._kernel is None:
            from op25b_ctl.kernel.nft import NftKernel  # pyroute2 only for commands that read

            self._kernel = NftKernel()
        return self._kernel

    def policy(self) -> Policy:
        return self.source.policy()

    def emit(self, data: dict[str, Any], text: Sequence[str]) -> None:
        if self.json:
            # one write: json.dump writes every token on its own (60,000 for 1,000 pools)
            sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        else:
            for line in text:
                print(line)


MAX_SECONDS = 86400.0  # bound on every SECONDS option: a day is already absurd


def _seconds(text: str, *, zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value):  # inf would never wake, NaN never compares
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number of seconds")
    if value < 0 or (value == 0 and not zero):
        raise argparse.ArgumentTypeError(
            f"{text!r}: must be {'0 or more' if zero else 'more than 0'} seconds"
        )
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {MAX_SECONDS:g} seconds (a day)")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: finite seconds, more than 0, at most a day."""
    return _seconds(text, zero=False)


def seconds_or_zero(text: str) -> float:
    """argparse type: finite seconds, 0 or more, at most a day."""
    return _seconds(text, zero=True)
