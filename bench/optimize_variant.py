"""One optimisation variant, in process: its speed at each batch size and its accuracy.

Loads the archive's handler twice in this process, the fp32 eager reference and a copy put
through the server's own pipeline code (`optimize_handler`, as a worker runs it), then
measures the optimised handler's items/s (handler calls in a loop, pre- and post-processing
included) and compares its answers with the reference's on fixed inputs. Run one variant
per process (`python -m bench.optimize_variant ...`): compiled state is per process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch


def _service(model_dir: Path, batch: int) -> Any:
    from serving.handlers.service import HandlerService

    manifest = json.loads((model_dir / "MAR-INF/MANIFEST.json").read_text())
    from serving.handlers.modelconfig import read_model_yaml

    yaml_config = read_model_yaml(model_dir, manifest["model"].get("configFile"))
    yaml_config.pop("pt2", None)
    return HandlerService.load(model_name=manifest["model"]["modelName"], model_dir=model_dir,
                               manifest=manifest, handler_spec=manifest["model"]["handler"],
                               batch_size=batch, gpu_id=None, model_yaml_config=yaml_config)


def _items(bodies: list[bytes], content_type: str) -> list[Any]:
    from serving.handlers.service import WorkItem

    return [WorkItem(f"r{i}", {}, [("body", content_type, b)]) for i, b in enumerate(bodies)]


def _answers(service: Any, bodies: list[bytes], content_type: str) -> list[Any]:
    out = []
    for item in _items(bodies, content_type):
        (result,) = service.predict([item])
        out.append(json.loads(result.body))
    return out


def _accuracy(reference: list[Any], optimized: list[Any]) -> dict[str, float]:
    if isinstance(reference[0], dict):  # classifier top-5: {class: probability}
        agree = sum(next(iter(a)) == next(iter(b)) for a, b in zip(reference, optimized,
                                                                    strict=True))
        return {"top1_agreement": agree / len(reference)}
    cosines = []
    for a, b in zip(reference, optimized, strict=True):
        ta, tb = torch.tensor(a), torch.tensor(b)
        cosines.append(float(torch.nn.functional.cosine_similarity(ta, tb, dim=0)))
    return {"mean_cosine": statistics.fmean(cosines), "min_cosine": min(cosines)}


def _throughput(service: Any, body: bytes, content_type: str, batch: int, seconds: float,
                windows: int) -> dict[str, float]:
    items = _items([body] * batch, content_type)
    for _ in range(3):
        service.predict(items)
    rates = []
    for _ in range(windows):
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            result = service.predict(items)
            if not isinstance(result, list):
                raise RuntimeError(f"the handler failed: {result.message}")
            calls += 1
        rates.append(calls * batch / (time.perf_counter() - start))
    return {"items_per_s": statistics.median(rates), "min": min(rates), "max": max(rates)}


def _profile(service: Any, body: bytes, content_type: str, batch: int, path: Path) -> None:
    """Where the time of a batch goes: the top operators of a few handler calls, measured."""
    from torch.profiler import ProfilerActivity, profile

    items = _items([body] * batch, content_type)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            service.predict(items)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15,
                                      max_name_column_width=70)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# 3 handler calls at batch {batch}, operators by self CPU time\n{table}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.optimize_variant", description=__doc__)
    p.add_argument("--mar", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--config", default="", help="the optimization: block as JSON; empty: none")
    p.add_argument("--content-type", required=True)
    p.add_argument("--speed-payload", type=Path, required=True)
    p.add_argument("--accuracy-payloads", type=Path, required=True, help="folder of bodies")
    p.add_argument("--warmup-payloads", type=Path, help="folder copied into the model dir")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cpus", default="0")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--profile", type=Path, help="write an operator profile of the largest batch")
    args = p.parse_args(argv)
    os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    torch.set_num_threads(args.threads)
    bodies = [f.read_bytes() for f in sorted(args.accuracy_payloads.iterdir())]
    row: dict[str, Any] = {"model": args.mar.stem, "variant": args.name,
                           "threads": args.threads, "cpus": args.cpus}
    with tempfile.TemporaryDirectory(prefix="opt-variant-") as tmp:
        model_dir = Path(tmp) / "model"
        with zipfile.ZipFile(args.mar) as zf:
            zf.extractall(model_dir)
        if args.warmup_payloads:
            for f in args.warmup_payloads.iterdir():
                (model_dir / f.name).write_bytes(f.read_bytes())
        sys.path.insert(0, str(model_dir))
        os.chdir(model_dir)
        batches = [int(b) for b in args.batches.split(",")]
        reference = _service(model_dir, max(batches))
        expected = _answers(reference, bodies, args.content_type)
        service = reference
        if args.config:
            from serving.handlers.optimizing import optimize_handler
            from serving.optimize.config import OptimizationConfig

            service = _service(model_dir, max(batches))
            config = OptimizationConfig.model_validate(json.loads(args.config))
            start = time.perf_counter()
            report = optimize_handler(service, config, model_dir, None, max(batches))
            row["optimize_seconds"] = time.perf_counter() - start
            row["applied"] = report.get("applied")
            row["refused"] = [(s["name"], s["reason"]) for s in report.get("steps", [])
                              if s["status"] in ("refused", "failed")]
            row["compile_seconds"] = report.get("compile_seconds")
            row["warmup_seconds"] = report.get("warmup_seconds")
            row["chosen"] = report.get("chosen")
            row["candidates"] = report.get("candidates")
            row["error"] = report.get("error")
        row.update(_accuracy(expected, _answers(service, bodies, args.content_type)))
        body = args.speed_payload.read_bytes()
        for batch in batches:
            row[f"b{batch}"] = _throughput(service, body, args.content_type, batch,
                                           args.seconds, args.windows)
        if args.profile:
            _profile(service, body, args.content_type, max(batches), args.profile)
            row["profile"] = args.profile.name
    print(json.dumps(row, default=lambda v: None if isinstance(v, float) and math.isnan(v)
                     else str(v)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
