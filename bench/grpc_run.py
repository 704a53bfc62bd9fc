"""TorchServe's gRPC API under load, this server against TorchServe 0.12, in one run.

    python -m bench.grpc_run [--quick] [--out bench/results/grpc]

The noop model at batch 1, called with `Predictions` through stubs compiled from TorchServe's
own protos; server and all its processes on CPU 0, the grpc.aio load generator on CPU 1.
Writes results.jsonl (one row per label x concurrency x rep) and report.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from bench.grpc_load import GrpcTarget, run_matrix, warm
from bench.loadgen import format_result
from bench.machine import facts
from bench.project_server import ProjectServer
from bench.scenarios import CLIENT_CPUS, SERVER_CPUS, pinned
from bench.stats import Aggregate, aggregate, ratio
from bench.torchserve import TorchServe
from bench.tsconfig import ModelConfig
from bench.workload import Plan
from model_store.build import build_all

REPO = Path(__file__).resolve().parents[1]
NOOP = {"noop": ModelConfig("noop.mar", batch_size=1, max_batch_delay_ms=5)}
LABELS = {"serving": "serving grpc noop b1", "torchserve": "torchserve grpc noop b1"}


def measure(kind: str, store: Path, levels: list[int], plan: Plan, reps: int, warm_s: float,
            emit: Any) -> None:
    cls = TorchServe if kind == "torchserve" else ProjectServer
    with cls(store, NOOP, pin_cpus=SERVER_CPUS) as server, pinned(CLIENT_CPUS):
        target = GrpcTarget(f"127.0.0.1:{server.ports.grpc_inference}", "noop",
                            {"data": b'{"x": 1}'}, expect=b'"ok"')
        asyncio.run(warm(target, warm_s))
        asyncio.run(run_matrix(target, levels, plan, reps=reps, label=LABELS[kind],
                               on_result=emit))
        server.check_alive()


def report(rows: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    cells = {(a.label, a.concurrency): a for a in aggregate(rows)}
    lines = ["# TorchServe gRPC API: this server vs TorchServe 0.12", "",
             "noop model, batch 1, `Predictions` with stubs compiled from TorchServe's protos; "
             "server on CPU 0, grpc.aio client on CPU 1; median of the reps.", "",
             f"Machine: {machine.get('cpu', '?')}, load average at start "
             f"{min(r['load_1m'] for r in rows):.1f}-{max(r['load_1m'] for r in rows):.1f}.",
             "", "| server | c | req/s (min-max) | p50 ms | p99 ms | errors | client CPU |",
             "|---|---|---|---|---|---|---|"]
    for a in cells.values():
        lines.append(f"| {a.label} | {a.concurrency} | {a.rps:.0f} ({a.rps_min:.0f}-"
                     f"{a.rps_max:.0f}) | {a.p50_ms:.2f} | {a.p99_ms:.2f} | {a.error_count} | "
                     f"{a.client_cpu:.0%} |")
    lines += ["", "| c | req/s ratio (serving / TorchServe) | p99 ratio |", "|---|---|---|"]
    for (label, c), ours in cells.items():
        theirs: Aggregate | None = cells.get((LABELS["torchserve"], c))
        if label == LABELS["serving"] and theirs is not None:
            lines.append(f"| {c} | {ratio(ours.rps, theirs.rps):.2f} | "
                         f"{ratio(ours.p99_ms, theirs.p99_ms):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.grpc_run", description=__doc__)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "grpc")
    p.add_argument("--quick", action="store_true", help="one rep of 5 s windows")
    p.add_argument("--servers", default="serving,torchserve")
    p.add_argument("--levels", default="1,16,64")
    args = p.parse_args(argv)
    store = REPO / "model_store" / "build"
    build_all(store, only=["noop"])
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    results.write_text("")
    rows: list[dict[str, Any]] = []

    def emit(r: Any) -> None:
        print(format_result(r), file=sys.stderr, flush=True)
        rows.append(r.to_dict())
        with results.open("a") as f:
            f.write(json.dumps(r.to_dict()) + "\n")

    plan = Plan(warmup_s=2.0, duration_s=5.0 if args.quick else 10.0)
    reps = 1 if args.quick else 3
    levels = [int(c) for c in args.levels.split(",")]
    for kind in args.servers.split(","):
        measure(kind, store, levels, plan, reps, 15.0 if kind == "torchserve" else 5.0, emit)
    (args.out / "report.md").write_text(report(rows, facts()))
    print((args.out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
