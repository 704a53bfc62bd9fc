"""model_log.log: one file that every worker process appends to, rotated safely.

logging's RotatingFileHandler is safe for one process only: two workers would both rename the
full file, and one would go on writing into a rotated file. Here each line is written under an
exclusive `flock` of a lock file beside the log, which every worker takes: the writer that
finds the file full rotates it (`model_log.log` -> `.1` -> `.2` ...) and reopens it, and a
writer whose open file was rotated away by another worker sees the new inode and reopens
before it writes. A line is one `write` of the whole line, so lines stay whole and in one file.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

FILE_MODE = 0o644


class SharedRotatingFileHandler(logging.Handler):
    """Appends to `path`, rotated past `max_bytes` keeping `backup_count` old files, with any
    number of processes writing it (0 for either: never rotated, as RotatingFileHandler)."""

    def __init__(self, path: str | Path, max_bytes: int, backup_count: int,
                 encoding: str = "utf-8") -> None:
        super().__init__()
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.encoding = encoding
        self._lock_fd = os.open(self.path.with_name(f".{self.path.name}.lock"),
                                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                       FILE_MODE)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = f"{self.format(record)}\n".encode(self.encoding, "replace")
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                self._follow_rotation()
                size = os.fstat(self._fd).st_size
                if self._rotates() and size > 0 and size + len(data) > self.max_bytes:
                    self._rotate()
                _write_all(self._fd, data)
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        except Exception:
            self.handleError(record)

    def _rotates(self) -> bool:
        return self.max_bytes > 0 and self.backup_count > 0

    def _follow_rotation(self) -> None:
        """Reopen when the file at `path` is no longer the one open (another worker rotated
        it, or it was removed)."""
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            self._reopen()
            return
        held = os.fstat(self._fd)
        if (on_disk.st_ino, on_disk.st_dev) != (held.st_ino, held.st_dev):
            self._reopen()

    def _rotate(self) -> None:
        for index in range(self.backup_count - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._reopen()

    def _reopen(self) -> None:
        os.close(self._fd)
        self._fd = self._open()

    def close(self) -> None:
        self.acquire()
        try:
            for fd in (self._fd, self._lock_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fd = self._lock_fd = -1
        finally:
            self.release()
        super().close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
