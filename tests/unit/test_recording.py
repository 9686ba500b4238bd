"""The exit-status contract on a full disk, without a kernel: refused before anything is
touched (exit 1) when the state filesystem is full, and exit 3 for every failure after the
commit, including the expired overrides a tick clears. (Real ENOSPC: tests/reliability/
test_bad_input.py, kind `disk`, and test_full_disk.py.)"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from op25b_ctl.errors import NotRecordedError, StateError
from op25b_ctl.kernel.memory import MemoryKernel
from op25b_ctl.ops import operate
from op25b_ctl.policy.loader import load_policy
from op25b_ctl.source.directory import DirectorySource
from op25b_ctl.source.state import MIN_FREE_BYTES, StateDir
from tests.daemonpolicy import EAST1, daemon_policy

NOW = datetime(2011, 1, 31, 9, 0, tzinfo=UTC)


class _Statvfs:
    """What os.statvfs says about a filesystem with `free` bytes and `inodes` inodes left."""

    def __init__(self, free: int, inodes: int = 1000) -> None:
        self.f_frsize = 4096
        self.f_blocks = 1 << 20
        self.f_bfree = self.f_bavail = free // 4096
        self.f_files = 1 << 16
        self.f_ffree = self.f_favail = inodes


def _fs(monkeypatch: pytest.MonkeyPatch, free: int, inodes: int = 1000) -> None:
    monkeypatch.setattr(os, "statvfs", lambda path: _Statvfs(free, inodes))


def test_a_full_state_filesystem_refuses_before_anything_is_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = MemoryKernel()
    policy_dir = daemon_policy(tmp_path / "p")
    policy = load_policy(policy_dir)
    state = StateDir(tmp_path / "state")
    source = DirectorySource(policy_dir, state.path)
    operate.apply_all(kernel, policy, source, state, NOW, ["apply"])
    before, log = dict(kernel.tables), state.audit_file.read_bytes()
    for free, inodes, why in ((4096, 1000, "4096 bytes free"), (1 << 30, 0, "no free inodes")):
        _fs(monkeypatch, free, inodes)
        with pytest.raises(StateError, match=f"state directory {state.path} \\({why}"):
            operate.set_override(
                kernel,
                policy,
                source,
                state,
                NOW,
                ["pool"],
                pool=EAST1,
                action="rollback",
                reason="INC-1",
            )
        with pytest.raises(StateError, match="nothing changed"):
            operate.tick(kernel, policy, source, state, NOW, ["tick"])
        assert kernel.tables == before and state.overrides() == {}
        assert state.audit_file.read_bytes() == log
    _fs(monkeypatch, MIN_FREE_BYTES + (64 << 10))
    operate.set_override(
        kernel, policy, source, state, NOW, ["pool"], pool=EAST1, action="rollback", reason="x"
    )
    assert EAST1 in state.overrides()


def test_clearing_expired_overrides_after_the_commit_is_not_recorded_exit_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = MemoryKernel()
    policy_dir = daemon_policy(tmp_path / "p")
    policy = load_policy(policy_dir)
    state = StateDir(tmp_path / "state")
    source = DirectorySource(policy_dir, state.path)
    operate.set_override(
        kernel,
        policy,
        source,
        state,
        NOW,
        ["pool"],
        pool=EAST1,
        action="rollback",
        reason="INC-1",
        until=NOW + timedelta(hours=1),
    )

    def full(self: StateDir, overrides: dict[str, Any]) -> None:
        raise StateError(f"cannot write {self.overrides_file}: no space left on device")

    monkeypatch.setattr(StateDir, "save_overrides", full)
    with pytest.raises(NotRecordedError, match="WAS changed .*no space left on device"):
        operate.tick(kernel, policy, source, state, NOW + timedelta(hours=2), ["tick"])
