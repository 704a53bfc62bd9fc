"""The TorchServe-style command line on a real server: `serving --start` in the background
with a pid file, `serving --stop`, and what each says when there is nothing to do."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.archives import build_mar
from tests.support.polling import wait_for
from tests.support.server import ROOT, free_port


def serving(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "serving", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def pid_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "serving.pid"
    yield path
    with contextlib.suppress(OSError, ValueError, ProcessLookupError):  # a failed test's server
        os.kill(int(path.read_text()), signal.SIGKILL)


def test_start_in_the_background_then_stop(store: Path, tmp_path: Path, pid_file: Path):
    build_mar(store, "echo", "echo_handler.py")
    port = free_port()
    start = ["--start", "--ncs", "--model-store", str(store), "--models", "echo.mar",
             "--disable-token-auth", "--inference-address", f"http://127.0.0.1:{port}",
             "--management-address", f"http://127.0.0.1:{free_port()}",
             "--pid-file", str(pid_file), "--log-file", str(tmp_path / "logs/server.log")]
    started = serving(*start, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    assert "started in the background" in started.stdout
    pid = int(pid_file.read_text())
    assert psutil.Process(pid).ppid() != os.getpid()  # detached: not this test's child
    wait_for(lambda: _ping(port) == 200, what="the backgrounded server to be ready")
    again = serving(*start, cwd=tmp_path)
    assert again.returncode == 1 and "already running" in again.stderr
    stopped = serving("--stop", "--pid-file", str(pid_file), cwd=tmp_path)
    assert stopped.returncode == 0 and f"pid {pid}" in stopped.stdout, stopped.stderr
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not pid_file.exists()
    assert "Stopped" in (tmp_path / "logs/server.log").read_text()
    nothing = serving("stop", "--pid-file", str(pid_file), cwd=tmp_path)
    assert nothing.returncode == 1 and "no server is running" in nothing.stderr


def test_a_background_start_that_fails_says_why(tmp_path: Path, pid_file: Path):
    failed = serving("start", "--background", "--model-store", str(tmp_path / "missing"),
                     "--pid-file", str(pid_file), "--log-file", str(tmp_path / "log"),
                     cwd=tmp_path)
    assert failed.returncode == 2
    assert "model_store" in failed.stderr and "exited with 2" in failed.stderr
    assert not pid_file.exists()


def test_a_background_start_on_a_busy_port_fails_instead_of_reporting_success(
        tmp_path: Path, pid_file: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        failed = serving("--start", "--disable-token-auth", "--inference-address",
                         f"http://127.0.0.1:{port}", "--management-address",
                         f"http://127.0.0.1:{free_port()}", "--pid-file", str(pid_file),
                         "--log-file", str(tmp_path / "log"), cwd=tmp_path)
    assert failed.returncode == 2, failed.stderr
    assert "cannot listen" in failed.stderr and not pid_file.exists()


def test_a_stale_pid_file_is_not_a_running_server(tmp_path: Path, pid_file: Path):
    pid_file.write_text("999999999\n")
    result = serving("stop", "--pid-file", str(pid_file), cwd=tmp_path)
    assert result.returncode == 1 and "no server is running" in result.stderr
    assert not pid_file.exists()


def _ping(port: int) -> int:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code
    except httpx.TransportError:
        return 0
