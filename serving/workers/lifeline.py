"""Ties a worker process's life to the gateway's: it dies with the gateway, never outlives it."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

GATEWAY_PID_ENV = "SERVING_GATEWAY_PID"  # set by the gateway in each worker's environment
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(expected_parent: int | None, sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` to this process when its parent exits (Linux), then check
    that the parent is still the one that started it: one that died before the request was
    made would never trigger it. Returns whether the request was made; exits at once (status
    1) when the parent is already gone."""
    armed = False
    if sys.platform == "linux":
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        armed = bool(libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0) == 0)
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)  # the gateway is gone already: nothing would ever talk to this worker
    return armed


def expected_parent_from_env() -> int | None:
    raw = os.environ.get(GATEWAY_PID_ENV, "")
    return int(raw) if raw.isdigit() else None
