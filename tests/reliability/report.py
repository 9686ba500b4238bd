"""`make reliability`: run tests/reliability/ (slow cases included) and write docs/reliability.md.

    python -m tests.reliability.report [-k EXPR] [--out docs/reliability.md]

Each test records rows (see conftest.py); this runs pytest with `$OP25B_RELIABILITY_ROWS`
pointing at a fresh file, then renders one table per section, in the order the sections
first appear, with the machine it ran on and how long it took. The document is written even
when a case fails (its row says so) and the exit status is pytest's, so a red case is seen.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from tests.reliability.conftest import ROWS_ENV, Row

REPO = Path(__file__).resolve().parents[2]
SECTION_TITLES = {
    "bad input": "Bad-input corpus",
    "property": "Property-based tests (hypothesis)",
    "fault": "Fault tests",
    "kernel fault": "Kernel fault tests",
    "churn": "Churn",
}


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _tool(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "absent"
    return (out.stdout or out.stderr).strip().splitlines()[0] if out.stdout or out.stderr else "?"


def render(rows: list[Row], *, seconds: float, exit_status: int, started: datetime) -> str:
    sections: dict[str, list[Row]] = {}
    for row in rows:
        sections.setdefault(row.section, []).append(row)
    passed = sum(r.outcome == "passed" for r in rows)
    failed = [r for r in rows if r.outcome == "failed"]
    lines = [
        "# Reliability: hostile input, faults and churn",
        "",
        "Written by `make reliability` (root; runs `tests/reliability/` in throw-away network",
        "namespaces, slow cases included). Do not edit by hand: change the tests and run it again.",
        "Each row is one case a test checked against the real program (and, where the case",
        "touches the kernel, a real nftables table in a namespace); *observed* is what the test",
        "saw, not what was hoped for.",
        "",
        f"- run: {started.isoformat(timespec='seconds')}, {seconds:.0f} s, pytest exit status "
        f"{exit_status}",
        f"- machine: {platform.node()}, Linux {platform.release()}, {os.cpu_count()} cores, "
        f"{_tool(['nft', '--version'])}, Python {platform.python_version()}",
        f"- cases: {len(rows)} ({passed} passed, {len(failed)} failed, "
        f"{sum(r.outcome == 'skipped' for r in rows)} skipped)",
        "",
    ]
    if failed:
        lines += ["**Failed cases:** " + "; ".join(_cell(r.case) for r in failed), ""]
    for section, items in sections.items():
        lines += [
            f"## {SECTION_TITLES.get(section, section[:1].upper() + section[1:])}",
            "",
            "| # | case | what was done | expected | observed | figure | result |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for i, r in enumerate(items, 1):
            lines.append(
                f"| {i} | {_cell(r.case)} | {_cell(r.done)} | {_cell(r.expected)} | "
                f"{_cell(r.observed)} | {_cell(r.figure)} | {r.outcome or '?'} |"
            )
        lines.append("")
    return "\n".join(lines)


def read_rows(path: Path) -> list[Row]:
    if not path.exists():
        return []
    return [Row(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make reliability", description=__doc__.split("\n")[0])
    parser.add_argument("-k", metavar="EXPR", help="only tests matching EXPR (pytest -k)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "reliability.md")
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="op25b-reliability-") as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "tests/reliability",
            "--run-slow",
            "-p",
            "no:cacheprovider",
        ]
        if args.k:
            cmd += ["-k", args.k]
        t0 = time.monotonic()
        status = subprocess.run(
            cmd, cwd=REPO, env={**os.environ, ROWS_ENV: str(rows_file)}, check=False
        ).returncode
        rows = read_rows(rows_file)
    doc = render(rows, seconds=time.monotonic() - t0, exit_status=status, started=started)
    args.out.write_text(doc + "\n")
    print(f"wrote {args.out} ({len(rows)} cases, pytest exit status {status})")
    return status


if __name__ == "__main__":
    sys.exit(main())
