"""The policy cache against real ownership (root gives files to `nobody`): an entry, or the
directory holding it, that belongs to another user is never trusted."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from op25b_ctl.policy import cache
from op25b_ctl.policy.loader import policy_digest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user"),
]

EXAMPLE = Path(__file__).resolve().parents[2] / "policies" / "nmtnet"
NOBODY = 65534


def test_an_entry_written_by_another_user_is_ignored(tmp_path: Path) -> None:
    policy_dir = tmp_path / "policy"
    shutil.copytree(EXAMPLE, policy_dir)
    where = tmp_path / "cache"
    good = cache.load(policy_dir, where)
    entry = cache.entry_path(policy_dir, where)
    digest = policy_digest(policy_dir)
    assert cache.lookup(policy_dir, digest, where) is not None  # ours: a hit

    os.chown(entry, NOBODY, NOBODY)  # sealed, right digest, right mode, wrong owner
    assert cache.lookup(policy_dir, digest, where) is None
    assert cache.load(policy_dir, where) == good  # read from the files again

    os.chown(entry, 0, 0)
    os.chown(where, NOBODY, NOBODY)  # our file in a directory someone else controls
    assert cache.lookup(policy_dir, digest, where) is None
