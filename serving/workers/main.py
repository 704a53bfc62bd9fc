"""The worker process: connect, load one model version, then answer batches until told to stop.

Started by the supervisor as a fresh interpreter (`python -m serving.workers.main`), never
forked, so that placement (affinity, memory node, thread counts, allocator preload) is in
force before torch creates its thread pools.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.errors import InsufficientStorage, InternalError, ServingError
from serving.handlers.logcontext import current_request_ids
from serving.workers import pinning
from serving.workers.channel import BlockingChannel
from serving.workers.ipc import PROTOCOL_VERSION, Blob, Kind, Message
from serving.workers.lifeline import die_with_parent, expected_parent_from_env
from serving.workers.pinning import PLACEMENT_ENV, WorkerPlacement
from serving.workers.sharedlog import SharedRotatingFileHandler

if TYPE_CHECKING:
    from serving.handlers.service import HandlerService

log = logging.getLogger("serving.worker")

# The longest handler metric updates wait in a busy worker before they are sent (seconds).
SEND_METRICS_EVERY = 0.05


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serving-worker")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-file", default=None,
                        help="also append the worker's lines to this file")
    parser.add_argument("--log-max-bytes", type=int, default=0,
                        help="rotate --log-file past this size (0: never)")
    parser.add_argument("--log-backup-count", type=int, default=0,
                        help="rotated files of --log-file kept")
    args = parser.parse_args(argv)
    die_with_parent(expected_parent_from_env())
    notes = _apply_placement()

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(args.socket)
    channel = BlockingChannel(sock)
    channel.send(Kind.HELLO, {"worker_id": args.worker_id, "pid": os.getpid(),
                              "protocol": PROTOCOL_VERSION})
    load = channel.recv()
    if load is None or load.kind != Kind.LOAD:
        return 1
    _setup_logging(args.log_level, f"{load.meta['model_name']}/{args.worker_id}",
                   args.log_file, args.log_max_bytes, args.log_backup_count)
    for note in notes:
        log.info("%s", note)
    try:
        service = _load(load)
    except BaseException as e:  # report every failure to load, then exit
        error = _load_error(e)
        log.error("loading failed: %s\n%s", error.message, traceback.format_exc())
        channel.send(Kind.LOADED, {"ok": False, "error": error.to_dict()})
        return 1
    channel.send(Kind.LOADED, {"ok": True, "handler": service.handler.describe,
                               "optimization": service.optimization,
                               "overlap": _overlap_depth(service)})
    return _serve(channel, service)


def _placement() -> WorkerPlacement | None:
    spec = os.environ.get(PLACEMENT_ENV)
    return WorkerPlacement.from_dict(json.loads(spec)) if spec else None


def _apply_placement() -> list[str]:
    placement = _placement()
    return pinning.apply(placement) if placement is not None else []


class _RequestIds(logging.Filter):
    """Puts the ids of the batch being run into each line a handler logs meanwhile."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = current_request_ids.get()
        record.request_ids = f" [requests {ids}]" if ids else ""
        return True


def _setup_logging(level: str, name: str, log_file: str | None = None, max_bytes: int = 0,
                   backup_count: int = 0) -> None:
    fmt = f"%(asctime)s %(levelname)s [{name}]%(request_ids)s %(name)s: %(message)s"
    logging.basicConfig(level=level, stream=sys.stderr, format=fmt)
    if log_file is not None:
        # Every worker of every model writes this one file: rotated under a lock they share.
        to_file = SharedRotatingFileHandler(log_file, max_bytes, backup_count)
        to_file.setFormatter(logging.Formatter(fmt))
        logging.getLogger().addHandler(to_file)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_RequestIds())
    # TorchServe's metric lines are parsed by its frontend; here they would only be noise.
    logging.getLogger("ts.metrics").setLevel(logging.WARNING)


def _load(msg: Message) -> HandlerService:
    meta = msg.meta
    model_dir = Path(meta["model_dir"])
    # TorchServe's contract: the handler runs in, and imports from, the model directory.
    os.chdir(model_dir)
    sys.path.insert(0, str(model_dir))
    placement = _placement()
    if placement is not None:  # after affinity, before the model allocates thread pools
        for note in pinning.apply_torch_threads(placement):
            log.info("%s", note)
    from serving.handlers.service import HandlerService

    optimization = meta.get("optimization")
    model_yaml = dict(meta.get("model_yaml_config") or {})
    handler_compiles = False
    if optimization and optimization.get("compile", {}).get("mode", "off") != "off":
        from serving.optimize.config import OptimizationConfig
        from serving.optimize.samples import names_example_inputs

        if names_example_inputs(OptimizationConfig.model_validate(optimization)):
            # The pipeline compiles (with warm-up and shape guards); BaseHandler.initialize
            # must not compile the same model again because it sees TorchServe's `pt2` key.
            model_yaml.pop("pt2", None)
        else:
            # Without example inputs the pipeline cannot compile safely; an archive's `pt2`
            # then works as in TorchServe: BaseHandler.initialize compiles the model itself.
            handler_compiles = "pt2" in model_yaml
    service = HandlerService.load(
        model_name=meta["model_name"], model_dir=model_dir, manifest=meta["manifest"],
        handler_spec=meta["handler"], batch_size=int(meta["batch_size"]),
        gpu_id=meta.get("gpu_id"), model_yaml_config=model_yaml,
        decode_input=bool(meta.get("decode_input", True)),
        limit_max_image_pixels=bool(meta.get("limit_max_image_pixels", True)),
        metrics_config=meta.get("metrics_config"))
    if optimization:
        service.optimization = _optimize(service, meta, placement, model_dir)
        if handler_compiles:
            note = ("pt2: compiled by the handler itself, as TorchServe does: no warm-up "
                    "inputs were given, so each new input shape compiles on first use and no "
                    "accuracy guard ran (add optimization.warmup to compile through the "
                    "pipeline)")
            log.info("%s", note)
            service.optimization.setdefault("notes", []).append(note)
    return service


def _optimize(service: HandlerService, meta: dict[str, Any],
              placement: WorkerPlacement | None, model_dir: Path) -> dict[str, Any]:
    import torch

    from serving.handlers.optimizing import optimize_handler
    from serving.optimize.cache import cache_dir, configure_compile_env
    from serving.optimize.config import OptimizationConfig
    from serving.optimize.hardware import override_cpu_features, parse_feature_list

    # Before the cache key is made: an injected feature set keys its own cache.
    override_cpu_features(parse_feature_list(meta.get("cpu_features")))
    threads = placement.threads if placement is not None else torch.get_num_threads()
    # One compile process per worker: a pool of compile subprocesses would fight the
    # worker (and its neighbours) for the cores it is pinned to.
    configure_compile_env(cache_dir(meta["compile_cache"], threads), compile_threads=1)
    config = OptimizationConfig.model_validate(meta["optimization"])
    # The worker's assigned device wins unless the config names another kind (e.g. cpu).
    assigned = meta.get("device") or "cpu"
    gpu_id = meta.get("gpu_id")
    device = None
    if config.device in ("auto", assigned):
        device = assigned if gpu_id is None else f"{assigned}:{gpu_id}"
    return optimize_handler(service, config, model_dir, device, int(meta["batch_size"]))


def _load_error(exc: BaseException) -> ServingError:
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return InsufficientStorage(f"out of memory while loading: {exc}")
    where = "initialize" if _raised_in_handler(exc) else "loading"
    return ServingError(f"{where} raised {type(exc).__name__}: {exc}")


def _raised_in_handler(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return any(f.name == "initialize" for f in frames)


def _serve(channel: BlockingChannel, service: HandlerService) -> int:
    """Answer batches until told to stop.

    The handler's metric updates are folded in `context.metrics` and sent in a METRICS frame
    of their own: when the gateway asks (FLUSH, on every scrape, answered in order after the
    batches sent before it, so a scrape after an answer sees that batch's updates), and ahead
    of a RESULT when SEND_METRICS_EVERY passed since they were last sent, so that they never
    wait long under load and a worker that dies loses at most that much of them. Never inside
    a RESULT: the gateway drops the answers of batches that timed out and frames that are
    too large without reading them.
    """
    from serving.handlers.metrics import HandlerMetrics

    metrics = service.context.metrics
    if not isinstance(metrics, HandlerMetrics):
        # The handler put something else in `context.metrics`: nothing of ours to send, but
        # the worker must not fail over it.
        metrics = HandlerMetrics(service.context.model_name)
    sent_at = time.perf_counter()
    while True:
        msg = channel.recv()
        if msg is None:
            return 0
        kind = msg.kind
        if kind == Kind.PREDICT:
            meta, blobs = _run(service, msg, channel)
            now = time.perf_counter()
            if now - sent_at >= SEND_METRICS_EVERY and metrics.pending:
                sent_at = now
                channel.send_two((Kind.METRICS, {"m": metrics.take()}), Kind.RESULT, meta,
                                 blobs)
            else:
                channel.send(Kind.RESULT, meta, blobs)
        elif kind == Kind.FLUSH:
            sent_at = time.perf_counter()
            channel.send(Kind.METRICS, {"m": metrics.take(), "flush": True})
        elif kind == Kind.PING:
            channel.send(Kind.PONG, _pong(msg.meta))
        elif kind == Kind.SHUTDOWN:
            if metrics.pending:  # best effort: the gateway may be gone already
                with contextlib.suppress(OSError):
                    channel.send(Kind.METRICS, {"m": metrics.take()})
            return 0


def _run(service: HandlerService, msg: Message, channel: BlockingChannel
         ) -> tuple[dict[str, Any], list[Blob]]:
    """One batch; whatever goes wrong fails that batch only: no request makes a worker exit
    (the handler's own errors are answered inside `run_batch`, this is the last resort)."""
    from serving.workers.batch import run_batch

    try:
        return run_batch(service, msg, channel)
    except BaseException as e:
        log.exception("a batch could not be run; the worker keeps serving")
        error = InternalError(f"Worker could not run the batch: {type(e).__name__}")
        return {"batch": msg.meta.get("batch"), "error": error.to_dict()}, []


def _overlap_depth(service: HandlerService) -> int | None:
    """How many batches the handler lets be in flight to its worker (run one at a time, the
    others waiting in its socket): `can_overlap = True` (4), a number, or False (1). None:
    it does not say (TorchServe handlers), and the gateway's default applies."""
    declared = getattr(service.handler.instance, "can_overlap", None)
    if declared is None:
        return None
    if declared is True:
        return 4
    return declared if isinstance(declared, int) and declared > 1 else 1


def _pong(meta: dict[str, Any]) -> dict[str, Any]:
    return {"seq": meta.get("seq"), "pid": os.getpid()}


if __name__ == "__main__":
    raise SystemExit(main())
