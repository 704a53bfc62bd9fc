"""Test handler: a BaseHandler subclass for clients that send a JSON list as raw bytes (as a
TorchServe gRPC client does: gRPC inputs carry no content type, so the handler gets bytes)."""

import json

import torch
from ts.torch_handler.base_handler import BaseHandler


class JsonTensorHandler(BaseHandler):
    def preprocess(self, data):
        rows = []
        for row in data:
            value = row.get("data") or row.get("body")
            if isinstance(value, (bytes, bytearray)):
                value = json.loads(value)
            rows.append(value)
        return torch.tensor(rows, dtype=torch.float32)
