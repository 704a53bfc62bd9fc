"""What the images run, outside Docker: a fresh virtual environment built as the Dockerfiles
build theirs (torch 2.13 pinned first, then `pip install .` of what they copy), the shipped
config.properties with TS_* overrides, and deploy/docker/entrypoint.sh itself: `serve`, the
readiness probe of the HEALTHCHECK, a drain on SIGTERM, and the `torchserve` shim."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.archives import build_mar
from tests.support.polling import wait_for
from tests.support.server import ROOT, free_port

pytestmark = pytest.mark.slow
DOCKER = ROOT / "deploy" / "docker"
INSTALL_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's /opt/venv, built from the files the Dockerfile copies."""
    work = tmp_path_factory.mktemp("image")
    context = work / "src"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(ROOT / "serving", context / "serving",
                    ignore=shutil.ignore_patterns("__pycache__"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin/python"), "-m", "pip", "install", "--quiet"]
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for what in (["torch==2.13.0"], [str(context)]):
        done = subprocess.run(pip + what, env=clean, capture_output=True, text=True,
                              timeout=INSTALL_TIMEOUT_S)
        assert done.returncode == 0, done.stderr[-4000:]
    check = subprocess.run([str(venv / "bin/python"), "-m", "pip", "check"], env=clean,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout  # the Dockerfiles run it too
    shutil.copy(DOCKER / "torchserve", venv / "bin/torchserve")  # the Dockerfile's COPY
    return venv


def image_env(venv: Path, store: Path, home: Path) -> tuple[dict[str, str], int]:
    """The image's environment (PATH to its venv, nothing of this checkout) with the ports
    and model store set the way an operator would: TS_* variables."""
    port = free_port()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "TS_CONFIG_FILE": str(DOCKER / "config.properties"),
           "TS_MODEL_STORE": str(store),
           "TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{port}",
           "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{free_port()}",
           "TS_METRICS_ADDRESS": f"http://127.0.0.1:{free_port()}"}
    return env, port


def probe(venv: Path, kind: str, port: int, cwd: Path) -> int:
    return subprocess.run([str(venv / "bin/python"), "-m", "serving.probe", kind, "--url",
                           f"http://127.0.0.1:{port}"], cwd=cwd, capture_output=True,
                          timeout=30, env={"PATH": "/usr/bin:/bin"}).returncode


def test_serve_becomes_ready_answers_and_drains_on_sigterm(image_venv: Path, store: Path,
                                                           tmp_path: Path):
    build_mar(store, "echo", "echo_handler.py")
    home = tmp_path / "home"
    home.mkdir()
    env, port = image_env(image_venv, store, home)
    log = (tmp_path / "log").open("wb")
    proc = subprocess.Popen(["sh", str(DOCKER / "entrypoint.sh"), "serve"], cwd=home, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "log").read_text()[-4000:]
            return probe(image_venv, "ready", port, home) == 0

        wait_for(ready, timeout=180, what="the HEALTHCHECK's readiness probe")
        assert probe(image_venv, "live", port, home) == 0
        # exec: the server is the entrypoint's process itself, so signals reach it directly.
        command = psutil.Process(proc.pid).cmdline()
        assert command[1] == str(image_venv / "bin/serving"), command
        assert command[2:4] == ["start", "--foreground"], command
        # Token authorization stays on in the image (TorchServe 0.12's default).
        key = json.loads((home / "key_file.json").read_text())["inference"]["key"]
        url = f"http://127.0.0.1:{port}/predictions/echo"
        assert httpx.post(url, json={"x": 1}).status_code == 401
        r = httpx.post(url, json={"x": 1}, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "Stopped" in (tmp_path / "log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


def test_torchserve_start_and_stop_through_the_shim(image_venv: Path, store: Path,
                                                     tmp_path: Path):
    build_mar(store, "echo", "echo_handler.py")
    home = tmp_path / "home"
    home.mkdir()
    env, port = image_env(image_venv, store, home)
    pid_file = tmp_path / "ts.pid"

    def entrypoint(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), *args], cwd=home, env=env,
                              capture_output=True, text=True, timeout=120)

    started = entrypoint("torchserve", "--start", "--ncs", "--disable-token-auth",
                         "--pid-file", str(pid_file))
    try:
        assert started.returncode == 0, started.stderr
        wait_for(lambda: probe(image_venv, "ready", port, home) == 0, timeout=180,
                 what="the server started by `torchserve --start`")
        stopped = entrypoint("torchserve", "--stop", "--pid-file", str(pid_file))
        assert stopped.returncode == 0, stopped.stderr
        assert probe(image_venv, "live", port, home) != 0
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
