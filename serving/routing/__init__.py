"""Model registry, admission, dynamic batching and placement of workers."""
