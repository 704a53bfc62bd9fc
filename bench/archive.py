"""Build .mar archives with the real torch-model-archiver; run an archive's handler in process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

NOOP_HANDLER = Path(__file__).parent / "handlers" / "noop_handler.py"


def tool_path(name: str) -> str:
    # Prefer the tool beside this interpreter so a venv's archiver is used even when not on PATH.
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found beside {sys.executable} or on PATH")
    return found


def build_mar(name: str, handler: Path, export_dir: Path, *, version: str = "1.0",
              serialized_file: Path | None = None, model_file: Path | None = None,
              extra_files: Sequence[Path] = (), config_file: Path | None = None) -> Path:
    """Run torch-model-archiver; returns the archive's path."""
    export_dir.mkdir(parents=True, exist_ok=True)
    cmd = [tool_path("torch-model-archiver"), "--model-name", name, "--version", version,
           "--handler", str(handler), "--export-path", str(export_dir), "--force"]
    if serialized_file is not None:
        cmd += ["--serialized-file", str(serialized_file)]
    if model_file is not None:
        cmd += ["--model-file", str(model_file)]
    if extra_files:
        cmd += ["--extra-files", ",".join(str(f) for f in extra_files)]
    if config_file is not None:
        cmd += ["--config-file", str(config_file)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"torch-model-archiver failed ({done.returncode}): {done.stderr}")
    return export_dir / f"{name}.mar"


def build_noop_mar(export_dir: Path, name: str = "noop") -> Path:
    """An archive whose handler answers {"ok": true}: serving overhead with no model."""
    return build_mar(name, NOOP_HANDLER, export_dir)


def load_service(mar: Path, workdir: Path, *, batch_size: int = 1) -> Any:
    """Unpack an archive and initialise its handler as TorchServe's python worker does.

    Returns a `ts.service.Service`; no frontend, no socket, so its cost is the handler's own.
    """
    import ts
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    from ts.model_loader import ModelLoaderFactory

    model_dir = workdir / mar.stem
    with zipfile.ZipFile(mar) as zf:
        zf.extractall(model_dir)
        manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
    sys.path.insert(0, str(model_dir))  # the worker imports the handler from the model dir
    metrics = MetricsCacheYamlImpl(
        config_file_path=str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
    metrics.initialize_cache()
    metrics.model_name = manifest["model"]["modelName"]
    return ModelLoaderFactory.get_model_loader().load(
        manifest["model"]["modelName"], str(model_dir), manifest["model"]["handler"],
        None, batch_size, None, True, metrics)


def _decoded(body: bytes, content_type: str) -> Any:
    # The python worker hands JSON bodies to handlers parsed and text bodies as str.
    if content_type == "application/json":
        return json.loads(body)
    if content_type.startswith("text"):
        return body.decode()
    return bytearray(body)


def predict_call(service: Any, bodies: Sequence[bytes],
                 content_type: str) -> Callable[[], list[Any]]:
    """A zero-argument call running one batch through the handler, body decoding included.

    Calls the handler's entry point the way `Service.predict` does but lets exceptions out,
    so a broken handler fails the measurement instead of timing an error reply.
    """
    from ts.service import Service

    entry, context = service._entry_point, service.context

    def call() -> list[Any]:
        batch = [{"requestId": str(i).encode(), "headers": [],
                  "parameters": [{"name": "body", "contentType": content_type,
                                  "value": _decoded(body, content_type)}]}
                 for i, body in enumerate(bodies)]
        headers, inputs, ids = Service.retrieve_data_for_inference(batch)
        context.request_ids = ids
        context.request_processor = headers
        context.metrics.request_ids = ids
        out = entry(inputs, context)
        if not isinstance(out, list) or len(out) != len(bodies):
            raise RuntimeError(f"handler returned {type(out).__name__} for {len(bodies)} inputs")
        return out

    return call


def derive_archive(mar: Path, name: str, config: dict[str, Any]) -> Path:
    """A copy of `mar` named `name`, with `config` merged into its model-config.yaml.

    An archive built without a config file gets one (named in its manifest's `configFile`,
    as `torch-model-archiver --config-file` would), so the settings always take effect.
    """
    out = mar.with_name(f"{name}.mar")
    with zipfile.ZipFile(mar) as src:
        manifest = json.loads(src.read("MAR-INF/MANIFEST.json"))
        config_name = manifest["model"].get("configFile") or "model-config.yaml"
        manifest["model"]["modelName"] = name
        manifest["model"]["configFile"] = config_name
        existing = (yaml.safe_load(src.read(config_name)) or {}) \
            if config_name in src.namelist() else {}
        with zipfile.ZipFile(out, "w") as dst:
            for item in src.infolist():
                if item.filename == config_name:
                    continue
                data = src.read(item)
                if item.filename == "MAR-INF/MANIFEST.json":
                    data = json.dumps(manifest).encode()
                dst.writestr(item, data)
            dst.writestr(config_name, yaml.safe_dump({**existing, **config}))
    return out
