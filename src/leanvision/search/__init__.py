"""`leanvision search`: find the most accurate model within a latency/size budget, on measured numbers.

`space` (the conv-net family, training knobs, compression), `objective` (one trial: train with multi-fidelity
early stopping, compress, measure under the machine lock), `engine` (Optuna study, storages, workers, the final
re-measurement), `report` (results.json/csv, report.md), `deps` (the lower-level leanvision functions used,
imported in one place; storages and the machine lock are shared with `study`). Optuna is imported lazily (start-up
speed).

Example: `from leanvision.search import search; search(dataset="digits", trials=10, out="search/digits")`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What a search found (`leanvision.search(...)`); `to_dict()` is results.json's content, what the CLI prints
    with --json.

    answer: the report's one-paragraph answer. pareto: the re-measured Pareto set, most accurate (validation) first;
    each a dict with trial, run_dir (an ordinary run directory), val_accuracy, test_accuracy and its 95% interval,
    latency_ms (median, batch 1, on `measurement`'s runtime and threads), size_kb, macs, params, arch, compress.
    compared: the `compare` run directories measured in the same run. counts: trials per state. out: the output
    directory (report.html, report.md, results.json/csv, pareto/)."""

    answer: str
    pareto: list[dict[str, Any]]
    compared: list[dict[str, Any]]
    counts: dict[str, int]
    measurement: dict[str, Any]
    out: Path
    raw: dict[str, Any] = dataclasses.field(repr=False)

    @classmethod
    def from_dict(cls, result: dict[str, Any], out: str | Path) -> SearchResult:
        return cls(answer=result["answer"], pareto=result["pareto"], compared=result.get("compared", []),
                   counts=result.get("counts", {}), measurement=result.get("measurement", {}), out=Path(out),
                   raw=result)

    @property
    def run_dirs(self) -> list[Path]:
        """The Pareto set's run directories, in `pareto`'s order (load one with `leanvision.load_run`)."""
        return [Path(p["run_dir"]) for p in self.pareto]

    def to_dict(self) -> dict[str, Any]:
        return self.raw


def search(**options: Any) -> dict[str, Any]:
    """Run or continue a search; see `engine.SearchSettings` for the options. Returns results.json's content."""
    from .engine import search as run  # lazy: Optuna and torch load only when a search runs

    return run(**options)


__all__ = ["search", "SearchResult"]
