"""PNG plots of aggregated load results: throughput and latency percentiles against concurrency."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

# Figure without pyplot: no global state and no GUI backend, so it works headless (Agg).
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bench.stats import Aggregate


def _by_label(cells: Sequence[Aggregate]) -> dict[str, list[Aggregate]]:
    out: dict[str, list[Aggregate]] = {}
    for c in cells:
        out.setdefault(c.label, []).append(c)
    return out


def _log2_x(ax: Axes, levels: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels)
    ax.set_xticklabels([str(c) for c in levels])
    ax.set_xlabel("concurrency (requests in flight)")
    ax.grid(True, which="major", alpha=0.3)


def throughput_plot(cells: Sequence[Aggregate], path: Path) -> Path:
    """One line per label: median req/s, bars from the slowest to the fastest rep."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    levels = sorted({c.concurrency for c in cells})
    for label, rows in _by_label(cells).items():
        x = [r.concurrency for r in rows]
        y = [r.rps for r in rows]
        spread = [[r.rps - r.rps_min for r in rows], [r.rps_max - r.rps for r in rows]]
        ax.errorbar(x, y, yerr=spread, marker="o", capsize=3, label=label)
    _log2_x(ax, levels)
    ax.set_ylabel("successful requests / s (median of reps)")
    ax.set_ylim(bottom=0)
    ax.set_title("Throughput vs concurrency")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return path


def latency_plot(cells: Sequence[Aggregate], path: Path) -> Path:
    """One panel per label: p50/p90/p99 latency (median of reps), log scales."""
    groups = _by_label(cells)
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig = Figure(figsize=(5 * ncols, 3.8 * nrows), layout="constrained")
    levels = sorted({c.concurrency for c in cells})
    for i, (label, rows) in enumerate(groups.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        x = [r.concurrency for r in rows]
        for name, style in (("p50_ms", "o-"), ("p90_ms", "s--"), ("p99_ms", "^:")):
            ax.plot(x, [getattr(r, name) for r in rows], style, label=name.removesuffix("_ms"))
        _log2_x(ax, levels)
        ax.set_yscale("log")
        ax.set_ylabel("latency ms")
        ax.set_title(label, fontsize="medium")
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return path
