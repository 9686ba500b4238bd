"""The reliability report itself: rows become a table; a failed case is visible at the top."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.reliability.conftest import Recorder
from tests.reliability.report import render


def test_rows_render_as_one_table_per_section_with_failures_named() -> None:
    rec = Recorder("bad input", "t::a")
    rec("alias bomb", done="399-byte YAML", expected="exit 2", observed="exit 2 | 0.01 s")
    rec("disk full", done="ENOSPC", expected="exit 1", observed="exit 0", section="fault")
    rec.rows[0].outcome, rec.rows[1].outcome = "passed", "failed"
    doc = render(rec.rows, seconds=3.0, exit_status=1, started=datetime(2026, 1, 1, tzinfo=UTC))
    assert "## Bad-input corpus" in doc and "## Fault tests" in doc
    assert "| 1 | alias bomb | 399-byte YAML | exit 2 | exit 2 \\| 0.01 s |  | passed |" in doc
    assert "**Failed cases:** disk full" in doc
    assert "2 cases (1 passed, 1 failed, 0 skipped)" not in doc  # counted as "cases: 2 (...)"
    assert "cases: 2 (1 passed, 1 failed, 0 skipped)" in doc
