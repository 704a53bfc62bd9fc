"""The gateway -> worker -> gateway hop, alone: round trips of an empty request, in µs.

Uses the server's own pieces (WorkerListener, Worker, the frame codec, a real worker process
running a real archive's handler) without HTTP, so the figure is the cost of the hop itself.

    python -m bench.hop [--requests 20000] [--gateway-cpu 0] [--worker-cpu 0] [--out hop.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.archive import build_mar
from serving.handlers.archive import ArchiveLimits, unpack
from serving.types import InferenceRequest
from serving.workers.listener import WorkerListener
from serving.workers.process import Worker
from serving.workers.spec import WorkerSpec

EMPTY_HANDLER = '''
def handle(data, context):
    """Answers every request with an empty body (initialised once with data=None)."""
    return None if data is None else [b""] * len(data)
'''


async def measure(n: int, workdir: Path, worker_cpu: int | None) -> dict[str, float]:
    handler = workdir / "empty_handler.py"
    handler.write_text(EMPTY_HANDLER)
    archive = unpack(build_mar("empty", handler, workdir / "store"), workdir / "models",
                     ArchiveLimits())
    listener = WorkerListener(workdir / "w.sock")
    await listener.start()
    load = {"model_name": "empty", "model_dir": str(archive.model_dir),
            "handler": archive.manifest.handler, "batch_size": 1, "gpu_id": None,
            "manifest": archive.manifest.raw, "model_yaml_config": {}}
    worker = Worker("9000", 0, WorkerSpec(load=load), listener,
                    on_idle=lambda w: None, on_exit=lambda w: None)
    await worker.start(timeout=120)
    if worker_cpu is not None and worker.pid is not None:
        os.sched_setaffinity(worker.pid, {worker_cpu})
    loop = asyncio.get_running_loop()
    request = [InferenceRequest("r", [])]
    samples: list[float] = []
    for i in range(n + 1000):
        fut: asyncio.Future[object] = loop.create_future()
        start = time.perf_counter_ns()
        worker.run(request, fut.set_result, None)
        await fut
        if i >= 1000:  # the first thousand warm up both processes
            samples.append((time.perf_counter_ns() - start) / 1000)
    await worker.stop()
    await listener.close()
    samples.sort()
    return {"requests": n, "median_us": statistics.median(samples),
            "p90_us": samples[int(0.9 * n)], "p99_us": samples[int(0.99 * n)],
            "mean_us": statistics.fmean(samples)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hop", description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--gateway-cpu", type=int, default=None)
    parser.add_argument("--worker-cpu", type=int, default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.gateway_cpu is not None:
        os.sched_setaffinity(0, {args.gateway_cpu})
    import uvloop

    with tempfile.TemporaryDirectory(prefix="hop-") as tmp:
        result = uvloop.run(measure(args.requests, Path(tmp), args.worker_cpu))
    result.update(gateway_cpu=args.gateway_cpu, worker_cpu=args.worker_cpu)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
