"""The request ids of the batch a handler is running, for the worker's log lines.

Its own module, free of torch and ts: the worker's logging reads it before torch is imported.
"""

from __future__ import annotations

from contextvars import ContextVar

current_request_ids: ContextVar[str] = ContextVar("current_request_ids", default="")
