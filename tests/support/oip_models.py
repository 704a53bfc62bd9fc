"""model-config.yaml texts of the OIP test models (tests/integration/handlers/oip_handler.py
modes), shared by the REST and gRPC protocol tests."""

from pathlib import Path

from tests.support.archives import build_mar

DOUBLE = """batchSize: 1
mode: double
oip:
  inputs: [{name: x, datatype: FP32, shape: [-1]}]
  outputs: [{name: y, datatype: FP32, shape: [-1]}]
"""
UPPER = """mode: upper
oip:
  inputs: [{name: text, datatype: BYTES, shape: [-1]}]
  outputs: [{name: upper, datatype: BYTES, shape: [-1]}]
"""
WRONG = """mode: wrong
oip:
  outputs: [{name: y, datatype: FP32, shape: [4]}]
"""


def build_oip_models(store: Path) -> None:
    """The archives both protocol suites serve: double, upper, v2sum (the handler's own v2
    answer) and wrong (an answer that does not fit its declared output)."""
    build_mar(store, "double", "oip_handler.py", config=DOUBLE)
    build_mar(store, "upper", "oip_handler.py", config=UPPER)
    build_mar(store, "v2sum", "oip_handler.py", config="mode: v2\n")
    build_mar(store, "wrong", "oip_handler.py", config=WRONG)
