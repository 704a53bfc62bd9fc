"""TorchServe's own gRPC stubs for the tests (compiled from its jar; see bench/grpc_stubs.py)."""

from bench.grpc_stubs import compile_torchserve_stubs, torchserve_stubs

__all__ = ["compile_torchserve_stubs", "torchserve_stubs"]
