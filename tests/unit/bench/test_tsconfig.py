"""config.properties rendering and model specs, on an archive built by the real archiver."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest

from bench.archive import build_noop_mar
from bench.tsconfig import ModelConfig, Ports, parse_model, registrations, render, torchserve_only


def test_parse_model_spec() -> None:
    assert parse_model("noop=noop.mar") == ("noop", ModelConfig("noop.mar"))
    name, cfg = parse_model("r=resnet50.mar:workers=2:batch=8:delay=10:timeout=30")
    assert (name, cfg.workers, cfg.batch_size, cfg.max_batch_delay_ms,
            cfg.response_timeout_s) == ("r", 2, 8, 10, 30)
    for bad in ("noop.mar", "noop=noop.mar:batchsize=8", "=x.mar"):
        with pytest.raises(ValueError):
            parse_model(bad)


def test_free_ports_are_distinct() -> None:
    ports = Ports.free()
    values = list(vars(ports).values())
    assert len(set(values)) == len(values) and all(p > 0 for p in values)


def test_render_and_registrations(tmp_path: Path) -> None:
    mar = build_noop_mar(tmp_path)
    ports = Ports.free()
    models = {"noop": ModelConfig(mar.name, workers=2, batch_size=8)}
    text = render(tmp_path, models, ports, job_queue_size=7, extra=torchserve_only(ports))
    props = dict(line.split("=", 1) for line in text.splitlines())
    assert props["inference_address"] == f"http://127.0.0.1:{ports.inference}"
    assert props["job_queue_size"] == "7" and props["disable_token_authorization"] == "true"
    assert props["initial_worker_port"] == str(ports.worker)
    assert props["enable_model_api"] == "true"
    assert "load_models" not in props and "models" not in props  # registered over the API
    (query,) = registrations(models)
    params = dict(urllib.parse.parse_qsl(query))
    assert params == {"url": "noop.mar", "model_name": "noop", "initial_workers": "2",
                      "batch_size": "8", "max_batch_delay": "100", "response_timeout": "120",
                      "synchronous": "true"}
