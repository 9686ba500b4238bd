"""DirectorySource, the first Source: identities, waiting for a change, overrides, audit."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from op25b_ctl.errors import LockBusy, PolicyError, StateError
from op25b_ctl.policy.overrides import Override
from op25b_ctl.source import audit
from op25b_ctl.source.base import Source
from op25b_ctl.source.directory import DirectorySource
from tests.daemonpolicy import EAST1, EAST2, break_prefix, daemon_policy, set_mode

NOW = datetime(2011, 1, 31, 9, 0, tzinfo=UTC)


@pytest.fixture
def source(tmp_path: Path) -> DirectorySource:
    return DirectorySource(daemon_policy(tmp_path / "policy"), tmp_path / "state")


def test_it_is_a_source(source: DirectorySource) -> None:
    def takes(s: Source) -> Source:  # mypy checks the protocol; this checks it at run time
        return s

    assert takes(source) is source


def test_revision_and_digest_follow_edits_of_policy_and_overrides(
    source: DirectorySource,
) -> None:
    rev, digest = source.revision(), source.digest()
    snap = source.load()
    assert snap.revision == rev and len(snap.digest) == 64
    assert (source.revision(), source.digest()) == (rev, digest)  # stable while untouched
    set_mode(source.policy_dir, EAST2, "enforce")
    rev2, digest2 = source.revision(), source.digest()
    assert rev2 != rev and digest2 != digest
    source.set_override(Override(EAST1, "rollback", "INC-1", "carol", NOW))
    assert source.revision() != rev2 and source.digest() != digest2
    assert source.load().overrides[EAST1].action == "rollback"
    source.clear_override(EAST1)
    assert source.overrides() == {}


def test_wait_returns_when_the_revision_moves(source: DirectorySource) -> None:
    rev = source.revision()
    assert source.wait(rev, timeout=0.01) is False
    editor = threading.Timer(0.05, set_mode, (source.policy_dir, EAST2, "enforce"))
    editor.start()
    try:
        assert source.wait(rev, timeout=10) is True  # well before the timeout
    finally:
        editor.join()
    assert source.wait(rev, timeout=0) is True  # already different: no waiting


def test_an_invalid_policy_is_refused_by_load(source: DirectorySource) -> None:
    break_prefix(source.policy_dir)
    with pytest.raises(PolicyError):
        source.load()


def test_audit_goes_to_the_state_directory(source: DirectorySource) -> None:
    assert source.audit_log() == []
    source.record(audit.Entry(at=NOW, user="carol", command=["op25b-ctl"], action="apply"))
    (entry,) = source.audit_log()
    assert entry["user"] == "carol" and source.audit_location.endswith("audit.jsonl")


def test_without_a_state_directory_nothing_can_be_written(tmp_path: Path) -> None:
    source = DirectorySource(daemon_policy(tmp_path / "policy"))
    assert source.overrides() == {} and source.audit_log() == []
    with source.try_lock("daemon"):  # nothing to interleave with
        pass
    with pytest.raises(StateError, match="no state directory"):
        source.set_override(Override(EAST1, "rollback", "x", "carol", NOW))


def test_try_lock_creates_nothing_and_refuses_a_held_lock(source: DirectorySource) -> None:
    assert source.state is not None
    with source.try_lock("daemon"):
        assert not source.state.path.exists()  # no state yet: no lock taken, none created
    with (
        source.lock("pool rollback", timeout=1),
        pytest.raises(LockBusy),
        source.try_lock("daemon"),
    ):
        pass
