"""report.md and PNG plots from loadgen JSON lines: medians of reps, ratios, machine facts."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.machine import facts
from bench.plots import latency_plot, throughput_plot
from bench.stats import Aggregate, aggregate, ratio

METHOD = (
    "Closed loop: C concurrent requests, each worker sends its next request when the last one "
    "ends. Each run discards a warm-up, then req/s = successes completed inside the measured "
    "window / window length; p50/p90/p99 are nearest-rank over those successes. Requests still "
    "in flight at the end are awaited and not counted. Reps are interleaved across concurrency "
    "levels; tables give the median over reps (req/s with min..max of the reps). 'client cpu' "
    "is the share of one core the load generator used: near 100% it, not the server, limits."
)


def load_rows(paths: Iterable[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def fmt_rate(v: float) -> str:
    if math.isnan(v):
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def fmt_ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.3g}" if v < 1000 else f"{v:.0f}"


def fmt_ratio(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}x"


def _percent(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.0%}"


def _errors(c: Aggregate) -> str:
    if not c.error_count:
        return "0"
    return f"{c.error_count} (" + ", ".join(f"{k} {n}" for k, n in c.errors.items()) + ")"


def label_tables(cells: Sequence[Aggregate]) -> list[str]:
    out: list[str] = []
    for label in dict.fromkeys(c.label for c in cells):
        out += [f"### {label}", "",
                "| c | req/s (min..max) | p50 ms | p90 ms | p99 ms | max ms | errors | reps "
                "| client cpu |", "|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
        for c in (c for c in cells if c.label == label):
            out.append(f"| {c.concurrency} | {fmt_rate(c.rps)} ({fmt_rate(c.rps_min)}.."
                       f"{fmt_rate(c.rps_max)}) | {fmt_ms(c.p50_ms)} | {fmt_ms(c.p90_ms)} | "
                       f"{fmt_ms(c.p99_ms)} | {fmt_ms(c.max_ms)} | {_errors(c)} | {c.reps} | "
                       f"{_percent(c.client_cpu)} |")
        out.append("")
    return out


def overview_table(cells: Sequence[Aggregate]) -> list[str]:
    labels = list(dict.fromkeys(c.label for c in cells))
    rps = {(c.label, c.concurrency): c.rps for c in cells}
    out = ["| c | " + " | ".join(labels) + " |", "|---:|" + "---:|" * len(labels)]
    for conc in sorted({c.concurrency for c in cells}):
        row = [fmt_rate(rps.get((label, conc), math.nan)) for label in labels]
        out.append(f"| {conc} | " + " | ".join(row) + " |")
    return [*out, ""]


def ratio_table(cells: Sequence[Aggregate], num: str, den: str) -> list[str]:
    a = {c.concurrency: c for c in cells if c.label == num}
    b = {c.concurrency: c for c in cells if c.label == den}
    if not a or not b:
        missing = num if not a else den
        return [f"### {num} / {den}", "", f"No rows labelled {missing!r}.", ""]
    out = [f"### {num} / {den}", "",
           f"| c | {num} req/s | {den} req/s | req/s ratio | p50 ratio | p99 ratio |",
           "|---:|---:|---:|---:|---:|---:|"]
    for conc in sorted(a.keys() & b.keys()):
        x, y = a[conc], b[conc]
        out.append(f"| {conc} | {fmt_rate(x.rps)} | {fmt_rate(y.rps)} | "
                   f"{fmt_ratio(ratio(x.rps, y.rps))} | {fmt_ratio(ratio(x.p50_ms, y.p50_ms))} | "
                   f"{fmt_ratio(ratio(x.p99_ms, y.p99_ms))} |")
    return [*out, "", "Ratios of medians; a latency ratio below 1 means the first is faster.", ""]


def render(rows: Sequence[dict[str, Any]], ratios: Sequence[tuple[str, str]], setup: str,
           machine: dict[str, str], plots: Sequence[str], title: str) -> str:
    cells = aggregate(rows)
    clients = sorted({str(r.get("client", "?")) for r in rows})
    started = sorted(str(r["started_at"]) for r in rows if "started_at" in r)
    span = f"{started[0]} .. {started[-1]}" if started else "unknown"
    loads = [float(r["load_1m"]) for r in rows if "load_1m" in r]
    load = f"{min(loads):.2f}..{max(loads):.2f}" if loads else "not recorded"
    lines = [f"# {title}", "", "## Setup", "", setup.strip() or "(not given)", "",
             "## Machine", "", "| item | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in machine.items()]
    lines += ["", "Machine facts are read when the report is written; runs span "
              f"{span} (UTC), clients: {', '.join(clients)}; 1-minute load average at run "
              f"starts {load} (it counts this benchmark's own server and client; well above "
              "their ~1.5, something else shared the cores).", "", "## Method", "", METHOD, ""]
    if ratios:
        lines += ["## Ratios", ""]
        for num, den in ratios:
            lines += ratio_table(cells, num, den)
    lines += ["## Throughput overview (req/s, median of reps)", "", *overview_table(cells)]
    lines += ["## Per label", "", *label_tables(cells)]
    lines += ["## Plots", "", *(f"![{p}]({p})" for p in plots), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    p.add_argument("results", nargs="+", type=Path, help="JSON lines from bench.loadgen")
    p.add_argument("--out", type=Path, required=True, help="report directory")
    p.add_argument("--ratio", nargs=2, action="append", default=[], metavar=("LABEL", "BASE"),
                   help="add a LABEL/BASE comparison table (repeatable)")
    p.add_argument("--setup", default="", help="free text: servers, configs, pinning")
    p.add_argument("--setup-file", type=Path, help="read the setup text from this file")
    p.add_argument("--title", default="Benchmark report")
    args = p.parse_args(argv)
    rows = load_rows(args.results)
    if not rows:
        p.error("no result rows in the given files")
    setup = args.setup_file.read_text() if args.setup_file else args.setup
    args.out.mkdir(parents=True, exist_ok=True)
    cells = aggregate(rows)
    plots = [throughput_plot(cells, args.out / "throughput.png").name,
             latency_plot(cells, args.out / "latency.png").name]
    text = render(rows, [tuple(r) for r in args.ratio], setup, facts(), plots, args.title)
    (args.out / "report.md").write_text(text)
    print(args.out / "report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
