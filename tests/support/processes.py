"""Whether a process the server started has stopped (tests only see it from outside)."""

from __future__ import annotations

import psutil


def gone(pid: int) -> bool:
    """The process has stopped running: exited, or a zombie its parent has yet to reap."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
