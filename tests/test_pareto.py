"""pareto_front on hand-made points."""

from __future__ import annotations

import math

import pytest

from leanvision.pareto import pareto_front

OBJ = {"accuracy": "max", "latency_ms": "min"}


def test_pareto_front_trade_off_curve():
    points = [
        {"accuracy": 0.90, "latency_ms": 1.0},  # fastest
        {"accuracy": 0.95, "latency_ms": 2.0},  # trade-off
        {"accuracy": 0.94, "latency_ms": 3.0},  # dominated by 1
        {"accuracy": 0.99, "latency_ms": 9.0},  # most accurate
        {"accuracy": 0.89, "latency_ms": 1.0},  # dominated by 0 (tie on latency, worse accuracy)
    ]
    assert pareto_front(points, OBJ) == [0, 1, 3]


def test_pareto_front_duplicates_are_all_kept():
    points = [
        {"accuracy": 0.9, "latency_ms": 1.0},
        {"accuracy": 0.9, "latency_ms": 1.0},
        {"accuracy": 0.8, "latency_ms": 1.0},
    ]
    assert pareto_front(points, OBJ) == [0, 1]


def test_pareto_front_single_point_and_empty():
    assert pareto_front([{"accuracy": 0.5, "latency_ms": 3.0}], OBJ) == [0]
    assert pareto_front([], OBJ) == []


def test_pareto_front_all_dominated_by_one():
    points = [{"accuracy": 0.5 + i / 100, "latency_ms": 10.0 - i} for i in range(5)]
    points.insert(2, {"accuracy": 0.99, "latency_ms": 0.1})
    assert pareto_front(points, OBJ) == [2]


def test_pareto_front_excludes_missing_none_and_nan():
    points = [
        {"accuracy": 0.99, "latency_ms": None},
        {"accuracy": math.nan, "latency_ms": 0.1},
        {"latency_ms": 0.01},
        {"accuracy": 0.5, "latency_ms": 5.0},
    ]
    assert pareto_front(points, OBJ) == [3]


def test_pareto_front_min_and_max_directions_and_three_objectives():
    points = [{"a": 1, "b": 1, "c": 1}, {"a": 2, "b": 2, "c": 2}, {"a": 2, "b": 1, "c": 2}]
    assert pareto_front(points, {"a": "max"}) == [1, 2]
    assert pareto_front(points, {"a": "min"}) == [0]
    assert pareto_front(points, {"a": "max", "b": "min", "c": "max"}) == [2]


def test_pareto_front_rejects_bad_direction_and_values():
    with pytest.raises(ValueError, match="Expected 'max' or 'min'. Received: 'maximize'"):
        pareto_front([{"a": 1}], {"a": "maximize"})
    with pytest.raises(ValueError, match="at point 0"):
        pareto_front([{"a": "fast"}], {"a": "min"})
    with pytest.raises(ValueError):
        pareto_front([{"a": 1}], {})
