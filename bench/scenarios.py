"""The benchmark scenarios: which servers, models, settings and loads each one measures."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import wrk
from bench.loadgen import run_matrix, warm
from bench.project_server import ProjectServer
from bench.server import ServerProcess
from bench.torchserve import TorchServe
from bench.tsconfig import ModelConfig, request_logging
from bench.workload import Plan, Target

SERVER_CPUS = "0"  # the server and all its processes
CLIENT_CPUS = "1"  # the load generator


@dataclass
class Load:
    """One load to put on a running server: a payload, levels, windows, reps, clients."""

    path: str
    payload: Path
    content_type: str
    levels: list[int]
    duration_s: float
    warmup_s: float
    reps: int
    expect: str | None = None
    wrk_levels: list[int] = field(default_factory=list)
    bodies: tuple[bytes, ...] = ()  # cycled through instead of `payload` (wrk sends payload)


@dataclass
class ServerRun:
    """One server configuration: which server, which model settings, which load."""

    label: str
    server: str  # "serving" or "torchserve"
    models: dict[str, ModelConfig]
    load: Load
    warm_s: float = 5.0
    pin: str | None = SERVER_CPUS
    extra_properties: dict[str, str] = field(default_factory=dict)
    request_logs: bool = False  # per-request logging on both servers (off: on neither)


def server_for(run: ServerRun, store: Path) -> ServerProcess:
    extra = {**request_logging(run.server, run.request_logs), **run.extra_properties}
    if run.server == "torchserve":
        return TorchServe(store, run.models, pin_cpus=run.pin, extra_properties=extra,
                          quiet_logs=not run.request_logs)
    return ProjectServer(store, run.models, pin_cpus=run.pin, extra_properties=extra)


def measure_server(run: ServerRun, store: Path, emit: Callable[[dict[str, Any]], None],
                   client_cpus: str | None = CLIENT_CPUS) -> dict[str, Any]:
    """Start the server, warm it (the JVM needs ~15 s of traffic), run the loads, stop it."""
    with server_for(run, store) as server, pinned(client_cpus):
        # The client's pinning lasts for this run only: a later server started from this
        # process (the unpinned scenario) must not inherit CPU 1 alone.
        load = run.load
        target = Target.from_file(server.base_url, load.path, load.payload, load.content_type,
                                  expect=load.expect)
        if load.bodies:
            target = replace(target, bodies=load.bodies)
        if run.warm_s:
            asyncio.run(warm(target, run.warm_s))
        plan = Plan(warmup_s=load.warmup_s, duration_s=load.duration_s)
        asyncio.run(run_matrix(target, load.levels, plan, reps=load.reps, label=run.label,
                               on_result=lambda r: emit(r.to_dict())))
        for rep in range(load.reps if load.wrk_levels and wrk.available() else 0):
            for level in load.wrk_levels:
                server.check_alive()
                emit(wrk.run(target, level, int(load.duration_s), int(load.warmup_s),
                             f"{run.label} (wrk)", rep, cpus=client_cpus))
        server.check_alive()
        described = describe(server, run.models)
        return {"label": run.label, "ready_s": server.ready_s, "described": described}


def describe(server: ServerProcess, models: dict[str, ModelConfig]) -> dict[str, Any]:
    """What each server says it runs: batch size and delay as it applied them."""
    import urllib.request

    out = {}
    for name in models:
        with urllib.request.urlopen(f"{server.management_url}/models/{name}") as resp:
            d = json.loads(resp.read())[0]
        out[name] = {k: d.get(k) for k in ("batchSize", "maxBatchDelay", "minWorkers")}
        out[name]["workers"] = [{k: w.get(k) for k in ("pid", "cores", "threads",
                                                       "maxInflightBatches")}
                                for w in d.get("workers", [])]
    return out


def in_process(mar: Path, payloads: list[Path], content_type: str, batch: int, label: str,
               cpus: str = SERVER_CPUS, duration: float = 8.0,
               windows: int = 3) -> dict[str, Any]:
    """The handler called in a loop in a fresh process on the server's CPU, in the environment
    the server gives a worker there (bench/inproc.py: its threads, denormal flushing ...); with
    several payloads each call's batch is the next ones of them, in turn."""
    bodies = [arg for f in payloads for arg in ("--payload", str(f))]
    done = subprocess.run(
        [sys.executable, "-m", "bench.inproc", "--mar", str(mar), *bodies,
         "--content-type", content_type, "--batch", str(batch),
         "--cpus", cpus, "--duration", str(duration), "--windows", str(windows),
         "--label", label, "--out", "/dev/stdout"],
        capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@contextmanager
def pinned(cpus: str | None) -> Iterator[None]:
    """Run the block pinned to `cpus`, then restore this process's affinity."""
    before = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
