"""Protocol-neutral request and response types shared by the front ends, routing and workers."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Input:
    """One named input of a request: a form field, a file, or the whole body (`body`).

    The value stays the raw bytes the client sent; the worker decodes it by content type
    (JSON parsed, `text/*` as str, everything else as bytearray), as TorchServe's backend does.
    """

    name: str
    content_type: str
    value: bytes


@dataclass(slots=True)
class InferenceRequest:
    """What a front end hands to routing: inputs and the headers a handler may read."""

    request_id: str
    inputs: list[Input]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class InferenceResponse:
    """One request's answer as the handler shaped it: status, content type, headers, body.

    `final` is False for an intermediate answer of a streaming handler (TorchServe's
    `send_intermediate_predict_response`); the last answer of every request is final.
    """

    body: bytes
    status: int = 200
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    final: bool = True
