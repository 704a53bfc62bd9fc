"""Logs of a real server: access log (TorchServe's line, or JSON), LOG_LOCATION files and
their rotation, request ids in handler lines, every line once, --log-config, metric log
lines in metrics_mode=log, and metrics switched off."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.archives import build_mar
from tests.support.scrape import scrape
from tests.support.server import ROOT, ServerProcess

ACCESS = re.compile(r'ACCESS_LOG - /127\.0\.0\.1:\d+ "(\w+) (\S+) HTTP/1\.1" (\d{3}) (\d+)$')


def start(tmp: Path, store: Path, props: str, *args: str, env: dict[str, str] | None = None
          ) -> ServerProcess:
    build_mar(store, "logged", "metrics_handler.py")
    config = tmp / "config.properties"
    config.write_text(props)
    return ServerProcess(tmp / "server.log", "--models", "logged.mar", *args,
                         model_store=store, ts_config=config, env=env)


def test_log_location_access_log_rotation_and_metric_logs(tmp_path: Path, store: Path):
    logs, metric_logs = tmp_path / "logs", tmp_path / "metric-logs"
    props = ("metrics_mode=log\nmetric_time_interval=1\nlog_max_bytes=4000\n"
             "log_backup_count=3\n")
    server = start(tmp_path, store, props, "--access-log",
                   env={"LOG_LOCATION": str(logs), "METRICS_LOCATION": str(metric_logs)})
    with server:
        server.wait_ready(("logged",))
        ok = [server.inference.post("/predictions/logged", json={"color": "red"},
                                    headers={"x-request-id": f"rid-{i}"})
              for i in range(40)]
        assert {r.status_code for r in ok} == {200}
        assert server.inference.post("/predictions/missing", json={}).status_code == 404
        assert server.management.get("/models").status_code == 200
        scraped = scrape(server)
    assert server.proc.returncode == 0

    access_files = sorted(logs.glob("access_log.log*"))
    assert len(access_files) >= 2, "the access log did not rotate past log_max_bytes"
    assert all(p.stat().st_size <= 4000 for p in access_files)
    lines = [line for p in access_files for line in p.read_text().splitlines()]
    parsed = [ACCESS.search(line) for line in lines]
    assert all(parsed), [line for line, m in zip(lines, parsed, strict=True) if not m][:3]
    seen = Counter((m.group(1), m.group(2), m.group(3)) for m in parsed if m)
    # Four files of 4000 bytes hold every line of this test: none rotated out.
    assert seen["POST", "/predictions/logged", "200"] == 40
    assert seen["POST", "/predictions/missing", "404"] == 1
    assert seen["GET", "/models", "200"] == 1
    # Access lines stay out of the server log; the server log has the server's lines.
    ts_log = (logs / "ts_log.log").read_text()
    assert "Server ready" in ts_log and "ACCESS_LOG" not in ts_log
    # A handler's own log line carries the id of the request it was handling; with
    # LOG_LOCATION the workers' lines also go to model_log.log (TorchServe's file for them).
    assert re.search(r"\[requests rid-7\] .*handling a batch of 1", server.log())
    model_log = "".join(p.read_text() for p in sorted(logs.glob("model_log.log*")))
    assert re.search(r"\[logged/\d+\] \[requests rid-7\] .*handling a batch of 1", model_log)
    assert "Server ready" not in model_log
    # Every line once: the duplicated uvicorn start/stop lines are gone.
    gateway = [line for line in server.log().splitlines() if line and "[logged/" not in line]
    assert len(gateway) == len(set(gateway)), Counter(gateway).most_common(3)
    assert "uvicorn.error: Started server process" not in server.log()
    # metrics_mode=log: TorchServe's metric lines; a counter's lines add up to its count.
    ts_metrics = "".join(p.read_text() for p in metric_logs.glob("ts_metrics.log*"))
    counted = [float(v) for v in re.findall(
        r"Requests2XX\.Count:([0-9.]+)\|#Level:Host\|#hostname:\S+,timestamp:\d+", ts_metrics)]
    # (and what /metrics said just before the stop: nothing was answered after it)
    assert sum(counted) == scraped.value("Requests2XX_total") >= 41
    assert sum(2 <= int(m.group(3)) // 100 < 3 for m in parsed if m) == sum(counted)
    assert sum(float(v) for v in re.findall(
        r"ts_inference_requests_total\.Count:([0-9.]+)\|#model_name:logged,"
        r"model_version:1\.0\|", ts_metrics)) == 40
    model_metrics = "".join(p.read_text() for p in metric_logs.glob("model_metrics.log*"))
    assert sum(float(v) for v in re.findall(
        r"InferCount\.Count:([0-9.]+)\|#Color:red,ModelName:logged,Level:Model\|",
        model_metrics)) == 40
    assert "serving_requests" not in ts_metrics  # this server's own metrics: /metrics only
    # TorchServe's default metrics.yaml: WorkerLoadTime names the worker TorchServe's way.
    assert re.search(r'^WorkerLoadTime\{WorkerName="W-\d+-logged_1\.0",Level="Host",'
                     r'Hostname="[^"]+"\} [1-9]', scraped.text, re.M)
    assert re.search(r"MemoryUsed\.Megabytes:[0-9.]+\|#Level:Host\|#hostname:", ts_metrics)


def test_model_log_rotates_with_several_workers_writing_it(tmp_path: Path, store: Path):
    build_mar(store, "busy", "metrics_handler.py", config="minWorkers: 3\nbatchSize: 1\n")
    logs = tmp_path / "logs"
    config = tmp_path / "config.properties"
    config.write_text("log_max_bytes=4000\nlog_backup_count=200\n")
    server = ServerProcess(tmp_path / "server.log", "--models", "busy.mar", model_store=store,
                           ts_config=config, env={"LOG_LOCATION": str(logs)})
    ids = [f"rot-{i:03d}" for i in range(150)]
    with server:
        server.wait_ready(("busy",))

        def call(request_id: str) -> int:
            return server.inference.post("/predictions/busy", json={},
                                         headers={"x-request-id": request_id}).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(call, ids)) == {200}
    files = sorted(logs.glob("model_log.log*"))
    assert len(files) >= 3, "model_log.log did not rotate past log_max_bytes"
    assert all(f.stat().st_size <= 4000 for f in files)
    lines = [line for f in files for line in f.read_text().splitlines()]
    handled = [re.search(r"\[busy/(\d+)\] \[requests (rot-\d+)\] .*handling a batch of 1$",
                         line) for line in lines]
    # Every request's line once, whole, whichever worker wrote it and whichever file it is in.
    assert Counter(m.group(2) for m in handled if m) == Counter(ids)
    assert len({m.group(1) for m in handled if m}) >= 2  # several workers wrote the file
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \w+ \[busy/\d+\]", line)
               for line in lines), lines[:3]


def test_json_access_log_on_stderr(tmp_path: Path, store: Path):
    server = start(tmp_path, store, "access_log=true\naccess_log_format=json\n")
    with server:
        server.wait_ready(("logged",))
        r = server.inference.post("/predictions/logged", json={},
                                  headers={"x-request-id": "json-one"})
        assert r.status_code == 200
    records = [json.loads(line.split("ACCESS_LOG - ", 1)[1])
               for line in server.log().splitlines() if "ACCESS_LOG - {" in line]
    mine = [r for r in records if r["request_id"] == "json-one"]
    assert len(mine) == 1
    assert mine[0]["method"] == "POST" and mine[0]["path"] == "/predictions/logged"
    assert mine[0]["status"] == 200 and isinstance(mine[0]["duration_ms"], int)


def test_no_access_log_by_default(tmp_path: Path, store: Path):
    server = start(tmp_path, store, "")
    with server:
        server.wait_ready(("logged",))
        assert server.inference.post("/predictions/logged", json={}).status_code == 200
    assert "ACCESS_LOG" not in server.log()


def test_log_config_replaces_the_default_logging(tmp_path: Path, store: Path):
    target = tmp_path / "mine.log"
    config = tmp_path / "logging.yaml"
    config.write_text(f"""
version: 1
formatters:
  plain: {{format: "MINE %(levelname)s %(name)s %(message)s"}}
handlers:
  file: {{class: logging.FileHandler, filename: "{target}", formatter: plain}}
root: {{level: INFO, handlers: [file]}}
""")
    server = start(tmp_path, store, "", "--log-config", str(config))
    with server:
        server.wait_ready(("logged",))
    text = target.read_text()
    assert "MINE INFO serving Server ready" in text


def test_a_log4j2_config_is_refused_with_the_reason(tmp_path: Path):
    xml = tmp_path / "log4j2.xml"
    xml.write_text("<Configuration/>")
    done = subprocess.run([sys.executable, "-m", "serving", "start", "--log-config", str(xml)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "log4j2" in done.stderr and "Python logging configuration" in done.stderr


def test_a_bad_metrics_config_stops_the_start(tmp_path: Path):
    bad = tmp_path / "metrics.yaml"
    bad.write_text("ts_metrics:\n  counter:\n    - name: NotATorchServeMetric\n")
    props = tmp_path / "config.properties"
    props.write_text(f"metrics_config={bad}\n")
    done = subprocess.run([sys.executable, "-m", "serving", "start", "--ts-config", str(props)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "NotATorchServeMetric" in done.stderr


def test_metrics_switched_off(tmp_path: Path, store: Path):
    server = start(tmp_path, store, "enable_metrics_api=false\n")
    with server:
        server.wait_ready(("logged",))
        assert server.inference.post("/predictions/logged", json={}).status_code == 200
        with pytest.raises(httpx.ConnectError):
            server.metrics.get("/metrics")
