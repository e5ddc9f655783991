"""One small registry used for models, datasets and recipes (timm's `register_model`, with Keras-style errors)."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import LeanvisionError

T = TypeVar("T")


def did_you_mean(name: str, known) -> str:
    """` Did you mean 'x'?` for the closest of `known` (difflib), or '' when none is close."""
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


class Registry(Generic[T]):
    """Maps names to objects; duplicate names fail at registration, unknown names fail with a close match.

    Example: `MODELS = Registry("model"); @MODELS.register() def lenet5(...): ...; MODELS.get("lenet5")`.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name or getattr(obj, "__name__").replace("_", "-")
            if key in self._items:
                raise LeanvisionError(f"Duplicate {self.kind} name {key!r}: each {self.kind} must be registered once. "
                                      "Choose another name.")
            self._items[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        hint = did_you_mean(name, self._items)
        raise LeanvisionError(
            f"Unknown {self.kind} {name!r}.{hint} Available: {', '.join(sorted(self._items))}."
        )

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items
