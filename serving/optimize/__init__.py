"""Optimisation pipeline applied to a handler's model before the worker reports ready."""
