"""Reading model archives (`.mar` zip, `.tar.gz`, unpacked folders) safely into a model dir."""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.errors import ArchiveError
from serving.handlers.archive_formats import ENTRY_ERRORS, check_folder, extract_tar, extract_zip
from serving.handlers.extraction import ArchiveLimits

__all__ = ["ArchiveLimits", "Manifest", "UnpackedArchive", "unpack"]

MANIFEST_PATH = "MAR-INF/MANIFEST.json"
DEFAULT_VERSION = "1.0"
MAX_CONFIG_SIZE = 1 << 20  # bytes of MANIFEST.json the gateway parses


@dataclass(frozen=True)
class Manifest:
    """The `model` section of `MAR-INF/MANIFEST.json`, old and new layouts alike."""

    model_name: str
    model_version: str
    handler: str
    serialized_file: str | None = None
    model_file: str | None = None
    config_file: str | None = None
    requirements_file: str | None = None
    runtime: str = "python"
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any], fallback_name: str) -> Manifest:
        model = data.get("model")
        if not isinstance(model, dict):
            raise ArchiveError(f"{MANIFEST_PATH} has no \"model\" object")
        handler = model.get("handler")
        if not isinstance(handler, str) or not handler:
            raise ArchiveError(f"{MANIFEST_PATH} names no handler")
        return cls(
            model_name=str(model.get("modelName") or fallback_name),
            # Manifests written before archiverVersion existed may omit the version.
            model_version=str(model.get("modelVersion") or DEFAULT_VERSION),
            handler=handler,
            serialized_file=model.get("serializedFile") or None,
            model_file=model.get("modelFile") or None,
            config_file=model.get("configFile") or None,
            requirements_file=model.get("requirementsFile") or None,
            runtime=str(data.get("runtime") or "python"),
            raw=data,
        )


@dataclass(frozen=True)
class UnpackedArchive:
    """An archive extracted into `model_dir`, with its manifest."""

    manifest: Manifest
    model_dir: Path
    source: Path
    extracted_to: Path | None = None  # the folder to delete on unregister; None if in place


def unpack(source: Path, work_dir: Path, limits: ArchiveLimits,
           default_handler: str | None = None) -> UnpackedArchive:
    """Extract `source` into a new folder under `work_dir` and read its manifest.

    Links, special files, absolute paths, `..` components and duplicate names are refused
    before anything is written, and `limits` is enforced on the bytes really written. An
    unpacked folder is used in place, not copied, once it holds no link or special file.
    """
    if source.is_dir():
        try:
            check_folder(source, limits)
        except OSError as e:
            raise ArchiveError(f"model folder {source.name!r} cannot be read: {e}") from None
        return _with_manifest(source, source, default_handler)
    if not source.is_file():
        raise ArchiveError(f"model archive {source.name!r} does not exist")
    work_dir.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(prefix=_stem(source) + "-", dir=work_dir))
    try:
        try:
            if zipfile.is_zipfile(source):
                extract_zip(source, dest, limits)
            else:
                extract_tar(source, dest, limits)
        except ENTRY_ERRORS as e:
            # A corrupt or truncated archive: the client's archive is at fault, not the server.
            raise ArchiveError(f"{source.name!r} cannot be extracted: {e}") from None
        unpacked = _with_manifest(_model_root(dest), source, default_handler)
        return UnpackedArchive(unpacked.manifest, unpacked.model_dir, source, extracted_to=dest)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _stem(source: Path) -> str:
    name = source.name
    for suffix in (".tar.gz", ".tgz", ".mar", ".zip"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return source.stem


def _with_manifest(model_dir: Path, source: Path, default_handler: str | None) -> UnpackedArchive:
    manifest_file = model_dir / MANIFEST_PATH
    if manifest_file.is_file():
        if manifest_file.stat().st_size > MAX_CONFIG_SIZE:
            raise ArchiveError(f"{MANIFEST_PATH} in {source.name!r} is larger than "
                               f"{MAX_CONFIG_SIZE} bytes")
        try:
            data = json.loads(manifest_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ArchiveError(f"{MANIFEST_PATH} in {source.name!r} is not valid JSON: "
                               f"{e}") from None
        if not isinstance(data, dict):
            raise ArchiveError(f"{MANIFEST_PATH} in {source.name!r} is not a JSON object")
    else:
        if not default_handler:
            raise ArchiveError(f"{source.name!r} has no {MANIFEST_PATH} and no "
                               "default_service_handler is configured")
        data = {"runtime": "python", "model": {"handler": default_handler}}
    return UnpackedArchive(Manifest.from_json(data, _stem(source)), model_dir, source)


def _model_root(dest: Path) -> Path:
    """`.tar.gz` archives made with `--archive-format tgz` hold one top folder."""
    if (dest / MANIFEST_PATH).exists():
        return dest
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return dest
