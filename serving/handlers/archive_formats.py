"""The three archive formats (zip `.mar`, tar(.gz), unpacked folder) read through the checks
of `serving.handlers.extraction`."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, cast

from serving.errors import ArchiveError
from serving.handlers.extraction import (
    CHUNK,
    ArchiveLimits,
    Entry,
    EntryWriter,
    Inventory,
    check_size,
    entry_parts,
    refusal,
)

# What a corrupt or hostile entry's data raises while it is read and written.
ENTRY_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error,
                lzma.LZMAError, NotImplementedError, RuntimeError, ValueError,
                IndexError)  # zipfile indexes an empty entry name: a corrupt archive
_SPECIAL = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
            stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}
_TAR_SPECIAL = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
                tarfile.FIFOTYPE: "a FIFO"}
NO_LINKS = "model archives may not hold links"


def extract_zip(source: Path, dest: Path, limits: ArchiveLimits) -> None:
    archive, size = source.name, source.stat().st_size
    with zipfile.ZipFile(source) as zf:
        inventory = Inventory(archive, limits)
        listed = []
        for info in zf.infolist():
            entry = _zip_entry(info, archive, size)
            inventory.add(entry)
            listed.append((entry, info))
        with EntryWriter(dest, inventory) as writer:
            for entry, info in listed:
                with _entry_errors(archive, entry):
                    if entry.is_dir:
                        writer.make_dir(entry)
                        continue
                    with zf.open(info) as data:
                        writer.write_file(entry, data)


def _zip_entry(info: zipfile.ZipInfo, archive: str, archive_size: int) -> Entry:
    mode = info.external_attr >> 16  # the Unix mode, where the archiver stored one
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise refusal(archive, info.filename, f"is a symbolic link; {NO_LINKS}")
    if kind in _SPECIAL:
        raise refusal(archive, info.filename, f"is {_SPECIAL[kind]}")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise refusal(archive, info.filename, f"is a special file (mode {oct(mode)})")
    if info.flag_bits & 0x1:
        raise refusal(archive, info.filename, "is encrypted")
    is_dir = info.is_dir() or kind == stat.S_IFDIR
    # A declared compressed size larger than the file cannot be read: the file bounds it.
    return Entry(info.filename, entry_parts(info.filename, archive), is_dir,
                 size=0 if is_dir else info.file_size,
                 compressed=min(info.compress_size, archive_size),
                 executable=bool(mode & stat.S_IXUSR))


def extract_tar(source: Path, dest: Path, limits: ArchiveLimits) -> None:
    archive = source.name
    with _decompressed(source) as stream, _open_tar(stream, archive) as tf:
        inventory = Inventory(archive, limits, archive_size=source.stat().st_size)
        listed = []
        # Each member is checked before the next header is read: a member whose declared
        # size breaks a limit is never decompressed, even to be skipped.
        while (member := tf.next()) is not None:
            entry = _tar_entry(member, archive)
            inventory.add(entry)
            listed.append((entry, member))
        with EntryWriter(dest, inventory) as writer:
            for entry, member in listed:
                with _entry_errors(archive, entry):
                    data = None if entry.is_dir else tf.extractfile(member)
                    if data is None:
                        writer.make_dir(entry)
                    else:
                        writer.write_file(entry, data)


def _open_tar(stream: IO[bytes], archive: str) -> tarfile.TarFile:
    try:
        return tarfile.open(
            fileobj=cast(IO[bytes], _BoundedReads(stream, archive)), mode="r:")
    except tarfile.ReadError:
        raise ArchiveError(f"{archive!r} is neither a zip (.mar) nor a tar(.gz) "
                           "archive") from None


def _tar_entry(member: tarfile.TarInfo, archive: str) -> Entry:
    name = member.name
    if member.issym():
        raise refusal(archive, name, f"is a symbolic link (to {member.linkname!r}); {NO_LINKS}")
    if member.islnk():
        raise refusal(archive, name, f"is a hard link (to {member.linkname!r}); {NO_LINKS}")
    if member.type in _TAR_SPECIAL:
        raise refusal(archive, name, f"is {_TAR_SPECIAL[member.type]}")
    if member.issparse():
        raise refusal(archive, name, "is a sparse file")
    if not (member.isreg() or member.isdir()):
        raise refusal(archive, name, f"is a special entry (tar type {member.type!r})")
    return Entry(name, entry_parts(name, archive), member.isdir(),
                 size=0 if member.isdir() else member.size,
                 executable=bool(member.mode & stat.S_IXUSR))


@contextmanager
def _decompressed(source: Path) -> Iterator[IO[bytes]]:
    """The tar stream inside `source`: gzip, bzip2 and xz by their magic bytes, else raw."""
    with open(source, "rb") as raw:
        magic = raw.read(6)
        raw.seek(0)
        if magic.startswith(b"\x1f\x8b"):
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                yield cast(IO[bytes], gz)
        elif magic.startswith(b"BZh"):
            with bz2.BZ2File(raw) as bz:
                yield cast(IO[bytes], bz)
        elif magic.startswith(b"\xfd7zXZ\x00"):
            with lzma.LZMAFile(raw) as xz:
                yield cast(IO[bytes], xz)
        else:
            yield raw


class _BoundedReads:
    """The file tarfile reads: one read may ask for at most `CHUNK` bytes. tarfile reads a
    pax or GNU long-name record whole, at the size its header declares; unchecked, a small
    archive could make the server allocate gigabytes before a member is seen."""

    def __init__(self, stream: IO[bytes], archive: str) -> None:
        self._stream = stream
        self._archive = archive

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > CHUNK:
            raise ArchiveError(f"model archive {self._archive!r} holds a tar header record "
                               f"of {size} bytes (at most {CHUNK}); refusing to extract")
        return self._stream.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()


@contextmanager
def _entry_errors(archive: str, entry: Entry) -> Iterator[None]:
    try:
        yield
    except ArchiveError:
        raise
    except ENTRY_ERRORS as e:
        raise ArchiveError(f"model archive {archive!r}: entry {entry.name!r} cannot be "
                           f"extracted: {e}") from None


def check_folder(folder: Path, limits: ArchiveLimits) -> None:
    """An unpacked model folder, used in place: no links or special files anywhere inside
    (links are never followed), and within the entry and size limits."""
    name = folder.name
    count = total = 0
    pending = [folder]
    while pending:
        with os.scandir(pending.pop()) as items:
            for item in items:
                rel = Path(item.path).relative_to(folder).as_posix()
                count += 1
                if count > limits.max_entries:
                    raise refusal(name, rel, "takes the folder past max_archive_entries "
                                  f"({limits.max_entries} files and folders)")
                st = item.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise refusal(name, rel, f"is a symbolic link (to "
                                  f"{os.readlink(item.path)!r}); {NO_LINKS}")
                if stat.S_ISDIR(st.st_mode):
                    pending.append(Path(item.path))
                elif not stat.S_ISREG(st.st_mode):
                    kind = _SPECIAL.get(stat.S_IFMT(st.st_mode), "a special file")
                    raise refusal(name, rel, f"is {kind}")
                elif st.st_nlink > 1:
                    raise refusal(name, rel, f"is a hard link ({st.st_nlink} names); "
                                  f"{NO_LINKS}: copy the file instead")
                else:
                    total += st.st_size
                    check_size(name, rel, total, limits)
