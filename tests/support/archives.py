"""Building model archives in tests with the real `torch-model-archiver` command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

HANDLERS = Path(__file__).resolve().parents[1] / "integration" / "handlers"


def archiver() -> str:
    found = Path(sys.executable).with_name("torch-model-archiver")
    return str(found) if found.exists() else (shutil.which("torch-model-archiver") or "")


def build_mar(store: Path, name: str, handler: str | Path, *, version: str = "1.0",
              serialized_file: Path | None = None, model_file: Path | None = None,
              extra_files: list[Path] = (), config: str | None = None,  # type: ignore[assignment]
              archive_format: str = "default", file_name: str | None = None) -> Path:
    """Run torch-model-archiver; `handler` is a file under tests/integration/handlers, a path,
    or a built-in handler name. Returns the archive path."""
    work = store / f".src-{name}-{version}"
    work.mkdir(parents=True, exist_ok=True)
    handler_arg = str(handler)
    candidate = HANDLERS / str(handler)
    if isinstance(handler, Path):
        handler_arg = str(handler)
    elif candidate.is_file():
        handler_arg = str(candidate)
    cmd = [archiver(), "--model-name", name, "--version", version, "--handler", handler_arg,
           "--export-path", str(store), "--archive-format", archive_format, "-f"]
    if serialized_file is not None:
        cmd += ["--serialized-file", str(serialized_file)]
    if model_file is not None:
        cmd += ["--model-file", str(model_file)]
    if extra_files:
        cmd += ["--extra-files", ",".join(str(p) for p in extra_files)]
    if config is not None:
        cfg = work / "model-config.yaml"
        cfg.write_text(config)
        cmd += ["--config-file", str(cfg)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=work)
    suffix = {"default": ".mar", "tgz": ".tar.gz", "no-archive": "", "zip-store": ".mar"}
    built = store / f"{name}{suffix[archive_format]}"
    if file_name is None:
        return built
    target = store / file_name
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    built.rename(target)
    return target
