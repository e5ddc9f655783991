"""The base of every typed result of the Python API (`TrainResult`, `Evaluation`, `BenchRow`, `Study`, ...).

A result is a dataclass whose fields are the values a caller reads (`evaluation.accuracy`, `row.latency_median_ms`);
the less common keys stay in `extra`. `to_dict()` gives back exactly the dict the CLI prints with `--json` (same keys,
same order), and `from_dict` reads one, so the JSON formats and the files a run writes are unchanged. Each result
type lives in the module that produces it; this module imports nothing from leanvision.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

__all__ = ["Result"]


@dataclasses.dataclass(kw_only=True)
class Result:
    """Typed fields + `extra` (every other key); `to_dict()` / `from_dict()` round-trip the CLI's JSON exactly."""

    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    _keys: tuple[str, ...] | None = dataclasses.field(default=None, repr=False, compare=False)  # the dict's order

    nested: ClassVar[dict[str, type[Result]]] = {}  # field -> the Result type of its value, or of its list's items
    aliases: ClassVar[dict[str, str]] = {}  # field -> dict key, where the key is not an identifier ("class")

    @classmethod
    def _names(cls) -> dict[str, str]:
        """dict key -> field name, for the typed fields."""
        return {cls.aliases.get(f.name, f.name): f.name for f in dataclasses.fields(cls)
                if f.name not in ("extra", "_keys")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """The typed form of a result dict (a key the type does not name goes to `extra`; a missing one is None)."""
        names = cls._names()
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            name = names.get(key)
            if name is None:
                extra[key] = value
            else:
                kind = cls.nested.get(name)
                values[name] = _load(kind, value) if kind is not None else value
        for f in dataclasses.fields(cls):
            if (f.name in names.values() and f.name not in values and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING):
                values[f.name] = None
        return cls(**values, extra=extra, _keys=tuple(data))

    def to_dict(self) -> dict[str, Any]:
        """The result as the plain dict the CLI prints with --json (JSON-ready: nested results are dicts too)."""
        names = self._names()
        order = list(self._keys) if self._keys is not None else [*names, *self.extra]
        order += [k for k in (*names, *self.extra) if k not in order  # set after reading: keep it, unless unset
                  and (k in self.extra or getattr(self, names[k]) is not None)]
        out: dict[str, Any] = {}
        for key in order:
            if key in names:
                out[key] = _dump(getattr(self, names[key]))
            elif key in self.extra:
                out[key] = _dump(self.extra[key])
        return out


def _load(kind: type[Result], value: Any) -> Any:
    if isinstance(value, dict):
        return kind.from_dict(value)
    if isinstance(value, list):
        return [kind.from_dict(v) if isinstance(v, dict) else v for v in value]
    return value


def _dump(value: Any) -> Any:
    if isinstance(value, Result):
        return value.to_dict()
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value
