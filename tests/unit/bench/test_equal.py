"""The equal-terms method of bench.run: run order, failure detection, medians, exit code."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench.accuracy import compare, cosine, summary
from bench.archive import build_noop_mar
from bench.equal import Pair, Spread, headline_table, interleaved, pair_cell, row_failure
from bench.inproc import batches
from bench.run import Group, Runner, exit_code
from bench.scenarios import Load, ServerRun
from bench.tsconfig import QUIET_LOG4J2, ModelConfig, request_logging


def row(label: str, c: int, rep: int, rps: float, p99: float = 10.0, **extra: Any
        ) -> dict[str, Any]:
    return {"label": label, "concurrency": c, "rep": rep, "rps": rps, "p99_ms": p99,
            "ok": 100, "error_count": 0, "errors": {}, **extra}


def test_interleaved_flips_the_order_every_rep() -> None:
    order = interleaved(["serving", "torchserve"], 4)
    assert [(rep, m) for rep, _, m in order] == [
        (0, "serving"), (0, "torchserve"), (1, "torchserve"), (1, "serving"),
        (2, "serving"), (2, "torchserve"), (3, "torchserve"), (3, "serving")]
    assert [pos for _, pos, _ in order] == [0, 1] * 4


def test_interleaved_three_members_and_each_runs_once_per_rep() -> None:
    order = interleaved(["a", "b", "c"], 3)
    assert [m for _, _, m in order] == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    for rep in range(3):
        assert sorted(m for r, _, m in order if r == rep) == ["a", "b", "c"]


def test_interleaved_refuses_no_reps() -> None:
    with pytest.raises(ValueError, match="reps"):
        interleaved(["a"], 0)


def test_row_failure_names_errors_and_empty_windows() -> None:
    assert row_failure(row("x", 1, 0, 10.0)) is None
    bad = row("x", 1, 0, 10.0, error_count=3, errors={"status:503": 2, "timeout": 1})
    assert row_failure(bad) == "3 failed request(s) (status:503 2, timeout 1)"
    assert row_failure({**row("x", 1, 0, 0.0), "ok": 0}) == "no request succeeded in the window"


def test_spread_is_median_min_max() -> None:
    s = Spread.of([300.0, 100.0, 200.0, math.nan])
    assert (s.median, s.low, s.high, s.values) == (200.0, 100.0, 300.0, [300.0, 100.0, 200.0])
    assert s.text() == "200 (100..300)"
    assert Spread.of([5.0, 7.0]).median == 6.0
    assert Spread.of([1234.0]).text() == "1,234"
    assert math.isnan(Spread.of([]).median) and Spread.of([]).text() == "-"


def test_pair_cell_ratios_pair_runs_of_the_same_rep() -> None:
    rows = [row("ours", 16, 0, 300.0, p99=5.0), row("theirs", 16, 0, 100.0, p99=30.0),
            row("ours", 16, 1, 200.0, p99=6.0), row("theirs", 16, 1, 100.0, p99=20.0),
            row("ours", 16, 2, 500.0, p99=7.0), row("theirs", 16, 2, 250.0, p99=40.0),
            row("ours", 1, 0, 1.0)]
    cell = pair_cell(rows, "ours", "theirs", 16)
    assert cell is not None
    assert cell.ours_rps.median == 300.0 and cell.theirs_rps.median == 100.0
    assert cell.ratio_of_medians == 3.0
    assert cell.rep_ratios.values == [3.0, 2.0, 2.0]
    assert (cell.rep_ratios.median, cell.rep_ratios.low, cell.rep_ratios.high) == (2.0, 2.0, 3.0)
    assert (cell.ours_p99.median, cell.theirs_p99.median) == (6.0, 30.0)
    assert pair_cell(rows, "ours", "theirs", 1) is None  # theirs has no c=1 row


def test_headline_table_has_a_row_per_pair_and_level_and_the_note() -> None:
    rows = [row("s", c, rep, 200.0 + rep, p99=1.0) for c in (1, 16) for rep in range(3)]
    rows += [row("t", c, rep, 100.0, p99=3.0) for c in (1, 16) for rep in range(3)]
    lines = headline_table(rows, [Pair("noop b1", "s", "t"),
                                  Pair("overlap", "s", "t", "(not equal terms)"),
                                  Pair("missing", "nothing", "t")], [1, 16])
    body = [line for line in lines if line.startswith("| noop") or line.startswith("| overlap")]
    assert len(body) == 4
    assert "| noop b1 | 16 | 201 (200..202) | 100 (100..100) | 2.01x | 2.00, 2.01, 2.02 |" \
        in body[1]
    assert "(not equal terms)" in body[2]
    assert not any("missing" in line for line in lines)


def test_exit_code_is_one_when_anything_failed(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code([]) == 0
    assert exit_code(["torchserve noop b1 rep 0: ServerError: not ready"]) == 1
    assert "torchserve noop b1 rep 0" in capsys.readouterr().err


def test_quiet_torchserve_logs_turn_off_every_per_request_logger() -> None:
    for name in ("ACCESS_LOG", "MODEL_METRICS", "TS_METRICS"):
        assert f'<Logger name="{name}" level="off"/>' in QUIET_LOG4J2
    assert '<Logger name="org.pytorch.serve" level="warn"/>' in QUIET_LOG4J2
    assert request_logging("serving", False)["access_log"] == "false"
    assert request_logging("serving", True)["access_log"] == "true"
    assert request_logging("torchserve", False) == {"metrics_mode": "prometheus"}


def test_inproc_batches_cover_every_body_in_turn() -> None:
    bodies = [b"a", b"b", b"c"]
    assert batches(bodies, 1) == [[b"a"], [b"b"], [b"c"]]
    assert batches(bodies, 2) == [[b"a", b"b"], [b"c", b"a"], [b"b", b"c"]]
    assert batches([b"x"], 8) == [[b"x"] * 8]


def test_accuracy_cosine_and_summary() -> None:
    assert cosine([1.0, 0.0], [1.0, 0.0]) == pytest.approx(1.0)
    assert cosine([1.0, 0.0], [0.0, 2.0]) == pytest.approx(0.0)
    assert math.isnan(cosine([0.0, 0.0], [1.0, 1.0]))
    assert math.isnan(cosine([1.0], [1.0, 2.0]))
    rows = compare("s", [[1.0, 0.0], [1.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]], ["one two", "x"])
    assert [r["words"] for r in rows] == [2, 1]
    s = summary(rows)
    assert s["n"] == 2 and s["min"] == pytest.approx(math.sqrt(0.5))


@pytest.fixture(scope="module")
def noop_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("store")
    build_noop_mar(store, "noop-plain")
    return store


def _load(payload: Path, expect: str) -> Load:
    return Load("/predictions/noop", payload, "application/json", [2], duration_s=0.5,
                warmup_s=0.2, reps=1, expect=expect)


def test_runner_records_a_server_that_does_not_start(noop_store: Path, tmp_path: Path) -> None:
    payload = tmp_path / "noop.json"
    payload.write_text("{}")
    (tmp_path / "out/raw").mkdir(parents=True)
    runner = Runner(tmp_path / "out", noop_store, request_logs=False)
    broken = ServerRun("serving missing", "serving", {"noop": ModelConfig("missing.mar")},
                       _load(payload, '"ok"'), warm_s=0, pin=None)
    runner.measure([Group("broken", [broken])], reps=1)
    assert len(runner.failures) == 1 and runner.failures[0].startswith("serving missing rep 0")
    recorded = [json.loads(line) for line in
                (tmp_path / "out/raw/failures.jsonl").read_text().splitlines()]
    assert recorded[0]["scenario"] == "serving missing rep 0"
    assert exit_code(runner.failures) == 1


def test_runner_fails_a_run_with_bad_answers_and_passes_a_clean_one(
        noop_store: Path, tmp_path: Path) -> None:
    payload = tmp_path / "noop.json"
    payload.write_text("{}")
    (tmp_path / "out/raw").mkdir(parents=True)
    runner = Runner(tmp_path / "out", noop_store, request_logs=False)
    models = {"noop": ModelConfig("noop-plain.mar")}
    clean = ServerRun("serving ok", "serving", models, _load(payload, '"ok"'), warm_s=0,
                      pin=None)
    wrong = ServerRun("serving wrong", "serving", models, _load(payload, '"nope"'), warm_s=0,
                      pin=None)
    runner.measure([Group("pair", [clean, wrong])], reps=2)
    rows = [json.loads(line) for line in
            (tmp_path / "out/raw/results.jsonl").read_text().splitlines()]
    assert [(r["label"], r["rep"], r["position"]) for r in rows] == [
        ("serving ok", 0, 0), ("serving wrong", 0, 1), ("serving wrong", 1, 0),
        ("serving ok", 1, 1)]
    assert all(r["ok"] > 0 for r in rows if r["label"] == "serving ok")
    assert len(runner.failures) == 2
    assert all(f.startswith("serving wrong c=2 rep") and "unexpected_body" in f
               for f in runner.failures)


def test_headline_noop_is_plain_and_the_variants_only_set_the_depth(tmp_path: Path) -> None:
    """The equal-terms claim: the archive both servers run declares no overlap; the variants
    differ from it only by `maxInflightBatches` in their model-config.yaml."""
    import zipfile

    import yaml

    from bench.handlers.noop_handler import NoopHandler
    from bench.run import noop_archives

    assert not getattr(NoopHandler, "can_overlap", False)
    noop_archives(tmp_path)
    for name, depth in (("ahead1", 2), ("single", 1)):
        with zipfile.ZipFile(tmp_path / "noop-plain.mar") as plain, \
                zipfile.ZipFile(tmp_path / f"noop-plain-{name}.mar") as variant:
            assert "model-config.yaml" not in plain.namelist()
            assert yaml.safe_load(variant.read("model-config.yaml")) == \
                {"maxInflightBatches": depth}
            assert plain.read("noop_handler.py") == variant.read("noop_handler.py")


def _post_noop(base_url: str, n: int) -> None:
    import urllib.request

    for _ in range(n):
        request = urllib.request.Request(f"{base_url}/predictions/noop", data=b"{}",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert b'"ok"' in resp.read()


@pytest.mark.parametrize("on", [False, True])
def test_this_servers_request_log_follows_the_mode(noop_store: Path, tmp_path: Path,
                                                    on: bool) -> None:
    from bench.scenarios import server_for

    run = ServerRun("serving noop", "serving", {"noop": ModelConfig("noop-plain.mar")},
                    _load(tmp_path / "unused.json", '"ok"'), pin=None, request_logs=on)
    with server_for(run, noop_store) as server:
        _post_noop(server.base_url, 3)
        workdir = server.workdir
    access = workdir / "logs" / "access_log.log"
    lines = access.read_text().splitlines() if access.exists() else []
    assert len([line for line in lines if "/predictions/noop" in line]) == (3 if on else 0)
    assert "/predictions/noop" not in (workdir / "server.log").read_text()


@pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs a Java runtime")
def test_quiet_torchserve_writes_no_line_per_request(noop_store: Path, tmp_path: Path) -> None:
    from bench.scenarios import server_for

    run = ServerRun("torchserve noop", "torchserve", {"noop": ModelConfig("noop-plain.mar")},
                    _load(tmp_path / "unused.json", '"ok"'), pin=None, request_logs=False)
    with server_for(run, noop_store) as server:
        _post_noop(server.base_url, 5)
        workdir = server.workdir
    written = "".join(f.read_text(errors="replace") for f in workdir.rglob("*.log"))
    assert (workdir / "log4j2.xml").exists()
    assert "/predictions/noop" not in written  # no access log line, in a file or the console
    assert "Backend received inference" not in written  # the worker's per-batch line
    assert "PredictionTime" not in written  # its per-batch metric line
