"""A TorchServe handler that does no model work: measures pure serving overhead."""

from __future__ import annotations

from typing import Any

from ts.torch_handler.base_handler import BaseHandler


class NoopHandler(BaseHandler):  # type: ignore[misc]
    """Answers {"ok": true} to every request of a batch, one answer per request."""

    def initialize(self, context: Any) -> None:
        # No serialized model: BaseHandler.initialize would look for one and fail.
        self.context = context
        self.initialized = True

    def preprocess(self, data: list[Any]) -> list[Any]:
        return data

    def inference(self, data: list[Any], *args: Any, **kwargs: Any) -> list[Any]:
        return data

    def postprocess(self, data: list[Any]) -> list[dict[str, bool]]:
        return [{"ok": True} for _ in data]
