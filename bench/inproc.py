"""The in-process limit: items/s of a model or handler called in a loop, no server around it.

The loop runs in the environment a server's worker gets: the placement the server's own
`Resources` computes for one worker on the CPUs this process may use (thread counts, inter-op
threads, denormal flushing, OMP/MKL variables, allocator preload), applied by the worker's
own `serving.workers.pinning` code, so a served figure above the in-process one cannot come
from a different setup.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bench.archive import load_service, predict_call
from bench.machine import parse_cpus, pin_process

if TYPE_CHECKING:
    from serving.workers.pinning import WorkerPlacement


def measure(fn: Callable[[], Any], batch_items: int, duration: float, windows: int, *,
            warmup: float = 2.0, threads: int | None = None, cpus: str | None = None,
            inference_mode: bool = True) -> dict[str, Any]:
    """Call `fn` (one batch of `batch_items` items per call) for `windows` windows of `duration` s.

    Reports the median window's items/s: on a shared VM single windows drift, the median of a
    few is the figure that repeats. `cpus` pins every thread of this process (taskset -c).
    """
    import torch

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
        "flush_denormal": _flushes_denormals(),
        "cpus": sorted(os.sched_getaffinity(0)),
        "torch": torch.__version__,
    }


def _flushes_denormals() -> bool:
    """Whether this thread flushes denormals now (a denormal float multiplied by 1 reads 0)."""
    import torch

    tiny = torch.tensor([1e-40], dtype=torch.float32)
    return bool((tiny * 1.0).item() == 0.0)


def model_yaml(mar: Path) -> dict[str, Any]:
    """The archive's model-config.yaml (its `placement:` block shapes the worker's placement)."""
    with zipfile.ZipFile(mar) as zf:
        manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
        name = manifest["model"].get("configFile")
        if not name or name not in zf.namelist():
            return {}
        return dict(yaml.safe_load(zf.read(name)) or {})


def worker_placement(config: dict[str, Any]) -> WorkerPlacement:
    """The placement the server would give one worker of this model on the CPUs this process
    may use now (pin first), computed by the server's own `Resources` with default settings."""
    from serving.routing.resources import Resources
    from serving.settings import Settings

    resources = Resources(Settings())
    resources.plan_startup(1)
    return resources.place("in-process", 1, resources.policy_for(config, "cpu"))[0]


def enter_worker_environment(placement: WorkerPlacement, argv: Sequence[str]) -> list[str]:
    """Make this process look like a spawned worker: re-exec with the worker's start-time
    variables if they differ (OpenMP reads OMP_NUM_THREADS and the loader LD_PRELOAD only at
    start), then apply its affinity, threads and denormal flushing. Returns the log lines."""
    from serving.workers import pinning

    wanted = pinning.spawn_env(os.environ, pinning.env_for(placement))
    if any(os.environ.get(k) != v for k, v in wanted.items()):
        os.execve(sys.executable, [sys.executable, "-m", "bench.inproc", *argv], wanted)
    return pinning.apply(placement) + pinning.apply_torch_threads(placement)


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


def batches(bodies: Sequence[bytes], batch: int) -> list[list[bytes]]:
    """The batches that cover every body once in turn: with n bodies, call k gets bodies
    k*batch .. k*batch+batch-1 (mod n); n calls cover each body `batch` times."""
    n = len(bodies)
    return [[bodies[(k * batch + j) % n] for j in range(batch)] for k in range(n)]


def rotating(calls: Sequence[Callable[[], Any]]) -> Callable[[], Any]:
    """One call that runs `calls` in turn (a single call is returned as it is)."""
    if len(calls) == 1:
        return calls[0]
    cycle = itertools.cycle(calls)
    return lambda: next(cycle)()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.inproc", description=__doc__)
    p.add_argument("--mar", type=Path, required=True, help="archive whose handler to run")
    p.add_argument("--payload", type=Path, required=True, action="append",
                   help="a request body; repeat it for several, used in turn (e.g. sentences "
                        "of varied lengths)")
    p.add_argument("--content-type", default="application/octet-stream")
    p.add_argument("--batch", type=int, default=1, help="requests per handler call")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads over the worker's own count (default: the "
                        "worker's, from its placement)")
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
    placement = worker_placement(model_yaml(args.mar))
    notes = enter_worker_environment(placement, sys.argv[1:] if argv is None else argv)
    bodies = [f.read_bytes() for f in args.payload]
    with tempfile.TemporaryDirectory(prefix="inproc-") as tmp:
        service = load_service(args.mar, Path(tmp), batch_size=args.batch)
        fn = rotating([predict_call(service, batch, args.content_type)
                       for batch in batches(bodies, args.batch)])
        result = measure(fn, args.batch, args.duration, args.windows, warmup=args.warmup,
                         threads=args.threads, cpus=cpus)
    result = {"label": args.label or f"{args.mar.stem} b{args.batch} t{result['threads']}",
              "mar": str(args.mar), "payloads": len(bodies), **result,
              "placement": placement.to_dict(), "worker_environment": notes}
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
