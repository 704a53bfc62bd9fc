"""Command line: `serving start` runs the server (foreground until SIGINT/SIGTERM, or in the
background), `serving stop` stops it, `serving archive` builds archives."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serving.errors import ConfigError
from serving.pidfile import DEFAULT_PID_FILE


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
    start.add_argument("--metrics-address", help="e.g. http://127.0.0.1:8082 (/metrics)")
    start.add_argument("--log-config", type=Path,
                       help="a Python logging configuration: dictConfig YAML/JSON or an INI "
                            "file (TorchServe's flag takes a log4j2.xml)")
    start.add_argument("--access-log", action="store_true", default=None,
                       help="log one line per HTTP request and gRPC call (access_log.log under "
                            "LOG_LOCATION, else stderr)")
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
    mode = start.add_mutually_exclusive_group()
    mode.add_argument("--foreground", action="store_true", default=None,
                      help="stay in the foreground (the default for `serving start`; "
                           "`serving --start`, TorchServe's form, runs in the background "
                           "unless this is given)")
    mode.add_argument("--background", action="store_true", default=None,
                      help="start the server as a background process and return once it "
                           "runs; `serving stop` stops it")
    start.add_argument("--pid-file", type=Path,
                       help=f"write the server's pid here (default with --background: "
                            f"{DEFAULT_PID_FILE})")
    start.add_argument("--log-file", type=Path, default=Path("logs/serving.log"),
                       help="with --background: where the server's log goes "
                            "(default: logs/serving.log, as TorchServe's logs/ folder)")
    # TorchServe's flag, accepted so existing scripts keep working: no snapshots are written.
    start.add_argument("--ncs", "--no-config-snapshots", action="store_true",
                       help="accepted for TorchServe compatibility (no config snapshots are "
                            "written here)")
    stop = sub.add_parser("stop", help="stop a server started with a pid file (it drains "
                                       "in-flight requests first)")
    stop.add_argument("--pid-file", type=Path, default=DEFAULT_PID_FILE,
                      help=f"the server's pid file (default: {DEFAULT_PID_FILE})")
    stop.add_argument("--timeout", type=float, default=120.0,
                      help="seconds to wait for it to exit (default 120)")
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
        "metrics_address": args.metrics_address,
        "log_config": args.log_config,
        "access_log": args.access_log,
        # TorchServe's environment variables for where log and metric files go.
        "log_location": os.environ.get("LOG_LOCATION") or None,
        "metrics_location": os.environ.get("METRICS_LOCATION") or None,
        "grpc_inference_port": args.grpc_inference_port,
        "grpc_management_port": args.grpc_management_port,
        "enable_model_api": args.enable_model_api,
        "disable_token_authorization": args.disable_token_authorization,
        "default_workers_per_model": args.default_workers_per_model,
        "log_level": args.log_level,
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    torchserve_style = bool(argv) and argv[0] in TORCHSERVE_COMMANDS
    if torchserve_style:  # `torchserve --start ...` / `--stop`, TorchServe's own form
        argv[0] = TORCHSERVE_COMMANDS[argv[0]]
    args, rest = _parser().parse_known_args(argv)
    if args.command == "archive":
        return _archive(args, rest)
    if rest:
        _parser().error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "stop":
        return _stop(args)
    if args.command == "start":
        if args.background or (torchserve_style and not args.foreground):
            return _background(argv)
        return _start(args)
    return 2


# TorchServe's `--start` runs in the background unless `--foreground`, as `torchserve` does.
TORCHSERVE_COMMANDS = {"--start": "start", "--stop": "stop"}
BACKGROUND_START_TIMEOUT_S = 60.0


def _background(argv: list[str]) -> int:
    """Start `serving start` (in the foreground) as a detached process, wait until it has
    written its pid file, and return; if it exits first, show why."""
    import subprocess
    import time

    from serving.pidfile import running_pid

    args = _parser().parse_args(argv)
    pid_file = (args.pid_file or DEFAULT_PID_FILE).absolute()
    if running_pid(pid_file) is not None:
        print(f"serving: a server is already running (pid file {pid_file}); stop it with "
              "`serving stop` first", file=sys.stderr)
        return 1
    child = [a for a in argv[1:] if a not in ("--background", "--foreground")]
    args.log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(args.log_file, "ab") as log_out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving", "start", "--foreground", *child,
             "--pid-file", str(pid_file)],
            stdin=subprocess.DEVNULL, stdout=log_out, stderr=subprocess.STDOUT,
            start_new_session=True)
    deadline = time.monotonic() + BACKGROUND_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = args.log_file.read_text(errors="replace").splitlines()[-20:]
            print("\n".join(tail), file=sys.stderr)
            print(f"serving: the server exited with {proc.returncode} (log: {args.log_file})",
                  file=sys.stderr)
            return proc.returncode or 1
        if running_pid(pid_file) == proc.pid:
            print(f"serving: started in the background (pid {proc.pid}, log "
                  f"{args.log_file}, pid file {pid_file})")
            return 0
        time.sleep(0.1)
    print(f"serving: the server (pid {proc.pid}) did not write {pid_file} within "
          f"{BACKGROUND_START_TIMEOUT_S:g} s; see {args.log_file}", file=sys.stderr)
    return 1


def _stop(args: argparse.Namespace) -> int:
    from serving.pidfile import stop

    try:
        print(f"serving: {stop(args.pid_file, args.timeout)}")
    except RuntimeError as e:
        print(f"serving: {e}", file=sys.stderr)
        return 1
    return 0


def _archive(args: argparse.Namespace, archiver_args: list[str]) -> int:
    import json

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
        # TorchServe: TS_CONFIG_FILE names the config file, over --ts-config.
        config = os.environ.get("TS_CONFIG_FILE")
        settings = build_settings(Path(config) if config else args.ts_config,
                                  _overrides(args), os.environ)
    except ConfigError as e:
        print(f"serving: configuration error: {e}", file=sys.stderr)
        return 2
    from serving.logconfig import configure_logging

    try:
        configure_logging(settings)
    except ConfigError as e:
        print(f"serving: configuration error: {e}", file=sys.stderr)
        return 2
    if args.pid_file is None:
        return _run(settings, None)
    from serving.pidfile import claim, release, running_pid

    if running_pid(args.pid_file) is not None:  # refused before anything starts
        print(f"serving: a server is already running (pid file {args.pid_file}); stop it "
              "with `serving stop` first", file=sys.stderr)
        return 1
    try:
        # Written once the ports are bound: `serving --start` reports success only then.
        return _run(settings, lambda: claim(args.pid_file))
    finally:
        release(args.pid_file)


def _run(settings: Any, on_listening: Callable[[], None] | None) -> int:
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # uvloop is optional; the asyncio loop works, a little slower
        runner = asyncio.run
    try:
        runner(_serve(settings, on_listening))
    except ConfigError as e:
        print(f"serving: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # the pid file was taken meanwhile
        print(f"serving: {e}", file=sys.stderr)
        return 1
    return 0


async def _serve(settings: Any, on_listening: Callable[[], None] | None) -> None:
    from serving.gateway.server import Server, install_signal_handlers

    server = Server(settings, on_listening=on_listening)
    install_signal_handlers(server)
    await server.run()
