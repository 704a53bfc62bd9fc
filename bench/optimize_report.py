"""The optimisation benchmark's report: speed-ups, accuracy, compile and start-up times."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from bench.machine import facts


def _num(v: Any, digits: int = 2) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _accuracy(row: dict[str, Any]) -> str:
    if "top1_agreement" in row:
        return f"top-1 {row['top1_agreement']:.1%}"
    if "mean_cosine" in row:
        return f"cos mean {row['mean_cosine']:.4f} / min {row['min_cosine']:.4f}"
    return "—"


def _speedup(row: dict[str, Any], base: dict[str, Any], batch: str) -> float:
    try:
        return float(row[batch]["items_per_s"]) / float(base[batch]["items_per_s"])
    except (KeyError, TypeError, ZeroDivisionError):
        return math.nan


def model_table(rows: list[dict[str, Any]]) -> list[str]:
    base = next((r for r in rows if r["variant"] == "fp32 eager"), {})
    out = ["| variant | b1 items/s (x eager) | b8 items/s (x eager) | accuracy vs fp32 | "
           "optimise s (compile s) | served b1 c=1 req/s | served b8 c=16 req/s | "
           "served start to ready s | applied / refused |",
           "|---|---:|---:|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if "failed" in r:
            out.append(f"| {r['variant']} | failed: `{r['failed'][-200:]}` ||||||||")
            continue
        s = r.get("served") or {}
        served_b1 = _num((s.get("b1") or {}).get("req_s"), 1)
        served_b8 = _num((s.get("b8") or {}).get("req_s"), 1)
        notes = ", ".join(r.get("applied") or []) or "—"
        if r.get("refused"):
            notes += "; refused: " + "; ".join(f"{n} ({why[:80]})" for n, why in r["refused"])
        if r.get("chosen"):
            notes += f"; auto chose {r['chosen']}"
        if s.get("failed"):
            notes += f"; served: failed ({s['failed'][-120:]})"
        out.append(
            f"| {r['variant']} | {_num(r['b1']['items_per_s'])} "
            f"({_num(_speedup(r, base, 'b1'))}x) | {_num(r['b8']['items_per_s'])} "
            f"({_num(_speedup(r, base, 'b8'))}x) | {_accuracy(r)} | "
            f"{_num(r.get('optimize_seconds'), 1)} ({_num(r.get('compile_seconds'), 1)}) | "
            f"{served_b1} | {served_b8} | {_num(s.get('ready_s'), 1)} | {notes} |")
    return out


def targets(by_model: dict[str, list[dict[str, Any]]], startup: dict[str, Any] | None
            ) -> list[str]:
    def row(model: str, variant: str) -> dict[str, Any]:
        return next((r for r in by_model.get(model, []) if r["variant"] == variant), {})

    def base(model: str) -> dict[str, Any]:
        return row(model, "fp32 eager")

    lines = ["| target | measured | verdict |", "|---|---|---|"]

    def check(text: str, value: float, goal: float, extra: str = "", ok: bool = True) -> None:
        met = not math.isnan(value) and value >= goal and ok
        lines.append(f"| {text} | {_num(value)}x{extra} | {'met' if met else '**missed**'} |")

    r = row("resnet50", "int8 static")
    if r:
        check("resnet50 INT8 ≥ 2.5x fp32 eager at b8, top-1 ≥ 99%", _speedup(r, base("resnet50"),
              "b8"), 2.5, f", top-1 {r.get('top1_agreement', math.nan):.1%}",
              r.get("top1_agreement", 0) >= 0.99)
    r = row("minilm", "int8 dynamic")
    if r:
        for batch in ("b1", "b8"):
            check(f"minilm INT8 dynamic ≥ 1.8x fp32 eager ({batch}), mean cosine ≥ 0.99",
                  _speedup(r, base("minilm"), batch), 1.8,
                  f", cosine {r.get('mean_cosine', math.nan):.4f}",
                  r.get("mean_cosine", 0) >= 0.99)
    for model in ("resnet50", "minilm"):
        tried = [(_speedup(row(model, v), base(model), "b8"), v)
                 for v in ("bf16 eager", "bf16 compiled") if row(model, v)]
        tried = [t for t in tried if not math.isnan(t[0])]
        if tried:
            best = max(tried)
            check(f"{model} bf16 ≥ 1.5x fp32 eager (b8, best bf16 variant: {best[1]})",
                  best[0], 1.5)
    if startup and "precompiled_ready_s" in startup:
        share = startup["precompiled_ready_s"] / startup["compiling_ready_s"]
        met = share <= 0.2 and bool(startup.get("precompiled_used"))
        lines.append(f"| start to ready with a precompiled package ≤ 1/5 of compiling "
                     f"({startup['archive']}, median of "
                     f"{len(startup.get('precompiled_ready_s_reps', [0]))} cold starts each) | "
                     f"{startup['precompiled_ready_s']:.1f} s vs "
                     f"{startup['compiling_ready_s']:.1f} s = {share:.3f} | "
                     f"{'met' if met else '**missed**'} |")
    return lines


def speedup_plot(by_model: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    for i, (model, rows) in enumerate(by_model.items()):
        ax = fig.add_subplot(1, len(by_model), i + 1)
        base = next((r for r in rows if r["variant"] == "fp32 eager"), {})
        names = [r["variant"] for r in rows if "failed" not in r]
        for j, batch in enumerate(("b1", "b8")):
            values = [_speedup(r, base, batch) for r in rows if "failed" not in r]
            ax.bar([k + 0.4 * j for k in range(len(names))], values, width=0.4, label=batch)
        ax.set_xticks([k + 0.2 for k in range(len(names))])
        ax.set_xticklabels(names, rotation=35, ha="right")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_title(f"{model}: speed-up over fp32 eager (in process, 1 thread)")
        ax.legend()
    fig.savefig(path, dpi=110)
    return path


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def write_report(out: Path) -> Path:
    raw = out / "raw"
    rows = _jsonl(raw / "variants.jsonl")
    served = {(r["model"], r["variant"]): r["served"] for r in _jsonl(raw / "served.jsonl")}
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        model = r["model"].split("-")[0]
        if (model, r["variant"]) in served:
            r["served"] = served[(model, r["variant"])]
        by_model.setdefault(model, []).append(r)
    startup_path = raw / "startup.json"
    startup = json.loads(startup_path.read_text()) if startup_path.exists() else None
    plot = speedup_plot(by_model, out / "speedups.png").name
    lines = ["# Optimisation benchmark: variants of the default models", "", "## Setup", "",
             "In process: the archive's handler called in a loop (pre- and post-processing "
             "included) after the server's own pipeline code (`optimize_handler`) optimised "
             "its model; one thread, pinned to CPU 0. Served: the same archive with the "
             "variant's `optimization:` block, `serving start` pinned to CPU 0 (two "
             "registrations: batch 1 at c=1 and batch 8 at c=16), load from CPU 1. Accuracy "
             "is against the fp32 eager handler on fixed inputs: 200 random 3x224x224 tensors "
             "for resnet50 (random weights: top-1 agreement), 32 sentences for minilm (real "
             "weights: cosine). Forced variants use a budget that refuses nothing, so their "
             "accuracy is measured, not guarded; `auto` uses the default budget "
             "(top-1 ≥ 99%, cosine ≥ 0.99).", "", "## Machine", "",
             "| item | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts().items()]
    lines += ["", "## Targets", "", *targets(by_model, startup), ""]
    for model, model_rows in by_model.items():
        lines += [f"## {model}", "", *model_table(model_rows), ""]
    if startup:
        lines += ["## Start-up with and without a precompiled package", "",
                  f"```json\n{json.dumps(startup, indent=2)}\n```", ""]
    profiled = [r for r in rows if r.get("profile")]
    if profiled:
        lines += ["## Where the time goes", "",
                  "Each variant's largest batch, 3 handler calls under `torch.profiler`, top "
                  "operators by self CPU time (measured in the same run):", ""]
        lines += [f"- {r['model'].split('-')[0]} {r['variant']}: "
                  f"[profiles/{r['profile']}](profiles/{r['profile']})" for r in profiled]
        lines.append("")
    lines += ["## Plot", "", f"![{plot}]({plot})", ""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"
