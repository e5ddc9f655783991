"""Accuracy statistics: binomial confidence intervals and seed-to-seed spread."""

from __future__ import annotations

import math
from collections.abc import Iterable


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for an accuracy of `correct / total` (95% for the default z = 1.96).

    Better than the normal approximation near 0% and 100% and for small test sets; use it to tell whether two
    accuracies measured on the same test set really differ. Wilson (1927), JASA 22(158).

    Example: `wilson_interval(50, 100)` is about `(0.4038, 0.5962)`.
    """
    if total <= 0 or not 0 <= correct <= total:
        raise ValueError(
            f"Invalid counts for wilson_interval. Expected total > 0 and 0 <= correct <= total. "
            f"Received: correct={correct}, total={total}"
        )
    p = correct / total
    denominator = 1 + z * z / total
    center = (p + z * z / (2 * total)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, center - half_width), min(1.0, center + half_width)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of repeated measurements, e.g. accuracy over seeds.

    A single value has std 0.0. Example: `mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)`.
    """
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("Invalid `values` for mean_std. Expected at least one value. Received: an empty sequence")
    mean = math.fsum(xs) / len(xs)
    if len(xs) == 1:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
