"""One command for the serving benchmark: this server against TorchServe 0.12, in one run.

    python -m bench.run [--scenarios noop,resnet50,minilm,hop,pinning] [--quick]
                        [--out bench/results/serving]

Writes results.jsonl (one row per label x concurrency x rep), inproc.jsonl, report.md with
the target checks, and PNG plots. Server and all its processes on CPU 0, load generator on
CPU 1 (taskset), except the pinning scenario, which needs both cores for the workers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.archive import derive_archive
from bench.machine import facts
from bench.plots import latency_plot, throughput_plot
from bench.report import render
from bench.scenarios import Load, ServerRun, in_process, measure_server
from bench.stats import Aggregate, aggregate, ratio
from bench.targets import targets_section
from bench.tsconfig import ModelConfig
from model_store.build import build_all

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = ("noop", "resnet50", "minilm", "inproc", "hop", "pinning")


def payloads(work: Path) -> dict[str, Path]:
    import numpy as np

    work.mkdir(parents=True, exist_ok=True)
    noop = work / "noop.json"
    noop.write_text('{"x": 1}')
    tensor = work / "resnet50.bin"
    tensor.write_bytes(np.random.default_rng(0).standard_normal((3, 224, 224))
                       .astype("<f4").tobytes())
    text = work / "minilm.txt"
    text.write_text("The quick brown fox jumps over the lazy dog near the river bank today.")
    return {"noop": noop, "resnet50": tensor, "minilm": text}


def noop_runs(p: dict[str, Path], quick: bool) -> list[ServerRun]:
    load = Load("/predictions/noop", p["noop"], "application/json", [1, 16, 64],
                duration_s=5 if quick else 10, warmup_s=2, reps=1 if quick else 3,
                expect='"ok"', wrk_levels=[16])
    b1 = {"noop": ModelConfig("noop.mar", batch_size=1, max_batch_delay_ms=5)}
    no_overlap = {"noop": ModelConfig("noop-serial.mar", batch_size=1, max_batch_delay_ms=5)}
    b8 = {"noop": ModelConfig("noop.mar", batch_size=8, max_batch_delay_ms=5)}
    return [
        ServerRun("serving noop b1", "serving", b1, load),
        ServerRun("serving noop b1 no-overlap", "serving", no_overlap, load),
        ServerRun("torchserve noop b1", "torchserve", b1, load, warm_s=15),
        ServerRun("serving noop b8", "serving", b8, load),
        ServerRun("torchserve noop b8", "torchserve", b8, load, warm_s=15),
    ]


def model_runs(name: str, p: dict[str, Path], content_type: str, quick: bool,
               levels: list[int], duration: float, warmup: float) -> list[ServerRun]:
    load = Load(f"/predictions/{name}", p[name], content_type, levels,
                duration_s=duration / (2 if quick else 1), warmup_s=warmup,
                reps=1 if quick else 3)
    runs = []
    for batch in (1, 8):
        models = {name: ModelConfig(f"{name}.mar", batch_size=batch, max_batch_delay_ms=10)}
        runs.append(ServerRun(f"serving {name} b{batch}", "serving", models, load))
        runs.append(ServerRun(f"torchserve {name} b{batch}", "torchserve", models, load,
                              warm_s=15))
    return runs


def pinning_runs(p: dict[str, Path], quick: bool) -> list[ServerRun]:
    """Two resnet50 workers on the two cores: one core each, or left to the OS scheduler."""
    load = Load("/predictions/resnet50", p["resnet50"], "application/octet-stream", [4, 16],
                duration_s=10 if quick else 20, warmup_s=6, reps=1 if quick else 3)
    return [
        ServerRun(f"serving resnet50 2 workers {kind}", "serving",
                  {"resnet50": ModelConfig(f"resnet50-{kind}.mar", workers=2, batch_size=1)},
                  load, pin=None)
        for kind in ("pinned", "unpinned")
    ]


def hop(out: Path) -> dict[str, Any]:
    results = {}
    for name, worker_cpu in (("same core", 0), ("separate cores", 1)):
        done = subprocess.run([sys.executable, "-m", "bench.hop", "--requests", "20000",
                               "--gateway-cpu", "0", "--worker-cpu", str(worker_cpu)],
                              capture_output=True, text=True, check=True, cwd=REPO)
        results[name] = json.loads(done.stdout[done.stdout.index("{"):])
    (out / "hop.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="1 rep, short windows (a smoke)")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/serving")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite report.md and the plots from the raw results")
    args = parser.parse_args(argv)
    if args.report_only:
        hop_file = args.out / "raw" / "hop.json"
        write_report(args.out, 0.0,
                     json.loads(hop_file.read_text()) if hop_file.exists() else None)
        return 0
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    out: Path = args.out
    (out / "raw").mkdir(parents=True, exist_ok=True)
    store = REPO / "model_store" / "build"
    build_all(store)
    derive_archive(store / "noop.mar", "noop-serial", {"maxInflightBatches": 1})
    derive_archive(store / "resnet50.mar", "resnet50-pinned",
                   {"placement": {"enabled": True, "cores_per_worker": 1}})
    derive_archive(store / "resnet50.mar", "resnet50-unpinned",
                   {"placement": {"enabled": False}})
    p = payloads(out / "raw" / "payloads")
    results = out / "raw" / "results.jsonl"
    inproc_path = out / "raw" / "inproc.jsonl"
    servers_path = out / "raw" / "servers.jsonl"

    def emit(row: dict[str, Any]) -> None:
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{row['label']:40s} c={row['concurrency']:<3} {row['rps']:9.1f} req/s "
              f"p50 {row['p50_ms']:8.2f} p99 {row['p99_ms']:8.2f} ms "
              f"errors {row.get('error_count', 0)}", flush=True)

    runs: list[ServerRun] = []
    if "noop" in chosen:
        runs += noop_runs(p, args.quick)
    if "resnet50" in chosen:
        runs += model_runs("resnet50", p, "application/octet-stream", args.quick, [1, 16],
                           duration=20, warmup=8)
    if "minilm" in chosen:
        runs += model_runs("minilm", p, "text/plain", args.quick, [1, 16, 64],
                           duration=10, warmup=3)
    if "pinning" in chosen:
        runs += pinning_runs(p, args.quick)
    started = time.time()
    for run in runs:
        try:
            info = measure_server(run, store, emit, client_cpus=None if run.pin is None else "1")
        except Exception as e:  # one broken configuration must not lose the rest of the run
            print(f"{run.label}: FAILED: {e}", file=sys.stderr, flush=True)
            info = {"label": run.label, "ready_s": float("nan"), "failed": str(e)[:2000]}
        with servers_path.open("a") as f:
            f.write(json.dumps(info) + "\n")
    for name, ctype in (("resnet50", "application/octet-stream"), ("minilm", "text/plain")):
        if name in chosen or "inproc" in chosen:
            for batch in (1, 8):
                row = in_process(store / f"{name}.mar", p[name], ctype, batch,
                                 f"in-process {name} b{batch}")
                with inproc_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{row['label']}: {row['items_per_s']:.2f} items/s", flush=True)
    hops = hop(out / "raw") if "hop" in chosen else None
    write_report(out, started, hops)
    return 0


def write_report(out: Path, started: float, hops: dict[str, Any] | None) -> None:
    raw = out / "raw"
    rows = [json.loads(line) for line in (raw / "results.jsonl").read_text().splitlines()]
    inproc = [json.loads(line) for line in (raw / "inproc.jsonl").read_text().splitlines()] \
        if (raw / "inproc.jsonl").exists() else []
    servers = [json.loads(line) for line in (raw / "servers.jsonl").read_text().splitlines()] \
        if (raw / "servers.jsonl").exists() else []
    cells = aggregate(rows)
    plots = [throughput_plot(cells, out / "throughput.png").name,
             latency_plot(cells, out / "latency.png").name]
    setup = (out / "setup.md").read_text() if (out / "setup.md").exists() else SETUP
    text = render(rows, RATIOS, setup, facts(), plots, "Serving benchmark: this server vs "
                  "TorchServe 0.12 on the same machine")
    text += "\n" + targets_section(cells, inproc, hops, servers)
    text += "\n" + noise_section(raw / "vmstat.log")
    text += "\n" + placement_section()
    (out / "report.md").write_text(text)
    print(out / "report.md")


def noise_section(vmstat_log: Path) -> str:
    """How much CPU the hypervisor took away during the run (vmstat's `st`), if it was logged
    (`vmstat -t 10 > raw/vmstat.log` beside the run): the noise behind the min..max ranges."""
    if not vmstat_log.exists():
        return ""
    steal, idle = [], []
    for line in vmstat_log.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 17 and fields[0].isdigit():
            # r b swpd free buff cache si so bi bo in cs us sy id wa st [date time]
            idle.append(int(fields[14]))
            steal.append(int(fields[16]))
    if not steal:
        return ""
    ordered = sorted(steal)
    return ("## Noise: CPU steal during the run\n\n"
            f"vmstat every 10 s, {len(steal)} samples: steal (time the hypervisor gave this "
            f"VM's CPUs to others) median {ordered[len(ordered) // 2]}%, max {ordered[-1]}%, "
            f"{sum(1 for v in steal if v >= 10)} samples at 10% or more. A rep that ran in such "
            "a stretch is slower for reasons outside both servers; the tables give the median "
            "of 3 reps with their min..max.\n")


def placement_section() -> str:
    """What the placement policy picks on bigger machines, computed by its own allocator."""
    from bench.placement_plans import markdown

    return ("## Placement on bigger machines (fake sysfs topologies)\n\n"
            "One model loaded at start with n workers, default policy, as the server's own "
            "`Resources` places it (`python -m bench.placement_plans`); `nX:` is the NUMA node, "
            "the worker's threads equal its CPUs. On this 2-core VM the pinned/unpinned "
            "comparison above is the only measurement; these plans are not measured.\n\n"
            + markdown() + "\n")


SETUP = """\
- Server under test and TorchServe 0.12.0 each run alone, one after the other, all their
  processes pinned to CPU 0 (`taskset -c 0`: launcher, JVM, gateway, workers); the load
  generator runs on CPU 1. Models are registered with the same management call on both
  (`POST /models?url=...&batch_size=..&max_batch_delay=..&initial_workers=1`).
- Each server gets a discarded warm-up load first (15 s at c=16 for TorchServe's JVM, 5 s
  for this server), then closed-loop runs at each concurrency, reps interleaved.
- Clients: the project's aiohttp load generator (bench/loadgen.py) at every level, and wrk
  (C, 1 thread) at c=16 for noop, where the Python client itself nears its limit.
- noop's handler declares `can_overlap` (up to 4 batches wait in the worker's socket);
  `no-overlap` is the same archive with `maxInflightBatches: 1`, the TorchServe behaviour.
- In-process limit: the same archive's handler called in a loop (bench/inproc.py), one
  thread, pinned to CPU 0, the same request bodies, no server.
- The pinning scenario leaves the server unpinned on both cores with 2 resnet50 workers
  (batch 1): `placement: {cores_per_worker: 1}` (one core each) versus
  `placement: {enabled: false}` (the OS decides); its client is unpinned too.
"""

RATIOS = [
    ("serving noop b1", "torchserve noop b1"),
    ("serving noop b1 no-overlap", "torchserve noop b1"),
    ("serving noop b8", "torchserve noop b8"),
    ("serving resnet50 b8", "torchserve resnet50 b8"),
    ("serving minilm b8", "torchserve minilm b8"),
    ("serving minilm b1", "torchserve minilm b1"),
    ("serving resnet50 2 workers pinned", "serving resnet50 2 workers unpinned"),
]

__all__ = ["Aggregate", "main", "ratio"]

if __name__ == "__main__":
    raise SystemExit(main())
