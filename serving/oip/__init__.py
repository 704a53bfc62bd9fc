"""Open Inference Protocol v2 (KServe / Triton): the protocol-neutral parts shared by the REST
and gRPC front ends and by the worker — tensor codec, declared model metadata, request checks
and the bridge between OIP requests and TorchServe handlers. No web framework is imported here.
"""
