"""The accelerator path, served: ResNet-50 on CUDA (or XPU) through the same code as on CPU.

Builds the default resnet50 archive with the real archiver, derives a second archive whose
`optimization:` block asks for bf16 + torch.compile, starts `serving start` on them, and
checks every answer against CPU fp32 eager on the same weights. Also times the served model
against the same model called in-process on the device. Writes a JSON summary.

    python -m bench.device_check --out result.json [--requests 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

from bench.archive import derive_archive
from model_store.build import build_all
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


async def served_throughput(url: str, body: bytes, concurrency: int, total: int) -> float:
    loop = asyncio.get_running_loop()
    done = 0

    async def worker() -> None:
        nonlocal done
        while done < total:
            done += 1
            await loop.run_in_executor(None, post, url, body)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - start)


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
        reference = reference_model(mar, Path(tmp) / "ref")
        torch.manual_seed(0)
        inputs = [torch.randn(3, 224, 224) for _ in range(args.requests)]
        with torch.inference_mode():
            expected = [top5(reference(x[None])[0]) for x in inputs]
        port, mport = free_port(), free_port()
        log_path = args.log or Path(tmp) / "server.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed below
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving", "start", "--model-store", str(store),
             "--models", "resnet50-gpu.mar,resnet50-bf16.mar",
             "--disable-token-auth",  # loopback only; no key file written into the checkout
             "--inference-address", f"http://127.0.0.1:{port}",
             "--management-address", f"http://127.0.0.1:{mport}",
             "--metrics-address", f"http://127.0.0.1:{free_port()}",
             "--grpc-inference-port", str(free_port()),
             "--grpc-management-port", str(free_port())],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            result["models"] = run_checks(port, mport, inputs, expected, started, reference,
                                          device, proc, log_path)
        finally:
            proc.terminate()
            result["exit_code"] = proc.wait(timeout=120)
            log.close()
            result["server_log_tail"] = log_path.read_text()[-3000:]
    result["failures"] = failures(result["models"], result["exit_code"])
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "server_log_tail"}, indent=2))
    return 1 if result["failures"] else 0


# Served on the accelerator against CPU fp32 eager on the same weights and inputs: eager must
# agree on every top-1 and within fp32 noise on the probabilities; bf16 + compile on every
# top-1 within bf16 rounding.
TOLERANCE = {"resnet50-gpu": 1e-3, "resnet50-bf16": 2e-2}


def failures(models: dict[str, Any], exit_code: int) -> list[str]:
    """What makes this check fail: a wrong answer, a model not on the device, a bad exit."""
    problems = []
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
    if exit_code != 0:
        problems.append(f"server exit code {exit_code}")
    return problems


def run_checks(port: int, mport: int, inputs: list[torch.Tensor],
               expected: list[dict[str, float]], started: float,
               reference: torch.nn.Module, device: torch.device,
               proc: subprocess.Popen[bytes], log_path: Path) -> dict[str, Any]:
    names = ("resnet50-gpu", "resnet50-bf16")
    described: dict[str, Any] = {}
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
        out[name] = {
            "workers": [{k: w.get(k) for k in ("device", "gpu", "pid", "status")}
                        for w in d["workers"]],
            "optimization_applied": report.get("applied"),
            "optimization_steps": [(s["name"], s["status"], s.get("reason"))
                                   for s in report.get("steps", [])],
            "compile_seconds": report.get("compile_seconds"),
            "vs_cpu_fp32": compare(list(answers), expected),
            "latency_ms_c1_median": statistics.median(latencies),
            "served_req_per_s_c16": asyncio.run(served_throughput(url, bodies[0], 16, 400)),
        }
    out["all_ready_after_s"] = ready_s
    model = reference.to(device)
    out["in_process_fp32_batch4_items_per_s"] = in_process_throughput(model, device, 4)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
