"""Tiny models for the optimisation tests: a conv classifier, an encoder, tuple/dict outputs."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from serving.optimize.batching import Sample


class ConvClassifier(nn.Module):
    """Conv + batch norm + ReLU, pooled into class logits: what folding and INT8 target."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, classes)
        self.labels = [f"class{i}" for i in range(classes)]
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


class Encoder(nn.Module):
    """Two Linear layers returning L2-normalised embeddings (the guard picks cosine)."""

    def __init__(self, dim: int = 16, out: int = 8) -> None:
        super().__init__()
        self.l1 = nn.Linear(dim, 32)
        self.l2 = nn.Linear(32, out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.l2(F.gelu(self.l1(x)))
        if mask is not None:
            h = h * mask.unsqueeze(-1)
        return F.normalize(h, dim=-1)


def outlier_encoder() -> Encoder:
    """An encoder INT8 cannot represent: each weight row holds one huge value and small ones.

    Per-row INT8 scales follow the outlier (1000/127), so every small weight rounds to zero;
    inputs never use the outlier's column, so the quantized model outputs only its biases.
    """
    model = Encoder()
    with torch.no_grad():
        for layer in (model.l1, model.l2):
            layer.weight.uniform_(-0.05, 0.05)
            layer.weight[:, 0] = 1000.0
            layer.bias.zero_()
    return model


def outlier_inputs(count: int = 4, batch: int = 2) -> list[Sample]:
    generator = torch.Generator().manual_seed(1)
    samples: list[Sample] = []
    for _ in range(count):
        x = torch.randn(batch, 16, generator=generator)
        x[:, 0] = 0.0
        samples.append(((x,), {}))
    return samples


class MultiOutput(nn.Module):
    """Returns a tuple or a dict of tensors, one of them not batched."""

    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        self.as_dict = as_dict
        self.proj = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> Any:
        y = self.proj(x)
        if self.as_dict:
            return {"logits": y, "probs": y.softmax(-1), "scale": torch.ones(3)}
        return y, y.sum(-1)


def image_samples(count: int = 3, batch: int = 2, size: int = 16) -> list[Sample]:
    generator = torch.Generator().manual_seed(0)
    return [((torch.randn(batch, 3, size, size, generator=generator),), {}) for _ in range(count)]


def vector_samples(count: int = 3, batch: int = 2, dim: int = 16) -> list[Sample]:
    generator = torch.Generator().manual_seed(0)
    return [((torch.randn(batch, dim, generator=generator),), {}) for _ in range(count)]


def seeded(factory: Any, *args: Any) -> Any:
    torch.manual_seed(0)
    model = factory(*args)
    return model.eval()


class TokenEncoder(nn.Module):
    """A text encoder in miniature: token ids and an attention mask of any length in,
    one mean-pooled, normalised embedding per row out."""

    MAX_LENGTH = 32

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.randn(self.MAX_LENGTH, dim) * 0.1)
        self.proj = nn.Linear(dim, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Learned positions, as in BERT: the model itself bounds the length.
        torch._check(input_ids.shape[1] <= self.MAX_LENGTH)
        h = self.embed(input_ids) + self.position[: input_ids.shape[1]]
        h = F.gelu(self.proj(h))
        mask = attention_mask.unsqueeze(-1).to(h.dtype)
        return F.normalize((h * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)


def token_inputs(batch: int, length: int, seed: int = 0) -> Sample:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2 :] = 0  # a shorter text padded to the batch's longest
    return ((), {"input_ids": ids, "attention_mask": mask})


def token_samples() -> list[Sample]:
    """Warm-up texts of different lengths, as a tokenizer padding to the longest gives them."""
    return [token_inputs(2, length, seed) for seed, length in enumerate((3, 5, 9))]


class ResidualClassifier(nn.Module):
    """A ResNet block in miniature: one ReLU module called after each conv and after the
    residual add, the pattern that splits INT8 quantization partitions."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.stem(x))
        y = self.relu(self.bn(self.conv(y)) + y)
        return self.fc(y.mean(dim=(2, 3)))
