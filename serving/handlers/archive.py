"""Reading model archives (`.mar` zip, `.tar.gz`, unpacked folders) safely into a model dir."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from serving.errors import ArchiveError

MANIFEST_PATH = "MAR-INF/MANIFEST.json"
DEFAULT_VERSION = "1.0"


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


def unpack(source: Path, work_dir: Path, default_handler: str | None = None) -> UnpackedArchive:
    """Extract `source` into a new folder under `work_dir` and read its manifest.

    Entries with absolute paths, `..` components, or links leading outside are rejected
    before anything is written. An unpacked folder is used in place, not copied.
    """
    if source.is_dir():
        return _with_manifest(source, source, default_handler)
    if not source.is_file():
        raise ArchiveError(f"model archive {source.name!r} does not exist")
    work_dir.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(prefix=_stem(source) + "-", dir=work_dir))
    try:
        try:
            if zipfile.is_zipfile(source):
                _extract_zip(source, dest)
            elif tarfile.is_tarfile(source):
                _extract_tar(source, dest)
            else:
                raise ArchiveError(f"{source.name!r} is neither a zip (.mar) nor a tar.gz "
                                   "archive")
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, UnicodeDecodeError,
                OSError, zlib.error) as e:
            # A corrupt or truncated archive, or entries that collide on disk: the client's
            # archive is at fault, not the server.
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


def _check_name(name: str, archive: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise ArchiveError(f"{archive!r} holds an absolute path {name!r}; refusing to extract")
    if ".." in path.parts:
        raise ArchiveError(f"{archive!r} holds a path leaving the archive {name!r}; "
                           "refusing to extract")
    return path


def _check_link(member: PurePosixPath, target: str, archive: str) -> None:
    if target.startswith("/") or ".." in _resolve(member.parent / target).parts:
        raise ArchiveError(f"{archive!r} holds a link {str(member)!r} -> {target!r} pointing "
                           "outside the archive; refusing to extract")


def _resolve(path: PurePosixPath) -> PurePosixPath:
    """Normalise `a/b/../c` lexically; a leading `..` survives and marks an escape."""
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            else:
                parts.append(part)
        elif part != ".":
            parts.append(part)
    return PurePosixPath(*parts)


def _extract_zip(source: Path, dest: Path) -> None:
    with zipfile.ZipFile(source) as zf:
        infos = zf.infolist()
        links: dict[str, str] = {}
        paths: dict[str, PurePosixPath] = {}
        for info in infos:
            path = paths[info.filename] = _check_name(info.filename, source.name)
            if stat.S_ISLNK(info.external_attr >> 16):
                target = zf.read(info).decode("utf-8")
                _check_link(path, target, source.name)
                links[info.filename] = target
        # A link's target is checked as a path inside the archive, which only holds when no
        # entry is reached through another link (`a -> .` then `a/a/b -> ../x` escapes).
        link_paths = {_resolve(paths[name]) for name in links}
        for info in infos:
            path = _resolve(paths[info.filename])
            through = next((p for p in path.parents if p in link_paths), None)
            if through is not None:
                raise ArchiveError(f"{source.name!r} holds {info.filename!r} inside the link "
                                   f"{str(through)!r}; refusing to extract")
        for info in infos:
            if info.filename in links:
                continue
            zf.extract(info, dest)
        root = os.path.realpath(dest)
        for name, target in links.items():
            link = dest / name
            link.parent.mkdir(parents=True, exist_ok=True)
            where = os.path.realpath(os.path.join(link.parent, target))
            if os.path.commonpath([root, where]) != root:  # a second line of defence
                raise ArchiveError(f"{source.name!r} holds a link {name!r} -> {target!r} "
                                   "pointing outside the archive; refusing to extract")
            os.symlink(target, link)


def _extract_tar(source: Path, dest: Path) -> None:
    with tarfile.open(source) as tf:
        members = tf.getmembers()
        for member in members:
            path = _check_name(member.name, source.name)
            if member.issym():
                _check_link(path, member.linkname, source.name)
            elif member.islnk():
                _check_name(member.linkname, source.name)
            elif not (member.isfile() or member.isdir()):
                raise ArchiveError(f"{source.name!r} holds a special file {member.name!r}; "
                                   "refusing to extract")
        # The "data" filter re-checks every member as a second line of defence.
        tf.extractall(dest, members=members, filter="data")
