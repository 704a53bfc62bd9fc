"""Request ids: the client's `x-request-id` when it sent one, else a fresh UUID-shaped id."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Mapping

# A random prefix chosen at start plus a counter: unique within the server's life, and far
# cheaper than uuid4() per request, which costs more than routing the request.
_prefix = str(uuid.uuid4())[:24]
_counter = itertools.count()


def new_request_id() -> str:
    return f"{_prefix}{next(_counter):012x}"


def request_id_of(headers: Mapping[str, str]) -> str:
    return headers.get("x-request-id") or new_request_id()
