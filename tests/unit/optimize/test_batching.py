"""Padding to buckets, slicing back and chunking, on tensors, tuples, dicts and ModelOutputs."""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from serving.optimize.batching import (
    batch_size,
    bucket_for,
    merge_batches,
    resize_batch,
    shape_signature,
    slice_batch,
    split_batch,
    varying_dims,
)


def test_bucket_is_the_smallest_that_fits() -> None:
    assert bucket_for(1, [1, 4, 8]) == 1
    assert bucket_for(3, [1, 4, 8]) == 4
    assert bucket_for(9, [1, 4, 8]) is None


def test_padding_repeats_real_rows_and_leaves_unbatched_inputs() -> None:
    x = torch.arange(6.0).reshape(3, 2)
    ids = torch.tensor([[1, 2], [3, 4], [5, 6]])
    table = torch.ones(5)
    args, kwargs = resize_batch(((x, table), {"ids": ids, "flag": True}), 3, 5)
    assert args[0].shape == (5, 2) and torch.equal(args[0][3:], x[:2])
    assert args[1] is table
    assert kwargs["ids"].shape == (5, 2) and kwargs["flag"] is True


def test_slice_drops_padded_rows_in_a_model_output() -> None:
    out = BaseModelOutputWithPooling(
        last_hidden_state=torch.zeros(4, 3, 2), pooler_output=torch.zeros(4, 2)
    )
    sliced = slice_batch(out, padded=4, n=3)
    assert isinstance(sliced, BaseModelOutputWithPooling)
    assert sliced.last_hidden_state.shape == (3, 3, 2) and sliced[1].shape == (3, 2)


def test_split_and_merge_round_trip_tuple_and_dict() -> None:
    x = torch.randn(7, 4)
    chunks = split_batch(((x,), {}), 7, 3)
    assert [rows for _, rows in chunks] == [3, 3, 1]
    outs = [({"y": c[0][0] * 2, "const": torch.ones(2)}, c[0][0].sum(1)) for c, _ in chunks]
    merged = merge_batches(outs, [3, 3, 1])
    assert torch.allclose(merged[0]["y"], x * 2)
    assert merged[0]["const"].shape == (2,)
    assert torch.allclose(merged[1], x.sum(1))


def test_shape_signature_ignores_batch_size_only() -> None:
    a = ((torch.zeros(2, 3, 8, 8),), {})
    b = ((torch.zeros(5, 3, 8, 8),), {})
    c = ((torch.zeros(2, 3, 9, 9),), {})
    assert shape_signature(a) == shape_signature(b) != shape_signature(c)
    assert batch_size(a) == 2 and batch_size(((), {"flag": True})) is None


def test_varying_dims_are_the_non_batch_dims_that_differ() -> None:
    def call(batch: int, length: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return ((), {"ids": torch.zeros(batch, length, dtype=torch.long),
                     "pixels": torch.zeros(batch, 3, 4)})

    samples = [call(2, 5), call(4, 9), call(1, 5)]
    dims = varying_dims(samples)
    assert list(dims.values()) == [{0: (1,)}]  # ids dim 1; neither batch dim, nor pixels
    # Calls that differ only there share a graph; any other dim still tells them apart.
    assert shape_signature(call(2, 5), dims) == shape_signature(call(3, 30), dims)
    assert shape_signature(call(2, 5)) != shape_signature(call(2, 30))
    assert varying_dims([call(2, 5), call(4, 5)]) == {}
