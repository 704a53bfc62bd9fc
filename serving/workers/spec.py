"""What the gateway knows a worker process by: the spec it is started from, its state, and who
hears of its answers (serving/workers/process.py runs it)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

from serving.settings import DEFAULT_MAX_INFLIGHT_BATCHES


class WorkerState(enum.Enum):
    STARTING = "STARTING"
    READY = "READY"
    BUSY = "BUSY"
    STOPPING = "STOPPING"
    DEAD = "DEAD"


class ResultObserver(Protocol):
    """Who hears of every answered batch (its RESULT metadata, with the worker's own time,
    and how long the round trip took, in seconds) and of the handler's metric updates."""

    def worker_result(self, meta: dict[str, Any], seconds: float) -> None: ...

    def handler_metrics(self, updates: Any) -> None: ...


@dataclass
class WorkerSpec:
    """What a worker loads (the LOAD message) and how its process is started."""

    load: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    log_level: str = "INFO"
    log_file: str | None = None  # also write the worker's lines here (model_log.log)
    log_max_bytes: int = 0  # rotate log_file past this size (0: never)
    log_backup_count: int = 0  # rotated files of log_file kept
    device: str = "cpu"  # what describe shows, e.g. "cuda:1"
    max_inflight: int | None = None  # the model config's word on overlap; None: the handler's
    # The most batches in flight to a worker whose handler and config say nothing
    # (`default_max_inflight_batches`): how many of them are used follows its batch times
    # (serving/workers/sendahead.py).
    default_inflight: int = DEFAULT_MAX_INFLIGHT_BATCHES
    max_response_size: int | None = None  # bytes of one answer's body; None: no limit
    module: str = "serving.workers.main"  # the worker program (`python -m`)
    observer: ResultObserver | None = None  # metrics of each answered batch
