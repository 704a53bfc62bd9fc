"""Benchmark tooling: load generator, server launchers, in-process limits and reports."""
