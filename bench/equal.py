"""Comparisons on equal terms: interleaved order, failure checks, per-rep ratios, headline table.

Pure functions over plain rows (the JSON lines of results.jsonl), so the method is unit-tested
without starting a server: `bench.run` measures, this module decides what the rows say.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from bench.stats import ratio

T = TypeVar("T")


def interleaved(members: Sequence[T], reps: int) -> list[tuple[int, int, T]]:
    """(rep, position, member) in run order: every rep runs each member once, and the order
    is reversed on every other rep (rep 0: a, b, c; rep 1: c, b, a; rep 2: a, b, c ...), so
    neither server always runs first, on a box that was just quiet or just busy."""
    if reps < 1:
        raise ValueError(f"reps must be at least 1, got {reps}")
    order: list[tuple[int, int, T]] = []
    for rep in range(reps):
        members_now = list(members) if rep % 2 == 0 else list(reversed(members))
        order += [(rep, position, m) for position, m in enumerate(members_now)]
    return order


def row_failure(row: Mapping[str, Any]) -> str | None:
    """Why a measured row does not count (None: it does): errors or non-2xx answers, or no
    successful request at all."""
    errors = int(row.get("error_count", 0))
    if errors:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(dict(row.get("errors", {})).items()))
        return f"{errors} failed request(s) ({kinds})"
    if int(row.get("ok", 0)) == 0:
        return "no request succeeded in the window"
    return None


@dataclass
class Spread:
    """Median of the reps with their min and max; `values` in rep order."""

    median: float
    low: float
    high: float
    values: list[float]

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        real = [v for v in values if not math.isnan(v)]
        if not real:
            return cls(math.nan, math.nan, math.nan, [])
        return cls(statistics.median(real), min(real), max(real), real)

    def text(self, digits: int = 0, unit: str = "") -> str:
        if math.isnan(self.median):
            return "-"
        if len(self.values) == 1:
            return f"{self.median:,.{digits}f}{unit}"
        return (f"{self.median:,.{digits}f}{unit} ({self.low:,.{digits}f}.."
                f"{self.high:,.{digits}f})")


def by_rep(rows: Iterable[Mapping[str, Any]], label: str, concurrency: int,
           field: str = "rps") -> dict[int, float]:
    """`field` of each rep of one (label, concurrency) cell."""
    return {int(r["rep"]): float(r[field]) for r in rows
            if r["label"] == label and int(r["concurrency"]) == concurrency}


@dataclass
class PairCell:
    """One row of the headline table: two labels at one concurrency, rep by rep."""

    ours: str
    theirs: str
    concurrency: int
    ours_rps: Spread
    theirs_rps: Spread
    ours_p99: Spread
    theirs_p99: Spread
    rep_ratios: Spread  # ours/theirs req/s of the same rep (the two ran back to back)

    @property
    def ratio_of_medians(self) -> float:
        return ratio(self.ours_rps.median, self.theirs_rps.median)


def pair_cell(rows: Sequence[Mapping[str, Any]], ours: str, theirs: str,
              concurrency: int) -> PairCell | None:
    a, b = by_rep(rows, ours, concurrency), by_rep(rows, theirs, concurrency)
    if not a or not b:
        return None
    a99, b99 = by_rep(rows, ours, concurrency, "p99_ms"), by_rep(rows, theirs, concurrency,
                                                                "p99_ms")
    shared = sorted(a.keys() & b.keys())
    return PairCell(ours, theirs, concurrency, Spread.of(a.values()), Spread.of(b.values()),
                    Spread.of(a99.values()), Spread.of(b99.values()),
                    Spread.of(ratio(a[rep], b[rep]) for rep in shared))


@dataclass(frozen=True)
class Pair:
    """A headline comparison: `ours` against `theirs`; `note` says when it is not on equal
    terms (a feature only this server has)."""

    title: str
    ours: str
    theirs: str
    note: str = ""


def headline_table(rows: Sequence[Mapping[str, Any]], pairs: Sequence[Pair],
                   levels: Sequence[int]) -> list[str]:
    """Markdown: served req/s and p99 of both servers, the ratio of medians, and the per-rep
    ratios (min..max) of runs that ran back to back."""
    out = ["| scenario | c | this server req/s | TorchServe req/s | ratio (median) | "
           "per-rep ratios | p99 ms this server | p99 ms TorchServe |",
           "|---|---:|---:|---:|---:|---|---:|---:|"]
    for pair in pairs:
        for c in levels:
            cell = pair_cell(rows, pair.ours, pair.theirs, c)
            if cell is None:
                continue
            per_rep = ", ".join(f"{v:.2f}" for v in cell.rep_ratios.values) or "-"
            ratio_text = "-" if math.isnan(cell.ratio_of_medians) else \
                f"{cell.ratio_of_medians:.2f}x"
            out.append(f"| {pair.title}{' ' + pair.note if pair.note else ''} | {c} | "
                       f"{cell.ours_rps.text()} | {cell.theirs_rps.text()} | {ratio_text} | "
                       f"{per_rep} | {cell.ours_p99.text(1)} | {cell.theirs_p99.text(1)} |")
    return [*out, ""]
