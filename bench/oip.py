"""OIP REST noop beside `/predictions` noop: one server, one run, the two interleaved.

    python -m bench.oip [--reps 3] [--duration 10] [--levels 1,16] [--quick]
                        [--out bench/results/oip]

The issue's goal: OIP REST noop within 10% of `/predictions` noop at c=16. The noop model
(batch 1) is served once, pinned to CPU 0, the load generator on CPU 1; each rep measures
`/predictions/noop` then `/v2/models/noop/infer` (a one-element INT64 JSON tensor; the
handler's `{"ok": true}` comes back as one BYTES output), so drift hits both alike. Writes
`report.md` into `--out` (the rows into `raw/results.jsonl`, not committed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.loadgen import format_result, open_session, run_level, warm
from bench.machine import facts
from bench.project_server import ProjectServer
from bench.scenarios import CLIENT_CPUS, SERVER_CPUS, pinned
from bench.server import ServerProcess
from bench.stats import Aggregate, aggregate, ratio
from bench.tsconfig import ModelConfig
from bench.workload import Plan, Target
from model_store.build import build_all

REPO = Path(__file__).resolve().parents[1]
PREDICTIONS = "predictions noop b1"
OIP = "oip rest noop b1"
OIP_BODY = {"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}]}


def targets(base_url: str) -> dict[str, Target]:
    return {
        PREDICTIONS: Target(base_url, "/predictions/noop", b'{"x": 1}', "application/json",
                            expect=b'"ok"'),
        OIP: Target(base_url, "/v2/models/noop/infer", json.dumps(OIP_BODY).encode(),
                    "application/json", expect=b'"output0"'),
    }


async def measure(server: ServerProcess, by_label: dict[str, Target], levels: Sequence[int],
                  plan: Plan, reps: int) -> list[dict[str, Any]]:
    """Each run's rate and latency, and the server's CPU µs per request: on a shared box the
    CPU cost is the steadier figure (other tenants take wall time, not our CPU time)."""
    rows: list[dict[str, Any]] = []
    async with open_session(max(levels), plan.timeout_s) as session:
        for rep in range(reps):
            for level in levels:
                for label, target in by_label.items():
                    await asyncio.sleep(1.0)  # let the server settle between runs
                    gateway0, workers0 = server.cpu_seconds()
                    result = await run_level(session, target, level, plan, label=label,
                                             rep=rep)
                    gateway1, workers1 = server.cpu_seconds()
                    row = result.to_dict()
                    sent = max(result.sent, 1)
                    row["gateway_cpu_us"] = (gateway1 - gateway0) / sent * 1e6
                    row["worker_cpu_us"] = (workers1 - workers0) / sent * 1e6
                    print(f"{format_result(result)} gateway {row['gateway_cpu_us']:.0f} us/req"
                          f" worker {row['worker_cpu_us']:.0f} us/req", flush=True)
                    rows.append(row)
    return rows


def paired_table(rows: list[dict[str, Any]]) -> list[str]:
    """Each OIP run against the /predictions run just before it (same rep and level): on a
    shared box this cancels most of the drift that separates two medians."""
    lines = ["", "Paired ratios (each OIP run over the /predictions run right before it):", "",
             "| c | OIP / predictions req/s, per rep | median |", "|---:|---|---:|"]
    runs = {(r["label"], int(r["concurrency"]), int(r["rep"])): r for r in rows}
    for level in sorted({int(r["concurrency"]) for r in rows}):
        ratios = [ratio(float(oip["rps"]), float(pred["rps"]))
                  for (label, c, rep), oip in runs.items() if label == OIP and c == level
                  if (pred := runs.get((PREDICTIONS, c, rep))) is not None]
        if ratios:
            lines.append(f"| {level} | {', '.join(f'{x:.3f}' for x in ratios)} | "
                         f"{statistics.median(ratios):.3f} |")
    return lines


def cpu_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["", "Server CPU per request (median over reps; all requests of the run, warm-up "
             "included):", "", "| endpoint | c | gateway µs | worker µs | total µs |",
             "|---|---:|---:|---:|---:|"]
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["label"], int(row["concurrency"])), []).append(row)
    for (label, level), reps in cells.items():
        gateway = statistics.median(r["gateway_cpu_us"] for r in reps)
        worker = statistics.median(r["worker_cpu_us"] for r in reps)
        lines.append(f"| {label} | {level} | {gateway:.0f} | {worker:.0f} | "
                     f"{gateway + worker:.0f} |")
    return lines


def render(cells: list[Aggregate], machine: dict[str, str], plan: Plan, reps: int,
           load: str) -> str:
    lines = [
        "# OIP REST noop vs /predictions noop (one server, one run)",
        "",
        f"Server (all processes) on CPU {SERVER_CPUS}, aiohttp load generator on CPU "
        f"{CLIENT_CPUS}; noop model, batch 1, one worker; each rep runs both endpoints back "
        f"to back; {reps} reps of {plan.duration_s:g} s after {plan.warmup_s:g} s warm-up; "
        "medians over reps.",
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('logical cpus', '?')} logical CPUs; "
        f"{machine.get('date', '?')}; load average at the start of the runs: {load}. On a "
        "shared box the paired ratios and the server CPU per request (below) are the steadier "
        "figures: other tenants take wall time from both endpoints, not CPU time per request.",
        "",
        "| endpoint | c | req/s (min-max) | p50 ms | p99 ms | errors | client CPU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        lines.append(f"| {c.label} | {c.concurrency} | {c.rps:,.0f} ({c.rps_min:,.0f}-"
                     f"{c.rps_max:,.0f}) | {c.p50_ms:.2f} | {c.p99_ms:.2f} | {c.error_count} "
                     f"| {c.client_cpu:.2f} |")
    lines += ["", "| c | OIP / predictions req/s | OIP / predictions p99 |", "|---:|---:|---:|"]
    by_key = {(c.label, c.concurrency): c for c in cells}
    for level in sorted({c.concurrency for c in cells}):
        pred, oip = by_key.get((PREDICTIONS, level)), by_key.get((OIP, level))
        if pred and oip:
            lines.append(f"| {level} | {ratio(oip.rps, pred.rps):.3f} | "
                         f"{ratio(oip.p99_ms, pred.p99_ms):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.oip", description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--levels", default="1,16")
    parser.add_argument("--quick", action="store_true", help="1 rep of 3 s (a smoke)")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/oip")
    parser.add_argument("--report-only", action="store_true",
                        help="re-render report.md from raw/results.jsonl")
    args = parser.parse_args(argv)
    reps, duration = (1, 3.0) if args.quick else (args.reps, args.duration)
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "raw"  # not committed (.gitignore): the archive and the rows
    plan = Plan(warmup_s=args.warmup, duration_s=duration)
    if args.report_only:
        rows = [json.loads(line) for line in (raw / "results.jsonl").read_text().splitlines()]
        reps = max(int(r["rep"]) for r in rows) + 1
        plan = Plan(warmup_s=float(rows[0]["warmup_s"]), duration_s=float(rows[0]["window_s"]))
        write_report(out, rows, plan, reps)
        return 0
    store = raw / "store"
    build_all(store, only=["noop"])
    models = {"noop": ModelConfig("noop.mar", batch_size=1, max_batch_delay_ms=5)}
    with ProjectServer(store, models, pin_cpus=SERVER_CPUS) as server, pinned(CLIENT_CPUS):
        by_label = targets(server.base_url)
        for target in by_label.values():
            asyncio.run(warm(target, 2.0 if args.quick else 5.0))
        rows = asyncio.run(measure(server, by_label, levels, plan, reps))
        server.check_alive()
    (raw / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_report(out, rows, plan, reps)
    return 0


def write_report(out: Path, rows: list[dict[str, Any]], plan: Plan, reps: int) -> None:
    loads = sorted(float(r["load_1m"]) for r in rows)
    machine = {**facts(), "date": f"run started {rows[0]['started_at']}"} if rows else facts()
    report = render(aggregate(rows), machine, plan, reps,
                    f"{loads[0]:.2f}-{loads[-1]:.2f}" if loads else "?")
    report += "\n".join(paired_table(rows) + cpu_table(rows)) + "\n"
    (out / "report.md").write_text(report)
    print(report)


if __name__ == "__main__":
    sys.exit(main())
