"""One command for the optimisation benchmark: variants of resnet50 and minilm, in process and
served, their accuracy against fp32, and start-up with and without a precompiled package.

    python -m bench.optimize_run [--models resnet50,minilm] [--quick]
                                 [--parts inproc,served,startup] [--out bench/results/optimize]

Everything runs with one thread on CPU 0 (the serving benchmark's server core); the load
generator of the served runs is on CPU 1. Each part writes its own raw file (a part run
again replaces its file), and the report is written from whatever parts are there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.archive import derive_archive
from bench.loadgen import run_matrix
from bench.project_server import ProjectServer
from bench.scenarios import pinned
from bench.tsconfig import ModelConfig
from bench.workload import Plan, Target
from model_store.build import build_all
from model_store.optimized import SENTENCES  # the default store's warm-up sentences

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "bench/results/optimize/profiles"  # set from --out in main()
BUCKETS = {"mode": "default", "batch_sizes": [1, 8]}
RESNET_ACCURACY_INPUTS = 200  # one disagreement is 0.5%: the 99% target allows two
MEASURE_ONLY = {"metric": "max_abs", "max_abs_error": 1e9}  # measure accuracy, refuse nothing


def variants(model: str) -> dict[str, dict[str, Any] | None]:
    warm = {"requests": [f"warm{i}.{'bin' if model == 'resnet50' else 'txt'}"
                         for i in range(16)]}
    int8 = ({"quantization": {"mode": "static"}} if model == "resnet50"
            else {"quantization": {"mode": "dynamic"}})
    common = {"warmup": warm, "accuracy": MEASURE_ONLY}
    return {
        "fp32 eager": None,
        "fp32 compiled": {**common, "compile": BUCKETS},
        "bf16 eager": {**common, "dtype": "bf16"},
        "bf16 compiled": {**common, "dtype": "bf16", "compile": BUCKETS},
        f"int8 {'static' if model == 'resnet50' else 'dynamic'}": {**common, **int8,
                                                                   "compile": BUCKETS},
        # auto keeps the default accuracy budget: what an operator would get.
        "auto": {"auto": True, "warmup": warm, "compile": BUCKETS},
    }


def payloads(work: Path) -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng(1)
    out: dict[str, dict[str, Any]] = {}
    for model in ("resnet50", "minilm"):
        for kind in ("accuracy", "warmup"):
            (work / model / kind).mkdir(parents=True, exist_ok=True)
    for i in range(RESNET_ACCURACY_INPUTS):
        (work / "resnet50/accuracy" / f"{i:03d}.bin").write_bytes(
            rng.standard_normal((3, 224, 224)).astype("<f4").tobytes())
    for i in range(16):
        (work / "resnet50/warmup" / f"warm{i}.bin").write_bytes(
            rng.standard_normal((3, 224, 224)).astype("<f4").tobytes())
        # Different lengths, so compiled text models see the sequence dimension vary.
        (work / "minilm/warmup" / f"warm{i}.txt").write_text(SENTENCES[i])
    for i, text in enumerate(SENTENCES * 2):
        (work / "minilm/accuracy" / f"{i:03d}.txt").write_text(text.lower() if i >= 16
                                                               else text)
    (work / "resnet50/speed.bin").write_bytes((work / "resnet50/accuracy/000.bin").read_bytes())
    (work / "minilm/speed.txt").write_text(SENTENCES[0])
    out["resnet50"] = {"ctype": "application/octet-stream", "speed": work / "resnet50/speed.bin"}
    out["minilm"] = {"ctype": "text/plain", "speed": work / "minilm/speed.txt"}
    for model in out:
        out[model]["accuracy"] = work / model / "accuracy"
        out[model]["warmup"] = work / model / "warmup"
    return out


def in_process(mar: Path, name: str, config: dict[str, Any] | None, p: dict[str, Any],
               quick: bool) -> dict[str, Any]:
    profile = PROFILES / f"{mar.stem.split('-')[0]}-{name.replace(' ', '-')}.txt"
    cmd = [sys.executable, "-m", "bench.optimize_variant", "--mar", str(mar), "--name", name,
           "--profile", str(profile),
           "--config", json.dumps(config) if config else "", "--content-type", p["ctype"],
           "--speed-payload", str(p["speed"]), "--accuracy-payloads", str(p["accuracy"]),
           "--warmup-payloads", str(p["warmup"]), "--seconds", "3" if quick else "6",
           "--windows", "2" if quick else "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        return {"model": mar.stem, "variant": name, "failed": done.stderr[-2000:]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def with_warmup(mar: Path, name: str, config: dict[str, Any] | None, warm_dir: Path) -> Path:
    """The archive with the warm-up bodies inside and the variant's optimization: block."""
    out = derive_archive(mar, name, {"optimization": config} if config else {})
    with zipfile.ZipFile(out, "a") as zf:
        for f in sorted(warm_dir.iterdir()):
            zf.write(f, f.name)
    return out


def served(store: Path, archive: Path, p: dict[str, Any], quick: bool,
           extra: dict[str, str] | None = None) -> dict[str, Any]:
    models = {"b1": ModelConfig(archive.name, batch_size=1),
              "b8": ModelConfig(archive.name, batch_size=8, max_batch_delay_ms=10)}
    with ProjectServer(store, models, pin_cpus="0", extra_properties=extra,
                       ready_timeout_s=1800) as server, pinned("1"):
        out: dict[str, Any] = {"ready_s": server.ready_s}
        for label, c in (("b1", 1), ("b8", 16)):
            target = Target.from_file(server.base_url, f"/predictions/{label}", p["speed"],
                                      p["ctype"])
            plan = Plan(warmup_s=3, duration_s=8 if quick else 15)
            (result,) = asyncio.run(run_matrix(target, [c], plan, label=label))
            out[label] = {"req_s": result.rps, "p50_ms": result.p50_ms,
                          "p99_ms": result.p99_ms, "errors": result.error_count}
        return out


def _ready_s(store: Path, archive: str, check_package: bool) -> tuple[float, bool | None]:
    """Seconds from `serving start` to ready with a cold compile cache; with
    `check_package`, also whether the worker served the package (not a fallback compile)."""
    models = {"m": ModelConfig(archive, batch_size=8)}
    with tempfile.TemporaryDirectory(prefix="cold-cache-") as cache, ProjectServer(
            store, models, pin_cpus="0", ready_timeout_s=1800,
            extra_properties={"compile_cache_dir": cache}) as server:
        if not check_package:
            return server.ready_s, None
        report = server.optimization_report("m")
        step = next((s for s in report.get("steps", []) if s["name"] == "precompiled"), {})
        return server.ready_s, step.get("status") == "applied"


def startup(store: Path, mar: Path, quick: bool) -> dict[str, Any]:
    """Start to ready with a cold compile cache, compiling and with a precompiled package,
    alternated over reps (medians quoted: one start is at the mercy of this shared box)."""
    out: dict[str, Any] = {"archive": mar.name}
    packaged = store / f"{mar.stem}-pt2.mar"
    shutil.copy(mar, packaged)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "serving", "archive", "--precompile",
                           "--precompile-threads", "1", "--from-mar", str(packaged),
                           "--export-path", str(store)], capture_output=True, text=True,
                          cwd=REPO)
    if done.returncode != 0:
        out["precompile_failed"] = done.stderr[-2000:]
        return out
    out["precompile_s"] = time.perf_counter() - start
    out["precompile_report"] = json.loads(done.stdout)
    compiling, precompiled, used = [], [], []
    for _ in range(1 if quick else 3):
        compiling.append(_ready_s(store, mar.name, check_package=False)[0])
        seconds, served_package = _ready_s(store, packaged.name, check_package=True)
        precompiled.append(seconds)
        used.append(bool(served_package))
    out["compiling_ready_s_reps"], out["precompiled_ready_s_reps"] = compiling, precompiled
    out["compiling_ready_s"] = statistics.median(compiling)
    out["precompiled_ready_s"] = statistics.median(precompiled)
    out["precompiled_used"] = all(used)  # the figure counts only if every start used it
    return out


def main(argv: list[str] | None = None) -> int:
    global PROFILES
    parser = argparse.ArgumentParser(prog="python -m bench.optimize_run", description=__doc__)
    parser.add_argument("--models", default="resnet50,minilm")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", default="inproc,served,startup",
                        help="any of inproc (handler in process), served, startup")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/optimize")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"inproc", "served", "startup"}
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    out: Path = args.out
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    PROFILES = out / "profiles"
    PROFILES.mkdir(exist_ok=True)
    store = REPO / "model_store" / "build"
    build_all(store)
    p_all = payloads(raw / "payloads")
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for part, path in (("inproc", raw / "variants.jsonl"), ("served", raw / "served.jsonl")):
        if part not in parts:
            continue
        path.write_text("")  # a part run again replaces its rows
        for model in models:
            p = p_all[model]
            for name, config in variants(model).items():
                archive = with_warmup(store / f"{model}.mar", f"{model}-opt", config,
                                      p["warmup"])
                if part == "inproc":
                    row = in_process(archive, name, config, p, args.quick)
                else:
                    row = {"model": model, "variant": name}
                    try:
                        row["served"] = served(store, archive, p, args.quick)
                    except Exception as e:  # a variant that cannot serve is a result too
                        row["served"] = {"failed": str(e)[-2000:]}
                with path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps({k: row.get(k) for k in ("model", "variant", "b1", "b8",
                                                          "top1_agreement", "mean_cosine",
                                                          "served")}), flush=True)
    if "startup" in parts and "resnet50" in models:
        config = variants("resnet50")["bf16 compiled"]
        archive = with_warmup(store / "resnet50.mar", "resnet50-startup", config,
                              p_all["resnet50"]["warmup"])
        result = startup(store, archive, args.quick)
        (raw / "startup.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result), flush=True)
    from bench.optimize_report import write_report

    write_report(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
