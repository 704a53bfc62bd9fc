"""Command line: `serving start` runs the server in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from serving.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serving", description="A PyTorch model server for TorchServe model archives.")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="run the server in the foreground")
    start.add_argument("--model-store", type=Path, help="folder holding model archives")
    start.add_argument("--models", nargs="+", metavar="MODELS",
                       help="models to load at start: `all`, or `name=file.mar` / `file.mar` "
                            "entries, separated by commas or spaces")
    start.add_argument("--ts-config", type=Path, help="a TorchServe config.properties")
    start.add_argument("--inference-address", help="e.g. http://127.0.0.1:8080")
    start.add_argument("--management-address", help="e.g. http://127.0.0.1:8081")
    start.add_argument("--grpc-inference-port", type=int,
                       help="port of TorchServe's gRPC inference API (default 7070)")
    start.add_argument("--grpc-management-port", type=int,
                       help="port of TorchServe's gRPC management API (default 7071)")
    start.add_argument("--enable-model-api", action="store_true", default=None,
                       help="allow registering and unregistering models over the API")
    start.add_argument("--disable-token-auth", action="store_true", default=None,
                       dest="disable_token_authorization",
                       help="serve without token authorization (TorchServe's flag); anyone "
                            "who can reach the APIs can then call them")
    start.add_argument("--workers", type=int, dest="default_workers_per_model",
                       help="default workers per model")
    start.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    # TorchServe's launcher flags, accepted so existing scripts keep working.
    start.add_argument("--foreground", action="store_true", help=argparse.SUPPRESS)
    start.add_argument("--ncs", "--no-config-snapshots", action="store_true",
                       help=argparse.SUPPRESS)
    archive = sub.add_parser(
        "archive", help="torch-model-archiver, optionally with a precompiled model inside",
        description="Takes torch-model-archiver's own arguments, plus --precompile.")
    archive.add_argument("--precompile", action="store_true",
                         help="export and compile the model with AOTInductor into the archive "
                              "(needs a --config-file with an optimization: block)")
    archive.add_argument("--from-mar", type=Path,
                         help="with --precompile: add the package to this existing archive "
                              "instead of building one (written to --export-path)")
    archive.add_argument("--precompile-threads", type=int, default=None,
                         help="threads the serving workers will use (the package is built "
                              "for one thread count); default: this machine's CPUs")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    models = None
    if args.models:
        models = [m.strip() for chunk in args.models for m in chunk.split(",") if m.strip()]
    return {
        "model_store": args.model_store, "load_models": models,
        "inference_address": args.inference_address,
        "management_address": args.management_address,
        "grpc_inference_port": args.grpc_inference_port,
        "grpc_management_port": args.grpc_management_port,
        "enable_model_api": args.enable_model_api,
        "disable_token_authorization": args.disable_token_authorization,
        "default_workers_per_model": args.default_workers_per_model,
        "log_level": args.log_level,
    }


def main(argv: list[str] | None = None) -> int:
    args, rest = _parser().parse_known_args(argv)
    if args.command == "archive":
        return _archive(args, rest)
    if rest:
        _parser().error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "start":
        return _start(args)
    return 2


def _archive(args: argparse.Namespace, archiver_args: list[str]) -> int:
    import json
    import os

    from serving.handlers.packaging import archive_with_package, precompile_archive, run_archiver

    try:
        if not args.precompile:
            run_archiver(archiver_args)
            return 0
        threads = args.precompile_threads or len(os.sched_getaffinity(0))
        if args.from_mar is not None:
            export = Path(_value(archiver_args, "--export-path") or ".")
            report = precompile_archive(args.from_mar, export / args.from_mar.name, threads)
        else:
            report = archive_with_package(archiver_args, threads)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"serving archive: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"precompiled": report.get("precompiled"), "applied": report.get("applied"),
                      "threads": report.get("threads"),
                      "compile_seconds": report.get("compile_seconds")}, indent=2))
    return 0


def _value(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def _start(args: argparse.Namespace) -> int:
    import os

    from serving.settings import build_settings

    # Workers are started by fork+exec: grpc's fork handlers have nothing to protect and only
    # log a warning each time. Read by grpc when it is first imported, so set it here.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = build_settings(args.ts_config, _overrides(args))
    except ConfigError as e:
        print(f"serving: configuration error: {e}", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(settings.log_level)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # uvloop is optional; the asyncio loop works, a little slower
        runner = asyncio.run
    try:
        runner(_serve(settings))
    except ConfigError as e:
        print(f"serving: {e}", file=sys.stderr)
        return 2
    return 0


async def _serve(settings: Any) -> None:
    from serving.gateway.server import Server, install_signal_handlers

    server = Server(settings)
    install_signal_handlers(server)
    await server.run()
