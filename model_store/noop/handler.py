"""TorchServe handler: a 4x4 linear layer that answers {"ok": true}, to measure serving overhead."""

from __future__ import annotations

from typing import Any

import torch
from ts.context import Context
from ts.handler_utils.timer import timed
from ts.torch_handler.base_handler import BaseHandler


class NoopHandler(BaseHandler):
    """Ignores the request bodies; every request of a batch gets {"ok": true}."""

    # Nothing here depends on the previous batch having finished, so the server may queue
    # the next batches in the worker's socket while this one runs (TorchServe ignores this).
    can_overlap = True

    def initialize(self, context: Context) -> None:
        # BaseHandler.initialize insists on a weights file; this model is built in place.
        self.context = context
        self.manifest = context.manifest
        self.device = torch.device("cpu")
        self.model = torch.nn.Linear(4, 4).to(self.device).eval()
        self.constant = torch.ones(1, 4, device=self.device)
        self.initialized = True

    @timed
    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        # One row per request, so the layer does (a little) batch-sized work.
        return self.constant.expand(len(data), -1)

    @timed
    def postprocess(self, data: torch.Tensor) -> list[dict[str, bool]]:
        return [{"ok": True} for _ in range(data.shape[0])]
