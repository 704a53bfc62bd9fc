"""A model server as a child process tree: pinning, readiness by management API, stop by PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import psutil


class ServerError(RuntimeError):
    """The server died, or did not get ready in time; the message ends with its log's tail."""


class ServerProcess:
    """Start a server command, wait until every model's workers are READY, stop it completely.

    Readiness is the management API (`GET /models/NAME`, all workers READY), not /ping:
    TorchServe answers /ping Healthy seconds before its workers can serve.
    """

    def __init__(self, command: Sequence[str], *, base_url: str, management_url: str,
                 workers: Mapping[str, int], workdir: Path, pin_cpus: str | None = None,
                 env: Mapping[str, str] | None = None, ready_timeout_s: float = 180.0,
                 registrations: Sequence[str] = ()) -> None:
        self.command = list(command)
        # Query strings for POST /models once the management API answers: the registration
        # call outranks every other source of model settings in both servers.
        self.registrations = list(registrations)
        self.base_url = base_url
        self.management_url = management_url
        self.workers = dict(workers)  # model name -> worker count that means "ready"
        self.workdir = workdir
        self.pin_cpus = pin_cpus
        self.env = dict(env or {})
        self.ready_timeout_s = ready_timeout_s
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_s = float("nan")  # seconds from start to all workers READY

    def __enter__(self) -> ServerProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        prefix = ["taskset", "-c", self.pin_cpus] if self.pin_cpus else []
        # A file, not a pipe: TorchServe logs each request to stdout and would block on a full pipe.
        with self.log_path.open("ab") as log:
            self._t0 = time.monotonic()
            # Own session, so the tree's processes are findable by process group at teardown.
            self.proc = subprocess.Popen(
                prefix + self.command, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env={**os.environ, **self.env}, start_new_session=True)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _statuses(self, model: str) -> list[str]:
        url = f"{self.management_url}/models/{model}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                described = json.loads(resp.read())
        except (OSError, ValueError):  # not listening yet, 404 while loading, half-written JSON
            return []
        return [w.get("status", "") for entry in described for w in entry.get("workers", [])]

    def is_ready(self) -> bool:
        for model, count in self.workers.items():
            statuses = self._statuses(model)
            if len(statuses) < count or any(s != "READY" for s in statuses):
                return False
        return True

    def _register(self, deadline: float) -> None:
        while True:
            try:
                with urllib.request.urlopen(f"{self.management_url}/models", timeout=5):
                    break
            except OSError:
                self.check_alive()
                if time.monotonic() > deadline:
                    raise ServerError(f"management API not up; log:\n{self.log_tail()}") from None
                time.sleep(0.2)
        for query in self.registrations:
            request = urllib.request.Request(f"{self.management_url}/models?{query}",
                                             method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.ready_timeout_s) as resp:
                    resp.read()
            except OSError as e:
                raise ServerError(f"registering {query} failed: {e}; log:\n"
                                  f"{self.log_tail()}") from e

    def wait_ready(self) -> None:
        assert self.proc is not None, "start() first"
        deadline = self._t0 + self.ready_timeout_s
        if self.registrations:
            self._register(deadline)
        while not self.is_ready():
            if self.proc.poll() is not None:
                raise ServerError(f"server exited with {self.proc.returncode} before it was "
                                  f"ready; log {self.log_path}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerError(f"not ready after {self.ready_timeout_s:.0f} s; log "
                                  f"{self.log_path}:\n{self.log_tail()}")
            time.sleep(0.2)
        self.ready_s = time.monotonic() - self._t0

    def check_alive(self) -> None:
        """Raise if the server exited: a dead server turns a load run into fast refusals."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerError(f"server exited with {self.proc.returncode}; log "
                              f"{self.log_path}:\n{self.log_tail()}")

    def processes(self) -> list[psutil.Process]:
        """The launcher and every descendant alive now (for memory and affinity checks)."""
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> tuple[float, float]:
        """(gateway, workers): CPU seconds (user + system) used so far by the main process and
        by its descendants alive now; one that exits meanwhile counts 0."""
        times = []
        for proc in self.processes():
            try:
                t = proc.cpu_times()
                times.append(t.user + t.system)
            except psutil.Error:
                times.append(0.0)
        return (times[0] if times else 0.0), sum(times[1:])

    def _main_process(self) -> psutil.Process | None:
        """The process whose graceful exit stops its workers; subclasses refine it."""
        procs = self.processes()
        return procs[0] if procs else None

    def _group(self) -> list[psutil.Process]:
        assert self.proc is not None
        members = {p.pid: p for p in self.processes()}
        # Orphans reparented away from the tree still carry the session's process group.
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == self.proc.pid:
                    members.setdefault(p.pid, p)
            except (ProcessLookupError, psutil.Error):
                pass
        return list(members.values())

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the main process, then every other member; SIGKILL what outlives the grace."""
        if self.proc is None:
            return
        main = self._main_process()
        if main is not None:
            _signal_all([main], signal.SIGTERM)
            psutil.wait_procs([main], timeout=grace_s)
        rest = self._group()
        _signal_all(rest, signal.SIGTERM)
        _, alive = psutil.wait_procs(rest, timeout=5)
        _signal_all(alive, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)
        self.proc.wait(timeout=5)
        survivors = self._group()
        self.proc = None
        if survivors:
            raise ServerError(f"processes survived the stop: {[p.pid for p in survivors]}")


def _signal_all(procs: list[psutil.Process], sig: int) -> None:
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)
