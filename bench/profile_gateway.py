"""Where the server's time goes under load: py-spy on the gateway and the worker, CPU time
per request.

    python -m bench.profile_gateway --out DIR [--batch 8] [--seconds 12] [--model plain]

Serves a noop model (server on CPU 0, load on CPU 1), records the gateway and the worker
process with py-spy while a c=16 load runs, and writes profile-b<batch>.md: CPU µs per
request of the gateway and of the worker (from /proc, robust to a noisy box), and for each
process the functions that hold the most samples (self and inclusive), plus py-spy's raw
stacks. `--model store` is the default store's noop (it declares `can_overlap`); `plain`
(the default) is a plain `BaseHandler` noop that does not, so batches go one at a time, as
TorchServe sends them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench.archive import build_noop_mar
from bench.loadgen import open_session, run_level
from bench.project_server import ProjectServer
from bench.tsconfig import ModelConfig
from bench.workload import Plan, Target

REPO = Path(__file__).resolve().parents[1]


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def summarize(raw: Path, top: int = 25) -> list[str]:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        if any(f.startswith("Thread._bootstrap") for f in frames):
            continue  # helper threads (an idle executor looks busy to py-spy): loop only
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            incl[frame] += n
    out = ["| share | function (self time) |", "|---:|---|"]
    out += [f"| {v / total:.1%} | `{k[:140]}` |" for k, v in own.most_common(top)]
    out += ["", "| share | function (inclusive, serving/uvicorn/ts frames) |", "|---:|---|"]
    frames = [(k, v) for k, v in incl.most_common(200)
              if "/serving/" in k or "uvicorn" in k or "starlette" in k or "/ts/" in k]
    out += [f"| {v / total:.1%} | `{k[:140]}` |" for k, v in frames[:top]]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_gateway", description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=12)
    parser.add_argument("--model", choices=("plain", "store"), default="plain")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    args.out.mkdir(parents=True, exist_ok=True)
    models = {"noop": ModelConfig("noop.mar", batch_size=args.batch, max_batch_delay_ms=5)}
    payload = args.out / "noop.json"
    payload.write_text('{"x": 1}')
    store = REPO / "model_store" / "build"
    if args.model == "plain":
        store = args.out / "store"
        store.mkdir(exist_ok=True)
        build_noop_mar(store)
    with ProjectServer(store, models, pin_cpus="0") as server:
        gateway = next(p for p in server.processes() if "serving" in " ".join(p.cmdline())
                       and "start" in p.cmdline())
        workers = [p.pid for p in gateway.children()]
        os.sched_setaffinity(0, {1})
        target = Target.from_file(server.base_url, "/predictions/noop", payload,
                                  "application/json")
        raws = {"gateway": args.out / f"gateway-b{args.batch}.txt",
                "worker": args.out / f"worker-b{args.batch}.txt"}
        recorders = [subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(args.seconds),
                                       "-r", "250", "-f", "raw", "-o", str(raws[what])],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for what, pid in (("gateway", gateway.pid), ("worker", workers[0]))]
        before = (cpu_seconds([gateway.pid]), cpu_seconds(workers), time.perf_counter())

        async def load() -> int:
            async with open_session(16, 60) as session:
                result = await run_level(session, target, 16,
                                         Plan(warmup_s=0, duration_s=args.seconds), label="p")
            return result.ok + result.late

        done = asyncio.run(load())
        after = (cpu_seconds([gateway.pid]), cpu_seconds(workers), time.perf_counter())
        for recorder in recorders:
            recorder.wait(timeout=60)
    gw_us = (after[0] - before[0]) / done * 1e6
    wk_us = (after[1] - before[1]) / done * 1e6
    lines = [f"# Profile: {args.model} noop, batch {args.batch}, c=16 (server CPU 0, load CPU 1)",
             "", f"- requests: {done} in {after[2] - before[2]:.1f} s "
             f"({done / (after[2] - before[2]):.0f} req/s, with py-spy sampling at 250 Hz)",
             f"- CPU per request: gateway {gw_us:.0f} µs, worker {wk_us:.0f} µs, "
             f"together {gw_us + wk_us:.0f} µs (from /proc, user + system)",
             "- py-spy counts samples of each process's threads; time spent inside C code "
             "(uvloop's epoll, socket reads and writes, the kernel switching between the "
             "processes on the same core) shows as the Python frame that called into it "
             "(`Runner.run` in the gateway).",
             "", "## Gateway", "", *summarize(raws["gateway"]),
             "", "## Worker", "", *summarize(raws["worker"])]
    (args.out / f"profile-b{args.batch}.md").write_text("\n".join(lines) + "\n")
    print(args.out / f"profile-b{args.batch}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
