"""One command for the serving benchmark: this server against TorchServe 0.12, on equal terms.

    python -m bench.run [--scenarios noop,resnet50,minilm,accuracy,inproc,hop,pinning]
                        [--headline] [--reps 3] [--quick] [--request-logs]
                        [--out bench/results/serving]

Both servers get the same `.mar` files with plain `BaseHandler` handlers, the same registration
(batch size, delay, workers), the same warm-up and the same logging (per-request logging off on
both unless --request-logs). The servers of one comparison run interleaved, the order reversed
every rep (rep 0: this server then TorchServe; rep 1: TorchServe then this server ...), each
run a fresh start. `--headline`: only the noop rows the README quotes (~11-13 min).

Writes raw/results.jsonl (one row per label x concurrency x rep), raw/inproc.jsonl,
raw/accuracy.jsonl, raw/failures.jsonl, report.md and PNG plots. Server and all its processes
on CPU 0, load generator on CPU 1 (taskset), except the pinning scenario. Exits 1, naming them,
when any scenario failed: a server that did not start, a run with errors or non-2xx answers,
an exception.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.archive import build_noop_mar, derive_archive
from bench.equal import Pair, headline_table, interleaved, row_failure
from bench.machine import facts
from bench.plots import latency_plot, throughput_plot
from bench.report import render
from bench.scenarios import Load, ServerRun, in_process, measure_server
from bench.sentences import SENTENCES
from bench.stats import Aggregate, aggregate, ratio
from bench.targets import targets_section
from bench.tsconfig import ModelConfig
from model_store.build import build_all

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = ("noop", "resnet50", "minilm", "accuracy", "inproc", "hop", "pinning")
HEADLINE_LEVELS = [1, 16]
OVERLAP_NOTE = "(this server only; TorchServe column: its plain b1 run)"
OVERLAP_TEXT = ("The plain rows run this server as it ships: while a worker runs a batch, "
                "its next full batches are sent ahead to wait in its socket, as many as its "
                "recent batch times say run within ~4 ms (up to "
                "`default_max_inflight_batches` 16 in flight; handlers still run one batch at "
                "a time, what they see is unchanged). Two variants show what that default "
                "does, each divided by TorchServe's plain b1 run of the same rep: the "
                "**one-sent-ahead variant** (`maxInflightBatches: 2` in the archive's "
                "model-config.yaml: the running batch and one sent ahead, the previous "
                "default) and the **one-at-a-time variant** (`maxInflightBatches: 1`: the "
                "gateway waits for each answer before sending the next batch, as TorchServe's "
                "frontend does).")


@dataclass
class Group:
    """Runs compared with each other: each rep runs every member once, in flipped order."""

    name: str
    members: list[ServerRun]


@dataclass(frozen=True)
class Timing:
    """Warm-up (the same for both servers) and measured windows of one kind of run."""

    warm_s: float  # discarded c=16 load after start: TorchServe's JVM needs it, both get it
    warmup_s: float  # discarded start of every level's window
    duration_s: float  # measured window per level


def payloads(work: Path) -> dict[str, Path]:
    import numpy as np

    work.mkdir(parents=True, exist_ok=True)
    noop = work / "noop.json"
    noop.write_text('{"x": 1}')
    tensor = work / "resnet50.bin"
    tensor.write_bytes(np.random.default_rng(0).standard_normal((3, 224, 224))
                       .astype("<f4").tobytes())
    for i, text in enumerate(SENTENCES):
        (work / f"minilm-{i:02d}.txt").write_text(text)
    return {"noop": noop, "resnet50": tensor, "minilm": work / "minilm-00.txt"}


def sentence_files(p: dict[str, Path]) -> list[Path]:
    return [p["minilm"].with_name(f"minilm-{i:02d}.txt") for i in range(len(SENTENCES))]


def noop_archives(store: Path) -> None:
    """noop-plain.mar: the bench's plain `BaseHandler` noop (it declares no `can_overlap`),
    run by both servers; noop-plain-ahead1.mar: the same handler with `maxInflightBatches: 2`
    in its model-config.yaml (the running batch and one sent ahead: the previous default);
    noop-plain-single.mar: `maxInflightBatches: 1` (one batch at a time, nothing sent ahead)."""
    plain = build_noop_mar(store, "noop-plain")
    derive_archive(plain, "noop-plain-ahead1", {"maxInflightBatches": 2})
    derive_archive(plain, "noop-plain-single", {"maxInflightBatches": 1})


def noop_groups(p: dict[str, Path], levels: list[int], t: Timing) -> list[Group]:
    load = Load("/predictions/noop", p["noop"], "application/json", levels,
                duration_s=t.duration_s, warmup_s=t.warmup_s, reps=1, expect='"ok"',
                wrk_levels=[16])
    b1 = {"noop": ModelConfig("noop-plain.mar", batch_size=1, max_batch_delay_ms=5)}
    ahead1 = {"noop": ModelConfig("noop-plain-ahead1.mar", batch_size=1, max_batch_delay_ms=5)}
    single = {"noop": ModelConfig("noop-plain-single.mar", batch_size=1, max_batch_delay_ms=5)}
    b8 = {"noop": ModelConfig("noop-plain.mar", batch_size=8, max_batch_delay_ms=5)}
    return [
        Group("noop b1", [ServerRun("serving noop b1", "serving", b1, load, t.warm_s),
                          ServerRun("serving noop b1 ahead1", "serving", ahead1, load, t.warm_s),
                          ServerRun("serving noop b1 single", "serving", single, load, t.warm_s),
                          ServerRun("torchserve noop b1", "torchserve", b1, load, t.warm_s)]),
        Group("noop b8", [ServerRun("serving noop b8", "serving", b8, load, t.warm_s),
                          ServerRun("torchserve noop b8", "torchserve", b8, load, t.warm_s)]),
    ]


def model_groups(name: str, p: dict[str, Path], content_type: str, levels: list[int],
                 t: Timing) -> list[Group]:
    bodies = tuple(f.read_bytes() for f in sentence_files(p)) if name == "minilm" else ()
    load = Load(f"/predictions/{name}", p[name], content_type, levels,
                duration_s=t.duration_s, warmup_s=t.warmup_s, reps=1, bodies=bodies)
    groups = []
    for batch in (1, 8):
        models = {name: ModelConfig(f"{name}.mar", batch_size=batch, max_batch_delay_ms=10)}
        groups.append(Group(f"{name} b{batch}", [
            ServerRun(f"serving {name} b{batch}", "serving", models, load, t.warm_s),
            ServerRun(f"torchserve {name} b{batch}", "torchserve", models, load, t.warm_s)]))
    return groups


def pinning_groups(p: dict[str, Path], quick: bool) -> list[Group]:
    """Two resnet50 workers on the two cores: one core each, or left to the OS scheduler."""
    load = Load("/predictions/resnet50", p["resnet50"], "application/octet-stream", [4, 16],
                duration_s=10 if quick else 20, warmup_s=6, reps=1)
    return [Group("resnet50 2 workers", [
        ServerRun(f"serving resnet50 2 workers {kind}", "serving",
                  {"resnet50": ModelConfig(f"resnet50-{kind}.mar", workers=2, batch_size=1)},
                  load, pin=None)
        for kind in ("pinned", "unpinned")])]


def hop(out: Path) -> dict[str, Any]:
    results = {}
    for name, worker_cpu in (("same core", 0), ("separate cores", 1)):
        done = subprocess.run([sys.executable, "-m", "bench.hop", "--requests", "20000",
                               "--gateway-cpu", "0", "--worker-cpu", str(worker_cpu)],
                              capture_output=True, text=True, check=True, cwd=REPO)
        results[name] = json.loads(done.stdout[done.stdout.index("{"):])
    (out / "hop.json").write_text(json.dumps(results, indent=2))
    return results


@contextmanager
def vmstat(log: Path) -> Iterator[None]:
    """`vmstat -t 10` into `log` while the block runs (when vmstat exists): the CPU steal and
    idle behind the report's noise section, so a "quiet box" can be checked afterwards."""
    exe = shutil.which("vmstat")
    if exe is None:
        yield
        return
    with log.open("w") as f:
        proc = subprocess.Popen([exe, "-t", "10"], stdout=f, stderr=subprocess.DEVNULL)
        try:
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


class Runner:
    """Measures groups interleaved, appends every row to raw/, and collects the failures."""

    def __init__(self, out: Path, store: Path, request_logs: bool) -> None:
        self.raw = out / "raw"
        self.store = store
        self.request_logs = request_logs
        self.failures: list[str] = []

    def fail(self, what: str, why: str) -> None:
        line = f"{what}: {why}"
        self.failures.append(line)
        _append(self.raw / "failures.jsonl", {"scenario": what, "failure": why[:2000]})
        print(f"FAILED {line[:2000]}", file=sys.stderr, flush=True)

    def measure(self, groups: list[Group], reps: int) -> None:
        for group in groups:
            for rep, position, run in interleaved(group.members, reps):
                self.one(replace(run, request_logs=self.request_logs), group.name, rep,
                         position)

    def one(self, run: ServerRun, group: str, rep: int, position: int) -> None:
        def emit(row: dict[str, Any]) -> None:
            row.update(rep=rep, group=group, position=position, server=run.server,
                       request_logs=run.request_logs)
            _append(self.raw / "results.jsonl", row)
            print(f"rep {rep} #{position} {row['label']:34s} c={row['concurrency']:<3} "
                  f"{row['rps']:9.1f} req/s p50 {row['p50_ms']:8.2f} p99 {row['p99_ms']:8.2f} "
                  f"ms errors {row.get('error_count', 0)}", flush=True)
            why = row_failure(row)
            if why is not None:
                self.fail(f"{row['label']} c={row['concurrency']} rep {rep}", why)

        try:
            info = measure_server(run, self.store, emit,
                                  client_cpus=None if run.pin is None else "1")
        except Exception as e:  # one broken configuration must not lose the rest of the run
            self.fail(f"{run.label} rep {rep}", f"{type(e).__name__}: {e}")
            info = {"label": run.label, "ready_s": float("nan"), "failed": str(e)[:2000]}
        _append(self.raw / "servers.jsonl", {**info, "rep": rep, "position": position})

    def accuracy(self) -> None:
        """minilm's embeddings through both servers against the fp32 reference."""
        from bench.accuracy import compare, reference, served
        from bench.project_server import ProjectServer
        from bench.torchserve import TorchServe

        mar = self.store / "minilm.mar"
        models = {"minilm": ModelConfig("minilm.mar", batch_size=1, max_batch_delay_ms=10)}
        try:
            ref = reference(mar, SENTENCES)
            for label, cls in (("this server", ProjectServer), ("TorchServe 0.12", TorchServe)):
                # An archive with an `optimization:` block may compile before it is ready.
                with cls(self.store, models, ready_timeout_s=900.0) as server:
                    got = served(server.base_url, "minilm", SENTENCES)
                for row in compare(label, got, ref, SENTENCES):
                    _append(self.raw / "accuracy.jsonl", row)
        except Exception as e:
            self.fail("accuracy minilm", f"{type(e).__name__}: {e}")

    def in_process(self, name: str, payload_files: list[Path], content_type: str) -> None:
        for batch in (1, 8):
            label = f"in-process {name} b{batch}"
            try:
                row = in_process(self.store / f"{name}.mar", payload_files, content_type,
                                 batch, label)
            except Exception as e:
                self.fail(label, f"{type(e).__name__}: {e}")
                continue
            _append(self.raw / "inproc.jsonl", row)
            print(f"{row['label']}: {row['items_per_s']:.2f} items/s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--headline", action="store_true",
                        help="only the equal-terms noop rows (b1, b8, the two variants) at "
                             "c=1 and c=16: what the README quotes (~11-13 min)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved reps (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="2 reps, short windows (a smoke of the method, not figures)")
    parser.add_argument("--request-logs", action="store_true",
                        help="per-request logging on for both servers (default: off on both)")
    parser.add_argument("--out", type=Path, help="default bench/results/serving, or "
                        "bench/results/headline with --headline")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite report.md and the plots from the raw results")
    args = parser.parse_args(argv)
    out: Path = args.out or REPO / "bench/results" / ("headline" if args.headline else "serving")
    if args.report_only:
        hop_file = out / "raw" / "hop.json"
        write_report(out, json.loads(hop_file.read_text()) if hop_file.exists() else None)
        return 0
    chosen = ["noop"] if args.headline else \
        [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    reps = 2 if args.quick else args.reps
    if reps < 1:
        parser.error("--reps must be at least 1")
    (out / "raw").mkdir(parents=True, exist_ok=True)
    for stale in ("results.jsonl", "inproc.jsonl", "servers.jsonl", "accuracy.jsonl",
                  "failures.jsonl", "hop.json", "run.json", "vmstat.log"):
        (out / "raw" / stale).unlink(missing_ok=True)  # a report is of one run only
    store = REPO / "model_store" / "build"
    needs = {"resnet50": {"resnet50", "inproc", "pinning"}, "minilm": {"minilm", "inproc",
                                                                       "accuracy"}}
    models = [m for m, wanted_by in needs.items() if wanted_by & set(chosen)]
    if models:
        build_all(store, only=models)
    noop_archives(store)
    if "pinning" in chosen:
        derive_archive(store / "resnet50.mar", "resnet50-pinned",
                       {"placement": {"enabled": True, "cores_per_worker": 1}})
        derive_archive(store / "resnet50.mar", "resnet50-unpinned",
                       {"placement": {"enabled": False}})
    p = payloads(out / "raw" / "payloads")
    quick = args.quick
    # 15 s: TorchServe's JVM serves about a third of its warm rate for its first ~15 s of
    # traffic; this server gets the same. 6 s windows keep --headline within 15 minutes.
    noop_t = Timing(warm_s=2 if quick else 15, warmup_s=1 if quick else 2,
                    duration_s=2 if quick else 6)
    levels = HEADLINE_LEVELS if args.headline else [1, 16, 64]
    groups: list[Group] = []
    if "noop" in chosen:
        groups += noop_groups(p, levels, noop_t)
    if "resnet50" in chosen:
        groups += model_groups("resnet50", p, "application/octet-stream", [1, 16],
                               Timing(5 if quick else 15, 4 if quick else 8, 10 if quick else 20))
    if "minilm" in chosen:
        groups += model_groups("minilm", p, "text/plain", [1, 16, 64],
                               Timing(3 if quick else 15, 2 if quick else 3, 5 if quick else 10))
    if "pinning" in chosen:
        groups += pinning_groups(p, quick)
    (out / "setup.md").write_text(setup_text(reps, noop_t, args.request_logs, args.headline))
    runner = Runner(out, store, args.request_logs)
    started = time.monotonic()
    with vmstat(out / "raw" / "vmstat.log"):
        runner.measure(groups, reps)
        if "accuracy" in chosen:
            runner.accuracy()
        if "resnet50" in chosen or "inproc" in chosen:
            runner.in_process("resnet50", [p["resnet50"]], "application/octet-stream")
        if "minilm" in chosen or "inproc" in chosen:
            runner.in_process("minilm", sentence_files(p), "text/plain")
        hops = hop(out / "raw") if "hop" in chosen else None
    minutes = (time.monotonic() - started) / 60
    (out / "raw" / "run.json").write_text(json.dumps(
        {"argv": sys.argv[1:] if argv is None else argv, "scenarios": chosen, "reps": reps,
         "minutes": round(minutes, 1)}) + "\n")
    print(f"measured in {minutes:.1f} min", flush=True)
    write_report(out, hops)
    return exit_code(runner.failures)


def exit_code(failures: list[str]) -> int:
    """0 when every scenario ran clean; else 1, after naming each failure on stderr."""
    if not failures:
        return 0
    print(f"{len(failures)} scenario(s) failed:", file=sys.stderr)
    for line in failures:
        print(f"  - {line[:500]}", file=sys.stderr)
    return 1


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_report(out: Path, hops: dict[str, Any] | None) -> None:
    raw = out / "raw"
    rows = _rows(raw / "results.jsonl")
    inproc = _rows(raw / "inproc.jsonl")
    servers = _rows(raw / "servers.jsonl")
    failures = _rows(raw / "failures.jsonl")
    accuracy = _rows(raw / "accuracy.jsonl")
    cells = aggregate(rows)
    plots = [throughput_plot(cells, out / "throughput.png").name,
             latency_plot(cells, out / "latency.png").name] if cells else []
    setup = (out / "setup.md").read_text() if (out / "setup.md").exists() else ""
    text = render(rows, RATIOS, setup, facts(), plots, "Serving benchmark: this server vs "
                  "TorchServe 0.12 on the same machine")
    text = text.replace("Reps are interleaved across concurrency levels;",
                        "Reps are interleaved across the servers of a comparison, the order "
                        "reversed every rep (see Setup);")
    title, _, rest = text.partition("\n")
    text = "\n".join([title, "", *headline_section(out, rows, failures), rest])
    if accuracy:
        from bench.accuracy import section

        text += "\n" + section(accuracy, SENTENCES)
    text += "\n" + targets_section(cells, inproc, hops, servers)
    text += "\n" + noise_section(raw / "vmstat.log")
    text += "\n" + placement_section()
    (out / "report.md").write_text(text)
    print(out / "report.md")


def headline_section(out: Path, rows: list[dict[str, Any]],
                     failures: list[dict[str, Any]]) -> list[str]:
    """The served comparisons first: noop on equal terms, its variants apart, then the
    models; ratios through the server only (in-process figures have their own table below)."""
    levels = sorted({int(r["concurrency"]) for r in rows})
    reps = sorted({int(r["rep"]) for r in rows})
    run_file = out / "raw" / "run.json"
    took = json.loads(run_file.read_text()) if run_file.exists() else {}
    lines = ["## Headline: served, on equal terms", ""]
    if took:
        lines += [f"`python -m bench.run {' '.join(took['argv'])}`, measured in "
                  f"{took['minutes']} min.", ""]
    lines += [f"Median of {len(reps)} interleaved rep(s) (min..max); 'per-rep ratios' divides "
              "the two servers' req/s of the same rep, which ran back to back. Same `.mar`, "
              "same registration, same warm-up and logging on both (see Setup).", ""]
    noop = headline_table(rows, NOOP_PAIRS, levels)
    if len(noop) > 3:  # more than the header and the closing blank line
        lines += [*noop, OVERLAP_TEXT, ""]
    models = headline_table(rows, MODEL_PAIRS, levels)
    if len(models) > 3:
        lines += ["### Models, served", "", *models]
    lines += ["### Failures", ""]
    if failures:
        lines += [f"- {f['scenario']}: {str(f['failure'])[:300]}" for f in failures]
    else:
        lines.append("None: every server started, every run had only 2xx answers.")
    return [*lines, ""]


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
            "of the reps with their min..max.\n")


def placement_section() -> str:
    """What the placement policy picks on bigger machines, computed by its own allocator."""
    from bench.placement_plans import markdown

    return ("## Placement on bigger machines (fake sysfs topologies)\n\n"
            "One model loaded at start with n workers, default policy, as the server's own "
            "`Resources` places it (`python -m bench.placement_plans`); `nX:` is the NUMA node, "
            "the worker's threads equal its CPUs. On this 2-core VM the pinned/unpinned "
            "comparison above is the only measurement; these plans are not measured.\n\n"
            + markdown() + "\n")


def setup_text(reps: int, noop: Timing, request_logs: bool, headline: bool) -> str:
    logging = ("ON on both: this server's access log (`access_log=true`, to LOG_LOCATION), "
               "TorchServe with its own log4j2 configuration (access, model and metric logs)"
               if request_logs else
               "OFF on both: this server's access log off (`access_log=false`, its default); "
               "TorchServe started with `--log-config` naming a log4j2 file that sets "
               "ACCESS_LOG, MODEL_METRICS and TS_METRICS off and MODEL_LOG and "
               "org.pytorch.serve at WARN (its default writes a line per request and several "
               "per batch). TorchServe's python worker still prints its per-batch lines to its "
               "stdout, which its frontend reads and drops: that is part of TorchServe")
    return f"""\
- {'`--headline`: only the noop rows, c=1 and c=16.' if headline else 'Full run.'}
  This server and TorchServe 0.12.0 each run alone, all their processes pinned to CPU 0
  (`taskset -c 0`: launcher, JVM, gateway, workers); the load generator runs on CPU 1.
- Same `.mar` for both: noop is `bench/handlers/noop_handler.py`, a plain `BaseHandler`
  subclass that declares no `can_overlap` (archive `noop-plain.mar`, built by the real
  archiver). Two variants run only on this server, each in its own row: one sent ahead
  (`noop-plain-ahead1.mar`, the same handler with `maxInflightBatches: 2`, the previous
  default) and one-at-a-time (`noop-plain-single.mar`, `maxInflightBatches: 1`: no batch
  sent ahead).
  resnet50 and minilm: the default store's archives (TorchServe ignores their
  `optimization:` block, if any, and runs the handler as is).
- Same registration on both (`POST /models?url=...&batch_size=..&max_batch_delay=..
  &initial_workers=1`), same config.properties keys, metrics as Prometheus counters in
  memory on both (`metrics_mode=prometheus`).
- Per-request logging: {logging}.
- Same warm-up for both: a discarded c=16 load of {noop.warm_s:g} s after each start (noop;
  15 s for the models), then per level a discarded {noop.warmup_s:g} s and a measured
  {noop.duration_s:g} s window (noop).
- {reps} rep(s); the servers of one comparison run interleaved with the order reversed each
  rep (rep 0: this server then TorchServe, rep 1: TorchServe then this server, ...), each run
  a fresh start (so start-up state is part of the spread). Tables: median (min..max).
- Clients: the project's aiohttp load generator (bench/loadgen.py) at every level, and wrk
  (C, 1 thread) at c=16 for noop when installed. minilm's load cycles through the 50 sentences
  of `bench/sentences.py` (3-120 words), each connection from its own offset.
- In-process limit: the same archive's handler called in a loop (bench/inproc.py) on CPU 0 in
  the environment this server gives a worker there (placement computed by the server's own
  `Resources`, applied by `serving.workers.pinning`: threads, inter-op threads, denormal
  flushing, OMP/MKL variables), the same request bodies, no server.
- The pinning scenario leaves the server unpinned on both cores with 2 resnet50 workers
  (batch 1): `placement: {{cores_per_worker: 1}}` versus `placement: {{enabled: false}}`.
"""


NOOP_PAIRS = [
    Pair("noop b1, plain BaseHandler, aiohttp", "serving noop b1", "torchserve noop b1"),
    Pair("noop b1, plain BaseHandler, wrk", "serving noop b1 (wrk)", "torchserve noop b1 (wrk)"),
    Pair("noop b8, plain BaseHandler, aiohttp", "serving noop b8", "torchserve noop b8"),
    Pair("noop b8, plain BaseHandler, wrk", "serving noop b8 (wrk)", "torchserve noop b8 (wrk)"),
    Pair("noop b1 **one-sent-ahead variant**, aiohttp", "serving noop b1 ahead1",
         "torchserve noop b1", OVERLAP_NOTE),
    Pair("noop b1 **one-sent-ahead variant**, wrk", "serving noop b1 ahead1 (wrk)",
         "torchserve noop b1 (wrk)", OVERLAP_NOTE),
    Pair("noop b1 **one-at-a-time variant**, aiohttp", "serving noop b1 single",
         "torchserve noop b1", OVERLAP_NOTE),
    Pair("noop b1 **one-at-a-time variant**, wrk", "serving noop b1 single (wrk)",
         "torchserve noop b1 (wrk)", OVERLAP_NOTE),
]
MODEL_PAIRS = [
    Pair(f"{model} b{batch}", f"serving {model} b{batch}", f"torchserve {model} b{batch}")
    for model in ("resnet50", "minilm") for batch in (1, 8)
]
RATIOS = [
    *((p.ours, p.theirs) for p in NOOP_PAIRS if "wrk" not in p.title),
    *((p.ours, p.theirs) for p in MODEL_PAIRS),
    ("serving resnet50 2 workers pinned", "serving resnet50 2 workers unpinned"),
]

__all__ = ["Aggregate", "main", "ratio"]

if __name__ == "__main__":
    raise SystemExit(main())
