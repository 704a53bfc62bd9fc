"""TorchServe-style config.properties for a benchmark: ports, queue, per-model workers, batching."""

from __future__ import annotations

import socket
import urllib.parse
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class Ports:
    """Every port a TorchServe-compatible server opens; all are set so two servers never clash."""

    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071
    # First worker port: TorchServe names its worker sockets java.io.tmpdir/.ts.sock.<port>.
    worker: int = 9000

    @classmethod
    def free(cls) -> Ports:
        """Ports the kernel reports free now, all distinct (sockets held until all are picked)."""
        with ExitStack() as stack:
            picked = []
            for _ in fields(cls):
                s = stack.enter_context(socket.socket())
                s.bind(("127.0.0.1", 0))
                picked.append(int(s.getsockname()[1]))
        return cls(*picked)

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.inference}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management}"


@dataclass(frozen=True)
class ModelConfig:
    """One model's serving settings, as TorchServe's `models=` JSON spells them."""

    mar: str  # archive file name inside the model store
    workers: int = 1
    batch_size: int = 1
    max_batch_delay_ms: int = 100
    response_timeout_s: int = 120


_SPEC_KEYS = {"workers": "workers", "batch": "batch_size", "delay": "max_batch_delay_ms",
              "timeout": "response_timeout_s"}


def parse_model(spec: str) -> tuple[str, ModelConfig]:
    """`name=file.mar[:workers=1][:batch=8][:delay=10][:timeout=120]` from a command line."""
    head, *options = spec.split(":")
    name, sep, mar = head.partition("=")
    if not sep or not name or not mar:
        raise ValueError(f"expected name=file.mar[:key=value...], got {spec!r}")
    kwargs = {}
    for option in options:
        key, _, value = option.partition("=")
        if key not in _SPEC_KEYS:
            raise ValueError(f"unknown model option {key!r} in {spec!r}; know {sorted(_SPEC_KEYS)}")
        kwargs[_SPEC_KEYS[key]] = int(value)
    return name, ModelConfig(mar, **kwargs)


def torchserve_only(ports: Ports) -> dict[str, str]:
    """Keys for TorchServe alone: its worker socket names and gRPC bind addresses."""
    return {"initial_worker_port": str(ports.worker), "grpc_inference_address": "127.0.0.1",
            "grpc_management_address": "127.0.0.1"}


# log4j2 configuration for a TorchServe that writes no line per request or batch: the
# access log, the worker's stdout lines (MODEL_LOG: "Backend received inference at ..."), the
# model and frontend metric lines, and the frontend's own per-batch INFO lines are all below
# their loggers' levels; warnings and errors still reach the console (the bench's server.log).
QUIET_LOG4J2 = """\
<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
    <Console name="console" target="SYSTEM_OUT">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="off"/>
    <Logger name="MODEL_METRICS" level="off"/>
    <Logger name="TS_METRICS" level="off"/>
    <Logger name="MODEL_LOG" level="warn"/>
    <Logger name="org.pytorch.serve" level="warn"/>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Root level="warn">
      <AppenderRef ref="console"/>
    </Root>
  </Loggers>
</Configuration>
"""


def request_logging(server: str, on: bool) -> dict[str, str]:
    """config.properties keys that make one server's per-request logging `on` or off, with
    metrics kept the same on both: Prometheus counters in memory, no metric log lines.

    This server: `access_log` (off by default). TorchServe: `metrics_mode=prometheus` (its
    default `log` mode writes metric lines); its access and model logs are set by the log4j2
    file `TorchServe` is started with (`QUIET_LOG4J2` when off, its own default when on).
    """
    if server == "torchserve":
        return {"metrics_mode": "prometheus"}
    return {"metrics_mode": "prometheus", "access_log": "true" if on else "false"}


def registrations(models: Mapping[str, ModelConfig]) -> list[str]:
    """The POST /models query of each model: what both servers are told the same way."""
    return [urllib.parse.urlencode({
        "url": m.mar, "model_name": name, "initial_workers": m.workers,
        "batch_size": m.batch_size, "max_batch_delay": m.max_batch_delay_ms,
        "response_timeout": m.response_timeout_s, "synchronous": "true"})
        for name, m in models.items()]


def render(model_store: Path, models: Mapping[str, ModelConfig], ports: Ports, *,
           job_queue_size: int = 100, default_workers: int = 1,
           extra: Mapping[str, str] | None = None) -> str:
    """config.properties text with the keys both servers know; `extra` adds or overrides keys.

    No `load_models`: the models to load go on each server's command line, so the same file
    serves both. Keys only TorchServe knows (worker ports, gRPC bind addresses) go in `extra`:
    the project's settings reject unknown keys.
    """
    props = {
        "inference_address": ports.inference_url,
        "management_address": ports.management_url,
        "metrics_address": f"http://127.0.0.1:{ports.metrics}",
        "grpc_inference_port": str(ports.grpc_inference),
        "grpc_management_port": str(ports.grpc_management),
        "disable_token_authorization": "true",
        "enable_model_api": "true",
        "model_store": str(model_store),
        "default_workers_per_model": str(default_workers),
        "job_queue_size": str(job_queue_size),
    }
    props.update(extra or {})
    return "".join(f"{k}={v}\n" for k, v in props.items())
