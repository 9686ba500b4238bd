"""Log routing: journal fields on the daemon's records, journald detection, the stderr form."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from op25b_ctl.daemon import journal
from op25b_ctl.daemon.loop import Daemon
from op25b_ctl.daemon.reconcile import Reconciler
from op25b_ctl.kernel.memory import MemoryKernel
from op25b_ctl.source.directory import DirectorySource
from tests.daemonpolicy import EAST1, EAST2, daemon_policy, set_mode
from tests.unit.test_daemon import NOW


def f(record: logging.LogRecord, name: str) -> str:
    """A journal field the log call attached (`extra=`)."""
    value = getattr(record, name)
    assert isinstance(value, str)
    return value


def stream_id(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def test_journald_is_detected_only_for_the_stream_systemd_named(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    with a.open("w") as fa, b.open("w") as fb:
        env = {"JOURNAL_STREAM": stream_id(a)}
        assert journal.under_journald(fa, env)
        assert not journal.under_journald(fb, env)  # stderr redirected elsewhere: not journald
        assert not journal.under_journald(fa, {})
        assert not journal.under_journald(fa, {"JOURNAL_STREAM": "garbage"})


def test_handler_is_the_journal_under_journald_else_stderr_lines(tmp_path: Path) -> None:
    pytest.importorskip("systemd.journal", reason="needs python3-systemd (scripts/bootstrap)")
    from systemd.journal import JournalHandler

    path = tmp_path / "stderr"
    with path.open("w") as fh:
        assert isinstance(journal.handler(fh, {"JOURNAL_STREAM": stream_id(path)}), JournalHandler)
        text = journal.handler(fh, {})
        assert not isinstance(text, JournalHandler)
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "pool %s", ("p",), None)
        record.__dict__.update(journal.fields(pool="p", mode="enforce", reason="stage s1"))
        line = text.format(record)
        assert line.endswith("INFO pool p [pool=p mode=enforce reason=stage s1]")


def test_daemon_logs_each_pools_mode_with_fields(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy = daemon_policy(tmp_path / "p")
    rec = Reconciler(MemoryKernel(), DirectorySource(policy), clock=lambda: NOW)
    daemon = Daemon(rec, interval=0.01)
    caplog.set_level(logging.INFO)

    daemon.step()  # start-up: every dynamic pool's mode, once
    pools = {f(r, "POOL"): r for r in caplog.records if hasattr(r, "POOL")}
    assert f(pools[EAST1], "MODE") == "enforce" and f(pools[EAST2], "MODE") == "monitor"
    revision = f(pools[EAST1], "REVISION")
    assert revision == rec.digest and len(revision) == 16
    assert all(f(r, "REASON") for r in pools.values())
    commit = [r for r in caplog.records if "committed" in r.getMessage()]
    assert commit and f(commit[0], "REVISION") == revision

    caplog.clear()
    daemon.step()  # nothing changed: nothing logged per pool
    assert not [r for r in caplog.records if hasattr(r, "POOL")]

    set_mode(policy, EAST2, "enforce")
    daemon.request_reload()  # what the file watch or SIGHUP does
    daemon.step()
    changed = [r for r in caplog.records if hasattr(r, "POOL")]
    assert [(f(r, "POOL"), f(r, "MODE")) for r in changed] == [(EAST2, "enforce")]
    assert f(changed[0], "REVISION") != revision  # the policy files changed
