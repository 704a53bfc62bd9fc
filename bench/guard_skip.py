"""What skipping Dynamo's guard evaluation on warmed calls saves, on compiled minilm.

    python -m bench.guard_skip [--calls 300] [--rounds 10] [--cpu 0] [--out FILE.json]

Builds minilm through the pipeline (fp32, compile with buckets 1 and 8, 1 thread), then
alternates rounds of `--calls` batch-1 calls of one sentence: with the runner's warmed-call
fast path (`skip_guard_eval_unsafe`) and with it switched off (every guard evaluated under
`fail_on_recompile`, as any unwarmed call is). Medians of the per-round median latencies.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SENTENCES = ["A man is playing a guitar.", "It is raining.", "Two dogs run across a field.",
             "The new phone has a larger screen and a faster processor than last year's model."]


def measure(calls: int, rounds: int) -> dict[str, Any]:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModel, AutoTokenizer

    from model_store.build import build_all
    from serving.optimize.config import OptimizationConfig
    from serving.optimize.pipeline import build

    torch.set_num_threads(1)
    store = REPO / "model_store" / "build"
    build_all(store)
    with tempfile.TemporaryDirectory(prefix="guard-skip-") as tmp:
        with zipfile.ZipFile(store / "minilm.mar") as zf:
            zf.extractall(tmp)
        tokenizer = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
        model = AutoModel.from_pretrained(tmp, local_files_only=True).eval()
    samples = [((), dict(tokenizer([s], return_tensors="pt"))) for s in SENTENCES]
    config = OptimizationConfig.model_validate(
        {"device": "cpu", "compile": {"mode": "default", "batch_sizes": [1, 8]}})
    optimized, report = build(model, config, samples)
    if report.applied != ["compile"]:
        raise RuntimeError(f"the pipeline did not compile: {report.to_dict()}")
    x = dict(tokenizer([SENTENCES[0]], return_tensors="pt"))
    warmed = optimized._warmed

    def round_ms() -> float:
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            optimized(**x)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000.0

    fast, guarded = [], []
    for _ in range(rounds):
        optimized._warmed = warmed
        fast.append(round_ms())
        optimized._warmed = {}  # nothing counts as warmed: every call takes the guarded path
        guarded.append(round_ms())
    optimized._warmed = warmed
    f, g = statistics.median(fast), statistics.median(guarded)
    return {"model": "minilm fp32 compiled, batch 1", "calls_per_round": calls,
            "rounds": rounds, "fast_ms": fast, "guarded_ms": guarded,
            "fast_median_ms": f, "guarded_median_ms": g, "guarded_over_fast": g / f}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.guard_skip", description=__doc__)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {args.cpu})
    result = measure(args.calls, args.rounds)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
