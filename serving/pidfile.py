"""The pid file of a running server: written by `serving start`, read by `serving stop`
(TorchServe's `torchserve --start` / `--stop`)."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from pathlib import Path

import psutil

DEFAULT_PID_FILE = Path(tempfile.gettempdir()) / ".serving.pid"


def running_pid(path: Path) -> int | None:
    """The pid in `path` if that process still runs and is this server; None otherwise (a
    stale file, or a pid the system has since given to another program)."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return None
    return pid if "serving" in cmdline else None


def claim(path: Path) -> None:
    """Write this process's pid; refuse when another server holds the file."""
    other = running_pid(path)
    if other is not None and other != os.getpid():
        raise RuntimeError(f"a server is already running (pid {other}, pid file {path}); "
                           "stop it with `serving stop` first")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n")


def release(path: Path) -> None:
    if running_pid(path) in (os.getpid(), None):
        with contextlib.suppress(OSError):
            path.unlink()


def stop(path: Path, timeout: float) -> str:
    """SIGTERM the server named in `path` (it drains, then exits) and wait for it; returns
    what happened, raises RuntimeError when it is not running or does not exit in time."""
    pid = running_pid(path)
    if pid is None:
        with contextlib.suppress(OSError):
            path.unlink()  # stale
        raise RuntimeError(f"no server is running (pid file {path})")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or _zombie(pid):
            return f"server (pid {pid}) stopped"
        time.sleep(0.1)
    raise RuntimeError(f"server (pid {pid}) is still draining after {timeout:g} s; it was "
                       "asked to stop and will exit when its requests finish (drain_timeout)")


def _zombie(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return True
