"""`python -m bench.stress --quick` for one fault on the real server: nothing lost, nothing hung."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_kill9_under_load_answers_every_request(tmp_path: Path) -> None:
    out = tmp_path / "stress"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    # A fixed low rate instead of calibrating: one server start, ~6 s of load.
    done = subprocess.run(
        [sys.executable, "-m", "bench.stress", "--quick", "--scenarios", "fault-kill9",
         "--rate", "noop=100", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
    rows = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert [r["scenario"] for r in rows] == ["fault-kill9"], done.stderr[-3000:]
    row = rows[0]
    t = row["tally"]
    assert t["sent"] > 0 and t["hung"] == 0, row
    assert t["sent"] == t["answered"] + t["transport_errors"], row
    assert any("SIGKILL worker pid" in e for e in row["events"]), row["events"]
    assert row["after"]["ping"] == 200 and row["after"]["predict"] == 200, row["after"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fault-kill9" in (out / "report.md").read_text()
    assert (out / "raw" / "fault-kill9.jsonl.gz").stat().st_size > 0
