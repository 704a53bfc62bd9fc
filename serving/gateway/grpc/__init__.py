"""The gRPC front ends: TorchServe's inference and management services and the Open Inference
Protocol's GRPCInferenceService, served by grpc.aio on the gateway's event loop."""
