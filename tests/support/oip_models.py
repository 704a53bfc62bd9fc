"""model-config.yaml texts of the OIP test models (tests/integration/handlers/oip_handler.py
modes), shared by the REST and gRPC protocol tests."""

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
