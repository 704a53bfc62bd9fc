"""Test handler: a BaseHandler subclass that only turns JSON lists into a tensor; loading
(eager model file + state dict, or TorchScript) and inference are BaseHandler's own."""

import torch
from ts.torch_handler.base_handler import BaseHandler


class TensorHandler(BaseHandler):
    def preprocess(self, data):
        rows = [row.get("data") or row.get("body") for row in data]
        return torch.tensor(rows, dtype=torch.float32)
