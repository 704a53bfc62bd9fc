"""Regenerate the *_pb2 modules beside the .proto files (`python -m` this module).

The generated modules are committed, so installing the server needs no protoc; rerun this after
editing a .proto (it needs grpcio-tools and googleapis-common-protos for google/rpc/status.proto).
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
HERE = Path(__file__).resolve().parent
PROTOS = ("inference.proto", "management.proto", "open_inference.proto")


def include_dirs() -> list[str]:
    """Where protoc finds google/protobuf/*.proto and google/rpc/status.proto."""
    import google.rpc.status_pb2 as status
    import grpc_tools

    dirs = [str(resources.files(grpc_tools) / "_proto")]
    dirs.append(str(Path(status.__file__).resolve().parents[2]))
    return dirs


def main() -> int:
    from grpc_tools import protoc

    relative = [str((HERE / p).relative_to(ROOT)) for p in PROTOS]
    args = ["protoc", f"-I{ROOT}", *(f"-I{d}" for d in include_dirs()),
            f"--python_out={ROOT}", f"--pyi_out={ROOT}", f"--grpc_python_out={ROOT}", *relative]
    return int(protoc.main(args))


if __name__ == "__main__":
    sys.exit(main())
