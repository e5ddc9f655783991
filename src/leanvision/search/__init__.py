"""`leanvision search`: find the most accurate model within a latency/size budget, on measured numbers.

`space` (the conv-net family, training knobs, compression), `objective` (one trial: train with multi-fidelity
early stopping, compress, measure under the machine lock), `engine` (Optuna study, storages, workers, the final
re-measurement), `report` (results.json/csv, report.md), `deps` (the lower-level leanvision functions used,
imported in one place; storages and the machine lock are shared with `study`). Optuna is imported lazily (start-up
speed).

Example: `from leanvision.search import search; search(dataset="digits", trials=10, out="search/digits")`.
"""

from __future__ import annotations

from typing import Any


def search(**options: Any) -> dict[str, Any]:
    """Run or continue a search; see `engine.SearchSettings` for the options. Returns results.json's content."""
    from .engine import search as run  # lazy: Optuna and torch load only when a search runs

    return run(**options)


__all__ = ["search"]
