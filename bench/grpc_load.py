"""Closed-loop load over TorchServe's gRPC `Predictions`: C workers on one grpc.aio channel,
one call in flight each, warm-up then a window. Rows are `loadgen.RunResult`s, so the HTTP
benchmark's statistics and report code read them unchanged."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from bench.grpc_stubs import torchserve_stubs
from bench.loadgen import RunResult, Window, result_sink
from bench.machine import parse_cpus, pin_process
from bench.stats import latency_summary
from bench.workload import Plan


@dataclass(frozen=True)
class GrpcTarget:
    """A model behind a TorchServe gRPC inference port, and the one request sent to it."""

    address: str  # host:port
    model: str
    inputs: dict[str, bytes]
    expect: bytes | None = None  # a prediction must contain this

    def request(self) -> Any:
        return torchserve_stubs()["inference_pb2"].PredictionsRequest(model_name=self.model,
                                                                      input=self.inputs)


async def _worker(call: Any, request: Any, expect: bytes | None, timeout_s: float,
                  w: Window) -> None:
    clock = time.perf_counter_ns
    while True:
        t0 = clock()
        if t0 >= w.end_ns:
            return
        w.sent += 1
        kind: str | None = None
        try:
            answer = await call(request, timeout=timeout_s)
            if expect is not None and expect not in answer.prediction:
                kind = "unexpected_body"
        except grpc.aio.AioRpcError as e:
            kind = f"status:{e.code().name}"
        except Exception as e:  # a failing server is a data point, never a dead worker
            kind = "exception:" + type(e).__name__
        if w.record(t0, clock(), kind) is False:
            return


async def run_level(channel: grpc.aio.Channel, target: GrpcTarget, concurrency: int,
                    plan: Plan, *, label: str = "", rep: int = 0) -> RunResult:
    stub = torchserve_stubs()["inference_pb2_grpc"].InferenceAPIsServiceStub(channel)
    request = target.request()
    gc.collect()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    load_1m = os.getloadavg()[0]
    cpu0, wall0 = time.process_time(), time.perf_counter_ns()
    measure_ns = wall0 + int(plan.warmup_s * 1e9)
    w = Window(measure_ns, measure_ns + int(plan.duration_s * 1e9), None)
    await asyncio.gather(*(_worker(stub.Predictions, request, target.expect, plan.timeout_s, w)
                           for _ in range(concurrency)))
    client_cpu = (time.process_time() - cpu0) / max((time.perf_counter_ns() - wall0) / 1e9, 1e-9)
    window_s = (w.end_ns - w.measure_ns) / 1e9
    ok = len(w.latencies)
    return RunResult(
        label=label, concurrency=concurrency, rep=rep, url=f"grpc://{target.address}",
        mode="duration", warmup_s=plan.warmup_s, window_s=window_s,
        rps=ok / window_s if window_s > 0 else 0.0, ok=ok,
        error_count=sum(w.errors.values()), errors=dict(sorted(w.errors.items())),
        late=w.late, sent=w.sent, client_cpu=round(client_cpu, 3), load_1m=load_1m,
        **latency_summary(w.latencies), started_at=started_at,
        client=f"grpc.aio {grpc.__version__}")


async def run_matrix(target: GrpcTarget, levels: Sequence[int], plan: Plan, *, reps: int = 1,
                     label: str = "", pause_s: float = 1.0,
                     on_result: Callable[[RunResult], None] | None = None) -> list[RunResult]:
    """Reps interleaved across levels, as the HTTP load generator does."""
    results: list[RunResult] = []
    async with grpc.aio.insecure_channel(target.address) as channel:
        for rep in range(reps):
            for c in levels:
                if results and pause_s > 0:
                    await asyncio.sleep(pause_s)
                result = await run_level(channel, target, c, plan, label=label, rep=rep)
                results.append(result)
                if on_result is not None:
                    on_result(result)
    return results


async def warm(target: GrpcTarget, seconds: float, concurrency: int = 16) -> RunResult:
    """Discarded load (TorchServe's JVM needs it to reach its steady rate)."""
    async with grpc.aio.insecure_channel(target.address) as channel:
        return await run_level(channel, target, concurrency,
                               Plan(warmup_s=0.0, duration_s=seconds), label="warm-up")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.grpc_load", description=__doc__)
    p.add_argument("--address", required=True, help="host:port of a gRPC inference API")
    p.add_argument("--model", required=True)
    p.add_argument("--payload", type=Path, required=True, help="bytes sent as input 'data'")
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--label", default="grpc")
    p.add_argument("--out", type=Path, help="JSON lines file, appended to")
    p.add_argument("--cpus", help="pin this process to these CPUs")
    args = p.parse_args(argv)
    if args.cpus:
        pin_process(parse_cpus(args.cpus))
    target = GrpcTarget(args.address, args.model, {"data": args.payload.read_bytes()})
    with result_sink(args.out) as emit:
        asyncio.run(run_matrix(target, [int(c) for c in args.concurrency.split(",")],
                               Plan(args.warmup, args.duration), reps=args.reps,
                               label=args.label, on_result=emit))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
