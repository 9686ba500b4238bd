"""Helpers for the discovery tests: a policy with a discovery section, served items, a
quiet event source (the watcher's seam; no netlink)."""

from __future__ import annotations

import dataclasses
from typing import Any

from op25b_ctl.plan.coverage import Served
from op25b_ctl.policy.discovery import Discovery
from op25b_ctl.policy.model import Policy, parse_net


def with_discovery(policy: Policy, **section: Any) -> Policy:
    """`policy` with a discovery section (default: ppp* interfaces)."""
    found = Discovery.model_validate(section or {"interfaces": ["ppp*"]})
    return dataclasses.replace(
        policy, gateway=policy.gateway.model_copy(update={"discovery": found})
    )


def served(prefix: str, origin: str = "ppp0 peer") -> Served:
    return Served(parse_net(prefix), origin)


class FakeEvents:
    """An event source the test feeds: `pending` messages, `overflow` once."""

    def __init__(self) -> None:
        self.pending = 0
        self.overflow = False
        self.closed = False

    def fileno(self) -> int:
        raise OSError("a fake has no descriptor (tests call step(block=False))")

    def drain(self) -> tuple[int, bool]:
        out = (self.pending, self.overflow)
        self.pending, self.overflow = 0, False
        return out

    def close(self) -> None:
        self.closed = True


def fake_events(section: Discovery) -> FakeEvents:
    return FakeEvents()
