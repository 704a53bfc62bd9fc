"""report.md, rss.png and timeline.png of the stress benchmark, from summary.jsonl and raw/."""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from bench.machine import facts
from bench.stress_rss import GROWTH_LIMIT

OVERLOAD_STATUSES = {"200", "503", "504"}


def findings(row: dict[str, Any]) -> list[str]:
    """What in this scenario breaks the issue's bar; [] when it passed."""
    t = row.get("tally")
    if t is None:
        return [f"the server did not start or stop cleanly: {row.get('stop_error')}"]
    out = []
    if t["hung"]:
        out.append(f"{t['hung']} request(s) hung (no answer within {row['hang_after_s']:.0f} s)")
    if not t["accounted"]:
        out.append(f"bookkeeping: sent {t['sent']} != {t['answered']} answered + "
                   f"{t['transport_errors']} errors + {t['hung']} hung")
    if t["transport_errors"]:
        out.append(f"{t['transport_errors']} transport error(s) {t['errors']}")
        out += [f"  {kind}: {msg}" for kind, msg in (row.get("error_messages") or {}).items()]
    if t["unexpected_body"]:
        out.append(f"{t['unexpected_body']} 200(s) without the expected body")
    after = row.get("after") or {}
    if not row.get("server_alive", False):
        out.append("the server process was gone after the load")
    elif after.get("ping") != 200 or after.get("predict") != 200:
        out.append(f"not serving after the load: /ping {after.get('ping')}, predict "
                   f"{after.get('predict')}")
    elif after.get("recovered_s") is None:
        out.append(f"workers not back to READY: {after.get('ready_workers')} of "
                   f"{row['config']['workers']}")
    if row.get("stop_error"):
        out.append(f"stop: {row['stop_error'][:300]}")
    if row["kind"] == "overload":
        odd = set(t["statuses"]) - OVERLOAD_STATUSES
        if odd:
            out.append("answers other than 200/503/504: "
                       + ", ".join(f"{s}: {t['statuses'][s]}" for s in sorted(odd)))
    if row["kind"] == "soak":
        for role, g in row["rss_growth"].items():
            if not g["ok"]:
                out.append(f"{role} RSS grew {g['growth']:+.1%} (limit {GROWTH_LIMIT:.0%})")
    return out


def _statuses(t: dict[str, Any] | None) -> str:
    if t is None:
        return "-"
    return ", ".join(f"{k}: {v:,}" for k, v in t["statuses"].items()) or "none"


def _pct(g: dict[str, Any] | None) -> str:
    if not g or not g.get("first_n"):
        return "-"
    return f"{g['growth']:+.1%}"


def _ms(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.1f}"


def _table(rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| scenario | offered req/s (target) | s | sent | answers by status | transport "
             "errors | hung | accounted | p99 of 200s ms | up after | RSS gateway / workers |",
             "|---|---:|---:|---:|---|---:|---:|---|---:|---|---|"]
    for r in rows:
        t = r.get("tally")
        after = r.get("after") or {}
        up = ("yes" if after.get("recovered_s") is not None else
              f"ping {after.get('ping')}, predict {after.get('predict')}")
        if after.get("recovered_s"):
            up += f" ({after['recovered_s']:.1f} s)"
        rss = r.get("rss_growth") or {}
        lines.append(
            f"| {r['scenario']} | {r['achieved_rate']:,.0f} ({r['target_rate']:,.0f}) | "
            f"{r['duration_s']:.0f} | {t['sent'] if t else 0:,} | {_statuses(t)} | "
            f"{t['transport_errors'] if t else '-'} | **{t['hung'] if t else '-'}** | "
            f"{'yes' if t and t['accounted'] else 'NO'} | {_ms(t['p99_ms'] if t else None)} | "
            f"{up} | {_pct(rss.get('gateway'))} / {_pct(rss.get('worker'))} |")
    return lines


def _details(rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        f = findings(r)
        lines.append(f"- **{r['scenario']}** ({r['model']}, {r['load_factor']:g}x of "
                     f"{r['base_rate']:,.0f} req/s, queue {r['job_queue_size']}, commit "
                     f"{r['commit']}): " + ("; ".join(f) if f else "passed"))
        for e in r.get("events") or []:
            lines.append(f"  - {e}")
        if r.get("skipped"):
            cap = r.get("max_in_flight", 4000)
            lines.append(f"  - client skipped {r['skipped']:,} due requests ({cap:,} in flight)")
    return lines


def rss_plot(raw: Path, name: str, path: Path) -> Path | None:
    src = raw / f"{name}-rss.jsonl"
    if not src.exists():
        return None
    samples = [json.loads(line) for line in src.read_text().splitlines()]
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for pid in sorted({s["pid"] for s in samples}):
        mine = [s for s in samples if s["pid"] == pid]
        ax.plot([s["t_s"] for s in mine], [s["rss"] / 2**20 for s in mine],
                label=f"{mine[0]['role']} {pid}")
    ax.set_xlabel("seconds into the soak")
    ax.set_ylabel("RSS, MiB")
    ax.set_title(f"{name}: resident memory per process, and the gateway's open connections")
    ax.grid(True, alpha=0.3)
    conns = [s for s in samples if s.get("connections") is not None]
    if conns:
        ax2 = ax.twinx()
        ax2.plot([s["t_s"] for s in conns], [s["connections"] for s in conns],
                 color="grey", linewidth=0.8, label="gateway connections")
        ax2.set_ylabel("open connections")
        ax2.legend(fontsize="small", loc="lower right")
    ax.legend(fontsize="small", loc="upper left")
    fig.savefig(path, dpi=110)
    return path


def timeline_plot(raw: Path, names: Sequence[str], path: Path) -> Path | None:
    """Answers per second by result, per scenario (by the second each request was sent)."""
    names = [n for n in names if (raw / f"{n}.jsonl.gz").exists() and not n.startswith("soak")]
    if not names:
        return None
    fig = Figure(figsize=(10, 2.2 * len(names)), layout="constrained")
    for i, name in enumerate(names):
        ax = fig.add_subplot(len(names), 1, i + 1)
        bins: dict[str, Counter[int]] = {}
        with gzip.open(raw / f"{name}.jsonl.gz", "rt") as f:
            for line in f:
                sent, _, result, _ = json.loads(line)
                bins.setdefault(result, Counter())[int(sent)] += 1
        end = max((max(c) for c in bins.values()), default=0) + 1
        for result, counts in sorted(bins.items()):
            # Every second, zeros included, on a log scale: 4 502s must show beside 1,500 200s.
            ax.plot(range(end), [counts[x] for x in range(end)], label=result,
                    drawstyle="steps-post")
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(bottom=0)
        ax.set_title(name, fontsize="small")
        ax.set_ylabel("req/s (log)")
        ax.legend(fontsize="x-small", loc="upper right")
        ax.grid(True, alpha=0.3)
    fig.axes[-1].set_xlabel("second of the load the request was sent in")
    fig.savefig(path, dpi=90)
    return path


def write_report(out: Path, rows: Sequence[dict[str, Any]]) -> Path:
    raw = out / "raw"
    rss = rss_plot(raw, "soak-noop", out / "rss.png")
    timeline = timeline_plot(raw, [r["scenario"] for r in rows], out / "timeline.png")
    failed = [r["scenario"] for r in rows if findings(r)]
    hung = sum((r.get("tally") or {}).get("hung", 0) for r in rows)
    lines = ["# Stress: overload, faults under load, soak", "",
             "`python -m bench.stress` (method: `bench/README.md`). Server and all its "
             "processes on CPU 0, the open-loop client on CPU 1. A request is *hung* when no "
             "answer came within the scenario's response timeout + the queue's drain time at "
             "the calibrated rate + 10 s.", "",
             f"**{len(rows) - len(failed)} of {len(rows)} scenarios passed; hung requests in "
             f"all: {hung}.**" + (f" Findings in: {', '.join(failed)}." if failed else ""), "",
             "## Figures", "", *_table(rows), "",
             "Offered = the rate the client achieved (it records the target too: on noop one "
             "client core cannot always offer 4x what one server core serves). RSS: soak = "
             "median of the last minute against the first minute after a minute's warm-up; "
             "other scenarios = last fifth against the first fifth, for information.", "",
             "## Findings and events per scenario", "", *_details(rows), ""]
    notes = out / "notes.md"  # the hand-written reading of a run, kept across re-renders
    if notes.exists():
        lines += ["## Reading of this run", "", notes.read_text().strip(), ""]
    if timeline:
        lines += ["## Answers over time", "", f"![timeline]({timeline.name})", ""]
    if rss:
        lines += ["## Soak memory", "", f"![rss]({rss.name})", ""]
    lines += ["## Setup", "", *[f"- {k}: {v}" for k, v in facts().items()], ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
