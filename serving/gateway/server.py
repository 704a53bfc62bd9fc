"""The server process: one event loop running every HTTP and gRPC front end, the workers'
socket, and the start-up and shutdown sequences."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import uvicorn

from serving.errors import ConfigError, ServingError
from serving.gateway.auth import KEY_FILE_NAME, TokenAuthorization, TokenKind
from serving.gateway.grpc.server import GrpcServers
from serving.gateway.guard import Guarded
from serving.gateway.hotpath import HotRoute
from serving.gateway.httplimits import limited_protocol
from serving.gateway.inference import HOT_PREFIXES, InferenceApp
from serving.gateway.management import create_management_app
from serving.gateway.memory import ConnectionTrimmer
from serving.gateway.metricsapi import MetricsApp
from serving.gateway.observed import Observed, status_counts
from serving.logconfig import ACCESS_LOGGER
from serving.metrics.service import MetricsService
from serving.routing.dataplane import DataPlane
from serving.routing.manager import ModelManager, Registration
from serving.routing.modelsjson import check_models_json
from serving.routing.registry import ModelVersion
from serving.routing.resources import Resources
from serving.settings import Address, Settings
from serving.workers.pinning import format_cpulist

log = logging.getLogger("serving")

ARCHIVE_SUFFIXES = (".mar", ".tar.gz", ".tgz", ".zip")
# Once every request is answered, how long uvicorn waits for a slow client to read its answer.
SHUTDOWN_GRACE_S = 2


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the server process owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind(address: Address, what: str) -> socket.socket:
    """Bind a listening socket ourselves so a busy port is a clear start-up error."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address.host, address.port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"{what}: cannot listen on {address}: {e.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


class Server:
    """Everything one `serving start` runs, until `stop()`."""

    def __init__(self, settings: Settings, work_dir: Path | None = None,
                 key_file: Path | None = None,
                 on_listening: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self._on_listening = on_listening  # called once the APIs' ports are bound
        # TorchServe writes key_file.json into the working directory it was started from.
        self.key_file = key_file or Path.cwd() / KEY_FILE_NAME
        self._own_work_dir = work_dir is None
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="serving-"))
        self._stop = asyncio.Event()
        self.draining = False

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        from serving.workers.listener import WorkerListener

        s = self.settings
        registrations = startup_registrations(s)  # bad models=/load_models: fail before binding
        metrics = MetricsService.create(s)  # a bad metrics_config: fail before binding
        sockets = [(bind(s.inference_address, "inference_address"), "Inference API"),
                   (bind(s.management_address, "management_address"), "Management API")]
        if metrics is not None:
            sockets.append((bind(s.metrics_address, "metrics_address"), "Metrics API"))
        listener = WorkerListener(self.work_dir / "workers.sock")
        await listener.start()
        loop = asyncio.get_running_loop()
        resources = await loop.run_in_executor(None, Resources, s)
        log.info("CPUs: %s; accelerators: %s", resources.topology.summary(),
                 f"{resources.accelerators.count} {resources.accelerators.kind}"
                 if resources.accelerators.kind else "none")
        reserved = resources.allocator.reserved_cpus
        if reserved:
            # The event loop gets a core of its own; workers are placed on the others.
            os.sched_setaffinity(0, set(reserved))
            log.info("gateway pinned to CPU(s) %s", format_cpulist(reserved))
        manager = ModelManager(s, self.work_dir, listener, resources,
                               metrics.server if metrics else None, s.metrics_config)
        manager.loading = True  # /ping says "Loading" until the start-up models are in
        plane = DataPlane(manager)
        apps: list[Any] = [InferenceApp(plane, s.max_kserve_instances),
                           create_management_app(manager)]
        auth = None
        if s.disable_token_authorization:
            log.warning("Token authorization is disabled: anyone who can reach the APIs can "
                        "call them")
        else:
            auth = TokenAuthorization(self.key_file, s.token_expiration_min)
            apps = [Guarded(apps[0], auth, TokenKind.INFERENCE),
                    Guarded(apps[1], auth, TokenKind.MANAGEMENT)]
        # Outside the token guard, so that refusals are counted and logged too.
        access = logging.getLogger(ACCESS_LOGGER) if s.access_log else None
        if metrics is not None or access is not None:
            # The inference app counts the answers of its prediction routes itself.
            apps = [Observed(app, metrics.server if metrics else None, access,
                             s.access_log_format == "json", counted_by_app=prefixes)
                    for app, prefixes in zip(apps, (HOT_PREFIXES, ()), strict=True)]
        if metrics is not None:
            apps.append(MetricsApp(metrics.registry, manager.flush_handler_metrics))
            metrics.before_log = manager.flush_handler_metrics
        # No proxy-header rewriting (no proxy is assumed; it costs every request) and no
        # Server header (it only advertises the stack).
        # httptools, with limits on the request line and headers (see httplimits.py); the
        # inference API's protocol answers predictions itself (hotpath.py), unless each
        # answer is to be logged.
        hot = None if access is not None else HotRoute(
            plane, auth, status_counts(metrics.server) if metrics is not None else None)
        protocols = [limited_protocol(s, hot)] + [limited_protocol(s)] * (len(apps) - 1)
        # interface: every app here speaks ASGI 3; Observed's __call__ is a plain function
        # returning an awaitable, which uvicorn's guess would take for ASGI 2.
        servers = [_Uvicorn(uvicorn.Config(app, http=http, lifespan="off", interface="asgi3",
                                           access_log=False, log_config=None,
                                           proxy_headers=False, server_header=False,
                                           timeout_graceful_shutdown=SHUTDOWN_GRACE_S))
                   for app, http in zip(apps, protocols, strict=True)]
        grpc_servers = GrpcServers(s, manager, plane, auth)
        try:
            await grpc_servers.start()
        except BaseException:
            await grpc_servers.stop(0)
            await listener.close()
            raise
        if self._on_listening is not None:  # every port is bound: REST's and gRPC's
            try:
                self._on_listening()
            except BaseException:
                await grpc_servers.stop(0)
                await listener.close()
                for sock, _ in sockets:
                    sock.close()
                raise
        tasks = [asyncio.create_task(srv.serve(sockets=[sock]))
                 for srv, (sock, _) in zip(servers, sockets, strict=True)]
        for (sock, what) in sockets:
            host, port = sock.getsockname()[:2]
            log.info("%s listening on http://%s:%s", what, host, port)
        watcher = asyncio.create_task(manager.watch_workers(s.worker_ping_interval,
                                                            s.worker_ping_timeout))
        trimmer = asyncio.create_task(
            ConnectionTrimmer([srv.server_state.connections for srv in servers]).run())
        stop_task = asyncio.create_task(self._stop.wait())
        try:
            if metrics is not None:
                metrics.start()
            if auth is not None:
                auth.start()
            # SIGTERM/SIGINT while the start-up models load abandons the load: their workers
            # are killed and the shutdown below runs as after any stop.
            loading = asyncio.create_task(self._load_startup_models(manager, registrations))
            await asyncio.wait([stop_task, loading, *tasks], return_when=asyncio.FIRST_COMPLETED)
            if loading.done():
                loading.result()
                log.info("Server ready")
                await asyncio.wait([stop_task, *tasks], return_when=asyncio.FIRST_COMPLETED)
            else:
                log.info("Stopped while loading models: the load is abandoned")
                loading.cancel()
                await asyncio.gather(loading, return_exceptions=True)
        finally:
            stop_task.cancel()
            log.info("Shutting down: finishing in-flight requests (up to %g s)",
                     s.drain_timeout)
            watcher.cancel()
            trimmer.cancel()
            manager.accepting = False
            await grpc_servers.draining()
            await manager.close(drain_timeout=s.drain_timeout)
            for srv in servers:
                srv.should_exit = True
            await asyncio.gather(*tasks, grpc_servers.stop(SHUTDOWN_GRACE_S),
                                 return_exceptions=True)
            await listener.close()
            if metrics is not None:
                await metrics.stop()
            if auth is not None:
                auth.remove_key_file()
            # An archive still being unpacked by an abandoned load writes into the work dir
            # from a thread: wait for it before removing the folder.
            await loop.shutdown_default_executor()
            if self._own_work_dir:
                shutil.rmtree(self.work_dir, ignore_errors=True)
            log.info("Stopped")

    async def _load_startup_models(self, manager: ModelManager,
                                   registrations: list[Registration]) -> None:
        """Prepare every start-up model first, so placement can size all workers together,
        then start their workers concurrently. A model that fails is logged and skipped."""
        try:
            await self._load_models(manager, registrations)
        finally:
            manager.loading = False

    async def _load_models(self, manager: ModelManager,
                           registrations: list[Registration]) -> None:
        if not registrations:
            return
        prepared = await asyncio.gather(
            *(manager.prepare(reg, loaded_at_startup=True) for reg in registrations),
            return_exceptions=True)
        versions = [mv for reg, mv in zip(registrations, prepared, strict=True)
                    if not _failed(reg, mv) and isinstance(mv, ModelVersion)]
        manager.resources.plan_startup(sum(mv.settings.min_workers for mv in versions))
        try:
            started = await asyncio.gather(*(manager.start(mv, synchronous=True)
                                              for mv in versions), return_exceptions=True)
        finally:
            manager.resources.startup_done()
        for mv, result in zip(versions, started, strict=True):
            if not _failed(Registration(url=mv.url), result) and isinstance(result, tuple):
                log.info("%s", result[0])


def _failed(reg: Registration, result: object) -> bool:
    if isinstance(result, ServingError):
        log.error("could not load %s: %s", reg.url, result.message)
    elif isinstance(result, BaseException):
        log.error("could not load %s: %r", reg.url, result)
    else:
        return False
    return True


def startup_registrations(settings: Settings) -> list[Registration]:
    """What `load_models` (and `models=` JSON entries with a marName) ask to load."""
    store = settings.model_store
    entries = list(settings.load_models)
    regs: list[Registration] = []
    if any(e.lower() == "all" for e in entries):
        if store is None:
            raise ConfigError("load_models=all needs a model_store")
        entries = [p.name for p in sorted(store.iterdir()) if _is_archive(p)]
    for entry in entries:
        name, sep, url = entry.partition("=")
        regs.append(Registration(url=url, model_name=name) if sep else Registration(url=entry))
    listed = {r.model_name or _stem(r.url) for r in regs}
    check_models_json(settings.models)
    for name, versions in settings.models.items():
        for cfg in versions.values():
            mar = cfg.get("marName")
            if mar and name not in listed:
                regs.append(Registration(url=str(mar), model_name=name))
    if regs and store is None:
        raise ConfigError("models to load were given but no model_store")
    return regs


def _is_archive(path: Path) -> bool:
    if path.is_dir():
        return (path / "MAR-INF" / "MANIFEST.json").is_file()
    return path.name.endswith(ARCHIVE_SUFFIXES)


def _stem(url: str) -> str:
    for suffix in ARCHIVE_SUFFIXES:
        if url.endswith(suffix):
            return url[: -len(suffix)]
    return url


def install_signal_handlers(server: Server) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.stop)
