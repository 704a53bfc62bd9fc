"""OIP tensors: the datatypes, and conversions between JSON data, raw little-endian bytes and
numpy arrays, with the checks that make a malformed tensor a 400 instead of a worker error.

Raw bytes are the binary tensor data extension's layout (and gRPC's `raw_*_contents`):
row-major little-endian elements; a BYTES element is a 4-byte little-endian length followed by
its bytes; BOOL is one byte per element; BF16 is the upper half of an IEEE float32.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from serving.errors import BadRequest

# datatype -> numpy dtype of its raw little-endian layout (BF16 travels as its 16 bits).
NUMPY_DTYPES: dict[str, str] = {
    "BOOL": "|b1",
    "UINT8": "|u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "|i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
    "BF16": "<u2",
}
DATATYPES = frozenset({*NUMPY_DTYPES, "BYTES"})
_INTEGER_RANGES = {
    name: (int(np.iinfo(NUMPY_DTYPES[name]).min), int(np.iinfo(NUMPY_DTYPES[name]).max))
    for name in ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")
}
_FLOATS = frozenset({"FP16", "FP32", "FP64", "BF16"})
_LENGTH = struct.Struct("<I")
MAX_RANK = 32  # numpy's limit on dims (64 in numpy 2; 32 keeps both)


def check_datatype(datatype: Any, where: str) -> str:
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise BadRequest(f"{where}: unknown datatype {datatype!r:.40}; expected one of "
                         f"{', '.join(sorted(DATATYPES))}")
    return datatype


def check_shape(shape: Any, where: str) -> list[int]:
    """A request's shape: a list of whole numbers >= 0 (int64, as the protocol's dims are)."""
    if not isinstance(shape, list) or not all(
            type(d) is int and 0 <= d < 2**63 for d in shape):
        raise BadRequest(f"{where}: shape must be a list of whole numbers from 0 to 2^63-1, "
                         f"got {shape!r:.80}")
    if len(shape) > MAX_RANK:
        raise BadRequest(f"{where}: shape has {len(shape)} dims; at most {MAX_RANK}")
    if math.prod(shape) >= 2**63:
        raise BadRequest(f"{where}: shape {shape!r:.80} has more elements than int64 counts")
    return shape


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def itemsize(datatype: str) -> int | None:
    """Bytes per element; None for BYTES, whose elements vary in length."""
    dtype = NUMPY_DTYPES.get(datatype)
    return None if dtype is None else np.dtype(dtype).itemsize


def flatten(data: Any, datatype: str, count: int, where: str) -> list[Any]:
    """JSON `data` (flat or nested, row-major) as a flat list of `count` elements of the
    right kind: booleans for BOOL, strings for BYTES, integers in range for the integer
    types, numbers for the float types."""
    if not isinstance(data, list):
        raise BadRequest(f"{where}: data must be a list, got {type(data).__name__}")
    flat: list[Any] = []
    _flatten_into(data, flat, count, where)
    if len(flat) != count:
        raise BadRequest(f"{where}: shape needs {count} elements, data has {len(flat)}")
    _check_elements(flat, datatype, where)
    return flat


def _flatten_into(data: list[Any], out: list[Any], count: int, where: str) -> None:
    for item in data:
        if isinstance(item, list):
            _flatten_into(item, out, count, where)
        else:
            out.append(item)
        if len(out) > count:
            raise BadRequest(f"{where}: data has more than the {count} elements its "
                             "shape allows")


def _check_elements(flat: list[Any], datatype: str, where: str) -> None:
    if datatype == "BYTES":
        ok = all(isinstance(v, str) for v in flat)
        kind = "strings"
    elif datatype == "BOOL":
        ok = all(type(v) is bool for v in flat)
        kind = "true/false"
    elif datatype in _FLOATS:
        ok = all(type(v) in (int, float) for v in flat)
        kind = "numbers"
    else:
        low, high = _INTEGER_RANGES[datatype]
        ok = all(type(v) is int and low <= v <= high for v in flat)
        kind = f"whole numbers from {low} to {high}"
    if not ok:
        raise BadRequest(f"{where}: {datatype} data must be {kind}")


def check_raw(raw: bytes | bytearray | memoryview, datatype: str, count: int,
              where: str) -> None:
    """The byte length of a binary tensor matches its shape (for BYTES: its elements)."""
    size = itemsize(datatype)
    if size is not None:
        if len(raw) != count * size:
            raise BadRequest(f"{where}: shape needs {count * size} bytes of {datatype}, "
                             f"binary data has {len(raw)}")
        return
    found = len(split_bytes(raw, where))
    if found != count:
        raise BadRequest(f"{where}: shape needs {count} BYTES elements, binary data has "
                         f"{found}")


def split_bytes(raw: bytes | bytearray | memoryview, where: str) -> list[bytes]:
    """BYTES elements out of their length-prefixed layout."""
    view = memoryview(raw).cast("B")
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise BadRequest(f"{where}: BYTES data ends inside an element's 4-byte length")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise BadRequest(f"{where}: a BYTES element of {length} bytes runs past the end "
                             "of the data")
        items.append(bytes(view[offset:offset + length]))
        offset += length
    return items


def join_bytes(items: Sequence[bytes | str]) -> bytes:
    """BYTES elements into their length-prefixed layout (str as UTF-8)."""
    parts: list[bytes] = []
    for item in items:
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def json_to_raw(flat: list[Any], datatype: str) -> bytes:
    """Checked flat JSON data (see `flatten`) as raw bytes."""
    if datatype == "BYTES":
        return join_bytes(flat)
    if datatype == "BF16":
        bits = np.asarray(flat, dtype="<f4").view("<u4") >> 16
        return bits.astype("<u2").tobytes()
    return np.asarray(flat, dtype=NUMPY_DTYPES[datatype]).tobytes()


def raw_to_array(raw: bytes | bytearray | memoryview, datatype: str,
                 shape: Sequence[int]) -> np.ndarray[Any, Any]:
    """Raw bytes as an array of `shape` (BYTES: an object array of bytes; BF16: float32)."""
    if datatype == "BYTES":
        arr = np.empty(len(items := split_bytes(raw, "tensor")), dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    if datatype == "BF16":
        bits = np.frombuffer(raw, dtype="<u2").astype("<u4") << 16
        return bits.view("<f4").reshape(shape)
    return np.frombuffer(raw, dtype=NUMPY_DTYPES[datatype]).reshape(shape)


def array_to_raw(array: np.ndarray[Any, Any], datatype: str) -> bytes:
    """An array as raw bytes of `datatype` (values converted; BYTES from str/bytes items)."""
    if datatype == "BYTES":
        return join_bytes([v if isinstance(v, str | bytes) else str(v)
                           for v in array.reshape(-1).tolist()])
    if datatype == "BF16":
        bits = np.ascontiguousarray(array, dtype="<f4").view("<u4") >> 16
        return bits.astype("<u2").tobytes()
    return np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype]).tobytes()


def raw_to_json(raw: bytes | bytearray | memoryview, datatype: str, where: str) -> list[Any]:
    """Raw bytes as a flat JSON list (BYTES elements as UTF-8 text)."""
    if datatype == "BYTES":
        try:
            return [item.decode("utf-8") for item in split_bytes(raw, where)]
        except UnicodeDecodeError:
            raise BadRequest(f"{where}: holds bytes that are not UTF-8 text, which JSON "
                             "cannot carry; ask for it with binary_data") from None
    array = (raw_to_array(raw, datatype, [-1]) if datatype == "BF16"
             else np.frombuffer(raw, dtype=NUMPY_DTYPES[datatype]))
    values: list[Any] = array.tolist()
    return values


def datatype_of(array: np.ndarray[Any, Any]) -> str:
    """The OIP datatype for a numpy array (object and str arrays are BYTES)."""
    kind = array.dtype.kind
    if kind in "OUS":
        return "BYTES"
    for name, dtype in NUMPY_DTYPES.items():
        if name != "BF16" and np.dtype(dtype) == array.dtype.newbyteorder("<"):
            return name
    raise ValueError(f"no OIP datatype for numpy dtype {array.dtype}")
