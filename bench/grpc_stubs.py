"""Python stubs compiled at run time from the protos TorchServe ships (inside the torchserve
wheel's model-server.jar), so the gRPC benchmark and tests call a server exactly as a
TorchServe user's client does, whichever server it is.

Never import serving.gateway.grpc.protos in the same process: both declare the same protobuf
packages, and protobuf refuses a second definition of a message.
"""

from __future__ import annotations

import functools
import importlib
import sys
import tempfile
import zipfile
from importlib import resources
from pathlib import Path
from types import ModuleType

import ts

PROTOS = ("inference.proto", "management.proto", "open_inference_grpc.proto")


def torchserve_jar() -> Path:
    return Path(ts.__file__).resolve().parent / "frontend" / "model-server.jar"


def compile_torchserve_stubs(out: Path) -> dict[str, ModuleType]:
    """Extract proto/inference.proto, management.proto and open_inference_grpc.proto from
    TorchServe's jar, compile them with grpcio-tools into `out`, import and return the modules
    by name (`inference_pb2`, `inference_pb2_grpc`, `management_pb2`, ...)."""
    import google.rpc.status_pb2
    import grpc_tools
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(torchserve_jar()) as jar:
        for name in PROTOS:
            (out / name).write_bytes(jar.read(f"proto/{name}"))
    googleapis = Path(google.rpc.status_pb2.__file__).resolve().parents[2]
    args = ["protoc", f"-I{out}", f"-I{resources.files(grpc_tools) / '_proto'}",
            f"-I{googleapis}", f"--python_out={out}", f"--grpc_python_out={out}",
            *(str(out / p) for p in PROTOS)]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on TorchServe's protos")
    sys.path.insert(0, str(out))
    try:
        return {name: importlib.import_module(name) for name in (
            "inference_pb2", "inference_pb2_grpc", "management_pb2", "management_pb2_grpc",
            "open_inference_grpc_pb2", "open_inference_grpc_pb2_grpc")}
    finally:
        sys.path.remove(str(out))


@functools.cache
def torchserve_stubs() -> dict[str, ModuleType]:
    """The stubs, compiled once per test process."""
    return compile_torchserve_stubs(Path(tempfile.mkdtemp(prefix="ts-grpc-stubs-")))
