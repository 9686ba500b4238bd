"""Medians, ratios against same-run baselines, PASS/MISS, and the Markdown report. Pure."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

# How a figure is judged:
#   slower   ours / baseline, lower is better   (<= target)
#   faster   baseline / ours, higher is better  (>= target)
#   rate     ours / baseline for rates           (>= target)
#   ceiling  ours alone                          (<= target)
Sense = Literal["slower", "faster", "rate", "ceiling"]


def median(xs: Sequence[float]) -> float:
    if not xs:
        raise ValueError("no samples")
    return float(statistics.median(xs))


@dataclass(frozen=True)
class Figure:
    key: str
    what: str
    ours: float
    baseline: float | None
    baseline_what: str
    sense: Sense
    target: float
    unit: str  # "s", "/s" or "MiB"
    runs: str  # e.g. "5 / 5" (ours / baseline samples)
    # For interleaved samples: the median of per-round ratios, which cancels drift that
    # hits both sides of a round alike (used instead of the ratio of the two medians).
    paired: float | None = None

    @property
    def ratio(self) -> float:
        if self.paired is not None:
            return self.paired
        match self.sense:
            case "slower" | "rate":
                assert self.baseline is not None
                return self.ours / self.baseline
            case "faster":
                assert self.baseline is not None
                return self.baseline / self.ours
            case "ceiling":
                return self.ours / self.target

    @property
    def passed(self) -> bool:
        if self.sense == "ceiling":
            return self.ours <= self.target
        if self.sense == "slower":
            return self.ratio <= self.target
        return self.ratio >= self.target

    @property
    def target_text(self) -> str:
        match self.sense:
            case "slower":
                return f"<= {self.target:g}x"
            case "faster":
                return f">= {self.target:g}x faster"
            case "rate":
                return f">= {self.target:g}x"
            case "ceiling":
                return f"<= {self.target:g} {self.unit}"

    @property
    def ratio_text(self) -> str:
        if self.sense == "ceiling":
            return "-"
        return f"{self.ratio:.2f}x" if self.ratio < 10 else f"{self.ratio:.0f}x"

    @property
    def shortfall(self) -> str:
        """By how much a MISS misses, in words."""
        if self.passed:
            return ""
        if self.sense == "ceiling":
            return f"{self.ours_text} is {self.ratio:.2f}x the target"
        if self.sense == "slower":
            return f"{self.ratio_text} is {self.ratio / self.target:.2f}x the target"
        return f"{self.ratio:.3f}x reaches {self.ratio / self.target:.1%} of the {self.target:g}x target"

    @property
    def ours_text(self) -> str:
        return fmt(self.ours, self.unit)

    @property
    def baseline_text(self) -> str:
        if self.baseline is None:
            return "-"
        return f"{fmt(self.baseline, self.unit)} ({self.baseline_what})"


def fmt(value: float, unit: str) -> str:
    if unit == "s":
        if value < 0.01:
            return f"{value * 1000:.2f} ms"
        if value < 1:
            return f"{value * 1000:.0f} ms"
        return f"{value:.2f} s"
    if unit == "/s":
        return f"{value:,.0f}/s"
    return f"{value:.0f} {unit}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def figures_table(figs: Sequence[Figure]) -> list[str]:
    return table(
        ("figure", "op25b-ctl", "baseline (same run)", "ratio", "target", "result", "runs"),
        [
            (
                f.what,
                f.ours_text,
                f.baseline_text,
                f.ratio_text,
                f.target_text,
                "PASS" if f.passed else "**MISS**",
                f.runs,
            )
            for f in figs
        ],
    )


def plain(lines: Sequence[str]) -> str:
    """Markdown as printed on a terminal: the same text, bold markers dropped."""
    return "\n".join(line.replace("**", "") for line in lines)
