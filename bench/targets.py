"""The serving targets of the benchmark issue, checked against one run's medians."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bench.stats import Aggregate, ratio


def _cell(cells: Sequence[Aggregate], label: str, concurrency: int) -> Aggregate | None:
    for c in cells:
        if c.label == label and c.concurrency == concurrency:
            return c
    return None


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def _vs_torchserve(cells: Sequence[Aggregate], ours: str, theirs: str, c: int
                   ) -> list[str]:
    rows = []
    for suffix in ("", " (wrk)"):
        x, y = _cell(cells, ours + suffix, c), _cell(cells, theirs + suffix, c)
        if x is None or y is None:
            continue
        tput, p99 = ratio(x.rps, y.rps), ratio(x.p99_ms, y.p99_ms)
        client = "wrk" if suffix else "aiohttp"
        rows.append(f"| {ours} vs {theirs}, c={c}, {client}: throughput ≥ 3x | "
                    f"{x.rps:.0f} vs {y.rps:.0f} req/s = {_fmt(tput)}x | "
                    f"{_verdict(None if math.isnan(tput) else tput >= 3)} |")
        rows.append(f"| same, p99 ≤ 1/3 | {x.p99_ms:.1f} vs {y.p99_ms:.1f} ms = "
                    f"{_fmt(p99)} | {_verdict(None if math.isnan(p99) else p99 <= 1 / 3)} |")
    return rows


def _vs_inproc(cells: Sequence[Aggregate], inproc: Sequence[dict[str, Any]], model: str,
               batch: int, c: int, goal: float | None) -> list[str]:
    served = _cell(cells, f"serving {model} b{batch}", c)
    limit = next((r for r in inproc if r["label"] == f"in-process {model} b{batch}"), None)
    if served is None or limit is None:
        return []
    share = ratio(served.rps, float(limit["items_per_s"]))
    verdict = _verdict(None if goal is None or math.isnan(share) else share >= goal)
    goal_text = f" ≥ {goal:.0%}" if goal else " (for reference)"
    return [f"| served {model} b{batch} at c={c} / in-process b{batch}{goal_text} | "
            f"{served.rps:.2f} / {limit['items_per_s']:.2f} = {_fmt(share * 100, 1)}% | "
            f"{verdict} |"]


def targets_section(cells: Sequence[Aggregate], inproc: Sequence[dict[str, Any]],
                    hops: dict[str, Any] | None, servers: Sequence[dict[str, Any]]) -> str:
    lines = ["## Targets", "", "| target | measured (medians of this run) | verdict |",
             "|---|---|---|"]
    lines += _vs_torchserve(cells, "serving noop b1", "torchserve noop b1", 16)
    lines += _vs_torchserve(cells, "serving noop b8", "torchserve noop b8", 16)
    lines += _vs_inproc(cells, inproc, "resnet50", 8, 16, 0.95)
    lines += _vs_inproc(cells, inproc, "resnet50", 1, 16, None)
    lines += _vs_inproc(cells, inproc, "minilm", 8, 64, None)
    lines += _vs_inproc(cells, inproc, "minilm", 1, 16, None)
    if hops:
        for name, h in hops.items():
            lines.append(f"| gateway→worker→gateway hop, empty request, {name}: median "
                         f"< 200 µs | median {h['median_us']:.0f} µs, p99 {h['p99_us']:.0f} µs"
                         f" | {_verdict(h['median_us'] < 200)} |")
    lines += ["", "### In-process limit (no server; CPU 0, in the worker's environment)", "",
              "Not a served figure: the archive's handler called in a loop (bench/inproc.py), "
              "with the threads and denormal flushing this server gives a worker on CPU 0.", "",
              "| label | items/s (median of windows) | min..max | ms per call | threads | "
              "flush denormal | bodies |", "|---|---:|---:|---:|---:|---|---:|"]
    for r in inproc:
        lines.append(f"| {r['label']} | {r['items_per_s']:.2f} | {r['items_per_s_min']:.2f}.."
                     f"{r['items_per_s_max']:.2f} | {r['ms_per_call']:.2f} | "
                     f"{r.get('threads', '?')} | {r.get('flush_denormal', '?')} | "
                     f"{r.get('payloads', 1)} |")
    lines += ["", "### What each server reported it ran", "",
              "| label | start to ready (s) | model settings as described by the server |",
              "|---|---:|---|"]
    for s in servers:
        what = s["described"] if "described" in s else f"FAILED: {s.get('failed')}"
        lines.append(f"| {s['label']} | {s['ready_s']:.1f} | `{what}` |")
    return "\n".join(lines) + "\n"
