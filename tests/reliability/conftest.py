"""Reliability tests: every case records a row for docs/reliability.md.

A test asks for the `record` fixture and calls it once per case it checks:

    record("overrides.json truncated", done="cut the file mid-object",
           expected="daemon keeps enforcing, error metric 1", observed="...", figure="0.4 s")

The row gets the test's outcome (passed/failed/skipped) when the test ends. Rows are appended
as JSON lines to `$OP25B_RELIABILITY_ROWS` when it is set (`make reliability` sets it, then
renders the table with `python -m tests.reliability.report`); otherwise they are dropped, so
the same tests run in `make test` without writing anything.

Tests marked `slow` (long fault and churn runs) are skipped unless `$OP25B_RELIABILITY_ROWS`
is set or `--run-slow` is given: `make test` stays fast, `make reliability` runs everything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

ROWS_ENV = "OP25B_RELIABILITY_ROWS"


@dataclass
class Row:
    section: str  # the table it belongs to: "bad input", "fault", "property", "churn", ...
    case: str  # short name of the case
    done: str  # what was done to the system
    expected: str  # what must happen
    observed: str  # what did happen (filled in by the test, from real observations)
    figure: str = ""  # a measured number, if the case has one (time, count, bytes)
    test: str = ""  # pytest node id, to find the code
    outcome: str = ""  # passed | failed | skipped, set when the test ends


class Recorder:
    """Collects the rows of one test; `section` defaults to the module's SECTION."""

    def __init__(self, section: str, test: str) -> None:
        self.section = section
        self.test = test
        self.rows: list[Row] = []

    def __call__(
        self,
        case: str,
        *,
        done: str,
        expected: str,
        observed: str,
        figure: str = "",
        section: str | None = None,
    ) -> Row:
        row = Row(section or self.section, case, done, expected, observed, figure, self.test)
        self.rows.append(row)
        return row


_ROWS = pytest.StashKey[Recorder]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="run the slow reliability tests (make reliability does)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: long fault/churn test, run by `make reliability` (or --run-slow)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow") or os.environ.get(ROWS_ENV):
        return
    skip = pytest.mark.skip(reason="slow: run by `make reliability` (or pytest --run-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Recorder:
    """Record reliability rows for docs/reliability.md (see the module docstring)."""
    section = str(getattr(request.module, "SECTION", request.module.__name__.rsplit(".", 1)[-1]))
    rec = Recorder(section, request.node.nodeid)
    request.node.stash[_ROWS] = rec
    return rec


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    rec = item.stash.get(_ROWS, None)
    if rec is None or report.when != "call":
        return
    for row in rec.rows:
        row.outcome = report.outcome
    _write(rec.rows)


def _write(rows: list[Row]) -> None:
    path = os.environ.get(ROWS_ENV)
    if not path:
        return
    with Path(path).open("a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
