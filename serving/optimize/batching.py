"""The batch dimension of a model's inputs and outputs: buckets, padding, slicing, chunking."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree
from torch import nn

# One recorded call of a model's forward: positional and keyword arguments. Inputs and outputs
# are pytrees (tensors, tuples, lists, dicts, Hugging Face ModelOutputs); only their tensor
# leaves are touched, and dim 0 is the batch dimension.
Sample = tuple[tuple[Any, ...], dict[str, Any]]


# Every request goes through these walks several times: plain tuples, lists and dicts (what
# handlers pass) are walked directly, which costs a fraction of a pytree round trip; other
# containers (ModelOutput, namedtuples, OrderedDict) go through pytree, which keeps their type.
_SCALARS = (int, float, bool, str, bytes, type(None))


def iter_tensors(tree: Any) -> Iterator[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        yield tree
    elif type(tree) is tuple or type(tree) is list:
        for item in tree:
            yield from iter_tensors(item)
    elif type(tree) is dict:
        for item in tree.values():
            yield from iter_tensors(item)
    elif not isinstance(tree, _SCALARS):
        yield from (leaf for leaf in pytree.tree_leaves(tree) if isinstance(leaf, torch.Tensor))


def tensor_leaves(tree: Any) -> list[torch.Tensor]:
    return list(iter_tensors(tree))


def map_tensors(fn: Callable[[torch.Tensor], Any], tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if type(tree) is tuple:
        return tuple(map_tensors(fn, item) for item in tree)
    if type(tree) is list:
        return [map_tensors(fn, item) for item in tree]
    if type(tree) is dict:
        return {key: map_tensors(fn, item) for key, item in tree.items()}
    if isinstance(tree, _SCALARS):
        return tree
    return pytree.tree_map_only(torch.Tensor, fn, tree)


def batch_size(tree: Any) -> int | None:
    """The batch size of a call: dim 0 of its first tensor with at least one dimension."""
    for leaf in iter_tensors(tree):
        if leaf.dim() >= 1:
            return int(leaf.shape[0])
    return None


def bucket_for(n: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket that holds `n` rows, or None when `n` is above the largest."""
    for bucket in buckets:
        if bucket >= n:
            return bucket
    return None


def _is_batched(t: torch.Tensor, n: int) -> bool:
    return t.dim() >= 1 and t.shape[0] == n


@functools.lru_cache(maxsize=256)
def _repeat_index(n: int, target: int) -> torch.Tensor:
    """Row indices 0..n-1 repeated up to `target` (cached: read-only, reused per bucket)."""
    return torch.arange(target) % n


def resize_batch(sample: Sample, n: int, target: int) -> Sample:
    """The call with `target` rows: batched tensors truncated, or padded by repeating rows.

    Repeating real rows (instead of zeros) keeps padded rows valid inputs: an all-zero
    attention mask or image can produce NaNs or take slow paths.
    """
    if target == n:
        return sample
    index = _repeat_index(n, target)

    def resize(t: torch.Tensor) -> torch.Tensor:
        return t.index_select(0, index.to(t.device)) if _is_batched(t, n) else t

    resized: Sample = map_tensors(resize, sample)
    return resized


def slice_batch(output: Any, padded: int, n: int) -> Any:
    """Drop the padded rows of every batched output tensor."""
    if padded == n:
        return output
    return map_tensors(lambda t: t[:n] if _is_batched(t, padded) else t, output)


def split_batch(sample: Sample, n: int, size: int) -> list[tuple[Sample, int]]:
    """Chunks of at most `size` rows, each with its row count."""
    chunks = []
    for start in range(0, n, size):
        rows = min(size, n - start)

        def cut(t: torch.Tensor, start: int = start, rows: int = rows) -> torch.Tensor:
            return t[start : start + rows] if _is_batched(t, n) else t

        chunks.append((map_tensors(cut, sample), rows))
    return chunks


def merge_batches(outputs: list[Any], rows: list[int]) -> Any:
    """The outputs of chunks as one output: batched leaves concatenated, others from chunk 0."""
    flat = [pytree.tree_flatten(out) for out in outputs]
    leaves0, spec = flat[0]
    merged = []
    for i, leaf in enumerate(leaves0):
        parts = [leaves[i] for leaves, _ in flat]
        batched = zip(parts, rows, strict=True)
        if all(isinstance(p, torch.Tensor) and _is_batched(p, r) for p, r in batched):
            merged.append(torch.cat(parts, dim=0))
        else:
            merged.append(leaf)
    return pytree.tree_unflatten(merged, spec)


# Per call structure (`structure_key`): tensor leaf position -> dims compiled dynamic.
DynamicDims = dict[tuple[Any, ...], dict[int, tuple[int, ...]]]


def structure_key(leaves: list[Any], spec: Any) -> tuple[Any, ...]:
    """A call's structure without its sizes: containers, and each leaf's rank and dtype."""
    parts: list[Any] = [spec]  # a TreeSpec hashes and compares by structure
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            parts.append((leaf.dim(), leaf.dtype))
        else:
            parts.append(repr(leaf))
    return tuple(parts)


def varying_dims(samples: Sequence[Sample]) -> DynamicDims:
    """The non-batch dims whose size differs between calls of one structure.

    Text models are the case: each request's token count is its own, so a graph compiled
    for one sequence length would not serve the next. These dims get compiled dynamic
    (batch sizes stay bucketed); dims that never vary stay static and fully specialised.
    """
    seen: dict[tuple[Any, ...], dict[int, list[set[int]]]] = {}
    for sample in samples:
        n = batch_size(sample)
        leaves, spec = pytree.tree_flatten(sample)
        sizes = seen.setdefault(structure_key(leaves, spec), {})
        for i, leaf in enumerate(leaves):
            if isinstance(leaf, torch.Tensor):
                per_dim = sizes.setdefault(i, [set() for _ in range(leaf.dim())])
                for d, size in enumerate(leaf.shape):
                    per_dim[d].add(int(size))
                if n is not None and _is_batched(leaf, n) and per_dim:
                    per_dim[0].clear()  # the batch dim: buckets or a dynamic batch cover it
    out: DynamicDims = {}
    for key, sizes in seen.items():
        dims = {i: tuple(d for d, s in enumerate(per_dim) if len(s) > 1)
                for i, per_dim in sizes.items()}
        dims = {i: d for i, d in dims.items() if d}
        if dims:
            out[key] = dims
    return out


class CallShape(NamedTuple):
    """What selects a compiled graph for a call: its batch size, its `signature` (structure,
    shapes without the batch and dynamic dims, dtypes, requires_grad) and the `sizes` of its
    dynamic dims, in a fixed order."""

    batch: int | None
    signature: tuple[Any, ...]
    sizes: list[int]


def call_shape(sample: Sample, dynamic: DynamicDims | None = None) -> CallShape:
    """The call's `CallShape`, in one walk: the runner computes it on every request, and
    warm-up groups its inputs by it, so both agree on which graph a call needs."""
    leaves, spec = pytree.tree_flatten(sample)
    n = next((int(t.shape[0]) for t in leaves
              if isinstance(t, torch.Tensor) and t.dim() >= 1), None)
    free = dynamic.get(structure_key(leaves, spec), {}) if dynamic else {}
    parts: list[Any] = [spec]
    sizes: list[int] = []
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, torch.Tensor):
            # Python values are guarded by value and type (True is not 1 there).
            parts.append((type(leaf), repr(leaf)))
            continue
        shape: list[int | None] = list(leaf.shape)
        if n is not None and _is_batched(leaf, n):
            shape[0] = None
        for d in free.get(i, ()):
            sizes.append(int(leaf.shape[d]))
            shape[d] = None
        parts.append((tuple(shape), leaf.dtype, leaf.requires_grad))
    return CallShape(n, tuple(parts), sizes)


def shape_signature(sample: Sample, dynamic: DynamicDims | None = None) -> tuple[Any, ...]:
    """What a compiled graph specialises on apart from the batch size (and `dynamic` dims)."""
    return call_shape(sample, dynamic).signature


def first_device(tree: Any) -> torch.device | None:
    for leaf in iter_tensors(tree):
        return leaf.device
    return None


def prepare_inputs(
    sample: Sample,
    device: torch.device,
    channels_last: bool,
    rows: tuple[int, int] | None = None,
) -> Sample:
    """Inputs on the model's device, dense, images in the memory format of the weights, and
    (`rows`: (n, target)) resized to `target` rows, in one walk over the inputs.

    Always the same strides for the same shapes: compiled graphs guard on them, so the
    layout is fixed after padding (a padded copy would be NCHW again).
    """
    index = _repeat_index(*rows) if rows and rows[0] != rows[1] else None

    def prepare(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device, non_blocking=True)
        if index is not None and rows is not None and _is_batched(t, rows[0]):
            # The cached row index lives on the CPU; a handler may hand over device tensors.
            t = t.index_select(0, index.to(t.device))
        if channels_last and t.dim() == 4 and t.is_floating_point():
            return t.contiguous(memory_format=torch.channels_last)
        return t.contiguous()

    prepared: Sample = map_tensors(prepare, sample)
    return prepared


def detach_sample(sample: Sample) -> Sample:
    """A private copy on the CPU: a handler may reuse or mutate its input buffers afterwards."""
    copied: Sample = map_tensors(lambda t: t.detach().to("cpu", copy=True), sample)
    return copied


def export_batched(
    module: nn.Module,
    sample: Sample,
    max_batch: int | None,
    dynamic: DynamicDims | None = None,
) -> torch.export.ExportedProgram:
    """`torch.export` with dim 0 of every batched input symbolic, bounded by `max_batch`,
    and the `dynamic` dims (sequence lengths) symbolic as far as the model allows.

    The example is widened to at least two rows: a size-1 example would be specialised.
    """
    n = batch_size(sample)
    single = n is None or max_batch == 1
    rows = 1
    if n is not None and max_batch != 1:
        rows = max(2, n if max_batch is None else min(n, max_batch))
    example = resize_batch(sample, n, rows) if n is not None else sample
    leaves, spec = pytree.tree_flatten(example)
    free = (dynamic or {}).get(structure_key(leaves, spec), {})
    dims_of: dict[int, dict[int, Any]] = {}
    if not single:
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        for i, leaf in enumerate(leaves):
            if isinstance(leaf, torch.Tensor) and leaf.dim() >= 1 and leaf.shape[0] == rows:
                dims_of.setdefault(i, {})[0] = batch
    for i, ds in free.items():
        for d in ds:
            # AUTO: export finds the model's own bound (position embeddings) and which
            # inputs share the dim (ids and mask), instead of failing on a guessed range.
            dims_of.setdefault(i, {})[d] = torch.export.Dim.AUTO
    args, kwargs = example
    if not dims_of:
        return torch.export.export(module, args, kwargs)
    shapes = torch.export.ShapesCollection()  # type: ignore[no-untyped-call]
    for i, per_dim in dims_of.items():
        shapes[leaves[i]] = per_dim
    return torch.export.export(module, args, kwargs, dynamic_shapes=shapes)  # type: ignore[arg-type]
