"""`serving archive`: the real torch-model-archiver, optionally with a precompiled model inside.

With `--precompile` the archive is first staged as a folder (`--archive-format no-archive`),
its handler is loaded in a child process exactly as a worker loads it, the model is exported
and compiled with AOTInductor (`model.pt2` plus a sidecar naming the torch version, CPU
features and thread count it was built for), and the final archive is made with the package
and a model-config.yaml whose `optimization.precompiled` points at it. A worker whose torch,
CPU or threads differ falls back to compiling, and says so in describe.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from serving.handlers.archive_formats import extract_zip
from serving.handlers.extraction import ArchiveLimits

PACKAGE_NAME = "model.pt2"


def archiver_command() -> str:
    beside = Path(sys.executable).with_name("torch-model-archiver")
    found = str(beside) if beside.exists() else shutil.which("torch-model-archiver")
    if not found:
        raise FileNotFoundError("torch-model-archiver is not installed")
    return found


def run_archiver(args: list[str]) -> None:
    done = subprocess.run([archiver_command(), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"torch-model-archiver failed: {done.stderr.strip() or done.stdout}")


def _option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _without(args: list[str], *names: str) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in names:
            skip = True
            continue
        if any(arg.startswith(n + "=") for n in names):
            continue
        out.append(arg)
    return out


def archive_with_package(args: list[str], threads: int) -> dict[str, Any]:
    """Build the archive `args` describe (torch-model-archiver's own arguments) with a
    precompiled package; returns the precompile report."""
    name = _option(args, "--model-name")
    config_file = _option(args, "--config-file")
    if not name or not config_file:
        raise ValueError("--precompile needs --model-name and a --config-file with an "
                         "optimization: block (warm-up inputs and compile settings)")
    with tempfile.TemporaryDirectory(prefix="precompile-") as tmp:
        stage = Path(tmp) / "stage"
        stage.mkdir()
        run_archiver([*_without(args, "--export-path", "--archive-format", "-f", "--force"),
                      "--export-path", str(stage), "--archive-format", "no-archive", "-f"])
        model_dir = stage / name
        report = _precompile_in_child(model_dir, threads)
        config = yaml.safe_load(Path(config_file).read_text()) or {}
        config.setdefault("optimization", {})["precompiled"] = PACKAGE_NAME
        new_config = Path(tmp) / "model-config.yaml"
        new_config.write_text(yaml.safe_dump(config, sort_keys=False))
        extra = _option(args, "--extra-files")
        package_files = [str(model_dir / (PACKAGE_NAME + suffix))
                         for suffix in ("", ".json", ".reference.pt")]
        extras = ",".join(filter(None, [extra, *package_files]))
        run_archiver([*_without(args, "--config-file", "--extra-files"),
                      "--config-file", str(new_config), "--extra-files", extras])
    return report


def precompile_archive(mar: Path, out: Path, threads: int) -> dict[str, Any]:
    """An existing archive plus a precompiled package: `out` is `mar` with model.pt2, its
    sidecar, and `optimization.precompiled` set in its model-config.yaml."""
    with tempfile.TemporaryDirectory(prefix="precompile-") as tmp:
        model_dir = Path(tmp) / "model"
        # The archive is checked and unpacked as the server would (default limits).
        model_dir.mkdir()
        extract_zip(mar, model_dir, ArchiveLimits())
        manifest = json.loads((model_dir / "MAR-INF/MANIFEST.json").read_text())
        config_name = manifest["model"].get("configFile")
        if not config_name:
            raise ValueError(f"{mar.name} has no model-config.yaml to hold an optimization: "
                             "block")
        report = _precompile_in_child(model_dir, threads)
        config_path = model_dir / config_name
        config = yaml.safe_load(config_path.read_text()) or {}
        config.setdefault("optimization", {})["precompiled"] = PACKAGE_NAME
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        partial = out.with_suffix(".partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as zf:
            for path in sorted(model_dir.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(model_dir).as_posix())
        partial.replace(out)
    return report


def _precompile_in_child(model_dir: Path, threads: int,
                         on_line: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the precompile in a fresh interpreter; `on_line` gets each line it logs as it
    comes (progress of a build that can take minutes), else they are kept for errors only."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "SERVING_PRECOMPILE_THREADS": str(threads)}
    with subprocess.Popen(
        # Absolute: the child changes into the model dir before it imports the handler.
        [sys.executable, "-m", "serving.handlers.packaging", str(model_dir.resolve()),
         PACKAGE_NAME],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    ) as child:
        assert child.stderr is not None and child.stdout is not None
        tail: collections.deque[str] = collections.deque(maxlen=60)
        for line in child.stderr:
            tail.append(line)
            if on_line is not None:
                on_line(line.rstrip("\n"))
        stdout = child.stdout.read()
        code = child.wait()
    if code != 0:
        raise RuntimeError(f"precompiling failed:\n{''.join(tail)[-4000:]}")
    report: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return report


def _precompile_in_this_process(model_dir: Path, package: str) -> dict[str, Any]:
    """Child side: load the handler as a worker does, capture samples, export and compile."""
    import torch

    from serving.optimize.hardware import override_cpu_features, parse_feature_list

    threads = int(os.environ.get("SERVING_PRECOMPILE_THREADS", "0")) or torch.get_num_threads()
    torch.set_num_threads(threads)
    # The server's setting of the same name: a package for an injected feature set.
    override_cpu_features(parse_feature_list(os.environ.get("SERVING_CPU_FEATURES")))
    from serving.handlers.archive import unpack
    from serving.handlers.modelconfig import read_model_yaml
    from serving.handlers.optimizing import capture_warmup_samples
    from serving.handlers.service import HandlerService
    from serving.optimize.config import from_model_yaml
    from serving.optimize.precompile import precompile_with_report
    from serving.optimize.samples import samples_from_config

    archive = unpack(model_dir, model_dir, ArchiveLimits())
    model_yaml = read_model_yaml(model_dir, archive.manifest.config_file)
    config = from_model_yaml(model_yaml)
    if config is None:
        raise ValueError("the model-config.yaml has no optimization: block")
    os.chdir(model_dir)
    sys.path.insert(0, str(model_dir))
    handler_yaml = {k: v for k, v in model_yaml.items() if k != "pt2"}
    service = HandlerService.load(
        model_name=archive.manifest.model_name, model_dir=model_dir,
        manifest=archive.manifest.raw, handler_spec=archive.manifest.handler,
        batch_size=int(model_yaml.get("batchSize", 1)), gpu_id=None,
        model_yaml_config=handler_yaml)
    model = getattr(service.handler.instance, "model", None)
    if not isinstance(model, torch.nn.Module):
        raise ValueError("the handler has no nn.Module in self.model to precompile")
    samples = samples_from_config(config, model_dir)
    if samples is None and config.warmup.requests:
        samples = capture_warmup_samples(service, model, config, model_dir,
                                         int(model_yaml.get("batchSize", 1)))
    _, report = precompile_with_report(model, config, samples or [], model_dir / package,
                                       model_dir=model_dir)
    result: dict[str, Any] = report.to_dict()
    result["threads"] = threads
    return result


if __name__ == "__main__":
    # Progress (auto's candidates, compile times) on stderr; the report is stdout's last line.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    print(json.dumps(_precompile_in_this_process(Path(sys.argv[1]), sys.argv[2])))
