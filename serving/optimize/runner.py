"""The module a handler keeps as `self.model`: same call, optimised inside, fp32 outputs out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from serving.errors import BadRequest
from serving.optimize.batching import (
    DynamicDims,
    Sample,
    batch_size,
    bucket_for,
    call_shape,
    first_device,
    iter_tensors,
    map_tensors,
    merge_batches,
    prepare_inputs,
    slice_batch,
    split_batch,
    structure_key,
    tensor_leaves,
)
from serving.optimize.steps import Variant

_LOW_PRECISION = (torch.bfloat16, torch.float16)


class UnwarmedShape(BadRequest):
    """An input whose shape no warmed-up graph covers; compiling now would stall the worker."""


class OptimizedModel(nn.Module):
    """Calls `call` the way the handler called its model.

    Inputs go to the device (channels-last where the weights are), are padded up to the next
    batch bucket (or split into chunks above the largest) and run under inference mode;
    outputs are sliced back to the real rows, cast back to fp32 (`upcast`, when the pipeline
    lowered the precision) and returned on the device the inputs came from. Attributes it
    does not have are looked up on the original model, so handler code such as
    `self.model.config.id2label` keeps working.
    """

    def __init__(
        self,
        call: Callable[..., Any],
        *,
        device: torch.device,
        original: nn.Module | None = None,
        channels_last: bool = False,
        buckets: Sequence[int] | None = None,
        max_batch: int | None = None,
        upcast: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(call, nn.Module):
            self.inner = call  # registered, so .modules() and .to() reach it
        # Plain attributes, not submodules: `_call` is `inner` again (or no module at all,
        # for an AOTInductor package); `_original` only answers attribute lookups.
        self.__dict__["_call"] = call
        self.__dict__["_original"] = original
        self.target_device = device
        self.channels_last = channels_last
        self.buckets: tuple[int, ...] = tuple(sorted(buckets)) if buckets else ()
        self.max_batch = self.buckets[-1] if self.buckets else max_batch
        self.upcast = upcast
        self.dynamic_batch = False
        # Non-batch dims that vary between calls (sequence lengths), compiled dynamic: marked
        # on the inputs of warm-up, when each graph is compiled.
        self.dynamic_dims: DynamicDims = {}
        self.protected = False
        self.warming = False  # set by warm-up: its calls are the graphs there are
        # What warm-up compiled: graph key -> (smallest, largest) size of each dynamic dim.
        self._warmed: dict[tuple[Any, ...], tuple[list[int], list[int]]] = {}

    @classmethod
    def eager(cls, variant: Variant, device: torch.device, original: nn.Module) -> OptimizedModel:
        """The uncompiled `variant`, called the way the handler called its model."""
        return cls(
            variant.module,
            device=device,
            original=original,
            channels_last=variant.channels_last,
            upcast=variant.autocast is not None,
        )

    def protect(self) -> None:
        """After warm-up: a shape that would need a new compile is an error, not a stall."""
        self.protected = True
        self.warming = False

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = self.__dict__.get("_original")
            if original is None:
                raise
            return getattr(original, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        sample: Sample = (args, kwargs)
        out_device = first_device(sample)
        if any(t.is_inference() for t in iter_tensors(sample)):
            # Compiled graphs guard on whether an input is an inference tensor (its dispatch
            # keys); a handler may build inputs in or out of inference mode, warm-up did not.
            with torch.inference_mode(False), torch.no_grad():
                sample = map_tensors(lambda t: t.clone() if t.is_inference() else t, sample)
        n = batch_size(sample)
        if n is None or self.max_batch is None or n <= self.max_batch:
            out, rows = self._run_padded(sample, n)
            return self._finish(out, out_device, rows)
        chunks = split_batch(sample, n, self.max_batch)
        outs = []
        for chunk, size in chunks:
            out, rows = self._run_padded(chunk, size)
            outs.append(self._own(slice_batch(out, *rows) if rows else out))
        return self._finish(merge_batches(outs, [size for _, size in chunks]), out_device, None)

    def _own(self, out: Any) -> Any:
        # With CUDA graphs (mode reduce-overhead / max-autotune) the next replay overwrites
        # the previous outputs, so a chunk's outputs are copied before the next chunk runs.
        if self.target_device.type == "cpu":
            return out
        return map_tensors(torch.clone, out)

    def _run_padded(self, sample: Sample, n: int | None) -> tuple[Any, tuple[int, int] | None]:
        """The outputs for `sample` padded to its bucket, and (padded, real) rows to slice."""
        target = bucket_for(n, self.buckets) if n is not None and self.buckets else None
        rows = (n, target) if n is not None and target is not None and target != n else None
        # Outside inference mode: the padded copies must be ordinary tensors like the rest.
        with torch.inference_mode(False), torch.no_grad():
            sample = prepare_inputs(sample, self.target_device, self.channels_last, rows)
        return self._run(sample), (rows[1], rows[0]) if rows else None

    def _run(self, sample: Sample) -> Any:
        args, kwargs = sample
        with torch.inference_mode():
            if not self.protected:
                if self.dynamic_batch:
                    self._mark_batch_dynamic(sample)
                if self.dynamic_dims:
                    self._mark_dims_dynamic(sample)
                out = self._call(*args, **kwargs)
                self._record_warmed(sample)
                return out
            if self._was_warmed(sample):
                # A call shaped like one warm-up compiled: Dynamo only tells the graphs
                # apart instead of evaluating every guard (half a millisecond a call on
                # a small transformer). Anything else takes the guarded path below.
                with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                    return self._call(*args, **kwargs)
            try:
                with torch.compiler.set_stance("fail_on_recompile"):
                    return self._call(*args, **kwargs)
            except RuntimeError as exc:
                # Dynamo reports this stance's refusal as a plain RuntimeError.
                if "fail_on_recompile" not in str(exc):
                    raise
                raise UnwarmedShape(
                    f"input shapes {_shapes(sample)} were not warmed up for this model; "
                    "add them to optimization.warmup or compile.batch_sizes (a dim that "
                    "varies across warm-up inputs is compiled dynamic, as far as the model "
                    "allows, from a size of 2)"
                ) from exc

    def _graph_key(self, sample: Sample) -> tuple[tuple[Any, ...], list[int]]:
        """The warmed graph a call needs (`call_shape`; strides and device are fixed by
        `prepare_inputs`) and the sizes of its dynamic dims. A dynamic batch has two
        graphs: one row, and 2..max_batch rows."""
        shape = call_shape(sample, self.dynamic_dims)
        n = shape.batch
        rows: Any = "2+" if self.dynamic_batch and n is not None and n >= 2 else n
        return (rows, shape.signature), shape.sizes

    def _record_warmed(self, sample: Sample) -> None:
        if not self.warming:
            return
        key, sizes = self._graph_key(sample)
        low, high = self._warmed.setdefault(key, (list(sizes), list(sizes)))
        for j, size in enumerate(sizes):
            low[j], high[j] = min(low[j], size), max(high[j], size)

    def _was_warmed(self, sample: Sample) -> bool:
        """Whether warm-up compiled this call's graph, with its dynamic dims inside the
        sizes warm-up ran (where the model's own guards are known to hold)."""
        if not self._warmed:
            return False
        key, sizes = self._graph_key(sample)
        seen = self._warmed.get(key)
        if seen is None:
            return False
        low, high = seen
        return all(lo <= size <= hi for lo, size, hi in zip(low, sizes, high, strict=True))

    def _mark_batch_dynamic(self, sample: Sample) -> None:
        # Marks live on tensor objects, so they go on after inputs were moved and converted.
        n = batch_size(sample)
        if n is None or n < 2:
            return
        for t in tensor_leaves(sample):
            if t.dim() >= 1 and t.shape[0] == n:
                torch._dynamo.mark_dynamic(t, 0, min=2, max=self.max_batch)

    def _mark_dims_dynamic(self, sample: Sample) -> None:
        # "maybe": the model's own code may bound a dim (position embeddings: length <= 512);
        # its guards then say how far the graph reaches, and a longer input is unwarmed.
        leaves, spec = pytree.tree_flatten(sample)
        for i, dims in self.dynamic_dims.get(structure_key(leaves, spec), {}).items():
            for d in dims:
                torch._dynamo.maybe_mark_dynamic(leaves[i], d)

    def _finish(
        self, out: Any, device: torch.device | None, rows: tuple[int, int] | None
    ) -> Any:
        """Padded rows dropped, precision and device restored, in one walk over the outputs."""
        upcast = self.upcast
        padded, n = rows if rows else (-1, -1)

        def restore(t: torch.Tensor) -> torch.Tensor:
            if padded > 0 and t.dim() >= 1 and t.shape[0] == padded:
                t = t[:n]
            if upcast and t.dtype in _LOW_PRECISION:
                t = t.float()
            return t.to(device) if device is not None and t.device != device else t

        return map_tensors(restore, out)


def _shapes(sample: Sample) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in tensor_leaves(sample)]
