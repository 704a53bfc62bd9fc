"""What metrics cost: noop throughput with metrics on vs off, measured side by side.

Two servers run at once on CPU 0 (each with its noop worker there too), one with metrics on
(the default: every request counted, histograms, handler metrics from the worker) and one with
`enable_metrics_api=false` (routing records nothing, no /metrics). The aiohttp client on CPU 1
alternates measured windows between them, ABBA order, so drift of this shared VM hits both
alike. Writes `raw.jsonl` (one row per window) and `report.md` with medians, min and max.

    python -m bench.metrics_cost [--reps 8] [--window 8] [--concurrency 16] [--depth N]
                                 [--out DIR]

Without `--depth` the noop archive says nothing and the server's default applies
(full batches sent ahead while the worker runs one, as many as its recent batch times fit in
4 ms, up to `default_max_inflight_batches`: serving/workers/sendahead.py). `--depth N` gives
the archive `maxInflightBatches: N` (1: one batch at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.archive import build_noop_mar, derive_archive
from bench.loadgen import open_session, run_level, warm
from bench.machine import facts, pin_process
from bench.project_server import ProjectServer
from bench.tsconfig import ModelConfig
from bench.workload import Plan, Target

OUT = Path(__file__).resolve().parent / "results" / "metrics"
MODES = {"on": {}, "off": {"enable_metrics_api": "false"}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=8, help="windows per mode")
    parser.add_argument("--window", type=float, default=8.0, help="seconds per window")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--depth", type=int, default=None,
                        help="maxInflightBatches of the noop model (1: one batch at a time); "
                        "default: none in the archive, the server's default applies")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--checkout", type=Path, default=None,
                        help="run both servers from another checkout's `serving` (e.g. the "
                             "main branch, to compare); default: this one")
    parser.add_argument("--control", action="store_true",
                        help="both servers with metrics off: how far apart two identical "
                             "servers measure on this box (the noise floor of the comparison)")
    args = parser.parse_args(argv)
    if args.control:
        MODES["on"] = dict(MODES["off"])
    args.out.mkdir(parents=True, exist_ok=True)
    rows = measure(args.reps, args.window, args.concurrency, args.depth, args.checkout)
    (args.out / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (args.out / "report.md").write_text(report(rows, args))
    print((args.out / "report.md").read_text())
    return 0


def measure(reps: int, window: float, concurrency: int, depth: int | None = None,
            checkout: Path | None = None) -> list[dict[str, Any]]:
    store = Path(tempfile.mkdtemp(prefix="metrics-cost-"))
    if depth is not None:
        derive_archive(build_noop_mar(store, "noop-one"), "noop", {"maxInflightBatches": depth})
    else:
        build_noop_mar(store)
    models = {"noop": ModelConfig("noop.mar", workers=1, batch_size=1)}
    pin_process({1})
    with ExitStack() as stack:
        servers = {}
        for mode, extra in MODES.items():
            server = ProjectServer(store, models, pin_cpus="0", extra_properties=extra)
            if checkout is not None:
                server.env["PYTHONPATH"] = str(checkout)  # that build's `serving`
            servers[mode] = stack.enter_context(server)
        targets = {mode: Target(s.base_url, "/predictions/noop", b"{}", "application/json",
                                expect=b'"ok"') for mode, s in servers.items()}
        return asyncio.run(ab_windows(targets, servers, reps, window, concurrency,
                                      key="metrics"))


async def ab_windows(targets: dict[str, Target], servers: dict[str, ProjectServer], reps: int,
                     window: float, concurrency: int, *, key: str,
                     counters: dict[str, Callable[[], float]] | None = None
                     ) -> list[dict[str, Any]]:
    """Closed-loop windows on each server in turn, the order reversed every rep (ABBA), with
    the CPU per request of each server's gateway and workers from /proc. `key` names the row
    field that says which server ran; `counters` are extra machine-wide second counters
    (e.g. CPU 0's softirq time), reported per request as `<name>_us`."""
    counters = counters or {}
    for target in targets.values():
        await warm(target, 3.0, concurrency)
    plan = Plan(warmup_s=1.0, duration_s=window)
    rows = []
    names = list(targets)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            gateway0, workers0 = servers[name].cpu_seconds()
            before = {c: read() for c, read in counters.items()}
            async with open_session(concurrency, plan.timeout_s) as session:
                result = await run_level(session, targets[name], concurrency, plan,
                                         label=f"{key}-{name}", rep=rep)
            gateway1, workers1 = servers[name].cpu_seconds()
            # CPU per request answered in the run (warm-up included: `sent` counts it too);
            # on a shared box it moves less than throughput, which steal time drags around.
            sent = max(result.sent, 1)
            row = {**asdict(result), key: name,
                   "gateway_cpu_us": (gateway1 - gateway0) / sent * 1e6,
                   "worker_cpu_us": (workers1 - workers0) / sent * 1e6}
            row["cpu_us"] = row["gateway_cpu_us"] + row["worker_cpu_us"]
            row["load1"] = os.getloadavg()[0]  # the box is shared: how busy it was
            for c, read in counters.items():
                row[f"{c}_us"] = (read() - before[c]) / sent * 1e6
            rows.append(row)
            extra = "".join(f", {c} {row[f'{c}_us']:.0f} µs/req" for c in counters)
            print(f"rep {rep} {name}: {result.rps:.0f} req/s p50 {result.p50_ms:.2f} ms "
                  f"p99 {result.p99_ms:.2f} ms errors {result.error_count} gateway "
                  f"{row['gateway_cpu_us']:.0f} + worker {row['worker_cpu_us']:.0f} = "
                  f"{row['cpu_us']:.0f} µs/req{extra}, load {row['load1']:.2f}", flush=True)
            await asyncio.sleep(0.5)
    return rows


def hot_path_cost(n: int = 200_000) -> float:
    """µs per request of what routing and the HTTP wrapper call when metrics are on, in
    process (no server): one request's received, dispatched, batch_done, answered and the
    Requests2XX increment, plus a worker result (its time on the batch; the handler's
    metric updates travel apart, once per 50 ms or scrape, not per batch)."""
    import time

    from serving.metrics.catalog import NO_METRICS, ServerMetrics

    def run(model: Any, http: Any) -> float:
        meta = {"t": 0.0001}
        start = time.perf_counter()
        for _ in range(n):
            model.received()
            model.dispatched(0.0001)
            model.batch_done(1, 0.0005)
            model.worker_result(meta, 0.0006)
            model.answered(200, 0.0007)
            http.inc()
        return (time.perf_counter() - start) / n * 1e6

    server = ServerMetrics()
    on = min(run(server.model("noop", "1.0"), server.http_status(200)) for _ in range(3))
    off = min(run(NO_METRICS, _Nothing()) for _ in range(3))
    return on - off


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


class _Nothing:
    def inc(self) -> None:
        pass


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    by_mode = {m: [r for r in rows if r["metrics"] == m] for m in MODES}
    med = {m: statistics.median(r["rps"] for r in rs) for m, rs in by_mode.items()}
    lines = [
        "# Metrics on vs off: noop throughput" + (
            " (CONTROL: both servers with metrics off)" if args.control else ""), "",
        f"`python -m bench.metrics_cost --reps {args.reps} --window {args.window} "
        f"--concurrency {args.concurrency}"
        + (f" --depth {args.depth}" if args.depth is not None else "")
        + (f" --checkout {args.checkout}" if args.checkout else "")
        + "`: two servers at once, every "
        "process of both on CPU 0, the aiohttp client on CPU 1, windows alternated ABBA; "
        "batch 1, one worker, "
        + ("the server's default dispatch (full batches sent ahead while the worker runs "
           "one, as many as its batch times fit in 4 ms, up to "
           "`default_max_inflight_batches`)." if args.depth is None else
           "one batch at a time (`maxInflightBatches: 1`)." if args.depth == 1 else
           f"up to {args.depth} batches sent to it at once (maxInflightBatches).") + "", "",
        "| metrics | windows | median req/s | min | max | median p50 ms | median p99 ms | "
        "gateway CPU µs/req (median, min-max) | worker CPU µs/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, rs in by_mode.items():
        rps = [r["rps"] for r in rs]
        lines.append(f"| {mode} | {len(rs)} | {med[mode]:,.0f} | {min(rps):,.0f} | "
                     f"{max(rps):,.0f} | {statistics.median(r['p50_ms'] for r in rs):.2f} | "
                     f"{statistics.median(r['p99_ms'] for r in rs):.2f} | "
                     f"{_spread([r['gateway_cpu_us'] for r in rs])} | "
                     f"{statistics.median(r['worker_cpu_us'] for r in rs):.0f} |")
    cost = 1 - med["on"] / med["off"]
    cpu = {m: statistics.median(r["gateway_cpu_us"] + r["worker_cpu_us"] for r in rs)
           for m, rs in by_mode.items()}
    pairs = [on["rps"] / off["rps"] for on, off in zip(by_mode["on"], by_mode["off"],
                                                          strict=True)]
    lines += ["", f"Cost of metrics: **{cost * 100:.1f}%** of the median throughput (on/off "
              f"{med['on'] / med['off']:.3f}); per-rep on/off ratios: median "
              f"{statistics.median(pairs):.3f}, min {min(pairs):.3f}, max {max(pairs):.3f}.",
              "", f"CPU per request (gateway + worker, medians): on {cpu['on']:.0f} µs, off "
              f"{cpu['off']:.0f} µs: metrics cost **{(cpu['on'] / cpu['off'] - 1) * 100:.1f}%** "
              "of the CPU a request takes.",
              "", f"The same calls in process, without a server: **{hot_path_cost():.2f} µs** "
              "per request more with metrics on than with them off (best of 3 runs of 200,000; "
              f"at the off median of {med['off']:,.0f} req/s a request costs "
              f"{1e6 / med['off']:.0f} µs of CPU 0).",
              "", "Errors: " + ", ".join(f"{m} {sum(r['error_count'] for r in rs)}"
                                        for m, rs in by_mode.items()),
              "", "The VM is shared with other jobs (2 vCPUs); single windows vary, which is "
              "why windows alternate and medians are compared. Raw rows: `raw.jsonl`.", "",
              "Machine: " + ", ".join(f"{k}: {v}" for k, v in facts().items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
