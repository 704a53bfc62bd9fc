"""The default store as `scripts/serve.sh` ships it, served: each model's precompiled archive
(the pipeline `auto` chose on this machine, its AOTInductor package inside) against the plain
fp32 eager archive of the same model, through this server, on the same inputs.

    python -m bench.store_served [--models resnet50,minilm] [--reps 3] [--seconds 15]
                                 [--out bench/results/store]

The server is pinned to CPU 0 and the load generator to CPU 1, as in the other served
benchmarks. The store is built here with `python -m model_store.build` under the same pinning,
so `auto` chooses, and the packages are compiled, for the one thread the pinned worker gets: a
package built for other threads would not be used (the worker compiles instead), and a start
that did not serve its package fails the run. The two archives are served in turn, the order
flipped every rep; each start serves the archive twice, as `b1` (batch 1, one request at a time)
and `b8` (batch 8, 10 ms delay, 16 in flight). Inputs: JPEG images of varied sizes for resnet50
(decoded and resized by its handler, as a client's photo is) and the real sentences of
`bench.sentences` for minilm, cycled through by the load. Accuracy compares the two served
answers to the same inputs: the plain archive is the fp32 eager reference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import accuracy
from bench.loadgen import run_matrix
from bench.machine import facts
from bench.project_server import ProjectServer
from bench.scenarios import pinned
from bench.sentences import SENTENCES
from bench.tsconfig import ModelConfig
from bench.workload import Plan, Target
from model_store.build import build_all
from model_store.optimized import photo_jpegs

REPO = Path(__file__).resolve().parents[1]
STORES = REPO / "model_store" / "build"
CACHE = STORES / ".cache"  # the package cache scripts/serve.sh's builds use too
VARIANTS = ("plain", "precompiled")
# label, batch size, max batch delay (ms), concurrency
LEVELS = (("b1", 1, 100, 1), ("b8", 8, 10, 16))
IMAGES = 100  # one top-1 disagreement is 1%


def images(count: int = IMAGES) -> list[bytes]:
    """JPEG stand-ins for photos, 200-520 px a side (not the store's warm-up images)."""
    return photo_jpegs(count, seed=7, widths=(200, 520), heights=(200, 520), coarse=(5, 7),
                       grain=10.0)


def inputs(model: str) -> tuple[list[bytes], str]:
    if model == "resnet50":
        return images(), "image/jpeg"
    return [text.encode() for text in SENTENCES], "text/plain"


def build_stores(models: Sequence[str]) -> dict[str, Any]:
    """The plain store in this process; the precompiled one as serve.sh builds it, but pinned
    to CPU 0 (a cached package makes that seconds; a miss runs auto and the compile)."""
    plain = STORES / "bench-plain"
    build_all(plain, only=models)
    precompiled = STORES / "bench-precompiled"
    command = [sys.executable, "-m", "model_store.build", "--out", str(precompiled),
               "--cache", str(CACHE), "--only", ",".join(models)]
    started = time.perf_counter()
    with pinned("0"):
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"building the precompiled store failed:\n{done.stdout[-3000:]}"
                           f"{done.stderr[-3000:]}")
    # Each model's outcome line ("built, package cache hit ... s") and what auto chose.
    summary = [line for line in done.stdout.splitlines()
               if line.endswith(" s") or "chose" in line]
    return {"plain": plain, "precompiled": precompiled,
            "build_s": round(time.perf_counter() - started, 1), "build_lines": summary}


def _post(url: str, body: bytes, ctype: str) -> Any:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": ctype},
                                     method="POST")
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.loads(resp.read())


def answers(base_url: str, model: str, bodies: Sequence[bytes], ctype: str) -> list[Any]:
    """One request per input to /predictions/b1: resnet50's top-1 class, minilm's embedding."""
    if model == "minilm":
        return accuracy.served(base_url, "b1", [body.decode() for body in bodies])
    out = []
    for body in bodies:
        answer = _post(f"{base_url}/predictions/b1", body, ctype)
        if not isinstance(answer, dict) or not answer:
            raise ValueError(f"expected a {{class: probability}} object, got {answer!r:.200}")
        out.append(max(answer, key=answer.__getitem__))
    return out


def serve(store: Path, model: str, variant: str, rep: int, seconds: float,
          bodies: list[bytes], ctype: str, check: bool) -> tuple[list[dict[str, Any]], Any]:
    """One server start on `store`'s archive: a row per level, and (with `check`) the
    answers to every input."""
    models = {label: ModelConfig(f"{model}.mar", batch_size=batch, max_batch_delay_ms=delay)
              for label, batch, delay, _ in LEVELS}
    rows: list[dict[str, Any]] = []
    with ProjectServer(store, models, pin_cpus="0", ready_timeout_s=1800) as server, \
            pinned("1"):
        base = {"model": model, "variant": variant, "rep": rep, "ready_s": server.ready_s}
        got = answers(server.base_url, model, bodies, ctype) if check else None
        for label, _, _, concurrency in LEVELS:
            report = server.optimization_report(label)  # each level's own worker
            steps = {s["name"]: s["status"] for s in report.get("steps", [])}
            # A package's steps are what it was built with; "applied" only names it.
            applied = report.get("package_steps") or report.get("applied") or []
            served_as = {"applied": "+".join(applied) or "fp32 eager",
                         "why": report.get("why", ""),
                         "package_used": steps.get("precompiled") == "applied"}
            target = Target(server.base_url, f"/predictions/{label}", bodies[0], ctype,
                            bodies=tuple(bodies))
            (result,) = asyncio.run(run_matrix(target, [concurrency], Plan(3.0, seconds),
                                               label=label))
            rows.append({**base, **served_as, "level": label, "concurrency": concurrency,
                         **{k: getattr(result, k) for k in
                            ("rps", "ok", "error_count", "errors", "p50_ms", "p99_ms",
                             "client_cpu", "load_1m", "started_at")}})
            print(json.dumps({k: rows[-1][k] for k in ("model", "variant", "rep", "level",
                                                       "rps", "p99_ms", "error_count")}),
                  flush=True)
    return rows, got


def agreement(model: str, plain: Sequence[Any], precompiled: Sequence[Any]) -> dict[str, Any]:
    """resnet50: share of inputs whose top-1 class is the same; minilm: cosine per sentence."""
    if model == "resnet50":
        same = sum(a == b for a, b in zip(plain, precompiled, strict=True))
        return {"model": model, "inputs": len(plain), "top1_agreement": same / len(plain)}
    cosines = [accuracy.cosine(b, a) for a, b in zip(plain, precompiled, strict=True)]
    return {"model": model, "inputs": len(plain), "cosine_mean": statistics.fmean(cosines),
            "cosine_min": min(cosines), "cosine_median": statistics.median(cosines)}


def failures(rows: Sequence[dict[str, Any]]) -> list[str]:
    """What makes the run not count: errors, or a precompiled start without its package."""
    out = []
    for row in rows:
        where = f"{row['model']} {row['variant']} rep {row['rep']} {row['level']}"
        if row["error_count"] or not row["ok"]:
            out.append(f"{where}: {row['error_count']} errors, {row['ok']} answered")
        if row["variant"] == "precompiled" and not row["package_used"]:
            out.append(f"{where}: the worker did not serve the store's package")
    return out


def _spread(values: Sequence[float], fmt: str = "{:,.1f}") -> str:
    if not values:
        return "-"
    return (f"{fmt.format(statistics.median(values))} "
            f"({fmt.format(min(values))}-{fmt.format(max(values))})")


def summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and level: each variant's req/s and p99 over reps, and the ratio of the two
    within each rep (the pair measured minutes apart), median with min and max."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for label, _, _, concurrency in LEVELS:
            cell = [r for r in rows if r["model"] == model and r["level"] == label]
            by = {v: {r["rep"]: r for r in cell if r["variant"] == v} for v in VARIANTS}
            reps = sorted(set(by["plain"]) & set(by["precompiled"]))
            ratios = [by["precompiled"][i]["rps"] / by["plain"][i]["rps"] for i in reps
                      if by["plain"][i]["rps"] > 0]
            out.append({"model": model, "level": label, "concurrency": concurrency,
                        "reps": len(reps), "ratios": ratios,
                        **{f"{v}_rps": [r["rps"] for r in by[v].values()] for v in VARIANTS},
                        **{f"{v}_p99": [r["p99_ms"] for r in by[v].values()] for v in VARIANTS}})
    return out


def report(out: Path) -> str:
    rows = [json.loads(line) for line in (out / "raw/store.jsonl").read_text().splitlines()]
    acc = [json.loads(line) for line in (out / "raw/accuracy.jsonl").read_text().splitlines()]
    run = json.loads((out / "raw/run.json").read_text())
    m = run["machine"]
    lines = [
        "# The default store, served: precompiled archives against plain fp32 eager", "",
        f"`python -m bench.store_served` ({run['command']}), {m['date']}; {m['cpu']} "
        f"({m['cpu flags of note']}), {m['logical cpus']} logical CPUs; torch {m['torch']}. "
        "Server pinned to CPU 0 (one torch thread per worker), aiohttp load on CPU 1; "
        f"{run['reps']} reps, the two archives alternated with the order flipped each rep, "
        f"{run['seconds']:.0f} s measured after 3 s of warm-up per level. Raw rows: "
        "`raw/store.jsonl`, `raw/accuracy.jsonl`, `raw/run.json`.", "",
        "The precompiled store is what `python -m model_store.build` (scripts/serve.sh) builds "
        "on this machine: `auto` chose the pipeline at build time and the archive carries its "
        "AOTInductor package; "
        + ("every precompiled start below served that package"
           if all(r["package_used"] for r in rows if r["variant"] == "precompiled")
           else "**not every precompiled start below served that package**")
        + " (describe's `precompiled` step `applied`). Inputs: "
        f"{IMAGES} JPEG images of 200-520 px for resnet50, the {len(SENTENCES)} sentences of "
        "`bench/sentences.py` (3 to about 120 words) for minilm, cycled through by the load.",
        "", "| model | served as | plain req/s | precompiled req/s | speed-up per rep | "
        "p99 ms, plain / precompiled |", "|---|---|---:|---:|---:|---:|"]
    for s in summary(rows):
        served_as = ("b1, one at a time" if s["level"] == "b1"
                     else f"b8, {s['concurrency']} in flight")
        lines.append(
            f"| {s['model']} | {served_as} | {_spread(s['plain_rps'])} | "
            f"{_spread(s['precompiled_rps'])} | **{_spread(s['ratios'], '{:.2f}x')}** | "
            f"{_spread(s['plain_p99'])} / {_spread(s['precompiled_p99'])} |")
    lines += ["", "What each store's worker ran, and start to ready (median, min-max, s):", "",
              "| model | store | pipeline | start to ready |", "|---|---|---|---:|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        for variant in VARIANTS:
            mine = [r for r in rows if r["model"] == model and r["variant"] == variant]
            starts = {r["rep"]: r["ready_s"] for r in mine}
            lines.append(f"| {model} | {variant} | {mine[0]['applied'] if mine else '-'} | "
                         f"{_spread(list(starts.values()))} |")
    for model in dict.fromkeys(r["model"] for r in rows):
        why = next((r["why"] for r in rows if r["model"] == model and r["why"]), "")
        if why:
            lines += ["", f"{model}, `auto` at build time (its in-process timings): {why}"]
    lines += ["", "## Accuracy: the precompiled answers against the plain archive's", ""]
    for a in acc:
        if a["model"] == "resnet50":
            lines.append(f"- resnet50: top-1 class agreement **{a['top1_agreement']:.1%}** on "
                         f"{a['inputs']} images. resnet50 has **random weights** (no trained "
                         "weights ship with the project): agreement with fp32 is what is "
                         "measured, not accuracy on a labelled set.")
        else:
            lines.append(f"- minilm (real all-MiniLM-L6-v2 weights): cosine of each embedding "
                         f"to fp32 eager's on {a['inputs']} sentences: mean "
                         f"**{a['cosine_mean']:.4f}**, median {a['cosine_median']:.4f}, "
                         f"min {a['cosine_min']:.4f}.")
    build = run["build"]
    lines += ["", "## The store build", "",
              f"Pinned to CPU 0, {build['build_s']:.0f} s (a package cache hit takes seconds; "
              "a miss runs auto's candidates and the AOT compile):", "", "```",
              *build["build_lines"], "```", ""]
    if run["failures"]:
        lines += ["## This run does not count", "", *(f"- {f}" for f in run["failures"]), ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    plot(rows, out / "store.png")
    return text


def plot(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Grouped bars: each model and level, plain and precompiled req/s (median, min-max)."""
    from matplotlib.figure import Figure

    cells = summary(rows)
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    axes = fig.subplots(1, len(cells), squeeze=False)[0]
    for ax, s in zip(axes, cells, strict=True):
        for i, variant in enumerate(VARIANTS):
            values = s[f"{variant}_rps"] or [math.nan]
            mid = statistics.median(values)
            ax.bar(i, mid, yerr=[[mid - min(values)], [max(values) - mid]], capsize=4,
                   color=("#999999", "#2a7ab9")[i])
        ax.set_xticks(range(len(VARIANTS)), VARIANTS, fontsize="small")
        ax.set_title(f"{s['model']} {s['level']}\n{_spread(s['ratios'], '{:.2f}x')}",
                     fontsize="small")
        ax.set_ylim(bottom=0)
    axes[0].set_ylabel("req/s through the server")
    fig.savefig(path, dpi=110)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store_served", description=__doc__)
    parser.add_argument("--models", default="resnet50,minilm")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window per level")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/store")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(models) - {"resnet50", "minilm"}
    if unknown or args.reps < 1:
        parser.error(f"models are resnet50 and minilm (got {sorted(unknown)}); reps >= 1")
    raw = args.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    stores = build_stores(models)
    rows: list[dict[str, Any]] = []
    acc = []
    for model in models:
        bodies, ctype = inputs(model)
        got: dict[str, Any] = {}
        for rep in range(args.reps):
            order = VARIANTS if rep % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                mine, answered = serve(stores[variant], model, variant, rep, args.seconds,
                                       bodies, ctype, check=rep == 0)
                rows += mine
                if answered is not None:
                    got[variant] = answered
        acc.append(agreement(model, got["plain"], got["precompiled"]))
    bad = failures(rows)
    (raw / "store.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (raw / "accuracy.jsonl").write_text("".join(json.dumps(a) + "\n" for a in acc))
    (raw / "run.json").write_text(json.dumps({
        "command": " ".join(["python -m bench.store_served", *(argv or sys.argv[1:])]),
        "reps": args.reps, "seconds": args.seconds, "machine": facts(), "failures": bad,
        "build": {"build_s": stores["build_s"], "build_lines": stores["build_lines"]}},
        indent=2))
    print(report(args.out))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
