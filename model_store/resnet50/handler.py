"""TorchServe handler for ResNet-50: a JPEG/PNG image or a raw float32 tensor in, top-5 out."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image
from ts.context import Context
from ts.handler_utils.timer import timed
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

SIDE = 224
RESIZE = 256
TENSOR_BYTES = 3 * SIDE * SIDE * 4
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
TOP_K = 5


class ResNet50Handler(BaseHandler):
    """BaseHandler loads model.py + the state dict; this class adds the image I/O."""

    def initialize(self, context: Context) -> None:
        super().initialize(context)
        # Same switch as TorchServe's vision handlers: the frontend may lift Pillow's
        # decompression-bomb limit for trusted clients.
        if not context.system_properties.get("limit_max_image_pixels", True):
            Image.MAX_IMAGE_PIXELS = None

    @timed
    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        # Rows that came over the Open Inference Protocol carry "oip" (the request header);
        # they are answered with every class's probability, the declared output tensor.
        self._oip_rows = ["oip" in row for row in data]
        return torch.stack([self._to_tensor(row) for row in data]).to(self.device)

    @timed
    def postprocess(self, data: torch.Tensor) -> list[Any]:
        probabilities = torch.softmax(data.float(), dim=1)
        top = probabilities.topk(TOP_K, dim=1)
        oip_rows = getattr(self, "_oip_rows", [])
        return [
            probabilities[row].cpu()
            if row < len(oip_rows) and oip_rows[row]
            else {self._label(i): p for i, p in zip(indices, probs, strict=True)}
            for row, (indices, probs) in enumerate(
                zip(top.indices.tolist(), top.values.tolist(), strict=True)
            )
        ]

    def _label(self, index: int) -> str:
        if self.mapping:
            return str(self.mapping.get(str(index), index))
        return str(index)

    def _to_tensor(self, row: dict[str, Any]) -> torch.Tensor:
        body = row.get("data") if row.get("data") is not None else row.get("body")
        if not isinstance(body, bytes | bytearray):
            raise PredictionException(
                "send the image or tensor as the raw request body (application/octet-stream, "
                f"image/jpeg or image/png), not as {type(body).__name__}",
                400,
            )
        raw = bytes(body)
        if raw.startswith(IMAGE_MAGIC):
            try:
                return _image_tensor(raw)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                # A float32 tensor can start with the same bytes as a JPEG; keep it in play.
                if len(raw) != TENSOR_BYTES:
                    raise PredictionException(f"cannot decode the image: {exc}", 400) from exc
        if len(raw) == TENSOR_BYTES:
            values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
            return torch.from_numpy(values).view(3, SIDE, SIDE)
        raise PredictionException(
            f"expected a JPEG or PNG image, or {TENSOR_BYTES} bytes of little-endian float32 "
            f"(3x{SIDE}x{SIDE}, optionally 1x3x{SIDE}x{SIDE}); got {len(raw)} bytes",
            400,
        )


def _image_tensor(raw: bytes) -> torch.Tensor:
    """Resize the shorter side to 256 (bilinear), centre-crop 224, scale and normalise."""
    with Image.open(io.BytesIO(raw), formats=("JPEG", "PNG")) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    # Integer arithmetic, so the long side rounds down exactly as torchvision's Resize does.
    if width <= height:
        size = (RESIZE, RESIZE * height // width)
    else:
        size = (RESIZE * width // height, RESIZE)
    image = image.resize(size, Image.Resampling.BILINEAR)
    left = round((image.width - SIDE) / 2)
    top = round((image.height - SIDE) / 2)
    image = image.crop((left, top, left + SIDE, top + SIDE))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (pixels - MEAN) / STD
