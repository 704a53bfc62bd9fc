"""TorchServe's gRPC `Predictions` under load from h2load (nghttp2's C client), both servers.

    python -m bench.grpc_h2load [--levels 1,16] [--reps 3] [--seconds 10] [--out DIR]

The grpc.aio client of `bench.grpc_run` spends about 300 µs of its core per call, which caps
what it can offer near the rates both servers reach; h2load sends the same framed protobuf
request (compiled from TorchServe's own protos) over one HTTP/2 connection with C concurrent
streams, at a fraction of that cost. Servers run one after the other with the order flipped
every repetition, the server and its processes on CPU 0 and h2load on CPU 1. Each call's
gRPC status is checked afterwards on a sample (h2load sees only the HTTP status).

Needs h2load on PATH (Debian/Ubuntu: `apt-get install nghttp2-client`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import struct
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from bench.archive import build_noop_mar
from bench.grpc_stubs import torchserve_stubs
from bench.machine import facts
from bench.project_server import ProjectServer
from bench.scenarios import CLIENT_CPUS, SERVER_CPUS
from bench.torchserve import TorchServe
from bench.tsconfig import ModelConfig

REPO = Path(__file__).resolve().parents[1]
SERVICE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"


def start(kind: str, store: Path, models: dict[str, ModelConfig]) -> Any:
    """Either server as bench.run starts it for the equal-terms rows: no line per request."""
    extra = {"metrics_mode": "prometheus"}
    if kind == "torchserve":
        return TorchServe(store, models, pin_cpus=SERVER_CPUS, quiet_logs=True,
                          extra_properties=extra)
    return ProjectServer(store, models, pin_cpus=SERVER_CPUS, extra_properties=extra)


def framed_request(model: str, body: bytes) -> bytes:
    """One gRPC message on the wire: a zero compression flag, a 4-byte length, the proto."""
    pb2 = torchserve_stubs()["inference_pb2"]
    message = pb2.PredictionsRequest(model_name=model, input={"data": body}).SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def check_call(address: str, model: str, body: bytes, expect: bytes) -> None:
    """One real call through the stubs: the server answers gRPC OK with the expected body."""
    stubs = torchserve_stubs()
    with grpc.insecure_channel(address) as channel:
        stub = stubs["inference_pb2_grpc"].InferenceAPIsServiceStub(channel)
        reply = stub.Predictions(stubs["inference_pb2"].PredictionsRequest(
            model_name=model, input={"data": body}), timeout=30)
    if expect not in reply.prediction:
        raise RuntimeError(f"unexpected answer from {address}: {reply.prediction[:200]!r}")


def run_h2load(port: int, payload: Path, concurrency: int, seconds: float,
               warm_s: float) -> dict[str, Any]:
    """h2load on CLIENT_CPUS for `seconds` after `warm_s` of warm-up; per-call latencies from
    its log file."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "calls.log"
        warm = ["--warm-up-time", f"{warm_s:g}"] if warm_s else []
        command = ["taskset", "-c", CLIENT_CPUS, "h2load", "-c", "1", "-m", str(concurrency),
                   "-D", f"{seconds:g}", *warm, "-d", str(payload),
                   "-H", "content-type: application/grpc", "-H", "te: trailers",
                   "--log-file", str(log),
                   f"http://127.0.0.1:{port}/{SERVICE}/Predictions"]
        started = time.perf_counter()
        cpu_before = _children_cpu()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        client_cpu = (_children_cpu() - cpu_before) / (time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(f"h2load failed ({done.returncode}): {done.stderr[-500:]}")
        durations = []
        statuses: dict[str, int] = {}
        for line in log.read_text().splitlines():
            fields = line.split("\t")
            if len(fields) >= 3:
                statuses[fields[1]] = statuses.get(fields[1], 0) + 1
                durations.append(int(fields[2]) / 1000.0)  # µs -> ms
    durations.sort()
    ok = statuses.get("200", 0)
    return {"requests": len(durations), "http_200": ok, "statuses": statuses,
            "rps": ok / seconds,
            "p50_ms": _quantile(durations, 0.50), "p99_ms": _quantile(durations, 0.99),
            "client_cpu": client_cpu, "summary": _summary(done.stdout)}


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def _summary(stdout: str) -> str:
    return " | ".join(line.strip() for line in stdout.splitlines()
                      if line.startswith(("finished in", "requests:", "status codes:")))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_h2load", description=__doc__)
    parser.add_argument("--levels", default="1,16")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warm", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/grpc-h2load")
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is not on PATH (apt-get install nghttp2-client)")
    levels = [int(x) for x in args.levels.split(",")]
    store = REPO / "model_store" / "build"
    store.mkdir(parents=True, exist_ok=True)
    # The equal-terms archive of bench.run: a plain BaseHandler noop (no `can_overlap`), so
    # this server, like TorchServe, gives the worker one batch at a time.
    archive = build_noop_mar(store, "noop-plain")
    models = {"noop": ModelConfig(archive.name, batch_size=1, max_batch_delay_ms=5)}
    body = b'{"x": 1}'
    (args.out / "raw").mkdir(parents=True, exist_ok=True)
    payload = args.out / "raw" / "request.bin"
    payload.write_bytes(framed_request("noop", body))
    rows_path = args.out / "raw" / "results.jsonl"
    machine = facts()
    (args.out / "raw" / "machine.json").write_text(json.dumps(machine, indent=2))
    rows: list[dict[str, Any]] = []
    with rows_path.open("w") as rows_file:
        for rep in range(args.reps):
            order = ["serving", "torchserve"] if rep % 2 == 0 else ["torchserve", "serving"]
            for kind in order:
                with start(kind, store, models) as server:
                    port = server.ports.grpc_inference
                    check_call(f"127.0.0.1:{port}", "noop", body, b'"ok"')
                    # The JVM needs traffic before it is warm; both servers get the same.
                    run_h2load(port, payload, 16, 15.0, 0.0)
                    for c in levels:
                        row = {"server": kind, "rep": rep, "concurrency": c,
                               **run_h2load(port, payload, c, args.seconds, args.warm)}
                        check_call(f"127.0.0.1:{port}", "noop", body, b'"ok"')
                        server.check_alive()
                        rows.append(row)
                        rows_file.write(json.dumps(row) + "\n")
                        rows_file.flush()
                        print(f"rep {rep} {kind:10s} c={c:3d} {row['rps']:8.0f} req/s "
                              f"p50 {row['p50_ms']:.2f} p99 {row['p99_ms']:.2f} ms "
                              f"client CPU {row['client_cpu']:.0%} {row['statuses']}",
                              flush=True)
    (args.out / "report.md").write_text(report(rows, machine, args))
    print((args.out / "report.md").read_text())
    return 0


def report(rows: list[dict[str, Any]], machine: dict[str, Any], args: argparse.Namespace) -> str:
    lines = ["# TorchServe gRPC `Predictions`, noop b1: this server vs TorchServe 0.12 (h2load)",
             "", "The same `noop-plain.mar` on both (bench.run's equal-terms archive: a plain "
             "BaseHandler that declares no `can_overlap`); per-request logging off on both "
             "(TorchServe started with bench.tsconfig's quiet log4j2 file), metrics in "
             "Prometheus mode on both.",
             "", f"h2load (one HTTP/2 connection, c concurrent streams) on CPU {CLIENT_CPUS}, "
             f"each server and its processes on CPU {SERVER_CPUS}; {args.reps} reps of "
             f"{args.seconds:.0f} s (+{args.warm:.0f} s warm-up) per level, servers alternated "
             "with the order flipped each rep, 15 s of traffic before the first window. "
             f"Machine: {machine.get('cpu', '?')}.", "",
             "| server | c | req/s median (min-max) | p50 ms | p99 ms | client CPU |",
             "|---|---:|---:|---:|---:|---:|"]
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["server"], row["concurrency"]), []).append(row)
    for (server, c), group in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rps = [r["rps"] for r in group]
        lines.append(f"| {server} | {c} | {statistics.median(rps):.0f} ({min(rps):.0f}-"
                     f"{max(rps):.0f}) | {statistics.median(r['p50_ms'] for r in group):.2f} | "
                     f"{statistics.median(r['p99_ms'] for r in group):.2f} | "
                     f"{statistics.median(r['client_cpu'] for r in group):.0%} |")
    lines += ["", "| c | req/s ratio per rep | median | p99 ratio (median) |",
              "|---:|---|---:|---:|"]
    for c in sorted({r["concurrency"] for r in rows}):
        pairs = [(s, t) for s in cells.get(("serving", c), [])
                 for t in cells.get(("torchserve", c), []) if s["rep"] == t["rep"]]
        ratios = [s["rps"] / t["rps"] for s, t in pairs if t["rps"]]
        p99 = [s["p99_ms"] / t["p99_ms"] for s, t in pairs if t["p99_ms"]]
        if ratios:
            lines.append(f"| {c} | {', '.join(f'{x:.2f}' for x in ratios)} | "
                         f"{statistics.median(ratios):.2f}x | {statistics.median(p99):.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
