"""Pareto front of measured models: the ones no other model beats on every objective at once."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

DIRECTIONS = ("max", "min")


def pareto_front(points: Sequence[Mapping[str, Any]], objectives: Mapping[str, str]) -> list[int]:
    """Indices (ascending) of the non-dominated points.

    A point is dominated when another point is at least as good on every objective and strictly better on one.
    Points equal on all objectives do not dominate each other, so duplicates on the front are all kept. Points whose
    value for any objective is missing, None or NaN are excluded.

    Args:
        points: one dict per model, e.g. `{"accuracy": 0.93, "latency_ms": 1.2, "name": "resnet8"}`.
        objectives: key -> "max" or "min".

    Example: `pareto_front(reports, {"accuracy": "max", "latency_ms": "min"})`.
    """
    if not objectives:
        raise ValueError("Invalid `objectives`. Expected at least one key -> 'max' | 'min'. Received: {}")
    for key, direction in objectives.items():
        if direction not in DIRECTIONS:
            raise ValueError(
                f"Invalid direction for objective {key!r}. Expected 'max' or 'min'. Received: {direction!r}"
            )
    signs = {key: 1.0 if direction == "max" else -1.0 for key, direction in objectives.items()}
    scored: list[tuple[int, tuple[float, ...]]] = []  # (index, values oriented so that larger is better)
    for index, point in enumerate(points):
        values = [_as_number(point.get(key), key, index) for key in signs]
        if all(v is not None for v in values):
            scored.append((index, tuple(sign * v for sign, v in zip(signs.values(), values))))
    return [i for i, a in scored if not any(_dominates(b, a) for _, b in scored)]


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def _as_number(value: Any, key: str, index: int) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"Invalid value for objective {key!r} at point {index}. Expected a number, None or NaN. Received: {value!r}"
        ) from None
    return None if math.isnan(number) else number
