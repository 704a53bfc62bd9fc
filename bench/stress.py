"""The stress benchmark: overload, faults under load and a soak, every request accounted for.

    python -m bench.stress [--quick] [--scenarios overload-noop,fault-kill9,...]
                           [--soak-seconds 600] [--rate noop=1500] [--out bench/results/stress]

Each scenario starts its own server (`python -m serving start`, every process on CPU 0) and
drives it from this process pinned to CPU 1 with an open-loop load at a multiple of the
model's sustainable rate (measured first with a short closed-loop run unless `--rate` gives
it). Writes summary.jsonl (one row per scenario), raw/<scenario>.jsonl.gz (one row per
request: sent s, latency ms, result, body ok), raw/<scenario>-rss.jsonl, report.md, rss.png.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import subprocess
import sys
import time
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench.loadgen import open_session as closed_session
from bench.loadgen import run_level, warm
from bench.project_server import ProjectServer
from bench.scenarios import CLIENT_CPUS, SERVER_CPUS, pinned
from bench.server import ServerError
from bench.stress_faults import INJECTORS, FaultContext, after_check
from bench.stress_load import LoadRun, open_loop, open_session, tally
from bench.stress_plan import (
    NORMAL_BODY,
    PING_TIMEOUT_S,
    Durations,
    Scenario,
    prepare_archives,
    scenarios,
)
from bench.stress_report import write_report
from bench.stress_rss import RssSample, RssSampler, growth, totals
from bench.workload import Plan, Target
from model_store.build import build_all

REPO = Path(__file__).resolve().parents[1]
HANG_MARGIN_S = 10.0  # beyond response timeout + queue drain before a request counts as hung
RECOVERY_DEADLINE_S = 45.0  # a replacement worker may wait out its restart back-off
T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """uvloop when installed: the client must out-run a server it is meant to overload."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def payload(model: str) -> tuple[bytes, str, bytes | None]:
    """Body, content type and the bytes a 200 must contain, per served model."""
    if model == "resnet50":
        import numpy as np

        tensor = np.random.default_rng(0).standard_normal((3, 224, 224)).astype("<f4")
        return tensor.tobytes(), "application/octet-stream", None
    return NORMAL_BODY, "application/json", b'"ok"'


def calibrate(store: Path, sc: Scenario, seconds: float) -> float:
    """Sustainable req/s of the scenario's model: closed loop, 16 in flight, after a warm-up."""
    body, ctype, expect = payload(sc.model)
    with ProjectServer(store, {sc.model: sc.config}, pin_cpus=SERVER_CPUS) as server, \
            pinned(CLIENT_CPUS):
        target = Target(server.base_url, f"/predictions/{sc.model}", body, ctype,
                        expect=expect)

        async def measure() -> float:
            await warm(target, seconds / 3, concurrency=16)
            async with closed_session(16, 120.0) as session:
                r = await run_level(session, target, 16, Plan(0.0, seconds, None, 120.0))
            return r.rps

        rate = run_async(measure())
    print(f"calibrated {sc.model}: {rate:.1f} req/s", file=sys.stderr, flush=True)
    return rate


async def _drive(sc: Scenario, server: ProjectServer, rate: float, hang_after_s: float,
                 rss_interval_s: float) -> dict[str, Any]:
    body, ctype, expect = payload(sc.model)
    url = f"{server.base_url}/predictions/{sc.model}"
    assert server.proc is not None
    async with open_session(sc.max_in_flight) as session, aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=10)) as mgmt:
        await warm(Target(server.base_url, f"/predictions/{sc.model}", body, ctype), 2.0,
                   concurrency=4)
        ctx = FaultContext(mgmt, server.management_url, sc.model, sc.duration_s,
                           PING_TIMEOUT_S, hang_after_s)
        async with RssSampler(server.proc.pid, rss_interval_s) as sampler:
            injector = (asyncio.get_running_loop().create_task(INJECTORS[sc.injector](ctx))
                        if sc.injector else None)
            ctx.t0 = time.monotonic()
            run = await open_loop(session, url, sc.bodies(body, rate), ctype, rate,
                                  sc.duration_s, hang_after_s, expect=expect,
                                  max_in_flight=sc.max_in_flight)
            if injector is not None:
                await injector
            after = await after_check(mgmt, server.base_url, server.management_url, sc.model,
                                      body, ctype, sc.config.workers, RECOVERY_DEADLINE_S)
    return {"run": run, "events": ctx.events, "after": after, "rss": sampler.samples}


def run_scenario(sc: Scenario, store: Path, base_rate: float, out: Path) -> dict[str, Any]:
    rate = base_rate * sc.load_factor
    queue = sc.job_queue_size or max(8, round(base_rate * 2))
    # A queued request may wait for the whole queue to drain before its batch runs.
    hang_after_s = sc.config.response_timeout_s + queue / base_rate + HANG_MARGIN_S
    rss_interval_s = 5.0 if sc.kind == "soak" and sc.duration_s >= 300 else 1.0
    print(f"{sc.name}: {rate:.1f} req/s for {sc.duration_s:.0f} s, queue {queue}",
          file=sys.stderr, flush=True)
    server = ProjectServer(store, {sc.model: sc.config}, pin_cpus=SERVER_CPUS,
                           job_queue_size=queue, extra_properties=sc.properties)
    row: dict[str, Any] = {"scenario": sc.name, "kind": sc.kind, "model": sc.model,
                           "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                           "load_1m": os.getloadavg()[0], "base_rate": base_rate,
                           "load_factor": sc.load_factor, "target_rate": rate,
                           "duration_s": sc.duration_s, "job_queue_size": queue,
                           "hang_after_s": hang_after_s, "config": vars(sc.config),
                           "properties": sc.properties, "max_in_flight": sc.max_in_flight,
                           "commit": _commit()}
    got: dict[str, Any] | None = None
    stop_error = None
    try:
        with server, pinned(CLIENT_CPUS):
            got = run_async(_drive(sc, server, rate, hang_after_s, rss_interval_s))
            row["server_alive"] = server.proc is not None and server.proc.poll() is None
    except ServerError as e:  # a start that failed, or processes surviving the stop: findings
        stop_error = str(e)[-2000:]
    row["stop_error"] = stop_error
    if got is None:
        row.update({"clean": False, "tally": None, "events": [], "after": None,
                    "rss_growth": {}, "achieved_rate": 0.0, "skipped": 0, "max_lag_s": 0.0})
        return row
    row["stop_error"] = stop_error
    row.update(_summarise(sc, got, rss_interval_s))
    _write_raw(out / "raw", sc.name, got["run"], got["rss"])
    return row


def _summarise(sc: Scenario, got: dict[str, Any], rss_interval_s: float) -> dict[str, Any]:
    run: LoadRun = got["run"]
    t = tally(run.sent, run.outcomes)
    samples: list[RssSample] = got["rss"]
    if sc.kind == "soak":
        warmup = window = min(60.0, sc.duration_s / 4)
    else:  # a short run: first samples against last, for information only
        warmup, window = 0.0, max(rss_interval_s * 2, sc.duration_s / 5)
    rss = {role: growth(totals(samples, role), role, warmup, window).to_dict()
           for role in ("gateway", "worker")}
    return {"achieved_rate": run.achieved_rate, "skipped": run.skipped,
            "error_messages": run.error_messages,
            "max_lag_s": run.max_lag_s, "tally": t.to_dict(), "clean": t.clean,
            "events": got["events"], "after": got["after"], "rss_growth": rss}


def _write_raw(raw: Path, name: str, run: LoadRun, samples: Sequence[RssSample]) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    with gzip.open(raw / f"{name}.jsonl.gz", "wt") as f:
        for o in run.outcomes:
            f.write(json.dumps(o.row()) + "\n")
    with (raw / f"{name}-rss.jsonl").open("w") as f:
        for s in samples:
            f.write(json.dumps(vars(s)) + "\n")


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=REPO, check=False)
    # The run writes its own results under bench/results: they do not make the code dirty.
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                            ".", ":!bench/results"],
                           capture_output=True, text=True, cwd=REPO, check=False).stdout
    return done.stdout.strip() + ("+dirty" if dirty.strip() else "")


def _merge_summary(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of scenarios run now replace their earlier rows; the others are kept."""
    kept: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            kept[r["scenario"]] = r
    for r in rows:
        kept[r["scenario"]] = r
    path.write_text("".join(json.dumps(r) + "\n" for r in kept.values()))
    return list(kept.values())


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.stress", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="seconds per scenario, 30 s soak")
    p.add_argument("--scenarios", default="", help="comma list of names (default: all)")
    p.add_argument("--out", type=Path, default=REPO / "bench/results/stress")
    p.add_argument("--overload-factor", type=float, default=4.0)
    p.add_argument("--overload-seconds", type=float)
    p.add_argument("--fault-seconds", type=float)
    p.add_argument("--fault-load", type=float, default=0.5, help="share of noop's rate")
    p.add_argument("--soak-seconds", type=float)
    p.add_argument("--soak-load", type=float, default=0.7)
    p.add_argument("--rate", action="append", default=[],
                   help="MODEL=REQ_PER_S: skip calibrating MODEL (repeatable)")
    p.add_argument("--report-only", action="store_true", help="re-render from summary.jsonl")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    out: Path = args.out
    if args.report_only:
        write_report(out, _merge_summary(out / "summary.jsonl", []))
        return 0
    base = Durations.quick() if args.quick else Durations()
    d = Durations(base.calibrate, args.overload_seconds or base.overload,
                  args.fault_seconds or base.fault, args.soak_seconds or base.soak)
    chosen = scenarios(d, args.overload_factor, args.fault_load, args.soak_load)
    names = {n.strip() for n in args.scenarios.split(",") if n.strip()}
    unknown = names - {s.name for s in chosen}
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; know {[s.name for s in chosen]}")
    chosen = [s for s in chosen if not names or s.name in names]
    store = REPO / "model_store" / "build"
    build_all(store, only=sorted({"noop"} | {s.model for s in chosen if s.model == "resnet50"}))
    prepare_archives(store)
    rates = {k: float(v) for k, v in (r.split("=", 1) for r in args.rate)}
    first = {s.rate_of: s for s in reversed(chosen) if s.kind != "fault"}
    for model in sorted({s.rate_of for s in chosen} - rates.keys()):
        sc = first.get(model) or next(s for s in scenarios(d, 1, 1, 1) if s.model == model)
        rates[model] = calibrate(store, sc, d.calibrate)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for sc in chosen:
        row = run_scenario(sc, store, rates[sc.rate_of], out)
        print(json.dumps({k: row[k] for k in ("scenario", "clean", "tally", "after")}),
              file=sys.stderr, flush=True)
        rows.append(row)
    write_report(out, _merge_summary(out / "summary.jsonl", rows))
    return 0 if all(r["clean"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
