"""The accelerator path, served: ResNet-50 on CUDA (or XPU) through the same code as on CPU.

Builds the default resnet50 archive with the real archiver, derives a second archive whose
`optimization:` block asks for bf16 + torch.compile, and a third with the same block whose
AOTInductor package is built here, on the device, as `serving archive --precompile` builds
it; starts `serving start` on the three, checks that the third serves its package (no compile
at start) and every answer against CPU fp32 eager on the same weights. Also times the served model
against the same model called in-process on the device, and, right after the served load,
scrapes /metrics for the GPU gauges (NVML) and the request counters and holds them against
nvidia-smi and the requests this check sent. Writes a JSON summary.

    python -m bench.device_check --out result.json [--requests 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import torch
from prometheus_client.parser import text_string_to_metric_families

from bench.archive import derive_archive
from model_store.build import build_all
from serving.handlers.packaging import precompile_archive
from tests.support.server import free_port

REPO = Path(__file__).resolve().parents[1]
OPTIMIZED = {
    "dtype": "bf16",
    "compile": {"mode": "default", "batch_sizes": [1, 4]},
    "warmup": {"shapes": [[1, 3, 224, 224]], "count": 4},
    "accuracy": {"metric": "cosine", "min_cosine": 0.99},
}


def reference_model(mar: Path, work: Path) -> torch.nn.Module:
    """The archive's own model definition and weights, fp32, on the CPU."""
    with zipfile.ZipFile(mar) as zf:
        zf.extractall(work)
    sys.path.insert(0, str(work))
    from model import ResNet50  # type: ignore[import-not-found]

    manifest = json.loads((work / "MAR-INF/MANIFEST.json").read_text())
    model = ResNet50()
    model.load_state_dict(torch.load(work / manifest["model"]["serializedFile"]))
    return model.eval()


def top5(logits: torch.Tensor) -> dict[str, float]:
    probs = torch.softmax(logits.float(), dim=-1)
    values, indices = probs.topk(5)
    return {str(int(i)): float(v) for v, i in zip(values, indices, strict=True)}


def post(url: str, body: bytes) -> tuple[dict[str, float], float]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"content-type": "application/octet-stream"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as resp:
        answer = json.loads(resp.read())
    return answer, (time.perf_counter() - start) * 1000


def compare(served: list[dict[str, float]], reference: list[dict[str, float]]) -> dict[str, Any]:
    agree = sum(next(iter(s)) == next(iter(r)) for s, r in zip(served, reference, strict=True))
    diffs = [abs(s.get(k, 0.0) - v) for s, r in zip(served, reference, strict=True)
             for k, v in r.items()]
    return {"top1_agreement": agree / len(served), "max_abs_prob_diff": max(diffs)}


async def served_throughput(url: str, body: bytes, concurrency: int,
                            total: int) -> tuple[float, int]:
    """Requests per second, and how many requests were answered."""
    loop = asyncio.get_running_loop()
    started = answered = 0

    async def worker() -> None:
        nonlocal started, answered
        while started < total:
            started += 1
            await loop.run_in_executor(None, post, url, body)
            answered += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answered / (time.perf_counter() - start), answered


def in_process_throughput(model: torch.nn.Module, device: torch.device, batch: int,
                          seconds: float = 5.0) -> float:
    x = torch.randn(batch, 3, 224, 224, device=device)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        torch.accelerator.synchronize()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x)
            n += batch
        torch.accelerator.synchronize()
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.device_check", description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--log", type=Path, help="where the server's log goes")
    parser.add_argument("--requests", type=int, default=32)
    args = parser.parse_args(argv)
    if not torch.accelerator.is_available():
        print("no accelerator here", file=sys.stderr)
        return 2
    device = torch.accelerator.current_accelerator()
    result: dict[str, Any] = {"torch": torch.__version__, "device": str(device),
                              "name": torch.cuda.get_device_name(0)
                              if device.type == "cuda" else device.type}
    with tempfile.TemporaryDirectory(prefix="device-check-") as tmp:
        store = Path(tmp) / "store"
        mar = build_all(store, only=["resnet50"])["resnet50"]
        on_gpu = {"deviceType": "gpu", "batchSize": 4, "maxBatchDelay": 5}
        derive_archive(mar, "resnet50-gpu", on_gpu)
        derive_archive(mar, "resnet50-bf16", {**on_gpu, "optimization": OPTIMIZED})
        packaged = derive_archive(mar, "resnet50-pt2", {**on_gpu, "optimization": OPTIMIZED})
        begun = time.perf_counter()
        result["precompile"] = precompile_archive(packaged, packaged,
                                                 threads=len(os.sched_getaffinity(0)))
        result["precompile"]["seconds"] = time.perf_counter() - begun
        reference = reference_model(mar, Path(tmp) / "ref")
        torch.manual_seed(0)
        inputs = [torch.randn(3, 224, 224) for _ in range(args.requests)]
        with torch.inference_mode():
            expected = [top5(reference(x[None])[0]) for x in inputs]
        port, mport, metrics_port = free_port(), free_port(), free_port()
        log_path = args.log or Path(tmp) / "server.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed below
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving", "start", "--model-store", str(store),
             "--models", ",".join(f"{name}.mar" for name in TOLERANCE),
             "--disable-token-auth",  # loopback only; no key file written into the checkout
             "--inference-address", f"http://127.0.0.1:{port}",
             "--management-address", f"http://127.0.0.1:{mport}",
             "--metrics-address", f"http://127.0.0.1:{metrics_port}",
             "--grpc-inference-port", str(free_port()),
             "--grpc-management-port", str(free_port())],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "SERVING_METRIC_TIME_INTERVAL": str(SAMPLE_S)})
        try:
            result["models"], result["metrics"] = run_checks(
                port, mport, metrics_port, inputs, expected, started, reference, device, proc,
                log_path)
        finally:
            proc.terminate()
            result["exit_code"] = proc.wait(timeout=120)
            log.close()
            result["server_log_tail"] = log_path.read_text()[-3000:]
    result["failures"] = failures(result["models"], result["metrics"], result["exit_code"])
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "server_log_tail"}, indent=2))
    return 1 if result["failures"] else 0


# Served on the accelerator against CPU fp32 eager on the same weights and inputs: eager must
# agree on every top-1 and within fp32 noise on the probabilities; bf16 + compile on every
# top-1 within bf16 rounding.
TOLERANCE = {"resnet50-gpu": 1e-3, "resnet50-bf16": 2e-2, "resnet50-pt2": 2e-2}


# s between the server's system-metric samples (TorchServe's default is 60 s): short, so the
# scrape after the load reads a sample taken after it.
SAMPLE_S = 1.0
# GPUMemoryUsed against nvidia-smi's memory.used, MiB. The server reads NVML's v1 memory info,
# whose `used` includes the memory the driver and firmware reserve; nvidia-smi's memory.used
# leaves that out and shows it as memory.reserved (hundreds of MiB to ~1 GiB on big GPUs), so
# the server's figure is held against used + reserved. What is left is rounding (nvidia-smi
# gives whole MiB, 1 MiB each) and what changed between the server's last sample and the
# nvidia-smi call, at most SAMPLE_S apart with the server idle: its models loaded and the
# caching allocators holding their blocks, so a few MiB at most (a CUDA context or a model's
# weights, the smallest real change, is hundreds). 64 MiB covers that with room; when
# nvidia-smi cannot say what is reserved, 1 GiB more is allowed for it.
MEMORY_TOLERANCE_MIB = 64.0
UNKNOWN_RESERVE_MIB = 1024.0
# Enough requests to keep a GPU busy past the scrape at 2.5 samples (~600 req/s on an H200).
UNDER_LOAD_REQUESTS = 3000


def failures(models: dict[str, Any], metrics: dict[str, Any], exit_code: int) -> list[str]:
    """What makes this check fail: a wrong answer, a model not on the device, GPU metrics
    missing or off from nvidia-smi, request counters off from what was sent, a bad exit."""
    problems = metrics_failures(metrics, models)
    for name, tolerance in TOLERANCE.items():
        m = models[name]
        cmp = m["vs_cpu_fp32"]
        if cmp["top1_agreement"] < 1.0:
            problems.append(f"{name}: top-1 agreement {cmp['top1_agreement']}")
        if cmp["max_abs_prob_diff"] > tolerance:
            problems.append(f"{name}: probability difference {cmp['max_abs_prob_diff']:.2e} "
                            f"> {tolerance}")
        if not all(w["device"].split(":")[0] in ("cuda", "xpu") for w in m["workers"]):
            problems.append(f"{name}: workers on {[w['device'] for w in m['workers']]}")
    if models["resnet50-bf16"]["optimization_applied"] != ["fold", "bf16", "compile"]:
        problems.append(f"resnet50-bf16: applied {models['resnet50-bf16']['optimization_applied']}")
    packaged = models["resnet50-pt2"]
    if (packaged["optimization_applied"] != ["precompiled"]
            or packaged["package_steps"] != ["fold", "bf16", "aot_inductor"]):
        problems.append(f"resnet50-pt2: applied {packaged['optimization_applied']}, package "
                        f"{packaged['package_steps']} ({packaged['precompiled']})")
    if exit_code != 0:
        problems.append(f"server exit code {exit_code}")
    return problems


def metrics_failures(metrics: dict[str, Any], models: dict[str, Any]) -> list[str]:
    problems = []
    gpu = metrics["gpu_samples"]
    smi = {row["index"]: row for row in metrics["nvidia_smi"]}
    used = {s["labels"].get("DeviceId"): s["value"] for s in gpu if s["name"] == "GPUMemoryUsed"}
    for name in ("GPUUtilization", "GPUMemoryUsed", "GPUMemoryUtilization"):
        ids = {s["labels"].get("DeviceId") for s in gpu if s["name"] == name}
        if not ids:
            problems.append(f"{name}: no series in /metrics")
        elif ids != set(smi):
            problems.append(f"{name}: DeviceId {sorted(map(str, ids))}, nvidia-smi lists "
                            f"{sorted(smi)}")
    on_gpu = {w["device"].split(":")[1] for name in TOLERANCE
              for w in models[name]["workers"] if ":" in w["device"]}
    for device_id in sorted(on_gpu):
        if not used.get(device_id):
            problems.append(f"GPUMemoryUsed on {device_id} is {used.get(device_id)} with "
                            "models loaded there")
    for device_id, value in sorted(used.items()):
        row = smi.get(str(device_id))
        if row is None:
            continue
        reserve = row.get("memory_reserved_mib")
        expected = row["memory_used_mib"] + (reserve or 0.0)
        slack = MEMORY_TOLERANCE_MIB + (0.0 if reserve is not None else UNKNOWN_RESERVE_MIB)
        if not expected - MEMORY_TOLERANCE_MIB <= value <= expected + slack:
            problems.append(f"GPUMemoryUsed on {device_id}: {value:.0f} MiB, nvidia-smi "
                            f"{row['memory_used_mib']:.0f} used + {reserve} reserved")
    load = metrics["under_load"]
    busy = [s["value"] for s in load["gpu_samples"] if s["name"] == "GPUUtilization"]
    if load["load_running_at_scrape"] and not any(busy):
        problems.append(f"GPUUtilization {busy} with {load['model']} under load")
    for name in TOLERANCE:
        sent, counted = models[name]["requests_sent"], metrics["ts_inference_requests"].get(name)
        if counted != sent:
            problems.append(f"{name}: ts_inference_requests_total {counted}, sent {sent}")
    return problems


def nvidia_smi() -> list[dict[str, Any]]:
    """One row per GPU, from nvidia-smi; the reserve as a second query (a driver that does not
    know the field must not lose the first)."""
    query = ["nvidia-smi", "--format=csv,noheader,nounits"]
    rows = []
    out = subprocess.run([*query, "--query-gpu=index,memory.used,memory.total,utilization.gpu"],
                         capture_output=True, text=True, check=True).stdout
    for line in out.strip().splitlines():
        index, used, total, util = (f.strip() for f in line.split(","))
        rows.append({"index": index, "memory_used_mib": float(used),
                     "memory_total_mib": float(total), "utilization_gpu": float(util)})
    reserved = subprocess.run([*query, "--query-gpu=index,memory.reserved"],
                              capture_output=True, text=True)
    if reserved.returncode == 0:
        for line in reserved.stdout.strip().splitlines():
            index, value = (f.strip() for f in line.split(",", 1))
            for row in rows:
                if row["index"] == index:
                    with contextlib.suppress(ValueError):  # "[N/A]"
                        row["memory_reserved_mib"] = float(value)
    return rows


def scrape(metrics_port: int) -> dict[str, Any]:
    """/metrics' GPU samples and request counters, and nvidia-smi's view right after."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as r:
        text = r.read().decode()
    smi = nvidia_smi()
    gpu: list[dict[str, Any]] = []
    requests: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("GPU"):
                gpu.append({"name": s.name, "labels": s.labels, "value": s.value})
            elif s.name == "ts_inference_requests_total":
                model = s.labels["model_name"]
                requests[model] = requests.get(model, 0) + int(s.value)
    return {"gpu_samples": gpu, "nvidia_smi": smi, "ts_inference_requests": requests}


async def scrape_under_load(url: str, body: bytes,
                            metrics_port: int) -> tuple[dict[str, Any], int, bool]:
    """Scrapes while `url` is under load, a few samples into it: (scrape, requests answered,
    whether the load was still running when the scrape came back)."""
    load = asyncio.create_task(served_throughput(url, body, 16, UNDER_LOAD_REQUESTS))
    await asyncio.sleep(2.5 * SAMPLE_S)
    during = await asyncio.get_running_loop().run_in_executor(None, scrape, metrics_port)
    running = not load.done()
    _, answered = await load
    return during, answered, running


def run_checks(port: int, mport: int, metrics_port: int, inputs: list[torch.Tensor],
               expected: list[dict[str, float]], started: float,
               reference: torch.nn.Module, device: torch.device,
               proc: subprocess.Popen[bytes], log_path: Path,
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    names = tuple(TOLERANCE)
    described: dict[str, Any] = {}
    ready_after: dict[str, float] = {}
    deadline = time.monotonic() + 400
    while len(described) < len(names):
        log = log_path.read_text(errors="replace")
        if proc.poll() is not None or "could not load" in log or time.monotonic() > deadline:
            raise RuntimeError(f"models did not become ready:\n{log[-5000:]}")
        for name in names:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{mport}/models/{name}") as r:
                    d = json.loads(r.read())[0]
                if d["workers"] and all(w["status"] == "READY" for w in d["workers"]):
                    described[name] = d
                    ready_after.setdefault(name, time.perf_counter() - started)
            except OSError:
                pass
        time.sleep(1)
    ready_s = time.perf_counter() - started
    out: dict[str, Any] = {}
    bodies = [x.numpy().astype("<f4").tobytes() for x in inputs]
    for name in names:
        url = f"http://127.0.0.1:{port}/predictions/{name}"
        answers, latencies = zip(*(post(url, b) for b in bodies), strict=True)
        d = described[name]
        report = (d.get("optimization") or {}).get("report") or {}
        rate, answered = asyncio.run(served_throughput(url, bodies[0], 16, 400))
        out[name] = {
            "workers": [{k: w.get(k) for k in ("device", "gpu", "pid", "status")}
                        for w in d["workers"]],
            "optimization_applied": report.get("applied"),
            "optimization_steps": [(s["name"], s["status"], s.get("reason"), s.get("seconds"))
                                   for s in report.get("steps", [])],
            "compile_seconds": report.get("compile_seconds"),
            # The pipeline's time in the worker (compile, or loading the package, and warm-up)
            # and start to ready as seen from outside, the three models loading at once.
            "optimization_seconds": report.get("total_seconds"),
            "ready_after_s": ready_after[name],
            "precompiled": report.get("precompiled"),
            "package_steps": report.get("package_steps"),
            "vs_cpu_fp32": compare(list(answers), expected),
            "latency_ms_c1_median": statistics.median(latencies),
            "served_req_per_s_c16": rate,
            "requests_sent": len(answers) + answered,
        }
    # A longer load on one model, scraped in its middle: GPUUtilization must see it.
    busy = "resnet50-gpu"
    during, answered, running = asyncio.run(
        scrape_under_load(f"http://127.0.0.1:{port}/predictions/{busy}", bodies[0],
                          metrics_port))
    out[busy]["requests_sent"] += answered
    # The GPU has just been busy; wait past one sample so the scrape reads one taken after.
    time.sleep(1.5 * SAMPLE_S)
    metrics = scrape(metrics_port)
    metrics["under_load"] = {"model": busy, "load_running_at_scrape": running,
                             "gpu_samples": during["gpu_samples"],
                             "nvidia_smi": during["nvidia_smi"]}
    out["all_ready_after_s"] = ready_s
    model = reference.to(device)
    out["in_process_fp32_batch4_items_per_s"] = in_process_throughput(model, device, 4)
    return out, metrics


if __name__ == "__main__":
    raise SystemExit(main())
