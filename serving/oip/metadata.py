"""A model's OIP metadata, declared under `oip:` in the archive's model-config.yaml:

    oip:
      inputs:  [{name: text, datatype: BYTES, shape: [1]}]
      outputs: [{name: embedding, datatype: FP32, shape: [384]}]   # -1: a variable dim
      handler_input: body      # request (default) | body; see docs/protocols/oip.md
      platform: pytorch        # what model metadata reports

It is validated when the model is registered (a mistake is a 400 naming the key), and every
request is checked against it before it reaches a worker. Without the block a model still
serves OIP: metadata lists no tensors and inputs are passed through unchecked.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from serving.errors import ArchiveError
from serving.oip.tensors import DATATYPES

CONFIG_KEY = "oip"
DEFAULT_PLATFORM = "pytorch_torchserve"
# What a tensor name may be: it travels in JSON, gRPC and (for body mode) handler rows.
_NAME = re.compile(r"[A-Za-z0-9_.:\-/]{1,128}")


class TensorMetadata(BaseModel):
    """One declared input or output tensor."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str
    datatype: str
    shape: list[int]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("must be 1-128 characters of letters, digits and _ . : - /")
        return value

    @field_validator("datatype")
    @classmethod
    def _datatype(cls, value: str) -> str:
        if value not in DATATYPES:
            raise ValueError(f"unknown datatype {value!r}; expected one of "
                             f"{', '.join(sorted(DATATYPES))}")
        return value

    @field_validator("shape")
    @classmethod
    def _shape(cls, value: list[int]) -> list[int]:
        if any(d < -1 for d in value):
            raise ValueError("dims must be whole numbers >= 0, or -1 for a variable dim")
        return value

    def matches(self, shape: list[int]) -> bool:
        """Whether a request's concrete shape fits this declaration (-1 matches any dim)."""
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


class ModelMetadata(BaseModel):
    """The `oip:` block of a model config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: list[TensorMetadata] = Field(default_factory=list)
    outputs: list[TensorMetadata] = Field(default_factory=list)
    handler_input: Literal["request", "body"] = "request"
    platform: str = DEFAULT_PLATFORM

    def model_post_init(self, context: Any) -> None:
        for kind, tensors in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [t.name for t in tensors]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{kind}: duplicate name(s) {', '.join(duplicates)}")
        if self.handler_input == "body" and len(self.inputs) > 1:
            raise ValueError("handler_input: body gives the handler one input as the request "
                             f"body; {len(self.inputs)} inputs are declared")

    @property
    def declared(self) -> bool:
        """Whether inputs are declared (requests are checked against them then)."""
        return bool(self.inputs)

    def input(self, name: str) -> TensorMetadata | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorMetadata | None:
        return next((t for t in self.outputs if t.name == name), None)


UNDECLARED = ModelMetadata()


def from_model_yaml(model_yaml: dict[str, Any],
                    source: str = "model-config.yaml") -> ModelMetadata:
    """The validated `oip:` block; `UNDECLARED` when there is none."""
    block = model_yaml.get(CONFIG_KEY)
    if block is None:
        return UNDECLARED
    if not isinstance(block, dict):
        raise ArchiveError(f"{source}: {CONFIG_KEY}: expected a mapping with inputs/outputs, "
                           f"got {type(block).__name__}")
    try:
        return ModelMetadata.model_validate(block)
    except ValidationError as e:
        problems = "; ".join(
            f"{CONFIG_KEY}.{'.'.join(str(p) for p in err['loc'])}: "
            f"{err['msg'].removeprefix('Value error, ')}"
            + (f" (got {err['input']!r:.60})" if err["type"] != "value_error" and err["loc"]
               else "")
            for err in e.errors())
        raise ArchiveError(f"{source}: {problems}") from None


def model_metadata_dict(name: str, versions: list[str],
                        metadata: ModelMetadata) -> dict[str, Any]:
    """The model metadata answer (REST body; gRPC ModelMetadataResponse's fields)."""
    return {"name": name, "versions": versions, "platform": metadata.platform,
            "inputs": [t.to_dict() for t in metadata.inputs],
            "outputs": [t.to_dict() for t in metadata.outputs]}
