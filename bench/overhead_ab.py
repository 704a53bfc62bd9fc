"""Serving overhead, old build vs new: CPU µs per request of gateway + worker, side by side.

    python -m bench.overhead_ab --base DIR [--new DIR] [--reps 6] [--window 6] [--concurrency 16]
                                [--batch 1] [--out DIR] [--extra key=value ...]

`DIR` is another checkout of this project (e.g. `git archive <commit> | tar -x -C DIR`).
Two servers run at once, one from `DIR` and one from this checkout, every process of both on
CPU 0, each serving the plain `BaseHandler` noop (no `can_overlap`: one batch at a time per
worker, as TorchServe runs it). The aiohttp client on CPU 1 alternates measured windows
between them in ABBA order, so drift of a shared box hits both alike. CPU per request comes
from /proc (user + system of the gateway and its workers, divided by the requests sent in the
window): on a shared box it moves far less than req/s. Writes `raw.jsonl` and `report.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.archive import build_noop_mar
from bench.machine import facts, pin_process
from bench.metrics_cost import ab_windows
from bench.project_server import REPO, ProjectServer
from bench.tsconfig import ModelConfig
from bench.workload import Target

OUT = Path(__file__).resolve().parent / "results" / "overhead"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the old build's checkout")
    parser.add_argument("--new", type=Path, default=REPO,
                        help="the new build's checkout (default: this one)")
    parser.add_argument("--reps", type=int, default=6, help="windows per build")
    parser.add_argument("--window", type=float, default=6.0, help="seconds per window")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--extra", action="append", default=[],
                        help="config.properties key=value for both servers")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    extra = dict(kv.split("=", 1) for kv in args.extra)
    args.out.mkdir(parents=True, exist_ok=True)
    builds = {"old": args.base.resolve(), "new": args.new.resolve()}
    rows = measure(builds, args.reps, args.window, args.concurrency, args.batch, extra)
    (args.out / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (args.out / "report.md").write_text(report(rows, args, builds))
    print((args.out / "report.md").read_text())
    return 0


def measure(builds: dict[str, Path], reps: int, window: float, concurrency: int, batch: int,
            extra: dict[str, str]) -> list[dict[str, Any]]:
    store = Path(tempfile.mkdtemp(prefix="overhead-ab-"))
    build_noop_mar(store)
    models = {"noop": ModelConfig("noop.mar", workers=1, batch_size=batch,
                                  max_batch_delay_ms=5)}
    pin_process({1})
    with ExitStack() as stack:
        servers = {}
        for name, checkout in builds.items():
            server = ProjectServer(store, models, pin_cpus="0", extra_properties=extra)
            server.env["PYTHONPATH"] = str(checkout)  # this build's `serving`, nothing else
            servers[name] = stack.enter_context(server)
        targets = {name: Target(s.base_url, "/predictions/noop", b"{}", "application/json",
                                expect=b'"ok"') for name, s in servers.items()}
        return asyncio.run(ab_windows(targets, servers, reps, window, concurrency,
                                      key="build",
                                      counters={"cpu0_softirq": cpu0_softirq}))


def cpu0_softirq() -> float:
    """Seconds CPU 0 spent in softirq so far (/proc/stat). Loopback TCP runs the receiving
    side of each segment there, billed to no process, so a cut in writes shows here too."""
    fields = next(line.split() for line in Path("/proc/stat").read_text().splitlines()
                  if line.startswith("cpu0 "))
    return int(fields[7]) / os.sysconf("SC_CLK_TCK")


def _spread(values: list[float], fmt: str = ".0f") -> str:
    return (f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})")


def report(rows: list[dict[str, Any]], args: argparse.Namespace,
           builds: dict[str, Path]) -> str:
    lines = [f"# Serving overhead A/B: plain BaseHandler noop, batch {args.batch}, "
             f"c={args.concurrency}", "",
             f"`python -m bench.overhead_ab --reps {args.reps} --window {args.window} "
             f"--concurrency {args.concurrency} --batch {args.batch}`"
             + "".join(f" --extra {e}" for e in args.extra)
             + ": both servers at once, every process of both on CPU 0, the aiohttp client on "
             "CPU 1, windows alternated ABBA. Medians (min-max) over the windows.", "",
             "| build | windows | req/s | p50 ms | p99 ms | gateway CPU µs/req | "
             "worker CPU µs/req | total CPU µs/req | CPU 0 softirq µs/req | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in builds:
        rs = [r for r in rows if r["build"] == name]
        lines.append(f"| {name} | {len(rs)} | {_spread([r['rps'] for r in rs])} | "
                     f"{_spread([r['p50_ms'] for r in rs], '.2f')} | "
                     f"{_spread([r['p99_ms'] for r in rs], '.2f')} | "
                     f"{_spread([r['gateway_cpu_us'] for r in rs])} | "
                     f"{_spread([r['worker_cpu_us'] for r in rs])} | "
                     f"{_spread([r['cpu_us'] for r in rs])} | "
                     f"{_spread([r['cpu0_softirq_us'] for r in rs])} | "
                     f"{sum(r['error_count'] for r in rs)} |")
    old = [r for r in rows if r["build"] == "old"]
    new = [r for r in rows if r["build"] == "new"]
    ratios = [n["cpu_us"] / o["cpu_us"] for o, n in zip(old, new, strict=True)]
    loads = [r["load_1m"] for r in rows]
    lines += ["", f"new/old CPU per request, per rep: {_spread(ratios, '.3f')}.",
              f"Box load average (1 min) at window starts: {_spread(loads, '.2f')} on "
              f"{facts()['logical cpus']} CPUs shared with other jobs.",
              "Total CPU is the gateway's and the worker's own time (user + system, /proc); "
              "CPU 0 softirq (the loopback TCP work of both directions, billed to no "
              "process) is shown beside it, not added: other jobs on CPU 0 add to it too.",
              "", f"old: `{builds['old']}`; new: `{builds['new']}`.", "",
              "Machine: " + ", ".join(f"{k}: {v}" for k, v in facts().items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
