"""Request ids: the client's id when it is a sane one, else a fresh UUID-shaped id.

A client's id is echoed back, passed to the handler and written to logs, so only 1-200
visible ASCII characters (`!` to `~`) are taken as they are. Anything else (empty, non-ASCII,
spaces or control characters, longer) is replaced by a fresh id, used everywhere for that
request. Every front end uses these rules (HTTP's `x-request-id`, gRPC metadata, OIP's `id`).
"""

from __future__ import annotations

import itertools
import uuid

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


def normalise_request_id(given: str | None) -> str:
    """The client's id if it is a sane one, else a fresh one."""
    if given and valid_request_id(given):
        return given
    return new_request_id()
