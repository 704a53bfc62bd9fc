"""Archive reading: formats, manifests, and refusal of entries that would escape."""

from __future__ import annotations

import io
import json
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from serving.errors import ArchiveError
from serving.handlers.archive import ArchiveLimits, unpack

MANIFEST = {"createdOn": "01/01/2024 00:00:00", "runtime": "python", "archiverVersion": "0.12.0",
            "model": {"modelName": "m", "modelVersion": "2.0", "handler": "h.py"}}


def make_zip(path: Path, entries: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def make_tar(path: Path, entries: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return path


def good_entries() -> dict[str, bytes]:
    return {"MAR-INF/MANIFEST.json": json.dumps(MANIFEST).encode(), "h.py": b"x = 1\n"}


LIMITS = ArchiveLimits()


def test_zip_archive(tmp_path: Path):
    out = unpack(make_zip(tmp_path / "m.mar", good_entries()), tmp_path / "work", LIMITS)
    assert out.manifest.model_name == "m" and out.manifest.model_version == "2.0"
    assert (out.model_dir / "h.py").read_text() == "x = 1\n"
    assert out.extracted_to is not None and out.model_dir.is_relative_to(tmp_path / "work")


def test_tar_gz_with_top_folder(tmp_path: Path):
    entries = {f"m/{k}": v for k, v in good_entries().items()}
    out = unpack(make_tar(tmp_path / "m.tar.gz", entries), tmp_path / "work", LIMITS)
    assert out.manifest.handler == "h.py" and (out.model_dir / "h.py").exists()


def test_unpacked_folder_is_used_in_place(tmp_path: Path):
    folder = tmp_path / "m"
    for name, data in good_entries().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    out = unpack(folder, tmp_path / "work", LIMITS)
    assert out.model_dir == folder and out.extracted_to is None


def test_old_manifest_without_archiver_version_or_model_version(tmp_path: Path):
    old = {"specificationVersion": "1.0", "implementationVersion": "1.0",
           "model": {"modelName": "legacy", "handler": "h.py"}}
    entries = {"MAR-INF/MANIFEST.json": json.dumps(old).encode(), "h.py": b""}
    out = unpack(make_zip(tmp_path / "legacy.mar", entries), tmp_path / "work", LIMITS)
    assert (out.manifest.model_name, out.manifest.model_version) == ("legacy", "1.0")


def test_no_manifest_uses_default_service_handler(tmp_path: Path):
    archive = make_zip(tmp_path / "bare.mar", {"service.py": b""})
    with pytest.raises(ArchiveError, match="default_service_handler"):
        unpack(archive, tmp_path / "work", LIMITS)
    out = unpack(archive, tmp_path / "work", LIMITS, default_handler="service:handle")
    assert (out.manifest.model_name, out.manifest.handler) == ("bare", "service:handle")


@pytest.mark.parametrize("evil", ["../escaped.txt", "a/../../escaped.txt", "/tmp/escaped-abs.txt"])
@pytest.mark.parametrize("maker", [make_zip, make_tar])
def test_paths_leaving_the_archive_are_refused(tmp_path: Path, evil: str, maker):
    entries = {**good_entries(), evil: b"pwned"}
    archive = maker(tmp_path / ("evil.mar" if maker is make_zip else "evil.tar.gz"), entries)
    work = tmp_path / "deep" / "work"
    with pytest.raises(ArchiveError, match="refusing to extract"):
        unpack(archive, work, LIMITS)
    assert not (tmp_path / "deep" / "escaped.txt").exists()
    assert not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/escaped-abs.txt").exists()
    assert list(work.iterdir()) == []  # the partial extraction folder was removed


def test_corrupt_archives_are_archive_errors(tmp_path: Path):
    good = make_zip(tmp_path / "good.mar", {**good_entries(), "w.bin": b"\x01" * 4096})
    data = bytearray(good.read_bytes())
    at = data.index(b"\x01" * 64)  # stored, not deflated: flip bytes of the file's data
    data[at:at + 8] = b"\x02" * 8
    crc = tmp_path / "crc.mar"
    crc.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="cannot be extracted"):
        unpack(crc, tmp_path / "work", LIMITS)
    tgz = make_tar(tmp_path / "t.tar.gz", {**good_entries(), "w.bin": b"\x01" * 65536})
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(tgz.read_bytes()[:200])
    with pytest.raises(ArchiveError):
        unpack(truncated, tmp_path / "work2", LIMITS)


def test_not_an_archive(tmp_path: Path):
    junk = tmp_path / "junk.mar"
    junk.write_bytes(b"definitely not a zip")
    with pytest.raises(ArchiveError, match="neither a zip"):
        unpack(junk, tmp_path / "work", LIMITS)
    bad_manifest = make_zip(tmp_path / "bad.mar", {"MAR-INF/MANIFEST.json": b"{nope"})
    with pytest.raises(ArchiveError, match="not valid JSON"):
        unpack(bad_manifest, tmp_path / "work", LIMITS)
