"""Optimisation pipeline applied to a handler's model before the worker reports ready.

Import the modules you need (`serving.optimize.pipeline`, `.config`, ...): this package does
not import them itself, because the gateway reads `config` and must never load torch.
"""
