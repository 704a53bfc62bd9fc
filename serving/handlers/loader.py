"""Finding a handler's entry point the way TorchServe's backend does."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from serving.errors import ServingError

EntryPoint = Callable[[list[dict[str, Any]], Any], Any]


class HandlerLoadError(ServingError):
    code = 500
    type_name = "ModelLoadException"


@dataclass(frozen=True)
class Handler:
    """A loaded handler: what to call per batch and how to initialise it once."""

    entry_point: EntryPoint
    initialize: Callable[[Any], Any]
    instance: object | None  # the handler object for class handlers (its `.model` is optimised)
    describe: str


def load_handler(spec: str) -> Handler:
    """Resolve `module`, `module:function`, `path/module.py` or a built-in handler name.

    As in TorchServe: the module is imported from the model directory (already on sys.path);
    when it does not exist, `ts.torch_handler.<spec>` is tried. A function handler is
    initialised by calling it once with `(None, context)`; a class handler module must define
    exactly one class, instantiated without arguments.
    """
    module_name, _, function_name = spec.partition(":")
    module_name = module_name.rsplit("/", 1)[-1].removesuffix(".py")
    module = _import(module_name, spec)
    if function_name:
        fn = getattr(module, function_name, None)
        if not callable(fn):
            raise HandlerLoadError(f"handler {spec!r}: module {module.__name__!r} has no "
                                   f"function {function_name!r}")
        return _function_handler(fn, f"{module.__name__}:{function_name}")
    fn = getattr(module, "handle", None)
    if callable(fn) and not inspect.isclass(fn):
        return _function_handler(fn, f"{module.__name__}:handle")
    return _class_handler(module)


def _import(module_name: str, spec: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            # The handler exists but something it imports does not: say that, rather than
            # falling back to a built-in handler and hiding the real cause.
            raise HandlerLoadError(f"handler {spec!r} failed to import: {e}") from None
    builtin = f"ts.torch_handler.{module_name}"
    try:
        return importlib.import_module(builtin)
    except ModuleNotFoundError as e:
        if e.name == builtin:
            raise HandlerLoadError(f"handler {spec!r}: no module {module_name!r} in the "
                                   "archive and no built-in handler of that name") from None
        raise HandlerLoadError(f"built-in handler {module_name!r} failed to import: "
                               f"{e}") from None


def _function_handler(fn: Callable[..., Any], describe: str) -> Handler:
    return Handler(entry_point=fn, initialize=lambda ctx: fn(None, ctx), instance=None,
                   describe=describe)


def _class_handler(module: ModuleType) -> Handler:
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
               if c.__module__ == module.__name__]
    if len(classes) != 1:
        names = ", ".join(c.__name__ for c in classes) or "none"
        raise HandlerLoadError(f"handler module {module.__name__!r} must define exactly one "
                               f"class or a handle function; it defines: {names}")
    cls = classes[0]
    try:
        instance = cls()
    except Exception as e:
        raise HandlerLoadError(f"{cls.__name__}() raised {type(e).__name__}: {e}") from e
    handle = getattr(instance, "handle", None)
    if not callable(handle):
        raise HandlerLoadError(f"handler class {cls.__name__!r} has no handle method")
    initialize = getattr(instance, "initialize", None)
    return Handler(entry_point=handle,
                   initialize=initialize if callable(initialize) else (lambda ctx: None),
                   instance=instance, describe=f"{module.__name__}.{cls.__name__}")
