"""TorchServe handler for all-MiniLM-L6-v2: text in, a unit-length 384-float embedding out."""

from __future__ import annotations

import os
from typing import Any

import torch
from ts.context import Context
from ts.handler_utils.timer import timed
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

# sentence-transformers' max_seq_length for this model; longer texts are truncated.
MAX_TOKENS = 256


class MiniLMHandler(BaseHandler):
    """Tokenizer and encoder come from the archive itself; nothing is fetched at load time."""

    def initialize(self, context: Context) -> None:
        # Set before transformers is imported: huggingface_hub reads it once, at import.
        os.environ["HF_HUB_OFFLINE"] = "1"
        from transformers import AutoModel, AutoTokenizer

        self.context = context
        self.manifest = context.manifest
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.device = torch.device("cpu")
        model_dir = properties["model_dir"]
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        # The bare encoder, so an optimisation step can swap self.model for a faster module.
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True)
        self.model.to(self.device).eval()
        self.initialized = True

    @timed
    def preprocess(self, data: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [_text(row) for row in data]
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        return {name: tensor.to(self.device) for name, tensor in batch.items()}

    @timed
    def inference(self, data: dict[str, torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.inference_mode():
            # [0] is the last hidden state both for transformers' output and for a plain tuple.
            tokens = self.model(**data)[0]
            # Mean over real tokens only; padding must not pull short texts toward each other.
            mask = data["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled.float(), p=2, dim=1)

    @timed
    def postprocess(self, data: torch.Tensor) -> list[list[float]]:
        return data.cpu().tolist()


def _text(row: dict[str, Any]) -> str:
    """The text of one request: a text/plain body, UTF-8 bytes, or {"text"|"inputs": str}."""
    body = row.get("data") if row.get("data") is not None else row.get("body")
    if isinstance(body, bytes | bytearray):
        try:
            return bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PredictionException(f"the body is not UTF-8 text: {exc}", 400) from exc
    if isinstance(body, dict):
        body = body.get("text", body.get("inputs"))
    if isinstance(body, str):
        return body
    raise PredictionException(
        'expected a text body or JSON {"text": "..."} (or {"inputs": "..."}) with one string',
        400,
    )
