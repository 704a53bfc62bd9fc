"""Request ids of HTTP requests: `x-request-id`, normalised by the data plane's rules
(serving/routing/requestids.py), chosen once per request."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from serving.routing.requestids import normalise_request_id


def request_id_of(headers: Mapping[str, str]) -> str:
    return normalise_request_id(headers.get("x-request-id"))


def scope_request_id(scope: MutableMapping[str, Any]) -> str:
    """The id of the request a FastAPI route serves, chosen once and kept in its ASGI scope:
    the route, its error handler and the middleware that stamps responses all use it."""
    chosen: str | None = scope.get(_SCOPE_KEY)
    if chosen is None:
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        chosen = normalise_request_id(given.decode("latin-1"))
        scope[_SCOPE_KEY] = chosen
    return chosen


_SCOPE_KEY = "serving.request_id"
