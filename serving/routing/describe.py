"""TorchServe's model description JSON (camelCase), shared by the REST and gRPC management APIs."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psutil

from serving.routing.registry import ModelVersion, Registry
from serving.workers.pinning import format_cpulist
from serving.workers.process import Worker
from serving.workers.spec import WorkerState


def describe_version(mv: ModelVersion) -> dict[str, Any]:
    s = mv.settings
    pending, remaining = mv.scheduler.queued_jobs_state()
    healthy = mv.pool.ready_count >= mv.pool.target
    out: dict[str, Any] = {
        "modelName": mv.name,
        "modelVersion": mv.version,
        "modelUrl": mv.url,
        "runtime": mv.runtime,
        "handler": mv.handler,
        "minWorkers": s.min_workers,
        "maxWorkers": s.max_workers,
        "batchSize": s.batch_size,
        "maxBatchDelay": s.max_batch_delay,
        "responseTimeout": s.response_timeout,
        "startupTimeout": s.startup_timeout,
        "clientTimeoutInMills": s.client_timeout_ms or 0,
        "deviceType": _device_type(mv),
        "status": "Healthy" if healthy else "Unhealthy",
        "loadedAtStartup": mv.loaded_at_startup,
        "workers": [{**_worker(w), **_placement(mv, w)}
                    for w in sorted(mv.pool.workers.values(), key=lambda w: w.id)],
        "restarts": mv.pool.restarts,
        "jobQueueStatus": {"remainingCapacity": remaining, "pendingRequests": pending},
    }
    if mv.pool.last_error:
        out["lastError"] = mv.pool.last_error
    if mv.optimization is not None:
        reports = [w.load_info.get("optimization") for w in mv.pool.workers.values()
                   if w.load_info.get("optimization")]
        # Every worker runs the same pipeline; the first report stands for them all.
        out["optimization"] = {"config": mv.optimization,
                               "report": reports[0] if reports else None}
    return out


def _worker(w: Worker) -> dict[str, Any]:
    status = {WorkerState.BUSY: "READY"}.get(w.state, w.state.value)
    return {
        "id": w.id,
        "startTime": dt.datetime.fromtimestamp(w.start_time, dt.UTC).isoformat(
            timespec="milliseconds").replace("+00:00", "Z"),
        "status": status,
        "busy": w.busy,
        "inflightBatches": w.inflight_batches,
        "maxInflightBatches": w.max_inflight,
        "memoryUsage": _rss(w.pid),
        "pid": w.pid if w.pid is not None else -1,
        "gpu": w.spec.device != "cpu",
        "gpuUsage": "N/A",
    }


def _placement(mv: ModelVersion, w: Worker) -> dict[str, Any]:
    placement = mv.pool.placement_of(w.slot)
    out: dict[str, Any] = {"device": w.spec.device,
                           "restarts": mv.pool.slot_restarts.get(w.slot, 0)}
    if placement is not None:
        out.update(cores=format_cpulist(placement.cpus), numaNode=placement.node,
                   threads=placement.threads, pinned=not placement.shared)
        if placement.reason:  # e.g. why it runs unpinned and how its threads were sized
            out["placementNote"] = placement.reason
    return out


def _rss(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def describe(registry: Registry, name: str, version: str | None) -> list[dict[str, Any]]:
    """`GET /models/{name}[/{version}|/all]`: always an array, as in TorchServe."""
    if version == "all":
        return [describe_version(mv) for mv in registry.versions(name)]
    return [describe_version(registry.get(name, version))]


def list_models(registry: Registry, limit: int, token: int) -> dict[str, Any]:
    names = registry.names()
    page = names[token:token + limit]
    out: dict[str, Any] = {"models": [
        {"modelName": n, "modelUrl": registry.get(n).url} for n in page]}
    if token + limit < len(names):
        out["nextPageToken"] = str(token + limit)
    return out


def _device_type(mv: ModelVersion) -> str:
    """What the model asked for, or, for `auto` (or nothing), what its workers were given."""
    asked = (mv.settings.device_type or "auto").lower()
    if asked != "auto":
        return asked
    kinds = {w.spec.device.split(":")[0] for w in mv.pool.workers.values()}
    return kinds.pop() if len(kinds) == 1 else "cpu"
