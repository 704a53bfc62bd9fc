"""Prometheus metrics: instruments, the server's catalogue, handler metrics, exposition."""
