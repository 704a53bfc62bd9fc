"""TorchServe handler contract: archives, context, handler loading, built-in handlers."""
