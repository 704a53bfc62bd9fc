"""Test handler written as module-level functions (TorchServe's function handler form)."""

_state = {"init_calls": 0, "model": None}


def handle(data, context):
    if data is None:  # TorchServe initialises a function handler with fn(None, context)
        _state["init_calls"] += 1
        _state["model"] = context.model_name
        return None
    return [{"form": "handle", "init_calls": _state["init_calls"], "model": _state["model"]}
            for _ in data]


def predict(data, context):
    if data is None:
        _state["init_calls"] += 1
        return None
    return [{"form": "predict", "init_calls": _state["init_calls"]} for _ in data]
