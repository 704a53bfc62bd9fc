"""/metrics on a real server: exact counts per model and status, TorchServe's names, handler
metrics with their dimensions, failure reasons, gauges, OpenMetrics, metrics.yaml."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from tests.support.archives import build_mar
from tests.support.polling import wait_for
from tests.support.scrape import Scrape, scrape
from tests.support.server import ServerProcess

METRICS_YAML = """\
dimensions:
  - &model_name "ModelName"
  - &level "Level"
ts_metrics:
  counter:
    - name: Requests2XX
      unit: Count
      dimensions: [*level]
    - name: Requests4XX
      unit: Count
      dimensions: [*level]
    - name: Requests5XX
      unit: Count
      dimensions: [*level]
    - name: ts_inference_requests_total
      unit: Count
      dimensions: ["model_name", "model_version", "hostname"]
    - name: ts_queue_latency_microseconds
      unit: Microseconds
      dimensions: ["model_name", "model_version", "hostname"]
  gauge:
    - name: MemoryUsed
      unit: Megabytes
      dimensions: [*level]
model_metrics:
  gauge:
    - name: QueueLength
      unit: count
      dimensions: [*model_name, *level]
"""


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose metrics.yaml leaves some TorchServe metrics out and declares one
    handler metric; models: `alpha`/`beta` (metrics handler), `slow` (one worker, queue 2)."""
    folder = tmp_path_factory.mktemp("metrics-config")
    (folder / "metrics.yaml").write_text(METRICS_YAML)
    props = folder / "config.properties"
    props.write_text(f"metrics_config={folder / 'metrics.yaml'}\nmetrics_mode=prometheus\n"
                     "metric_time_interval=1\n")
    build_mar(store, "alpha", "metrics_handler.py")
    build_mar(store, "beta", "metrics_handler.py")
    build_mar(store, "slow", "slow_handler.py",
              config="jobQueueSize: 2\nresponseTimeout: 2\nminWorkers: 1\n")
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with ServerProcess(log, "--models", "alpha.mar,beta.mar,slow.mar", model_store=store,
                       ts_config=props) as srv:
        srv.wait_ready(("alpha", "beta", "slow"))
        yield srv


def post(server: ServerProcess, path: str, order: dict) -> httpx.Response:
    return server.inference.post(path, json=order)


def test_counts_match_the_requests_sent_per_model_and_status(server: ServerProcess):
    before = scrape(server)
    sent = Counter()
    for _ in range(7):
        assert post(server, "/predictions/alpha", {"color": "red"}).status_code == 200
        sent["alpha", "200"] += 1
    for _ in range(3):
        assert post(server, "/predictions/alpha", {"status": 404}).status_code == 404
        sent["alpha", "404"] += 1
    for _ in range(2):
        assert post(server, "/predictions/alpha", {"raise": 507}).status_code == 507
        sent["alpha", "507"] += 1
    for _ in range(5):
        assert post(server, "/predictions/beta/1.0", {}).status_code == 200
        sent["beta", "200"] += 1
    assert post(server, "/predictions/nobody", {}).status_code == 404  # not a model: host only
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    for (model, status), n in sent.items():
        assert delta("serving_requests_total", model=model, version="1.0", status=status) == n
    assert delta("serving_requests_total", model="beta", status="404") == 0
    assert delta("ts_inference_requests_total", model_name="alpha", model_version="1.0") == 12
    assert delta("ts_inference_requests_total", model_name="beta", model_version="1.0") == 5
    assert delta("serving_request_duration_seconds_count", model="alpha") == 12
    assert delta("serving_queue_wait_seconds_count", model="beta") == 5
    assert delta("serving_batch_size_count", model="beta") == 5  # batch size 1: one per request
    assert delta("serving_batch_size_sum", model="beta") == 5
    assert delta("serving_inference_duration_seconds_count", model="alpha") == 12
    assert delta("serving_request_failures_total", model="alpha", reason="handler_error") == 2
    assert delta("serving_request_failures_total", model="beta") == 0
    assert delta("ts_queue_latency_microseconds_total", model_name="alpha") > 0
    # HTTP statuses by class, TorchServe's host-level counters (scrapes are not counted).
    assert delta("Requests2XX_total", Level="Host") == 12
    assert delta("Requests4XX_total", Level="Host") == 4
    assert delta("Requests5XX_total", Level="Host") == 2
    # Every request of a model version is in exactly one latency bucket series.
    count = after.value("serving_request_duration_seconds_count", model="alpha")
    assert after.value("serving_request_duration_seconds_bucket", model="alpha",
                       le="+Inf") == count


def test_every_answer_on_the_prediction_routes_counts_in_its_status_class(
        server: ServerProcess):
    """The inference app counts the answers of its prediction routes itself (no wrapped
    `send` there): the rarer ones too, and the other routes through the wrapper."""
    before = scrape(server)
    inference = server.inference
    assert inference.request("OPTIONS", "/predictions/alpha").status_code == 200  # described
    assert inference.request("TRACE", "/predictions/alpha").status_code == 405
    assert inference.post("/predictions/", json={}).status_code == 404  # no model named
    assert inference.post("/predictions/alpha/9.9", json={}).status_code == 404  # no version
    assert inference.post("/predictions/alpha", json={},  # refused before it queues
                          headers={"x-request-timeout-ms": "soon"}).status_code == 400
    assert inference.get("/ping").status_code == 200  # a route the wrapper counts
    assert server.management.get("/models/nobody").status_code == 404  # the management API
    after = scrape(server)
    assert after.value("Requests2XX_total", Level="Host") \
        - before.value("Requests2XX_total", Level="Host") == 2
    assert after.value("Requests4XX_total", Level="Host") \
        - before.value("Requests4XX_total", Level="Host") == 5
    assert after.value("Requests5XX_total", Level="Host") \
        - before.value("Requests5XX_total", Level="Host") == 0


def test_torchserve_names_are_exposed_as_torchserve_writes_them(server: ServerProcess):
    post(server, "/predictions/alpha", {})
    text = scrape(server).text
    # No `_total` on TorchServe's counters that have none (dashboards query these names).
    assert re.search(r'^Requests2XX\{Level="Host",Hostname="[^"]+"\} \d', text, re.M)
    assert "# TYPE Requests2XX counter" in text
    assert re.search(r'^ts_queue_latency_microseconds\{model_name="alpha",model_version="1.0",'
                     r'hostname="[^"]+"\} ', text, re.M)
    assert re.search(r'^ts_inference_requests_total\{model_name="alpha",', text, re.M)
    assert re.search(r'^WorkerLoadTime\{WorkerName="W-\d+-alpha_1.0",Level="Host",', text,
                     re.M) is None  # left out of this server's metrics.yaml
    assert "ts_inference_latency_microseconds" not in text  # left out too
    assert re.search(r'^MemoryUsed\{Level="Host",Hostname="[^"]+"\} [0-9.e+]+$', text, re.M)
    assert "CPUUtilization" not in text
    assert re.search(r'^serving_model_info\{model="slow",version="1.0",handler="slow_handler',
                     text, re.M)


def test_handler_metrics_reach_the_gateway_with_their_dimensions(server: ServerProcess):
    before = scrape(server)
    for color in ("red", "red", "blue"):
        assert post(server, "/predictions/beta", {"color": color, "tokens": 3,
                                                  "declared": 4}).status_code == 200
    after = scrape(server)
    host = {"ModelName": "beta", "Level": "Model"}
    for color, n in (("red", 2), ("blue", 1)):
        assert after.value("InferCount_total", Color=color, **host) - \
            before.value("InferCount_total", Color=color, **host) == n
        assert after.value("DistanceInKM_total", Color=color, **host) - \
            before.value("DistanceInKM_total", Color=color, **host) == 2.0 * n
    assert after.value("PreprocessTime", **host) == 12.5
    assert after.value("PayloadSize", **host) == 3.0
    assert after.value("Confidence", **host) == 87.5
    assert after.value("QueueLength", **host) == 4  # declared in metrics.yaml, get_metric
    assert after.value("TokensSeen_count", **host) - before.value("TokensSeen_count", **host) == 3
    assert after.value("TokensSeen_bucket", le="5.0", **host) - \
        before.value("TokensSeen_bucket", le="5.0", **host) == 3
    assert after.has("HandlerTime", ModelName="beta") or after.has("PredictionTime",
                                                                    ModelName="beta")
    assert re.search(r'^InferCount\{Color="red",ModelName="beta",Level="Model",Hostname=',
                     after.text, re.M)


def test_a_refused_metric_update_is_dropped_and_the_request_still_answered(
        server: ServerProcess):
    before = scrape(server)
    assert post(server, "/predictions/beta", {"color": "green", "bad_counter": True}
                ).status_code == 200
    after = scrape(server)
    # The valid +1 counts; the -5 is refused in the worker, as TorchServe refuses it.
    assert after.value("InferCount_total", Color="green") - \
        before.value("InferCount_total", Color="green") == 1
    assert "Counter metric update value cannot be negative" in server.log()


def test_failures_by_reason(server: ServerProcess):
    base = f"http://127.0.0.1:{server.inference_port}/predictions/slow"
    before = scrape(server)

    async def flood() -> list[int]:
        async with aiohttp.ClientSession() as s:
            async def one(i: int) -> int:
                async with s.post(base, json={"sleep": 0.8, "tag": i}) as r:
                    await r.read()
                    return r.status
            return await asyncio.gather(*(one(i) for i in range(6)))

    statuses = Counter(asyncio.run(flood()))
    assert statuses[503] >= 1 and statuses[200] >= 1 and sum(statuses.values()) == 6
    died = post(server, "/predictions/slow", {"exit": True})
    assert died.status_code == 502
    wait_for_one_idle_worker(server)
    timed_out = post(server, "/predictions/slow", {"sleep": 5})
    assert timed_out.status_code == 504
    wait_for_one_idle_worker(server)
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    slow = {"model": "slow", "version": "1.0"}
    assert delta("serving_request_failures_total", reason="queue_full", **slow) == statuses[503]
    assert delta("serving_requests_total", status="503", **slow) == statuses[503]
    assert delta("serving_requests_total", status="200", **slow) == statuses[200]
    assert delta("serving_request_failures_total", reason="worker_died", **slow) == 1
    assert delta("serving_requests_total", status="502", **slow) == 1
    assert delta("serving_request_failures_total", reason="response_timeout", **slow) == 1
    assert delta("serving_requests_total", status="504", **slow) == 1
    # Refused requests count as received, as TorchServe counts them.
    assert delta("ts_inference_requests_total", model_name="slow") == 8


def wait_for_one_idle_worker(server: ServerProcess) -> None:
    """Describe shows a busy worker as READY, even one being killed for a timeout; the
    workers gauge tells them apart."""
    def one_ready() -> bool:
        snap = scrape(server)
        return snap.value("serving_workers", model="slow", state="READY") == 1 and \
            snap.value("serving_workers", model="slow") == 1
    wait_for(one_ready, timeout=60)


def test_a_client_that_goes_away_is_counted_once(server: ServerProcess):
    before = scrape(server)
    with pytest.raises(httpx.ReadTimeout):
        server.inference.post("/predictions/slow", json={"sleep": 1.0}, timeout=0.3)
    wait_for(lambda: scrape(server).value("serving_requests_in_flight", model="slow") == 0,
             timeout=30)
    after = scrape(server)
    slow = {"model": "slow", "version": "1.0"}
    assert after.value("serving_requests_total", status="499", **slow) - \
        before.value("serving_requests_total", status="499", **slow) == 1
    assert after.value("serving_request_failures_total", reason="client_gone", **slow) - \
        before.value("serving_request_failures_total", reason="client_gone", **slow) == 1
    assert after.value("serving_requests_total", **slow) - \
        before.value("serving_requests_total", **slow) == 1


def test_gauges_show_the_queue_in_flight_requests_and_busy_workers(server: ServerProcess):
    base = f"http://127.0.0.1:{server.inference_port}/predictions/slow"
    seen: list[Scrape] = []

    async def scenario() -> list[int]:
        async with aiohttp.ClientSession() as s:
            async def one() -> int:
                async with s.post(base, json={"sleep": 1.5}) as r:
                    assert r.status == 200, await r.text()
                    return r.status
            calls = [asyncio.create_task(one()) for _ in range(3)]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                snap = await asyncio.to_thread(scrape, server)
                # One runs, one is sent ahead to the busy worker's socket (slow batches: 2
                # in flight), one waits in the queue: two wait for the worker to start them.
                if snap.value("serving_queue_depth", model="slow") == 2:
                    seen.append(snap)
                    break
                await asyncio.sleep(0.05)
            return list(await asyncio.gather(*calls))

    assert asyncio.run(scenario()) == [200, 200, 200]
    assert seen, "the queue never showed the request waiting behind the two the worker holds"
    snap = seen[0]
    assert snap.value("serving_requests_in_flight", model="slow") == 3
    assert snap.value("serving_workers", model="slow", state="BUSY") == 1
    assert scrape(server).value("serving_queue_depth", model="slow") == 0


def test_openmetrics_by_content_negotiation(server: ServerProcess):
    post(server, "/predictions/alpha", {})
    r = server.metrics.get("/metrics", headers={
        "Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(r.text)}
    assert families["Requests2XX"].type == "counter"
    assert any(s.name == "Requests2XX_total" for s in families["Requests2XX"].samples)
    hist = families["serving_request_duration_seconds"]
    assert hist.type == "histogram"
    assert any(s.labels.get("model") == "alpha" for s in hist.samples)


def test_name_filter_and_errors(server: ServerProcess):
    r = server.metrics.get("/metrics", params=[("name[]", "Requests2XX"),
                                                ("name[]", "serving_queue_depth")])
    assert r.status_code == 200
    names = Scrape(r.text).families.keys()
    assert set(names) == {"Requests2XX", "serving_queue_depth"}
    assert server.metrics.get("/other").status_code == 404
    assert server.metrics.post("/metrics").status_code == 405
    assert server.metrics.get("/metrics", params={"name[]": "nothing"}).text == ""


def test_unregistering_removes_the_versions_series(server: ServerProcess, store: Path):
    build_mar(store, "gamma", "metrics_handler.py")
    assert server.management.post("/models", params={"url": "gamma.mar"}).status_code == 200
    assert post(server, "/predictions/gamma", {"color": "gold"}).status_code == 200
    snap = scrape(server)
    assert snap.value("serving_requests_total", model="gamma", status="200") == 1
    assert snap.value("InferCount_total", ModelName="gamma") == 1
    assert snap.has("WorkerLoadTime") is False  # left out of this server's metrics.yaml
    assert server.management.delete("/models/gamma").status_code == 200
    snap = scrape(server)
    assert not snap.has("serving_requests_total", model="gamma")
    assert not snap.has("serving_queue_depth", model="gamma")
    assert not snap.has("InferCount_total", ModelName="gamma")


def test_a_handler_metric_of_the_last_batch_before_idle_is_in_the_next_scrape(
        server: ServerProcess):
    # Workers send their handler metrics every 50 ms under load and when a scrape asks, not
    # with each answer: requests answered back to back, then a scrape at once, must all show.
    before = scrape(server)
    n = 25
    for level in range(n):
        assert post(server, "/predictions/alpha", {"color": "violet", "level": level}
                    ).status_code == 200
    after = scrape(server)
    host = {"ModelName": "alpha", "Level": "Model"}
    assert after.value("InferCount_total", Color="violet", **host) - \
        before.value("InferCount_total", Color="violet", **host) == n
    assert after.value("DistanceInKM_total", Color="violet", **host) - \
        before.value("DistanceInKM_total", Color="violet", **host) == 2.0 * n
    assert after.value("FillLevel", **host) == n - 1  # a gauge keeps the last value
    assert after.value("TokensSeen_count", **host) - before.value("TokensSeen_count", **host) \
        == n  # one observation per request, none folded away


def test_handler_metrics_are_exact_once_idle_after_pipelined_load(server: ServerProcess,
                                                                  store: Path):
    # The overlap handler lets the gateway send batches while one runs (pipelined dispatch):
    # most answers then leave a worker that has more batches waiting.
    build_mar(store, "piped", "overlap_handler.py", config="batchSize: 4\nmaxBatchDelay: 2\n")
    assert server.management.post("/models", params={"url": "piped.mar"}).status_code == 200
    url = f"http://127.0.0.1:{server.inference_port}/predictions/piped"
    n = 400

    async def load() -> list[int]:
        async with aiohttp.ClientSession() as s:
            gate = asyncio.Semaphore(32)

            async def one() -> int:
                async with gate, s.post(url, json={}) as r:
                    await r.read()
                    return r.status
            return await asyncio.gather(*(one() for _ in range(n)))

    before = scrape(server)
    assert Counter(asyncio.run(load())) == {200: n}
    after = scrape(server)
    host = {"ModelName": "piped", "Level": "Model"}
    assert after.value("OverlapItems_total", **host) == n
    batches = after.value("serving_batch_size_count", model="piped") - \
        before.value("serving_batch_size_count", model="piped")
    assert after.value("OverlapBatchSize_count", **host) == batches
    assert after.value("OverlapBatchSize_sum", **host) == n
    assert after.value("serving_requests_total", model="piped", status="200") == n
    # The server's own per-batch figure made it too (a gauge).
    assert after.has("PredictionTime", ModelName="piped")
    assert server.management.delete("/models/piped").status_code == 200
