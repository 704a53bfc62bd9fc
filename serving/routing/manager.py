"""The control plane: register, scale, unregister, describe; inference goes through
serving/routing/dataplane.py."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from serving.errors import (
    ArchiveError,
    BadRequest,
    Conflict,
    InternalError,
    ServiceUnavailable,
    ServingError,
)
from serving.handlers.archive import ArchiveLimits, UnpackedArchive, unpack
from serving.handlers.modelconfig import (
    FrontendConfig,
    check_sendable,
    frontend_config,
    read_model_yaml,
)
from serving.metrics.catalog import NO_METRICS, ServerMetrics
from serving.oip.metadata import from_model_yaml as oip_metadata
from serving.optimize.config import check_named_files, from_model_yaml
from serving.routing.batcher import Batcher
from serving.routing.download import download, is_remote
from serving.routing.gauges import register_gauges, worker_name
from serving.routing.modelsjson import checked_runtime, entry_runtime, is_default
from serving.routing.registry import ModelSettings, ModelVersion, Registry
from serving.routing.resources import Resources
from serving.routing.scheduler import Scheduler
from serving.settings import Settings
from serving.workers import pinning
from serving.workers.listener import WorkerListener
from serving.workers.pinning import PLACEMENT_ENV, WorkerPlacement
from serving.workers.process import Worker
from serving.workers.spec import WorkerSpec
from serving.workers.supervisor import WorkerPool

log = logging.getLogger(__name__)

# At shutdown, after the drain: how long an idle worker may take to exit on its own.
SHUTDOWN_GRACE_S = 2.0
# How long a scrape waits for the handler metrics of idle workers (which answer at once
# unless hung) and of busy ones (which answer after their batches in flight), seconds.
FLUSH_IDLE_WAIT = 5.0
FLUSH_BUSY_WAIT = 0.1


@dataclass
class Registration:
    """The parameters of a register call (management API, gRPC, or start-up loading)."""

    url: str
    model_name: str | None = None
    handler: str | None = None
    runtime: str | None = None
    batch_size: int | None = None
    max_batch_delay: int | None = None
    initial_workers: int | None = None
    synchronous: bool = True
    response_timeout: int | None = None
    startup_timeout: int | None = None
    optimization: dict[str, Any] | None = None  # merged over the archive's block


class ModelManager:
    """Owns the registry, the archives on disk and every model version's workers."""

    def __init__(self, settings: Settings, work_dir: Path, listener: WorkerListener,
                 resources: Resources, metrics: ServerMetrics | None = None,
                 metrics_config: Path | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._metrics_config = metrics_config  # handed to workers for context.metrics
        self.resources = resources
        self.registry = Registry()
        self._work_dir = work_dir
        self._listener = listener
        self._tasks: set[asyncio.Task[None]] = set()
        # Archives downloaded from a URL: deleted on unregister, as TorchServe does.
        self._downloaded: dict[ModelVersion, Path] = {}
        self.accepting = True  # false once shutdown starts: new requests get 503
        # True while the models named at start-up load: /ping must not say ready before
        # they are even in the registry.
        self.loading = False
        if metrics is not None:
            register_gauges(metrics, self.registry)

    # -- control plane ----------------------------------------------------------------
    def require_open(self) -> None:
        """Changes to the models are refused once shutdown starts (describe still answers)."""
        if not self.accepting:
            raise ServiceUnavailable("Server is shutting down; models cannot be registered, "
                                     "scaled or unregistered")

    async def register(self, reg: Registration, loaded_at_startup: bool = False
                       ) -> tuple[ModelVersion, str, int]:
        """Register an archive from the model store; returns (version, message, status)."""
        mv = await self.prepare(reg, loaded_at_startup)
        message, code = await self.start(mv, reg.synchronous)
        return mv, message, code

    async def prepare(self, reg: Registration, loaded_at_startup: bool = False
                      ) -> ModelVersion:
        """Unpack and validate an archive and add it to the registry, with no worker yet."""
        self.require_open()
        if reg.runtime is not None:  # refused before any download or unpacking
            reg.runtime = checked_runtime(reg.runtime, f"archive {reg.url}")
        downloaded = await download(reg.url, self.settings) if is_remote(reg.url) else None
        source = downloaded or self._resolve_url(reg.url)
        loop = asyncio.get_running_loop()
        limits = ArchiveLimits(max_size=self.settings.max_archive_size,
                               max_entries=self.settings.max_archive_entries,
                               max_compression_ratio=self.settings.max_archive_compression_ratio)
        try:
            archive = await loop.run_in_executor(None, unpack, source, self._work_dir / "models",
                                                 limits, self.settings.default_service_handler)
            try:
                mv = self._prepare(reg, archive, loaded_at_startup)
            except BaseException:
                # Not awaited: a cancelled registration cannot wait; the thread still runs.
                loop.run_in_executor(None, remove_extracted, archive)
                raise
        except BaseException:
            if downloaded is not None:  # a retry must not find it "already exists"
                downloaded.unlink(missing_ok=True)
            raise
        if downloaded is not None:
            self._downloaded[mv] = downloaded
        return mv

    async def start(self, mv: ModelVersion, synchronous: bool) -> tuple[str, int]:
        """Start a prepared version's workers; returns (message, status)."""
        workers = mv.settings.min_workers
        if synchronous:
            await self._start_workers(mv, workers)
            msg = (f'Model "{mv.name}" Version: {mv.version} registered with {workers} '
                   "initial workers")
            return msg, 200
        self._background(self._start_workers(mv, workers, raise_errors=False))
        msg = (f'Model "{mv.name}" Version: {mv.version} registered with {workers} initial '
               "workers. Use the describe model API to check their status.")
        return msg, 202

    def _resolve_url(self, url: str) -> Path:
        store = self.settings.model_store
        if not url or "/" in url or "\\" in url or url in (".", ".."):
            raise BadRequest(f"url: must be the name of an archive in the model store, without "
                             f"a path (got {url!r})")
        if store is None:
            raise BadRequest("url: the server was started without a model store")
        path = store / url
        if not path.exists():
            raise BadRequest(f"url: no archive named {url!r} in the model store")
        return path

    def _prepare(self, reg: Registration, archive: UnpackedArchive,
                 loaded_at_startup: bool) -> ModelVersion:
        manifest = archive.manifest
        name = reg.model_name or manifest.model_name
        version = manifest.model_version
        if not name or "/" in name:
            raise BadRequest(f"model_name: invalid model name {name!r}")
        if self.registry.exists(name, version):
            raise Conflict(f"Model version {version} for model {name} is already registered")
        model_yaml = read_model_yaml(archive.model_dir, manifest.config_file)
        settings = self._model_settings(reg, name, version, model_yaml)
        check_sendable(model_yaml, manifest.config_file or "model-config.yaml")
        oip = oip_metadata(model_yaml, manifest.config_file or "model-config.yaml")
        optimization = from_model_yaml(model_yaml, reg.optimization)
        if optimization is not None:
            check_named_files(optimization, archive.model_dir)
        metrics = self.metrics
        scheduler = Scheduler(Batcher(settings.batch_size, settings.max_batch_delay / 1000,
                                      settings.job_queue_size,
                                      max_bytes=self.settings.job_queue_max_bytes),
                              float(settings.response_timeout),
                              metrics.model(name, version) if metrics else NO_METRICS)
        handler = reg.handler or manifest.handler
        label = f"{name}/{version}"
        # A bad placement: block fails the registration now.
        self.resources.policy_for(model_yaml, settings.device_type, settings.device_ids)
        mv_holder: list[ModelVersion] = []

        def started(worker: Worker) -> None:
            if metrics is not None:
                metrics.worker_loaded(worker_name(worker, name, version), worker.load_seconds)

        def gone(worker: Worker) -> None:
            scheduler.remove_worker(worker)
            if metrics is not None:
                metrics.worker_gone(worker_name(worker, name, version))

        pool = WorkerPool(
            label, lambda slot, placement: self._worker_spec(mv_holder[0], slot, placement),
            self._listener, on_ready=scheduler.add_worker, on_gone=gone, on_started=started,
            startup_timeout=float(settings.startup_timeout),
            on_unavailable=lambda reason: scheduler.fail_queued(
                ServiceUnavailable(f"No worker is available to serve model: {name} "
                                   f"({reason})")),
            # The policy is resolved when workers are placed: start-up sizing is known then.
            place=lambda n: self._place(mv_holder[0], n, model_yaml),
            release=self.resources.release,
            stop_timeout=float(settings.response_timeout) + 5.0)
        # config.properties' `models=` entry of this version: its runtime (between the
        # call's and the manifest's, as in TorchServe) and whether it is the default.
        entry = self.settings.models.get(name, {}).get(version) or {}
        mv = ModelVersion(name=name, version=version, url=reg.url, archive=archive,
                          handler=handler,
                          runtime=reg.runtime or entry_runtime(entry) or manifest.runtime,
                          settings=settings, model_yaml=model_yaml, scheduler=scheduler,
                          pool=pool, loaded_at_startup=loaded_at_startup,
                          optimization=optimization.model_dump() if optimization else None,
                          oip=oip)
        mv_holder.append(mv)
        self.registry.add(mv)
        if is_default(entry):
            self.registry.set_default(name, version)
        return mv

    def _model_settings(self, reg: Registration, name: str, version: str,
                        model_yaml: dict[str, Any]) -> ModelSettings:
        # TorchServe's order: the registration call, then model-config.yaml, then
        # config.properties' `models=`, then the server defaults.
        s = self.settings
        from_yaml = frontend_config(model_yaml, "model-config.yaml")
        props = s.models.get(name, {}).get(version)
        if props is not None:
            from_yaml = from_yaml.merged_over(
                frontend_config(props, f"config.properties models[{name}][{version}]"))
        explicit = FrontendConfig.model_validate({
            "batch_size": reg.batch_size, "max_batch_delay": reg.max_batch_delay,
            "min_workers": reg.initial_workers, "response_timeout": reg.response_timeout,
            "startup_timeout": reg.startup_timeout})
        cfg = explicit.merged_over(from_yaml)
        self._check_worker_count("initial_workers", reg.initial_workers)
        for key, value in (("minWorkers", from_yaml.min_workers),
                           ("maxWorkers", from_yaml.max_workers)):
            if reg.initial_workers is None or key == "maxWorkers":
                self._check_worker_count(f"{key} (model config)", value, ArchiveError)
        default_workers = self.resources.launcher_instances or s.default_workers_per_model
        min_workers = cfg.min_workers if cfg.min_workers is not None else default_workers
        max_workers = max(cfg.max_workers if cfg.max_workers is not None else min_workers,
                          min_workers)
        return ModelSettings(
            batch_size=cfg.batch_size or 1,
            max_batch_delay=cfg.max_batch_delay if cfg.max_batch_delay is not None else 100,
            min_workers=min_workers, max_workers=max_workers,
            response_timeout=cfg.response_timeout or s.default_response_timeout,
            startup_timeout=cfg.startup_timeout or s.default_startup_timeout,
            job_queue_size=cfg.job_queue_size or s.job_queue_size,
            client_timeout_ms=cfg.client_timeout_ms, device_type=cfg.device_type,
            device_ids=tuple(cfg.device_ids) if cfg.device_ids else None,
            isolate_device=bool(cfg.isolate_device),
            max_inflight_batches=cfg.max_inflight_batches)

    def _place(self, mv: ModelVersion, n: int, model_yaml: dict[str, Any]
               ) -> list[WorkerPlacement]:
        label = f"{mv.name}/{mv.version}"
        self.resources.check_memory(label, n, mv.pool.largest_rss())
        s = mv.settings
        policy = self.resources.policy_for(model_yaml, s.device_type, s.device_ids)
        return self.resources.place(label, n, policy)

    def _worker_spec(self, mv: ModelVersion, slot: int,
                     placement: WorkerPlacement | None) -> WorkerSpec:
        s = mv.settings
        device = self.resources.device_for(s.device_type, s.device_ids, slot, s.isolate_device,
                                           owner=f"{mv.name}/{mv.version}")
        load = {
            "model_name": mv.name, "model_version": mv.version,
            "model_dir": str(mv.archive.model_dir), "handler": mv.handler,
            "batch_size": s.batch_size, "gpu_id": device.gpu_id, "device": device.kind,
            "manifest": mv.archive.manifest.raw, "model_yaml_config": mv.model_yaml,
            "decode_input": self.settings.decode_input_request,
            "limit_max_image_pixels": self.settings.limit_max_image_pixels,
            "optimization": mv.optimization,
            "compile_cache": str(self.settings.compile_cache_dir),
            "cpu_features": self.settings.cpu_features,
            "metrics_config": str(self._metrics_config) if self._metrics_config else None,
        }
        env = dict(device.env)
        if placement is not None:
            env.update(pinning.env_for(placement))
            env[PLACEMENT_ENV] = json.dumps(placement.to_dict())
        location = self.settings.log_location
        return WorkerSpec(load=load, env=env, log_level=self.settings.log_level,
                          log_file=str(location / "model_log.log") if location else None,
                          log_max_bytes=self.settings.log_max_bytes,
                          log_backup_count=self.settings.log_backup_count,
                          device=device.describe(), max_inflight=s.max_inflight_batches,
                          default_inflight=self.settings.default_max_inflight_batches,
                          max_response_size=self.settings.max_response_size,
                          observer=mv.scheduler.metrics if self.metrics else None)

    def _check_worker_count(self, parameter: str, value: int | None,
                            error: type[ServingError] = BadRequest) -> None:
        bound = self.settings.max_workers_per_model
        if value is not None and value > bound:
            raise error(f"{parameter}: must be at most {bound} (max_workers_per_model), "
                        f"got {value}")

    async def _start_workers(self, mv: ModelVersion, n: int, raise_errors: bool = True) -> None:
        try:
            await mv.pool.scale(n)
        except Exception as e:  # any failure: the model must not stay half-registered
            if not isinstance(e, ServingError):
                log.exception("model %s version %s: starting its workers failed", mv.name,
                              mv.version)
                e = InternalError(f"{type(e).__name__}: {e}")
            log.error("model %s version %s failed to load: %s", mv.name, mv.version, e.message)
            # What is queued would otherwise wait out the drain for workers that never come.
            mv.scheduler.fail_queued(ServiceUnavailable(
                f"Model {mv.name} version {mv.version} failed to load: {e.message}"))
            await self._drop(mv)
            if raise_errors:
                raise ServingError(f'Failed to load model "{mv.name}" version {mv.version}: '
                                   f"{e.message}", e.code) from None

    async def scale(self, name: str, version: str | None, min_workers: int,
                    max_workers: int | None, synchronous: bool) -> tuple[str, int]:
        self.require_open()
        mv = self.registry.get(name, version)
        self._check_worker_count("min_worker", min_workers)
        self._check_worker_count("max_worker", max_workers)
        max_w = (max_workers if max_workers is not None
                 else max(min_workers, mv.settings.max_workers))
        if max_w < min_workers:
            raise BadRequest(f"max_worker ({max_w}) cannot be less than min_worker ({min_workers})")
        mv.settings = replace(mv.settings, min_workers=min_workers, max_workers=max_w)
        if synchronous:
            try:
                await mv.pool.scale(min_workers)
            except ServingError:  # the pool raises nothing else
                self._settle_workers(mv)
                raise
            return f"Workers scaled to {min_workers} for model: {name}", 200
        self._background(self._scale_quietly(mv, min_workers))
        return "Processing worker updates...", 202

    async def _scale_quietly(self, mv: ModelVersion, n: int) -> None:
        try:
            await mv.pool.scale(n)
        except ServingError as e:  # the pool raises nothing else
            self._settle_workers(mv)
            log.error("scaling %s/%s to %d failed: %s", mv.name, mv.version, n, e.message)

    @staticmethod
    def _settle_workers(mv: ModelVersion) -> None:
        """After a scale-up that failed part-way, describe what runs, not what was asked."""
        running = mv.pool.target
        mv.settings = replace(mv.settings, min_workers=running,
                              max_workers=max(running, mv.settings.max_workers))

    async def unregister(self, name: str, version: str | None) -> str:
        self.require_open()
        mv = self.registry.get(name, version)
        others = [v for v in self.registry.versions(name) if v is not mv]
        if others and self.registry.default_version(name) == mv.version:
            raise BadRequest(f"Cannot unregister the default version {mv.version} of model "
                             f"{name} while other versions exist; set another default first")
        await self._drop(mv)
        return f'Model "{name}" unregistered'

    async def _drop(self, mv: ModelVersion) -> None:
        """Unregister: no new requests, queued ones finish, then the workers stop."""
        self.registry.remove(mv)
        await mv.scheduler.drain(timeout=float(mv.settings.response_timeout))
        await mv.pool.close()
        await _remove_extracted(mv.archive)
        self._forget_metrics(mv)
        downloaded = self._downloaded.pop(mv, None)
        if downloaded is not None:
            downloaded.unlink(missing_ok=True)

    def _forget_metrics(self, mv: ModelVersion) -> None:
        if self.metrics is not None:
            self.metrics.forget_model(mv.name, mv.version)
            if not any(v.name == mv.name for v in self.registry.all_versions()):
                self.metrics.handlers.forget_model(mv.name)

    async def flush_handler_metrics(self, busy_wait: float = FLUSH_BUSY_WAIT,
                                    idle_wait: float = FLUSH_IDLE_WAIT) -> None:
        """Have every worker send the handler metric updates it holds (before a scrape).

        An idle worker answers at once, so its updates are waited for (up to `idle_wait`,
        for one that hangs): once every client has its answer and the workers are idle, a
        scrape shows exact counts. A busy worker answers after its batches in flight; those
        are waited for only up to `busy_wait`, the rest is recorded when it arrives.
        """
        idle: list[asyncio.Future[None]] = []
        busy: list[asyncio.Future[None]] = []
        for mv in self.registry.all_versions():
            for worker in list(mv.pool.workers.values()):
                was_busy = worker.busy
                flushed = worker.flush_metrics()
                if flushed is not None:
                    (busy if was_busy else idle).append(flushed)
        if idle:
            await asyncio.wait(idle, timeout=idle_wait)
        if busy:
            await asyncio.wait(busy, timeout=busy_wait)

    async def watch_workers(self, interval: float = 10.0, timeout: float = 10.0) -> None:
        """Ping idle workers forever; one that stops answering is killed and replaced.

        A failure in one round, or to ping one worker, is logged and the loop goes on: a hung
        worker must never go unnoticed because another one misbehaved.
        """
        try:
            while True:
                await asyncio.sleep(interval)
                try:
                    self._ping_idle_workers(timeout)
                except Exception:
                    log.exception("a round of worker pings failed; trying again in %g s",
                                  interval)
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.critical("the worker ping loop stopped: hung workers are no longer detected",
                         exc_info=True)
            raise

    def _ping_idle_workers(self, timeout: float) -> None:
        for mv in self.registry.all_versions():
            for worker in list(mv.pool.workers.values()):
                try:
                    worker.ping(timeout)
                except Exception:
                    log.exception("pinging worker %s of %s/%s failed", worker.id, mv.name,
                                  mv.version)

    def healthy(self) -> bool:
        """Ready for traffic: the start-up models are loaded and every model has its minimum
        of workers READY (what /ping reports; other protocols' readiness should ask this)."""
        return not self.loading and not self.short_of_workers()

    def short_of_workers(self) -> dict[str, dict[str, int]]:
        """Model versions with fewer READY (or busy) workers than their minimum: what keeps
        the server from being ready, as {"name/version": {"ready": n, "minimum": m}}."""
        return {f"{mv.name}/{mv.version}": {"ready": mv.pool.ready_count,
                                            "minimum": mv.pool.target}
                for mv in self.registry.all_versions()
                if mv.pool.ready_count < mv.pool.target}

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """/ping: 200 only when the start-up models are loaded and every model has its
        minimum of workers READY; 503 otherwise, saying why."""
        if not self.accepting:
            return 503, {"status": "Draining"}
        if self.loading:
            return 503, {"status": "Loading"}
        short = self.short_of_workers()
        if short:
            return 503, {"status": "Unhealthy", "models": short}
        return 200, {"status": "Healthy"}

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, drain_timeout: float) -> None:
        """Shut down every model: queued and running requests get up to `drain_timeout` to
        finish; what still runs then is answered 503 and its workers killed, so shutdown never
        waits for a handler's response timeout."""
        self.accepting = False
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(self._drop_for_shutdown(mv, drain_timeout)
                               for mv in self.registry.all_versions()))

    async def _drop_for_shutdown(self, mv: ModelVersion, timeout: float) -> None:
        await mv.scheduler.drain(timeout)
        await mv.pool.close(abandon=ServiceUnavailable("Server is shutting down"),
                            grace=SHUTDOWN_GRACE_S)
        self.registry.remove(mv)
        await _remove_extracted(mv.archive)
        self._downloaded.pop(mv, None)  # kept in the store at shutdown, as TorchServe does


def remove_extracted(archive: UnpackedArchive) -> None:
    if archive.extracted_to is not None:
        shutil.rmtree(archive.extracted_to, ignore_errors=True)


async def _remove_extracted(archive: UnpackedArchive) -> None:
    """rmtree of a large model blocks for seconds: never on the event loop."""
    await asyncio.get_running_loop().run_in_executor(None, remove_extracted, archive)
