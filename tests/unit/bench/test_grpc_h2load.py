"""The h2load gRPC client's request file and summary: what h2load sends must be one gRPC
message that TorchServe's own stubs decode back to the same request."""

from __future__ import annotations

import struct

from bench.grpc_h2load import _quantile, framed_request, report
from bench.grpc_stubs import torchserve_stubs


def test_framed_request_is_one_uncompressed_grpc_message() -> None:
    wire = framed_request("noop", b'{"x": 1}')
    assert wire[0] == 0  # not compressed
    (length,) = struct.unpack(">I", wire[1:5])
    assert length == len(wire) - 5
    message = torchserve_stubs()["inference_pb2"].PredictionsRequest.FromString(wire[5:])
    assert message.model_name == "noop"
    assert dict(message.input) == {"data": b'{"x": 1}'}


def test_quantile_picks_from_sorted_values() -> None:
    values = [float(v) for v in range(1, 101)]
    assert _quantile(values, 0.5) == 51.0
    assert _quantile(values, 0.99) == 100.0
    assert _quantile([], 0.5) != _quantile([], 0.5)  # NaN for no data


def test_report_pairs_reps_of_the_same_index() -> None:
    import argparse

    rows = [{"server": "serving", "rep": 0, "concurrency": 16, "rps": 300.0, "p50_ms": 1.0,
             "p99_ms": 2.0, "client_cpu": 0.1},
            {"server": "torchserve", "rep": 0, "concurrency": 16, "rps": 100.0, "p50_ms": 3.0,
             "p99_ms": 8.0, "client_cpu": 0.1},
            {"server": "serving", "rep": 1, "concurrency": 16, "rps": 200.0, "p50_ms": 1.0,
             "p99_ms": 2.0, "client_cpu": 0.1},
            {"server": "torchserve", "rep": 1, "concurrency": 16, "rps": 100.0, "p50_ms": 3.0,
             "p99_ms": 4.0, "client_cpu": 0.1}]
    text = report(rows, {"cpu": "x"}, argparse.Namespace(reps=2, seconds=10.0, warm=3.0))
    assert "| 16 | 3.00, 2.00 | 2.50x | 0.38 |" in text
