"""What a scrape reads from routing: gauges over the registry (queue depth, in-flight, workers
by state), the model info metric, and TorchServe's worker name label. Read at scrape time, so
the request path pays nothing for them."""

from __future__ import annotations

from serving.metrics.catalog import ServerMetrics
from serving.routing.registry import ModelVersion, Registry
from serving.workers.process import Worker
from serving.workers.spec import WorkerState


def worker_name(worker: Worker, model: str, version: str) -> str:
    """TorchServe's WorkerName label form: W-<id>-<model>_<version>."""
    return f"W-{worker.id}-{model}_{version}"


def register_gauges(metrics: ServerMetrics, registry: Registry) -> None:
    """Gauges read from the registry when scraped: nothing to update on the request path."""
    def versions() -> list[ModelVersion]:
        return list(registry.all_versions())

    metrics.add_gauge(
        "serving_queue_depth", "Requests of a model version waiting for a worker to start "
        "them: in its queue, or sent ahead to wait in a busy worker's socket",
        ("model", "version"),
        lambda: [((mv.name, mv.version), mv.scheduler.batcher.waiting) for mv in versions()])
    metrics.add_gauge(
        "serving_requests_in_flight", "Requests of a model version queued or running",
        ("model", "version"),
        lambda: [((mv.name, mv.version), len(mv.scheduler.batcher) + mv.scheduler.inflight)
                 for mv in versions()])

    def workers() -> list[tuple[tuple[str, ...], float]]:
        out: list[tuple[tuple[str, ...], float]] = []
        for mv in versions():
            counts = dict.fromkeys(WorkerState, 0)
            for worker in mv.pool.workers.values():
                counts[worker.state] += 1
            out += [((mv.name, mv.version, state.value), n) for state, n in counts.items()]
        return out

    metrics.add_gauge("serving_workers", "Workers of a model version by state",
                      ("model", "version", "state"), workers)
    metrics.add_info("serving_model", lambda: [((mv.name, mv.version), model_info(mv))
                                               for mv in versions()])


def model_info(mv: ModelVersion) -> dict[str, str]:
    """The labels of serving_model_info: what a version runs, and through which pipeline."""
    workers = list(mv.pool.workers.values())
    report = next((w.load_info.get("optimization") for w in workers
                   if w.load_info.get("optimization")), None)
    applied = report.get("applied") if isinstance(report, dict) else None
    return {
        "handler": mv.handler,
        "device": workers[0].spec.device if workers else "none",
        "pipeline": "+".join(applied) if applied else "eager",
        "precompiled": "true" if isinstance(report, dict) and report.get("precompiled")
                       else "false",
        "batch_size": str(mv.settings.batch_size),
    }
