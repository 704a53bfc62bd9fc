"""Typed reading of management API parameters, with a 400 that names the parameter and why."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from serving.errors import BadRequest


class Params:
    """Query parameters (or a JSON body's fields) of one management call."""

    def __init__(self, values: Mapping[str, Any], allowed: frozenset[str]) -> None:
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise BadRequest(f"unknown parameter(s): {', '.join(unknown)}; "
                             f"expected some of: {', '.join(sorted(allowed))}")
        self._values = values

    def text(self, name: str) -> str | None:
        value = self._values.get(name)
        if value is None:
            return None
        if not isinstance(value, str | int | float):
            raise BadRequest(f"{name}: expected a string, got {value!r}")
        text = str(value).strip()
        return text or None

    def integer(self, name: str, minimum: int | None = None, maximum: int | None = None
                ) -> int | None:
        value = self._values.get(name)
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise BadRequest(f"{name}: expected an integer, got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise BadRequest(f"{name}: expected an integer, got {value!r}") from None
        if minimum is not None and number < minimum:
            raise BadRequest(f"{name}: must be at least {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise BadRequest(f"{name}: must be at most {maximum}, got {number}")
        return number

    def mapping(self, name: str) -> dict[str, Any] | None:
        """A JSON object: given as such in a JSON body, or as JSON text in the query."""
        value = self._values.get(name)
        if value is None or value == "":
            return None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                raise BadRequest(f"{name}: expected a JSON object, got {value!r}") from None
        if not isinstance(value, dict):
            raise BadRequest(f"{name}: expected a JSON object, got {value!r}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self._values.get(name)
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        raise BadRequest(f"{name}: expected true or false, got {value!r}")
