"""TorchServe handlers of the benchmark's own test models."""
