"""Real TorchServe 0.12 for comparisons: config, pinned start, readiness, complete stop."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

import psutil

from bench.archive import tool_path
from bench.loadgen import Target, format_result, warm
from bench.machine import parse_cpus, pin_process
from bench.server import ServerProcess
from bench.tsconfig import (
    QUIET_LOG4J2,
    ModelConfig,
    Ports,
    parse_model,
    registrations,
    render,
    torchserve_only,
)


class TorchServe(ServerProcess):
    """`with TorchServe(store, models={"noop": ModelConfig("noop.mar")}) as ts: ts.base_url`.

    Launcher, JVM and python workers all run under `taskset -c pin_cpus`; pass None to leave
    them free. Ports default to free ones so a second server on the box does not clash.
    """

    def __init__(self, model_store: Path, models: Mapping[str, ModelConfig], *,
                 pin_cpus: str | None = "0", ports: Ports | None = None,
                 workdir: Path | None = None, job_queue_size: int = 100,
                 extra_properties: Mapping[str, str] | None = None,
                 ready_timeout_s: float = 180.0, quiet_logs: bool = False) -> None:
        """`quiet_logs`: start with `QUIET_LOG4J2` (no line per request or batch) instead of
        TorchServe's own log4j2 configuration (access, model and metric logs at INFO)."""
        self.ports = ports or Ports.free()
        workdir = (workdir or Path(tempfile.mkdtemp(prefix="ts-bench-"))).resolve()
        store = model_store.resolve()
        tmp = workdir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        self._pid_file = tmp / ".model_server.pid"
        self.config_path = workdir / "config.properties"
        extra = {**torchserve_only(self.ports), **(extra_properties or {})}
        self.config_path.write_text(render(store, models, self.ports,
                                           job_queue_size=job_queue_size, extra=extra))
        # TMPDIR: the launcher's pid file (tempfile.gettempdir()/.model_server.pid) is global, so
        # a second TorchServe on the box would refuse to start. TEMP: the JVM's tmpdir, which
        # holds the worker sockets. LOG_LOCATION/METRICS_LOCATION: the log4j files.
        env = {"TMPDIR": str(tmp), "TEMP": str(tmp), "LOG_LOCATION": str(workdir / "logs"),
               "METRICS_LOCATION": str(workdir / "logs")}
        command = [tool_path("torchserve"), "--start", "--foreground", "--ncs",
                   "--model-store", str(store), "--ts-config", str(self.config_path)]
        if quiet_logs:
            log_config = workdir / "log4j2.xml"
            log_config.write_text(QUIET_LOG4J2)
            command += ["--log-config", str(log_config)]
        super().__init__(command, base_url=self.ports.inference_url,
                         management_url=self.ports.management_url,
                         workers={name: m.workers for name, m in models.items()},
                         workdir=workdir, pin_cpus=pin_cpus, env=env,
                         ready_timeout_s=ready_timeout_s,
                         registrations=registrations(models))

    def stop(self, grace_s: float = 20.0) -> None:
        super().stop(grace_s)
        # Killed by PID, not `torchserve --stop`, so the launcher's pid file stays; a reused
        # workdir would otherwise meet it (and a recycled PID could make it look alive).
        self._pid_file.unlink(missing_ok=True)

    def _main_process(self) -> psutil.Process | None:
        # SIGTERM to the launcher would orphan the JVM; the JVM's shutdown hook stops workers.
        for p in self.processes():
            try:
                if p.name() == "java":
                    return p
            except psutil.NoSuchProcess:
                pass
        return super()._main_process()


def _serve(args: argparse.Namespace) -> int:
    # From the start: the server runs in its own session, so dying here would orphan it.
    signal.signal(signal.SIGTERM, _interrupt)
    if args.client_cpus:
        pin_process(parse_cpus(args.client_cpus))  # the server gets its own taskset below
    models = dict(parse_model(m) for m in args.model)
    ports = Ports() if args.ports == "default" else Ports.free()
    pin = None if args.pin == "none" else args.pin
    with TorchServe(args.model_store, models, pin_cpus=pin, ports=ports, workdir=args.workdir,
                    job_queue_size=args.job_queue_size, quiet_logs=args.quiet_logs,
                    extra_properties={"metrics_mode": "prometheus"} if args.quiet_logs
                    else None) as ts:
        print(f"ready in {ts.ready_s:.1f} s: inference {ts.base_url}, management "
              f"{ts.management_url}, workdir {ts.workdir}", flush=True)
        for p in ts.processes():
            print(f"  pid {p.pid} {p.name()} cpus {p.cpu_affinity()}", flush=True)
        if args.warm > 0:
            target = Target.from_file(ts.base_url, args.warm_path, args.payload, args.content_type)
            print("warm-up (discarded):", format_result(asyncio.run(warm(target, args.warm))))
        try:
            if args.hold is None:
                print("serving; Ctrl-C or SIGTERM stops it", flush=True)
                while True:
                    signal.pause()
            time.sleep(args.hold)
        except KeyboardInterrupt:
            pass
    print("stopped; no process of the tree is left", flush=True)
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.torchserve", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("start", "config"):
        s = sub.add_parser(name, help="run until Ctrl-C" if name == "start" else
                           "print the config.properties that start would use")
        s.add_argument("--model-store", type=Path, required=True)
        s.add_argument("--model", action="append", required=True,
                       help="name=file.mar[:workers=1][:batch=8][:delay=10][:timeout=120]")
        s.add_argument("--job-queue-size", type=int, default=100)
        s.add_argument("--ports", choices=("free", "default"), default="free")
    start = sub.choices["start"]
    start.add_argument("--pin", default="0", help='CPUs for launcher, JVM and workers, or "none"')
    start.add_argument("--workdir", type=Path, help="config, logs, tmp (default: a new tmp dir)")
    start.add_argument("--hold", type=float, help="stop after this many seconds instead")
    start.add_argument("--warm", type=float, default=0.0, help="discarded c=16 load, seconds")
    start.add_argument("--warm-path", default="/predictions/noop")
    start.add_argument("--payload", type=Path, help="body file for --warm")
    start.add_argument("--content-type", default="application/json")
    start.add_argument("--client-cpus", help="pin this process (the --warm client) like taskset")
    start.add_argument("--quiet-logs", action="store_true",
                       help="no line per request or batch (bench.run's default): a quiet log4j2 "
                            "file and metrics_mode=prometheus")
    args = p.parse_args(argv)
    if args.cmd == "start" and args.warm > 0 and args.payload is None:
        p.error("--warm needs --payload")
    if args.cmd == "config":
        models = dict(parse_model(m) for m in args.model)
        ports = Ports() if args.ports == "default" else Ports.free()
        sys.stdout.write(render(args.model_store.resolve(), models, ports,
                                job_queue_size=args.job_queue_size, extra=torchserve_only(ports)))
        return 0
    return _serve(args)


if __name__ == "__main__":
    raise SystemExit(main())
