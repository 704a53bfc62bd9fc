"""atheris harness: OIP inference requests (a JSON header and binary tensor data) through the
gateway's checks (`parse_request`), then the worker's bridge (`decode`, `handler_row` in both
modes, `encode_answer` of answers shaped like the inputs) raise only the documented errors:
BadRequest (a 400 for the client), AnswerError (a handler answer that fits no tensor).

    python fuzz/oip_fuzz.py fuzz/corpus/oip -runs=5000
"""

from __future__ import annotations

import contextlib
import sys

import atheris

from fuzz.known import tolerate_known

with atheris.instrument_imports(include=["serving"]):
    from serving.errors import BadRequest
    from serving.jsondepth import loads
    from serving.oip import handler_bridge
    from serving.oip.metadata import UNDECLARED, from_model_yaml
    from serving.oip.requests import parse_request, worker_inputs

METADATA = [
    UNDECLARED,
    from_model_yaml({"oip": {"handler_input": "body"}}),
    from_model_yaml({"oip": {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]}}),
    from_model_yaml({"oip": {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}],
        "outputs": [{"name": "e", "datatype": "FP16", "shape": [3]},
                    {"name": "f", "datatype": "BYTES", "shape": [-1]}],
        "handler_input": "body"}}),
]


def layout(data: bytes) -> tuple[int, bytes, bytes]:
    """[metadata index][header length: 2 bytes][header][binary tensor data]."""
    choice = data[0] % len(METADATA) if data else 0
    n = int.from_bytes(data[1:3], "big") if len(data) >= 3 else 0
    return choice, data[3:3 + n], data[3 + n:]


@tolerate_known
def test_one_input(data: bytes) -> None:
    choice, header_bytes, binary = layout(data)
    metadata = METADATA[choice]
    try:
        header = loads(header_bytes, 100, "not JSON")
        request = parse_request(header, binary, metadata)
    except BadRequest:
        return
    inputs = worker_inputs(header_bytes, request)
    item = handler_bridge.decode([(i.name, i.content_type, i.value) for i in inputs])
    for mode in (metadata, METADATA[1]):
        with contextlib.suppress(BadRequest):
            handler_bridge.handler_row(item, mode)
    answers = [{"ok": True}, [1.5, 2.5, 3.5], header.get("outputs"), header]
    for i in range(len(request.inputs)):
        answers.append(item.array(i))
    for answer in answers:
        with contextlib.suppress(BadRequest, handler_bridge.AnswerError):
            handler_bridge.encode_answer(answer, item, metadata, "m", "1", "r")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
