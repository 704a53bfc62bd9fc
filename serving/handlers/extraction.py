"""Unpacking untrusted archives: every entry checked before anything is written, within limits.

Nothing here uses `zipfile.extract` or `tarfile.extractall` (the tarfile data filter has been
bypassed with chains of links, CVE-2025-4517). Entries are listed and refused first (links,
devices, absolute paths, `..`, duplicates, declared sizes), then written by `EntryWriter`, which
creates every folder itself and opens every file relative to its parent's descriptor with
`O_EXCL | O_NOFOLLOW`, counting the bytes really written.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from serving.errors import ArchiveError

CHUNK = 1 << 20  # bytes read and written at a time, and the largest tar header record allowed
RATIO_FLOOR = 1 << 20  # entries (tar: archives) up to this size may compress any amount
MAX_DEPTH = 64  # folders deep; model archives hold a handful

_DRIVE = re.compile(r"[A-Za-z]:")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class ArchiveLimits:
    """What one archive (or model folder) may unpack to; Settings' `max_archive_*` keys.

    20 GiB holds a 7-9B-parameter model in 16-bit weights with its tokenizer; larger models
    raise it. Real weights compress about 1.1:1 and text under 10:1, while deflate tops out
    near 1032:1, so 200:1 on an entry past `RATIO_FLOOR` only stops padding and bombs.
    """

    max_size: int = 20 * 1024**3  # bytes, all entries together
    max_entries: int = 10_000  # files and folders, implied parent folders included
    max_compression_ratio: float = 200.0


@dataclass(frozen=True)
class Entry:
    """One archive member as it will land on disk."""

    name: str  # as written in the archive, for messages
    parts: tuple[str, ...]
    is_dir: bool
    size: int = 0  # as declared by the archive; the bytes written are counted again
    compressed: int | None = None  # zip: the entry's own compressed size
    executable: bool = False


def refusal(archive: str, entry: str, why: str) -> ArchiveError:
    return ArchiveError(f"model archive {archive!r}: entry {entry!r} {why}; refusing to extract")


def entry_parts(name: str, archive: str) -> tuple[str, ...]:
    """The path components of an entry name, refusing anything that is not a plain relative
    POSIX path."""
    if "\x00" in name:
        raise refusal(archive, name, "has a NUL byte in its name")
    if "\\" in name:
        raise refusal(archive, name, "has a backslash in its name (a Windows path)")
    if name.startswith("/") or _DRIVE.match(name):
        raise refusal(archive, name, "has an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise refusal(archive, name, "has a '..' component")
    if len(parts) > MAX_DEPTH:
        raise refusal(archive, name, f"is nested more than {MAX_DEPTH} folders deep")
    return parts


class Inventory:
    """The entries of one archive, each checked as it is listed, before anything is written."""

    def __init__(self, archive: str, limits: ArchiveLimits,
                 archive_size: int | None = None) -> None:
        self.archive = archive
        self.limits = limits
        self.archive_size = archive_size  # tar: the compression ratio is the whole archive's
        self._kinds: dict[tuple[str, ...], bool] = {}  # every path to create -> is a folder
        self._named: set[tuple[str, ...]] = set()
        self._declared = 0

    def add(self, entry: Entry) -> None:
        if not entry.parts:
            if entry.is_dir:  # `./`, the archive's own top folder
                return
            raise refusal(self.archive, entry.name, "has an empty path")
        if entry.parts in self._named:
            raise refusal(self.archive, entry.name, "appears twice")
        self._named.add(entry.parts)
        for depth in range(1, len(entry.parts)):
            parent = entry.parts[:depth]
            if self._kinds.setdefault(parent, True) is False:
                raise refusal(self.archive, entry.name,
                              f"lies inside {'/'.join(parent)!r}, which is a file")
        if self._kinds.setdefault(entry.parts, entry.is_dir) != entry.is_dir:
            raise refusal(self.archive, entry.name, "is a file, but other entries use it as "
                          "a folder")
        if len(self._kinds) > self.limits.max_entries:
            raise refusal(self.archive, entry.name, "takes the archive past "
                          f"max_archive_entries ({self.limits.max_entries} files and folders)")
        self._declared += entry.size
        check_size(self.archive, entry.name, self._declared, self.limits)
        if entry.compressed is not None:
            check_ratio(self.archive, entry.name, entry.size, entry.compressed, self.limits)
        if self.archive_size is not None:
            check_ratio(self.archive, entry.name, self._declared, self.archive_size, self.limits)


def check_size(archive: str, entry: str, total: int, limits: ArchiveLimits) -> None:
    if total > limits.max_size:
        raise refusal(archive, entry, "takes the unpacked size past max_archive_size "
                      f"({limits.max_size} bytes)")


def check_ratio(archive: str, entry: str, unpacked: int, packed: int,
                limits: ArchiveLimits) -> None:
    if unpacked > RATIO_FLOOR and unpacked > limits.max_compression_ratio * max(packed, 1):
        raise refusal(archive, entry, "expands more than max_archive_compression_ratio "
                      f"({limits.max_compression_ratio:g}:1; {unpacked} bytes from {packed})")


class EntryWriter:
    """Writes checked entries under `dest` through directory descriptors, never following a
    link, and stops as soon as the bytes really written pass a limit."""

    def __init__(self, dest: Path, inventory: Inventory) -> None:
        self._inventory = inventory
        self._root = os.open(dest, _DIR_FLAGS)
        self.total = 0

    def __enter__(self) -> EntryWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        os.close(self._root)

    def make_dir(self, entry: Entry) -> None:
        os.close(self._open_dir(entry.parts))

    def write_file(self, entry: Entry, source: IO[bytes]) -> None:
        parent = self._open_dir(entry.parts[:-1])
        try:
            fd = os.open(entry.parts[-1], _FILE_FLAGS, 0o755 if entry.executable else 0o644,
                         dir_fd=parent)
        finally:
            os.close(parent)
        written = 0
        with open(fd, "wb") as out:
            while chunk := source.read(CHUNK):
                written += len(chunk)
                self.total += len(chunk)
                self._check(entry, written)
                out.write(chunk)

    def _check(self, entry: Entry, written: int) -> None:
        inv = self._inventory
        check_size(inv.archive, entry.name, self.total, inv.limits)
        if entry.compressed is not None:
            check_ratio(inv.archive, entry.name, written, entry.compressed, inv.limits)
        if inv.archive_size is not None:
            check_ratio(inv.archive, entry.name, self.total, inv.archive_size, inv.limits)

    def _open_dir(self, parts: tuple[str, ...]) -> int:
        """A descriptor of folder `parts` under the root, creating what is missing; a
        component that is anything but a real folder fails (O_NOFOLLOW | O_DIRECTORY)."""
        fd = os.dup(self._root)
        try:
            for part in parts:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = inner
        except BaseException:
            os.close(fd)
            raise
        return fd
