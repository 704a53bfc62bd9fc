"""Request ids: the client's `x-request-id` when it is a sane one, else a fresh UUID-shaped id.

A client's id is echoed in response headers, passed to the handler and written to logs, so
only 1-200 visible ASCII characters (`!` to `~`) are taken as they are. Anything else (empty,
non-ASCII, spaces or control characters, longer) is replaced by a fresh id, used everywhere
for that request.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Mapping, MutableMapping
from typing import Any

MAX_REQUEST_ID_LENGTH = 200

# A random prefix chosen at start plus a counter: unique within the server's life, and far
# cheaper than uuid4() per request, which costs more than routing the request.
_prefix = str(uuid.uuid4())[:24]
_counter = itertools.count()


def new_request_id() -> str:
    return f"{_prefix}{next(_counter):012x}"


def valid_request_id(value: str) -> bool:
    """1-200 characters from `!` to `~`: safe in a header, a log line and JSON."""
    return (0 < len(value) <= MAX_REQUEST_ID_LENGTH and value.isascii()
            and value.isprintable() and " " not in value)


def request_id_of(headers: Mapping[str, str]) -> str:
    given = headers.get("x-request-id")
    if given and valid_request_id(given):
        return given
    return new_request_id()


def scope_request_id(scope: MutableMapping[str, Any]) -> str:
    """The id of the request a FastAPI route serves, chosen once and kept in its ASGI scope:
    the route, its error handler and the middleware that stamps responses all use it."""
    chosen: str | None = scope.get(_SCOPE_KEY)
    if chosen is None:
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        chosen = request_id_of({"x-request-id": given.decode("latin-1")})
        scope[_SCOPE_KEY] = chosen
    return chosen


_SCOPE_KEY = "serving.request_id"
