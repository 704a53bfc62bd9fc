"""A PyTorch model server that runs TorchServe archives and handlers unchanged."""

__version__ = "0.1.0"
