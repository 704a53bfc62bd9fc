"""One write per HTTP answer: a connection's transport whose writes can be held and joined.

uvicorn writes a response's head and its body with a write each, and uvloop sends each at
once: two syscalls and two TCP segments per answer, and on loopback the sender's CPU also
runs the receiving side of each. An endpoint that sends a whole answer in one go corks the
transport first and uncorks it after: the head and body leave in one write. Anything else
(other routes, streamed chunks) writes through as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, MutableMapping
from typing import Any

EXTENSION = "serving.cork"


class CorkedTransport:
    """Wraps a connection's transport; `cork()` holds writes until `uncork()`."""

    __slots__ = ("_held", "_transport")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._held: list[bytes] | None = None

    def cork(self) -> None:
        if self._held is None:
            self._held = []

    def uncork(self) -> None:
        held, self._held = self._held, None
        if held:
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._transport.write(data)
        else:
            held.append(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    # What ends the byte stream sends what is held first, so nothing is lost or reordered.
    def write_eof(self) -> None:
        self.uncork()
        self._transport.write_eof()

    def close(self) -> None:
        self.uncork()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def corked_transport(scope: MutableMapping[str, Any]) -> CorkedTransport | None:
    """The request's connection transport, if the server that runs the app corks."""
    extensions = scope.get("extensions")
    return extensions.get(EXTENSION) if extensions else None


async def send_whole(scope: MutableMapping[str, Any], sending: Awaitable[None]) -> None:
    """Await `sending` (the sends of one whole answer, head and body) with the connection
    corked, so that the answer leaves in one write. Never around a wait for the client:
    what is held goes out only when `sending` is done."""
    transport = corked_transport(scope)
    if transport is None:
        await sending
        return
    transport.cork()
    try:
        await sending
    finally:
        transport.uncork()
