"""Archive reading: formats, manifests, and refusal of entries that would escape."""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from serving.errors import ArchiveError
from serving.handlers.archive import MANIFEST_PATH, ArchiveLimits, unpack
from serving.handlers.modelconfig import read_model_yaml
from tests.support.hostile import path_max_link_chain, tar_member

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


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz", "w"])
def test_tar_with_top_folder(tmp_path: Path, mode: str):
    archive = tmp_path / "m.tar.gz"
    with tarfile.open(archive, mode) as tf:
        for name, data in good_entries().items():
            info = tarfile.TarInfo(f"m/{name}")
            info.size = len(data)
            info.mode = 0o755 if name == "h.py" else 0o600
            tf.addfile(info, io.BytesIO(data))
    out = unpack(archive, tmp_path / "work", LIMITS)
    assert out.manifest.handler == "h.py" and (out.model_dir / "h.py").read_text() == "x = 1\n"
    assert (out.model_dir / "h.py").stat().st_mode & stat.S_IXUSR  # the owner's x bit kept
    assert not (out.model_dir / MANIFEST_PATH).stat().st_mode & stat.S_IXUSR


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


# -- hostile archives: each is refused with the entry named, and nothing lands outside ----------

def tree(root: Path, skip: Path) -> set[str]:
    """Every path under `root` but inside `skip`, links not followed."""
    found = set()
    for path in root.rglob("*"):
        if not path.is_relative_to(skip):
            found.add(str(path.relative_to(root)))
    return found


def refused(tmp_path: Path, archive: Path, entry: str | tuple[str, ...], why: str,
            limits: ArchiveLimits = LIMITS) -> str:
    """Unpack `archive`; assert an ArchiveError naming `entry` (or one of them) and saying
    `why`, that nothing outside the work folder changed, and that the partial extraction was
    removed."""
    work = tmp_path / "work"
    before = tree(tmp_path, work)
    with pytest.raises(ArchiveError) as caught:
        unpack(archive, work, limits)
    message = caught.value.message
    names = entry if isinstance(entry, tuple) else (entry,)
    assert any(f"entry {name!r}" in message for name in names) and why in message, message
    assert archive.name in message
    assert tree(tmp_path, work) == before
    assert not work.exists() or list(work.iterdir()) == []
    return message


def tar_with(path: Path, members: list[tarfile.TarInfo],
             entries: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in (entries if entries is not None else good_entries()).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for member in members:
            tf.addfile(member, io.BytesIO(b"x" * member.size) if member.size else None)
    return path


@pytest.mark.parametrize("target", ["h.py", "../../../../etc/passwd", "/etc/passwd"])
@pytest.mark.parametrize("maker", [make_zip, make_tar])
def test_every_link_is_refused(tmp_path: Path, maker, target: str):
    # Links that stay inside are refused too: torch-model-archiver never writes one, and a
    # link read by a handler, or written through, is how every escape starts.
    archive = maker(tmp_path / ("l.mar" if maker is make_zip else "l.tar.gz"), good_entries(),
                    links={"data/evil": target})
    refused(tmp_path, archive, "data/evil", "is a symbolic link")


def test_tar_link_chain_longer_than_path_max(tmp_path: Path):
    # The extraction folder is work/<tmp>, so ../../outside is tmp_path/outside; the same
    # archive extracted with tarfile's "data" filter on Python 3.11.7 writes the sentinel.
    (tmp_path / "outside").mkdir()
    archive = tar_with(tmp_path / "chain.tar.gz", path_max_link_chain("../../outside"))
    refused(tmp_path, archive, "a", "is a symbolic link (to 'ddd")
    assert not (tmp_path / "outside" / "sentinel").exists()


@pytest.mark.parametrize("maker", [make_zip, make_tar])
def test_a_short_chain_of_links_is_refused(tmp_path: Path, maker):
    # `x -> .` then `x/x/x/x/c -> ../../../../outside`: each link alone normalises inside.
    chain = {"x": ".", "x/x/x/x/c": "../../../../outside"}
    archive = maker(tmp_path / ("c.mar" if maker is make_zip else "c.tar.gz"), good_entries(),
                    links=chain)
    refused(tmp_path, archive, "x", "is a symbolic link")


@pytest.mark.parametrize("target", ["h.py", "/etc/passwd", "../../outside"])
def test_tar_hard_links_are_refused(tmp_path: Path, target: str):
    archive = tar_with(tmp_path / "h.tar.gz", [tar_member("h2.py", tarfile.LNKTYPE, target)])
    refused(tmp_path, archive, "h2.py", f"is a hard link (to {target!r})")


@pytest.mark.parametrize(("kind", "what"), [(tarfile.FIFOTYPE, "is a FIFO"),
                                            (tarfile.CHRTYPE, "is a character device"),
                                            (tarfile.BLKTYPE, "is a block device"),
                                            (b"V", "is a special entry")])
def test_tar_special_entries_are_refused(tmp_path: Path, kind: bytes, what: str):
    archive = tar_with(tmp_path / "s.tar.gz", [tar_member("dev/thing", kind)])
    refused(tmp_path, archive, "dev/thing", what)


@pytest.mark.parametrize(("mode", "what"), [(stat.S_IFIFO, "is a FIFO"),
                                            (stat.S_IFCHR, "is a character device"),
                                            (stat.S_IFSOCK, "is a socket")])
def test_zip_special_entries_are_refused(tmp_path: Path, mode: int, what: str):
    archive = tmp_path / "s.mar"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in good_entries().items():
            zf.writestr(name, data)
        info = zipfile.ZipInfo("dev/thing")
        info.external_attr = (mode | 0o644) << 16
        zf.writestr(info, b"")
    refused(tmp_path, archive, "dev/thing", what)


@pytest.mark.parametrize(("name", "why"), [
    ("/tmp/abs.py", "has an absolute path"),
    ("C:/abs.py", "has an absolute path"),
    ("c:abs.py", "has an absolute path"),
    ("C:\\abs.py", "has a backslash"),
    ("a\\..\\..\\up.py", "has a backslash"),
    ("\\\\server\\share\\x.py", "has a backslash"),
    ("a/../../up.py", "has a '..' component"),
    ("./../up.py", "has a '..' component"),
    ("a/" * 65 + "deep.py", "is nested more than 64 folders deep"),
])
@pytest.mark.parametrize("maker", [make_zip, make_tar])
def test_entry_names_that_are_not_plain_relative_paths(tmp_path: Path, maker, name: str,
                                                       why: str):
    archive = maker(tmp_path / ("n.mar" if maker is make_zip else "n.tar.gz"),
                    {**good_entries(), name: b"pwned"})
    refused(tmp_path, archive, name, why)


@pytest.mark.parametrize(("first", "second", "why"), [
    ("x.py", "./x.py", "appears twice"),
    ("a/b.py", "a//b.py", "appears twice"),
    ("a", "a/b.py", "lies inside 'a', which is a file"),
    ("a/b.py", "a", "is a file, but other entries use it as a folder"),
])
def test_duplicate_and_colliding_names_are_refused(tmp_path: Path, first: str, second: str,
                                                   why: str):
    archive = tmp_path / "d.mar"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in good_entries().items():
            zf.writestr(name, data)
        zf.writestr(first, b"one")
        zf.writestr(second, b"two")
    refused(tmp_path, archive, second, why)
    tar = tar_with(tmp_path / "d.tar.gz", [], {**good_entries(), first: b"1", second: b"2"})
    refused(tmp_path, tar, second, why)


def test_zip_bomb_is_refused_by_its_compression_ratio(tmp_path: Path):
    archive = tmp_path / "bomb.mar"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in good_entries().items():
            zf.writestr(name, data)
        zf.writestr("zeros.bin", bytes(50 * 1024 * 1024))
    assert archive.stat().st_size < 100_000
    refused(tmp_path, archive, "zeros.bin", "max_archive_compression_ratio (200:1")


def test_small_compressible_files_are_fine(tmp_path: Path):
    # Under 1 MiB any ratio is allowed: vocabularies and configs compress well.
    archive = tmp_path / "text.mar"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in good_entries().items():
            zf.writestr(name, data)
        zf.writestr("vocab.txt", b"a" * 1024 * 1024)
    out = unpack(archive, tmp_path / "work", LIMITS)
    assert (out.model_dir / "vocab.txt").stat().st_size == 1024 * 1024


def test_tar_gz_bomb_is_refused_by_the_archive_ratio(tmp_path: Path):
    archive = make_tar(tmp_path / "bomb.tar.gz", {**good_entries(),
                                                   "zeros.bin": bytes(50 * 1024 * 1024)})
    refused(tmp_path, archive, "zeros.bin", "max_archive_compression_ratio")


@pytest.mark.parametrize("maker", [make_zip, make_tar])
def test_entry_count_limit_counts_files_and_folders(tmp_path: Path, maker):
    suffix = ".mar" if maker is make_zip else ".tar.gz"
    many = maker(tmp_path / f"many{suffix}",
                 {**good_entries(), **{f"f{i}.txt": b"" for i in range(10)}})
    refused(tmp_path, many, "f7.txt", "max_archive_entries (10 files and folders)",
            ArchiveLimits(max_entries=10))
    # Three entries, but their folders make eleven paths to create.
    deep = maker(tmp_path / f"deep{suffix}", {**good_entries(), "a/b/c/d/e/f/g/h.py": b""})
    refused(tmp_path, deep, "a/b/c/d/e/f/g/h.py", "max_archive_entries",
            ArchiveLimits(max_entries=10))


@pytest.mark.parametrize("maker", [make_zip, make_tar])
def test_total_size_limit(tmp_path: Path, maker):
    archive = maker(tmp_path / ("big.mar" if maker is make_zip else "big.tar.gz"),
                    {**good_entries(), "w1.bin": os.urandom(3000), "w2.bin": os.urandom(3000)})
    refused(tmp_path, archive, "w2.bin", "max_archive_size (5000 bytes)",
            ArchiveLimits(max_size=5000))
    out = unpack(archive, tmp_path / "ok", ArchiveLimits(max_size=7000))
    assert (out.model_dir / "w2.bin").stat().st_size == 3000


def patch_header(archive: Path, name: bytes, fmt: str, local_at: int, central_at: int,
                 value: int) -> None:
    """Rewrite one field of the local and central headers of entry `name` in a zip."""
    data = bytearray(archive.read_bytes())
    for signature, field_at in ((b"PK\x03\x04", local_at), (b"PK\x01\x02", central_at)):
        at = data.index(signature)
        while name not in data[at:at + 64 + len(name)]:
            at = data.index(signature, at + 4)
        struct.pack_into(fmt, data, at + field_at, value)
    archive.write_bytes(bytes(data))


def patch_sizes(archive: Path, name: bytes, file_size: int) -> None:
    patch_header(archive, name, "<I", 22, 24, file_size)


def test_zip_whose_declared_size_is_smaller_than_its_data(tmp_path: Path):
    archive = make_zip(tmp_path / "liar.mar", {**good_entries(),
                                              "w.bin": os.urandom(2 * 1024 * 1024)})
    patch_sizes(archive, b"w.bin", 100)
    with zipfile.ZipFile(archive) as zf:
        assert zf.getinfo("w.bin").file_size == 100
    refused(tmp_path, archive, "w.bin", "cannot be extracted")


def test_zip_whose_declared_size_is_larger_than_its_data(tmp_path: Path):
    real = os.urandom(2 * 1024 * 1024)
    archive = make_zip(tmp_path / "liar.mar", {**good_entries(), "w.bin": real})
    patch_sizes(archive, b"w.bin", 10 * 1024 * 1024)
    refused(tmp_path, archive, "w.bin", "max_archive_size", ArchiveLimits(max_size=5 << 20))
    # Within the limits, what lands on disk is the real data, never padding to the claim.
    out = unpack(archive, tmp_path / "ok", LIMITS)
    assert (out.model_dir / "w.bin").read_bytes() == real


def test_zip_bomb_whose_declared_size_lies_small(tmp_path: Path):
    archive = tmp_path / "liar-bomb.mar"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in good_entries().items():
            zf.writestr(name, data)
        zf.writestr("zeros.bin", bytes(50 * 1024 * 1024))
    patch_sizes(archive, b"zeros.bin", 1000)  # declares a ratio far below the limit
    refused(tmp_path, archive, "zeros.bin", "cannot be extracted")


def test_encrypted_zip_entry_is_refused(tmp_path: Path):
    archive = tmp_path / "enc.mar"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in good_entries().items():
            zf.writestr(name, data)
        zf.writestr("secret.bin", b"data")
    patch_header(archive, b"secret.bin", "<H", 6, 8, 0x1)  # general purpose flag: encrypted
    refused(tmp_path, archive, "secret.bin", "is encrypted")


def test_huge_tar_header_record_is_refused_before_it_is_read(tmp_path: Path):
    # tarfile reads a pax record whole at its declared size: a few KB of gzip could declare
    # gigabytes. A record over 1 MiB is refused.
    archive = tmp_path / "pax.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("h.py")
        info.pax_headers = {"comment": "a" * (2 * 1024 * 1024)}
        tf.addfile(info, io.BytesIO(b""))
    with pytest.raises(ArchiveError, match=r"tar header record of \d+ bytes"):
        unpack(archive, tmp_path / "work", LIMITS)
    assert list((tmp_path / "work").iterdir()) == []


def make_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "store" / "m"
    for name, data in good_entries().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("target", ["h.py", "/etc/passwd", "../../outside"])
def test_folder_with_a_link_is_refused(tmp_path: Path, target: str):
    folder = make_folder(tmp_path)
    (folder / "sub").mkdir()
    (folder / "sub" / "evil").symlink_to(target)
    refused(tmp_path, folder, "sub/evil", f"is a symbolic link (to {target!r})")
    (folder / "sub" / "evil").unlink()
    (folder / "sub" / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    refused(tmp_path, folder, "sub/dirlink", "is a symbolic link")


def test_folder_with_a_fifo_or_hard_link_is_refused(tmp_path: Path):
    folder = make_folder(tmp_path)
    os.mkfifo(folder / "pipe")
    refused(tmp_path, folder, "pipe", "is a FIFO")
    (folder / "pipe").unlink()
    os.link(folder / "h.py", folder / "h2.py")
    refused(tmp_path, folder, ("h.py", "h2.py"), "is a hard link (2 names)")


def test_folder_limits(tmp_path: Path):
    folder = make_folder(tmp_path)
    (folder / "w.bin").write_bytes(b"x" * 5000)
    refused(tmp_path, folder, "w.bin", "max_archive_size (4096 bytes)",
            ArchiveLimits(max_size=4096))
    refused(tmp_path, folder, ("MAR-INF", "MAR-INF/MANIFEST.json", "h.py", "w.bin"),
            "max_archive_entries (3 files and folders)", ArchiveLimits(max_entries=3))
    assert unpack(folder, tmp_path / "work", LIMITS).model_dir == folder


@pytest.mark.parametrize("config_file", ["../secret.yaml", "/etc/passwd", "link.yaml"])
def test_config_file_named_by_the_manifest_stays_inside(tmp_path: Path, config_file: str):
    # A parse error quotes the file, so reading one outside would show it to the client.
    (tmp_path / "secret.yaml").write_text("password: [hunter2\n")
    model_dir = make_folder(tmp_path)
    (model_dir / "link.yaml").symlink_to(tmp_path / "secret.yaml")
    with pytest.raises(ArchiveError, match="not in the archive"):
        read_model_yaml(model_dir, config_file)
    (model_dir / "model-config.yaml").write_text("batchSize: 4\n")
    assert read_model_yaml(model_dir, "model-config.yaml") == {"batchSize": 4}


def test_oversized_manifest_is_refused(tmp_path: Path):
    manifest = {**MANIFEST, "padding": "x" * (2 * 1024 * 1024)}
    archive = make_zip(tmp_path / "fat.mar", {"MAR-INF/MANIFEST.json": json.dumps(manifest)
                                              .encode(), "h.py": b""})
    with pytest.raises(ArchiveError, match=r"MANIFEST\.json in 'fat\.mar' is larger than"):
        unpack(archive, tmp_path / "work", LIMITS)
    assert list((tmp_path / "work").iterdir()) == []
