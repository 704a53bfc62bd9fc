"""Test handler: a plain BaseHandler subclass; the body is a 3x8x8 nested JSON list."""

import torch
from ts.torch_handler.base_handler import BaseHandler


class ConvHandler(BaseHandler):
    def preprocess(self, data):
        return torch.tensor([row.get("data") or row.get("body") for row in data],
                            dtype=torch.float32)

    def postprocess(self, data):
        return [{"logits": row, "model": type(self.model).__name__} for row in data.tolist()]
