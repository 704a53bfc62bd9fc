"""The in-process limit: items/s of a model or handler called in a loop, no server around it."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.archive import load_service, predict_call
from bench.machine import parse_cpus, pin_process


def measure(fn: Callable[[], Any], batch_items: int, duration: float, windows: int, *,
            warmup: float = 2.0, threads: int | None = None, cpus: str | None = None,
            inference_mode: bool = True) -> dict[str, Any]:
    """Call `fn` (one batch of `batch_items` items per call) for `windows` windows of `duration` s.

    Reports the median window's items/s: on a shared VM single windows drift, the median of a
    few is the figure that repeats. `cpus` pins every thread of this process (taskset -c).
    """
    if cpus is not None:
        pin_process(parse_cpus(cpus))
    if threads is not None:
        torch.set_num_threads(threads)
    rates: list[float] = []
    call_ms: list[float] = []
    with torch.inference_mode(inference_mode):
        _run_for(fn, warmup)  # first calls pay for allocator growth, oneDNN kernel selection
        for _ in range(windows):
            calls, elapsed = _run_for(fn, duration)
            rates.append(calls * batch_items / elapsed)
            call_ms.append(elapsed / calls * 1e3)
    return {
        "items_per_s": statistics.median(rates),
        "items_per_s_min": min(rates),
        "items_per_s_max": max(rates),
        "windows_items_per_s": rates,
        "ms_per_call": statistics.median(call_ms),
        "batch_items": batch_items,
        "window_s": duration,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpus": sorted(os.sched_getaffinity(0)),
        "torch": torch.__version__,
    }


def _run_for(fn: Callable[[], Any], seconds: float) -> tuple[int, float]:
    """Whole calls until `seconds` have passed (at least one); returns (calls, elapsed s)."""
    clock = time.perf_counter
    start = clock()
    deadline = start + seconds
    calls = 0
    while True:
        fn()
        calls += 1
        now = clock()
        if now >= deadline:
            return calls, now - start


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.inproc", description=__doc__)
    p.add_argument("--mar", type=Path, required=True, help="archive whose handler to run")
    p.add_argument("--payload", type=Path, required=True, help="one request body")
    p.add_argument("--content-type", default="application/octet-stream")
    p.add_argument("--batch", type=int, default=1, help="requests per handler call")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--cpus", default="0", help='pin like taskset -c, or "none"')
    p.add_argument("--duration", type=float, default=5.0, help="seconds per window")
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--label", default="")
    p.add_argument("--out", type=Path, help="JSON lines file, appended to")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    cpus = None if args.cpus == "none" else args.cpus
    if cpus is not None:
        pin_process(parse_cpus(cpus))  # before the handler loads, so its threads start pinned
    body = args.payload.read_bytes()
    with tempfile.TemporaryDirectory(prefix="inproc-") as tmp:
        service = load_service(args.mar, Path(tmp), batch_size=args.batch)
        fn = predict_call(service, [body] * args.batch, args.content_type)
        result = measure(fn, args.batch, args.duration, args.windows, warmup=args.warmup,
                         threads=args.threads, cpus=cpus)
    result = {"label": args.label or f"{args.mar.stem} b{args.batch} t{args.threads}",
              "mar": str(args.mar), **result}
    print(f"{result['label']}: {result['items_per_s']:.2f} items/s "
          f"({result['items_per_s_min']:.2f}..{result['items_per_s_max']:.2f}), "
          f"{result['ms_per_call']:.3f} ms/call, threads {result['threads']}, "
          f"cpus {result['cpus']}", file=sys.stderr)
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
